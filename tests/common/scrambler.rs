//! A test-only delivery scrambler in front of a region's queue: it reorders, delays and
//! duplicates deliveries, and loses acknowledgements (a worker that died after applying and
//! before acking), so a region sees the worst an at-least-once, unordered bus may do.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use regis::bus::{BusError, Consume, Delivery, Receipt, Settle};

/// How hard to scramble.
#[derive(Clone, Copy, Debug)]
pub struct Scrambling {
    /// Chance a delivery is held back for a while.
    pub hold: f64,
    /// Longest hold.
    pub max_hold: Duration,
    /// Chance a delivery is also delivered again later.
    pub duplicate: f64,
    /// Chance an Ack is lost.
    pub lose_ack: f64,
}

struct State {
    held: Vec<(Instant, Delivery)>,
    rng: StdRng,
}

/// Wraps a real queue.
#[derive(Clone)]
pub struct Scrambler<C> {
    inner: C,
    how: Scrambling,
    state: Arc<Mutex<State>>,
}

impl<C: Consume> Scrambler<C> {
    pub fn new(inner: C, how: Scrambling, seed: u64) -> Self {
        Scrambler {
            inner,
            how,
            state: Arc::new(Mutex::new(State {
                held: Vec::new(),
                rng: StdRng::seed_from_u64(seed),
            })),
        }
    }

    /// Deliveries still held back.
    pub fn held(&self) -> usize {
        self.state.lock().unwrap().held.len()
    }

    fn release_due(&self) -> (Vec<Delivery>, Option<Instant>) {
        let mut state = self.state.lock().unwrap();
        let now = Instant::now();
        let (due, kept): (Vec<_>, Vec<_>) = state.held.drain(..).partition(|(at, _)| *at <= now);
        state.held = kept;
        let next = state.held.iter().map(|(at, _)| *at).min();
        (due.into_iter().map(|(_, d)| d).collect(), next)
    }
}

impl<C: Consume + Clone> Consume for Scrambler<C> {
    async fn receive(
        &self,
        region: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, BusError> {
        let (mut out, next) = self.release_due();
        if out.len() < max {
            let mut wait = if out.is_empty() { wait } else { Duration::ZERO };
            if let Some(next) = next {
                wait = wait.min(next.saturating_duration_since(Instant::now()));
            }
            let fresh = self.inner.receive(region, max - out.len(), wait).await?;
            let mut state = self.state.lock().unwrap();
            for delivery in fresh {
                let now = Instant::now();
                if state.rng.random_bool(self.how.duplicate) {
                    let later = now + self.how.max_hold.mul_f64(state.rng.random::<f64>());
                    state.held.push((later, delivery.clone()));
                }
                if state.rng.random_bool(self.how.hold) {
                    let later = now + self.how.max_hold.mul_f64(state.rng.random::<f64>());
                    state.held.push((later, delivery));
                } else {
                    out.push(delivery);
                }
            }
        }
        let mut state = self.state.lock().unwrap();
        out.shuffle(&mut state.rng);
        Ok(out)
    }

    async fn settle(
        &self,
        region: &str,
        settlements: Vec<(Receipt, Settle)>,
    ) -> Result<(), BusError> {
        let kept: Vec<(Receipt, Settle)> = {
            let mut state = self.state.lock().unwrap();
            settlements
                .into_iter()
                .filter(|(_, settle)| {
                    !(*settle == Settle::Ack && state.rng.random_bool(self.how.lose_ack))
                })
                .collect()
        };
        self.inner.settle(region, kept).await
    }
}
