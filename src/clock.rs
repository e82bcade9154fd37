//! Versions and the hybrid logical clock that issues them.
//!
//! Every message gets a [`Version`] at ingress; under `convergence = "lww"` versions decide
//! every conflict in every region. A version packs three parts into one `u64` so that integer
//! order is version order and Redis can store it as a plain integer:
//!
//! ```text
//!  63        20 19      10 9        0
//! +------------+----------+----------+
//! | physical ms| logical  | origin   |
//! +------------+----------+----------+
//! ```
//!
//! * physical milliseconds since the Unix epoch (43 bits: good until the year 2248);
//! * a logical counter (10 bits) that orders versions issued within one millisecond;
//! * the origin id of the issuing hub (10 bits), which breaks ties between hubs.
//!
//! A message of `n` commands reserves `n` consecutive logical ticks, so command `i` of a
//! message has its own version `message_version.command(i)` that no other command shares:
//! commands of one message are ordered among themselves exactly as they are among messages.
//! When the logical counter overflows, the clock borrows the next millisecond — it runs
//! slightly ahead of the wall clock under extreme load instead of ever repeating a version.
//!
//! For every version issued today the decimal form has exactly 19 digits, so versions also
//! compare correctly as strings (the Lua applier relies on this).

use std::fmt;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

const ORIGIN_BITS: u32 = 10;
const LOGICAL_BITS: u32 = 10;
const PHYSICAL_SHIFT: u32 = ORIGIN_BITS + LOGICAL_BITS;
/// One logical tick, in packed units.
const TICK: u64 = 1 << ORIGIN_BITS;
const ORIGIN_MASK: u64 = TICK - 1;

/// The largest origin id a hub may have.
pub const MAX_ORIGIN: u16 = (1 << ORIGIN_BITS) - 1;

/// A hybrid-logical-clock version: physical ms, logical counter, origin id.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct Version(u64);

impl Version {
    /// The version with this packed representation.
    pub const fn from_packed(packed: u64) -> Self {
        Version(packed)
    }

    /// The packed `u64`, ordered like the version.
    pub const fn packed(self) -> u64 {
        self.0
    }

    /// Milliseconds since the Unix epoch at which the version was issued.
    pub const fn physical_ms(self) -> u64 {
        self.0 >> PHYSICAL_SHIFT
    }

    /// The logical counter within the millisecond.
    pub const fn logical(self) -> u64 {
        (self.0 >> ORIGIN_BITS) & ((1 << LOGICAL_BITS) - 1)
    }

    /// The origin id of the hub that issued it.
    pub const fn origin(self) -> u16 {
        (self.0 & ORIGIN_MASK) as u16
    }

    /// The version of command `index` of a message whose version is `self`.
    ///
    /// Valid only for indexes below the number of ticks the message reserved.
    pub const fn command(self, index: usize) -> Version {
        Version(self.0 + (index as u64) * TICK)
    }

    /// The smallest version issued at or after `ms` by any origin.
    pub const fn at_ms(ms: u64) -> Version {
        Version(ms << PHYSICAL_SHIFT)
    }

    /// The version just below this one (saturating at zero).
    pub const fn prev(self) -> Version {
        Version(self.0.saturating_sub(1))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Version({}ms+{}@{})",
            self.physical_ms(),
            self.logical(),
            self.origin()
        )
    }
}

/// Milliseconds since the Unix epoch on this machine's wall clock.
pub fn now_ms() -> u64 {
    now_us() / 1000
}

/// Microseconds since the Unix epoch on this machine's wall clock.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_micros() as u64)
        .unwrap_or(0)
}

/// Issues strictly increasing versions for one origin.
///
/// Seed it with the highest version this origin ever issued (the bus persists it), so a hub
/// restarted with its wall clock behind never issues a version below an earlier one.
#[derive(Debug)]
pub struct HybridClock {
    origin: u16,
    /// The last tick handed out, with the origin bits cleared.
    last: Mutex<u64>,
}

impl HybridClock {
    /// A clock for `origin` that will issue only versions above `seed`.
    ///
    /// # Panics
    /// When `origin` is above [`MAX_ORIGIN`]; config validation refuses such ids first.
    pub fn new(origin: u16, seed: Option<Version>) -> Self {
        assert!(
            origin <= MAX_ORIGIN,
            "origin id {origin} above {MAX_ORIGIN}"
        );
        HybridClock {
            origin,
            last: Mutex::new(seed.map_or(0, |v| v.0 & !ORIGIN_MASK)),
        }
    }

    /// Reserves `ticks` consecutive versions (at least one) and returns the first.
    pub fn issue(&self, ticks: usize) -> Version {
        self.issue_at(now_ms(), ticks)
    }

    fn issue_at(&self, wall_ms: u64, ticks: usize) -> Version {
        let ticks = ticks.max(1) as u64;
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let first = (wall_ms << PHYSICAL_SHIFT).max(*last + TICK);
        *last = first + (ticks - 1) * TICK;
        Version(first | u64::from(self.origin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_round_trip() {
        let clock = HybridClock::new(7, None);
        let v = clock.issue_at(1_764_000_000_000, 1);
        assert_eq!(v.physical_ms(), 1_764_000_000_000);
        assert_eq!(v.logical(), 0);
        assert_eq!(v.origin(), 7);
        let w = clock.issue_at(1_764_000_000_000, 1);
        assert_eq!(w.logical(), 1);
        assert!(w > v);
    }

    #[test]
    fn commands_of_a_message_get_their_own_versions() {
        let clock = HybridClock::new(1, None);
        let m = clock.issue_at(1_000_000_000_000, 3);
        let next = clock.issue_at(1_000_000_000_000, 1);
        assert!(m.command(0) < m.command(1));
        assert!(
            m.command(2) < next,
            "the next message must not reuse a reserved tick"
        );
        assert_eq!(m.command(2).origin(), 1);
    }

    #[test]
    fn wall_clock_going_back_never_repeats_a_version() {
        let clock = HybridClock::new(0, None);
        let a = clock.issue_at(2_000_000_000_000, 1);
        let b = clock.issue_at(1_999_999_999_000, 1);
        assert!(b > a);
    }

    #[test]
    fn seeded_clock_stays_above_the_seed() {
        let earlier = HybridClock::new(3, None).issue_at(3_000_000_000_000, 5);
        let restarted = HybridClock::new(3, Some(earlier.command(4)));
        let v = restarted.issue_at(1_000_000_000_000, 1);
        assert!(v > earlier.command(4));
    }

    #[test]
    fn logical_overflow_borrows_the_next_millisecond() {
        let clock = HybridClock::new(0, None);
        let first = clock.issue_at(1_000_000_000_000, 1024);
        let next = clock.issue_at(1_000_000_000_000, 1);
        assert_eq!(first.physical_ms(), 1_000_000_000_000);
        assert_eq!(next.physical_ms(), 1_000_000_000_001);
    }

    #[test]
    fn versions_of_this_era_have_nineteen_digits() {
        // The Lua applier compares versions as strings; that is only sound at equal length.
        for ms in [1_000_000_000_000u64, now_ms(), 8_000_000_000_000] {
            let v = Version::at_ms(ms);
            assert_eq!(v.to_string().len(), 19, "{ms}");
        }
    }
}
