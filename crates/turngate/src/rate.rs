//! How fast sessions may be created: per token subject and per client address, each a
//! GCRA limit (`governor`, keyed) of so many sessions per minute with as large a burst.
//! Keys that have been quiet long enough to be full again are pruned every
//! [`PRUNE_EVERY`] checks, so the state holds only recent creators.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

/// Checks between two prunings of quiet keys.
const PRUNE_EVERY: u64 = 256;

/// Which limit a creation hit, and when to retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limited {
    /// Whether the subject's limit (else the address's).
    pub subject: bool,
    /// How long until one more creation is allowed.
    pub retry_after: Duration,
}

/// The two limits. See the module docs.
pub struct CreationRates {
    by_subject: DefaultKeyedRateLimiter<String>,
    by_address: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
    checks: AtomicU64,
}

impl CreationRates {
    /// `per_subject` and `per_address` sessions per minute (zeros count as one).
    pub fn new(per_subject: u32, per_address: u32) -> Self {
        let quota =
            |n: u32| Quota::per_minute(NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN));
        Self {
            by_subject: DefaultKeyedRateLimiter::hashmap(quota(per_subject)),
            by_address: DefaultKeyedRateLimiter::hashmap(quota(per_address)),
            clock: DefaultClock::default(),
            checks: AtomicU64::new(0),
        }
    }

    /// Takes one creation for `address` (a [`crate::registry::address_key`]) and
    /// `subject`, or says which limit refuses it. A refused creation takes nothing.
    pub fn check(&self, address: IpAddr, subject: Option<&str>) -> Result<(), Limited> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            self.by_subject.retain_recent();
            self.by_address.retain_recent();
        }
        let now = self.clock.now();
        self.by_address
            .check_key(&address)
            .map_err(|not_until| Limited {
                subject: false,
                retry_after: not_until.wait_time_from(now),
            })?;
        if let Some(subject) = subject {
            self.by_subject
                .check_key(&subject.to_owned())
                .map_err(|not_until| Limited {
                    subject: true,
                    retry_after: not_until.wait_time_from(now),
                })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_subject_tripping_leaves_another_alone() {
        let rates = CreationRates::new(2, 100);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(rates.check(ip, Some("alice")).is_ok());
        assert!(rates.check(ip, Some("alice")).is_ok());
        let limited = rates.check(ip, Some("alice")).unwrap_err();
        assert!(limited.subject);
        assert!(limited.retry_after > Duration::ZERO);
        assert!(rates.check(ip, Some("bob")).is_ok());
    }

    #[test]
    fn one_address_tripping_leaves_another_alone() {
        let rates = CreationRates::new(100, 1);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(rates.check(a, None).is_ok());
        assert!(!rates.check(a, None).unwrap_err().subject);
        assert!(rates.check(b, None).is_ok());
    }
}
