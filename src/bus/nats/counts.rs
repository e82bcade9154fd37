//! Queue figures in Regis messages. JetStream counts NATS messages, and a NATS message is a
//! batch of up to 128 envelopes, so a consumer's `num_pending` and `num_ack_pending` alone
//! would under-count a region's backlog up to 128 times. This module turns them into
//! envelopes.
//!
//! * **Depth** (not yet delivered to the region) is exact, whatever the number of hubs.
//!   Every message after the consumer's delivered position is still stored (interest
//!   retention: this region has not acknowledged it). Each hub numbers its batches on its
//!   own subject with running totals (`Regis-Totals`, see `topic`), so the envelopes of a
//!   subject after a position are the totals of its last message less those of its first
//!   message after the position, plus that message's own. A redrive is one bare envelope:
//!   what `num_pending` counts beyond the hubs' messages. Cost: one request listing the hub
//!   subjects, one per hub for its last message, one per hub and region for the first after
//!   the position — only for regions with a backlog.
//! * **In flight** (delivered, not settled for good): JetStream says how many NATS messages
//!   are unacknowledged, not which (acknowledgements come out of order). The process that
//!   received a batch knows how many of its envelopes are still to settle — in deliveries it
//!   holds open, and in those it settled with `Retry` until they come back — so the figure
//!   is exact when this process holds every unacknowledged delivery of the region: a hub
//!   running the region's workers (or serving them the lease API). Deliveries held
//!   elsewhere (a `regis worker` on NATS, this hub's previous life, a lease that expired
//!   and is not yet delivered again) are counted at the average of the window between the
//!   ack floor and the delivered position, and the figures are marked estimated.
//!
//! A figure is never below JetStream's own count (every unsettled NATS message holds at
//! least one unsettled envelope) nor above 128 times it. Zero is exact.

use async_nats::jetstream::stream::RawMessageErrorKind;
use futures_util::StreamExt;
use futures_util::future::try_join_all;

use super::batch::{self, MAX_MESSAGES, Totals};
use super::{NatsBus, unavailable};
use crate::bus::BusError;

/// NATS messages and the envelopes in them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Span {
    /// NATS messages.
    pub messages: u64,
    /// Envelopes.
    pub envelopes: u64,
}

impl Span {
    fn plus(self, other: Span) -> Span {
        Span {
            messages: self.messages + other.messages,
            envelopes: self.envelopes + other.envelopes,
        }
    }

    /// What `self` holds beyond `inner` (a span it contains).
    fn minus(self, inner: Span) -> Span {
        Span {
            messages: self.messages.saturating_sub(inner.messages),
            envelopes: self.envelopes.saturating_sub(inner.envelopes),
        }
    }
}

/// Where every hub's subject ends: the totals of its last stored message (`None` when that
/// message carries none: an older Regis sent it).
pub(super) struct Hubs {
    subjects: Vec<(String, Option<Totals>)>,
}

/// Reads the hubs' subjects and their last messages.
pub(super) async fn hubs(bus: &NatsBus) -> Result<Hubs, BusError> {
    let topic = &bus.inner.topic;
    let cannot = |err| unavailable("cannot read where the hubs' subjects stand", err);
    let mut listed = topic
        .info_with_subjects(bus.inner.names.hub_subjects())
        .await
        .map_err(cannot)?;
    let mut names = Vec::new();
    while let Some(item) = listed.next().await {
        names.push(item.map_err(cannot)?.0);
    }
    let lasts = try_join_all(names.iter().map(|subject| async move {
        match topic
            .raw_message_builder()
            .last_by_subject(subject.clone())
            .send()
            .await
        {
            Ok(last) => Ok(Some(Totals::of(Some(&last.headers)))),
            // Every region acknowledged it meanwhile: nothing of it is pending.
            Err(err) if err.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
            Err(err) => Err(unavailable("cannot read a hub's last message", err)),
        }
    }))
    .await?;
    let subjects = names
        .into_iter()
        .zip(lasts)
        .filter_map(|(subject, last)| last.map(|totals| (subject, totals)))
        .collect();
    Ok(Hubs { subjects })
}

/// The hubs' messages after stream sequence `position`; `None` when a message this needs
/// carries no totals.
pub(super) async fn after(
    bus: &NatsBus,
    hubs: &Hubs,
    position: u64,
) -> Result<Option<Span>, BusError> {
    let topic = &bus.inner.topic;
    let parts = try_join_all(hubs.subjects.iter().map(|(subject, last)| async move {
        let first = match topic
            .raw_message_builder()
            .sequence(position + 1)
            .next_by_subject(subject.clone())
            .send()
            .await
        {
            Ok(first) => first,
            Err(err) if err.kind() == RawMessageErrorKind::NoMessageFound => {
                return Ok(Some(Span::default()));
            }
            Err(err) => {
                return Err(unavailable(
                    "cannot read a hub's first pending message",
                    err,
                ));
            }
        };
        let (Some(first_totals), Some(last)) = (Totals::of(Some(&first.headers)), last) else {
            return Ok(None);
        };
        // From `first` to `last`, both included. A message published since `last` was read
        // is left out (a first after it gives zero): the figure is as of that read.
        let own = batch::envelopes_of(Some(&first.headers));
        Ok(Some(Span {
            messages: (last.messages + 1).saturating_sub(first_totals.messages),
            envelopes: (last.envelopes + own).saturating_sub(first_totals.envelopes),
        }))
    }))
    .await?;
    Ok(parts
        .into_iter()
        .try_fold(Span::default(), |sum, part| part.map(|p| sum.plus(p))))
}

/// Deliveries of a region this process holds: unacknowledged NATS messages and their
/// envelopes still to settle.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Held {
    /// NATS messages.
    pub messages: u64,
    /// Envelopes in them not settled for good.
    pub envelopes: u64,
}

/// What a region's figures are computed from.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Inputs {
    /// The consumer's `num_pending`: NATS messages not yet delivered.
    pub pending: u64,
    /// The consumer's `num_ack_pending`: NATS messages delivered and unacknowledged.
    pub ack_pending: u64,
    /// The hubs' messages after the delivered position (`None`: unknown).
    pub undelivered: Option<Span>,
    /// The hubs' messages between the ack floor and the delivered position.
    pub window: Option<Span>,
    /// What this process holds.
    pub held: Held,
}

/// A region's figures in envelopes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Figures {
    pub depth: u64,
    pub in_flight: u64,
    pub estimated: bool,
}

impl Inputs {
    /// Whether [`after`] is needed for the in-flight figure: some unacknowledged deliveries
    /// are not held here.
    pub fn needs_window(&self) -> bool {
        self.ack_pending > self.held.messages
    }

    /// Whether the hubs' positions are needed at all.
    pub fn needs_hubs(&self) -> bool {
        self.pending > 0 || self.needs_window()
    }

    /// The figures; see the module documentation.
    pub fn figures(&self) -> Figures {
        let most = |nats: u64| nats.saturating_mul(MAX_MESSAGES as u64);
        let mut estimated = false;
        let depth = match (self.pending, self.undelivered) {
            (0, _) => 0,
            (pending, Some(hubs)) => {
                let redrives = pending.saturating_sub(hubs.messages);
                (hubs.envelopes + redrives).clamp(pending, most(pending))
            }
            (pending, None) => {
                estimated = true;
                pending
            }
        };
        let held = self.held;
        let in_flight = match self.ack_pending {
            0 => 0,
            n if held.messages == n => held.envelopes,
            n if held.messages > n => {
                // Some deliveries counted here were settled elsewhere since (a lease that
                // expired here and was acknowledged by another process).
                estimated = true;
                (held.envelopes * n).div_ceil(held.messages)
            }
            n => {
                estimated = true;
                let unheld = n - held.messages;
                let per_message = match self.window {
                    Some(w) if w.messages > 0 => w.envelopes as f64 / w.messages as f64,
                    _ => 1.0,
                };
                held.envelopes + (unheld as f64 * per_message).round() as u64
            }
        };
        let in_flight = in_flight.clamp(self.ack_pending, most(self.ack_pending));
        Figures {
            depth,
            in_flight,
            estimated,
        }
    }
}

/// The window between two positions, from the spans after each (the earlier one first).
pub(super) fn window(after_floor: Option<Span>, after_delivered: Option<Span>) -> Option<Span> {
    Some(after_floor?.minus(after_delivered?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(messages: u64, envelopes: u64) -> Option<Span> {
        Some(Span {
            messages,
            envelopes,
        })
    }

    #[test]
    fn depth_counts_envelopes_and_redrives_exactly() {
        let figures = Inputs {
            pending: 12,
            undelivered: span(10, 700),
            ..Inputs::default()
        }
        .figures();
        assert_eq!(
            figures,
            Figures {
                depth: 702,
                in_flight: 0,
                estimated: false
            },
            "10 batches of 700 envelopes and 2 redrives"
        );
        let unknown = Inputs {
            pending: 12,
            undelivered: None,
            ..Inputs::default()
        };
        assert_eq!(
            (unknown.figures().depth, unknown.figures().estimated),
            (12, true)
        );
        let nothing = Inputs {
            undelivered: span(3, 30),
            ..Inputs::default()
        };
        assert_eq!(nothing.figures().depth, 0, "zero is zero");
        assert!(!nothing.needs_hubs());
    }

    #[test]
    fn figures_stay_within_what_jetstream_counts() {
        // Totals out of step (a publish lost after it was counted) cannot make the figure
        // exceed 128 envelopes per NATS message, nor fall below one.
        let figures = Inputs {
            pending: 2,
            undelivered: span(1, 100_000),
            ack_pending: 3,
            held: Held {
                messages: 3,
                envelopes: 0,
            },
            ..Inputs::default()
        }
        .figures();
        assert_eq!((figures.depth, figures.in_flight), (256, 3));
    }

    #[test]
    fn in_flight_is_exact_when_every_delivery_is_held_here() {
        let inputs = Inputs {
            ack_pending: 4,
            held: Held {
                messages: 4,
                envelopes: 130,
            },
            ..Inputs::default()
        };
        assert!(!inputs.needs_window() && !inputs.needs_hubs());
        assert_eq!(
            inputs.figures(),
            Figures {
                depth: 0,
                in_flight: 130,
                estimated: false
            }
        );
    }

    #[test]
    fn deliveries_held_elsewhere_are_estimated_at_the_windows_average() {
        let inputs = Inputs {
            ack_pending: 5,
            held: Held {
                messages: 2,
                envelopes: 11,
            },
            window: window(span(40, 500), span(30, 300)),
            ..Inputs::default()
        };
        assert!(inputs.needs_window());
        assert_eq!(
            inputs.figures(),
            Figures {
                depth: 0,
                in_flight: 11 + 60,
                estimated: true
            },
            "3 unheld at 200 envelopes / 10 messages"
        );
        let stale = Inputs {
            ack_pending: 2,
            held: Held {
                messages: 4,
                envelopes: 40,
            },
            ..Inputs::default()
        };
        assert_eq!(
            (stale.figures().in_flight, stale.figures().estimated),
            (20, true)
        );
    }
}
