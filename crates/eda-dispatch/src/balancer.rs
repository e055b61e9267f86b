//! How the members of one group share its events.

use std::hash::{Hash, Hasher};

use serde::Deserialize;

/// How a group picks the member that handles an event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balancer {
    /// Members take turns.
    #[default]
    RoundRobin,
    /// Smooth weighted round-robin (as nginx does): weights 3:2:1 give 50/33/17 % and
    /// spread each member's turns out (no member gets more than its weight in a row).
    Weighted,
    /// By the event's routing key (`partitionkey`): the same key always goes to the same
    /// member, in publish order; events without a key take turns. When members join or
    /// leave, the group first drains what is in flight, then re-maps keys, so per-key
    /// order holds across the change.
    KeyHash,
    /// The member with the fewest events in flight.
    LeastLoaded,
}

/// What a balancer knows about a member when picking.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MemberLoad {
    pub(crate) weight: u32,
    pub(crate) in_flight: usize,
}

/// The state of one group's balancer.
#[derive(Debug, Default)]
pub(crate) struct BalancerState {
    kind: Balancer,
    next: usize,
    current: Vec<i64>,
}

/// A stable hash of a routing key (SipHash with fixed keys: the same in every run).
pub(crate) fn key_hash(key: &str) -> u64 {
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new();
    key.hash(&mut h);
    h.finish()
}

impl BalancerState {
    pub(crate) fn new(kind: Balancer) -> Self {
        Self {
            kind,
            next: 0,
            current: Vec::new(),
        }
    }

    /// Forgets per-member state (membership changed).
    pub(crate) fn reset(&mut self) {
        self.current.clear();
        self.next = 0;
    }

    /// The index of the member to take the next event. `members` is not empty.
    pub(crate) fn pick(&mut self, members: &[MemberLoad], key: Option<&str>) -> usize {
        let n = members.len();
        match (self.kind, key) {
            // Multiply-shift range reduction uses the hash's high bits (`% n` would use
            // only its low ones).
            (Balancer::KeyHash, Some(key)) => {
                ((u128::from(key_hash(key)) * n as u128) >> 64) as usize
            }
            (Balancer::RoundRobin | Balancer::KeyHash, _) => {
                let i = self.next % n;
                self.next = self.next.wrapping_add(1);
                i
            }
            (Balancer::Weighted, _) => {
                if self.current.len() != n {
                    self.current = vec![0; n];
                }
                let total: i64 = members.iter().map(|m| i64::from(m.weight.max(1))).sum();
                let mut best = 0;
                for (i, m) in members.iter().enumerate() {
                    self.current[i] += i64::from(m.weight.max(1));
                    if self.current[i] > self.current[best] {
                        best = i;
                    }
                }
                self.current[best] -= total;
                best
            }
            (Balancer::LeastLoaded, _) => {
                // Ties rotate, so idle members share evenly.
                let start = self.next % n;
                self.next = self.next.wrapping_add(1);
                (0..n)
                    .map(|k| (start + k) % n)
                    .min_by_key(|&i| members[i].in_flight)
                    .unwrap_or(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loads(weights: &[u32]) -> Vec<MemberLoad> {
        weights
            .iter()
            .map(|&weight| MemberLoad {
                weight,
                in_flight: 0,
            })
            .collect()
    }

    #[test]
    fn weighted_3_2_1_is_exact_and_smooth() {
        let members = loads(&[3, 2, 1]);
        let mut b = BalancerState::new(Balancer::Weighted);
        let mut counts = [0usize; 3];
        let mut run = (usize::MAX, 0u32);
        for _ in 0..60_000 {
            let i = b.pick(&members, None);
            counts[i] += 1;
            run = if run.0 == i { (i, run.1 + 1) } else { (i, 1) };
            assert!(
                run.1 <= members[i].weight,
                "member {i} picked {} times in a row",
                run.1
            );
        }
        let share = |i: usize| counts[i] as f64 / 60_000.0;
        assert!((share(0) - 0.5).abs() < 0.01, "{counts:?}");
        assert!((share(1) - 1.0 / 3.0).abs() < 0.01, "{counts:?}");
        assert!((share(2) - 1.0 / 6.0).abs() < 0.01, "{counts:?}");
        // Smooth WRR is exact over each cycle of 6.
        assert_eq!(counts, [30_000, 20_000, 10_000]);
    }

    #[test]
    fn weighted_sequence_matches_nginx() {
        // nginx's example: weights 5,1,1 give a a b a c a a (not a a a a a b c).
        let mut b = BalancerState::new(Balancer::Weighted);
        let picks: Vec<usize> = (0..7).map(|_| b.pick(&loads(&[5, 1, 1]), None)).collect();
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn round_robin_takes_turns() {
        let mut b = BalancerState::new(Balancer::RoundRobin);
        let picks: Vec<usize> = (0..6).map(|_| b.pick(&loads(&[1, 1, 1]), None)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn key_hash_is_stable_per_key() {
        let mut b = BalancerState::new(Balancer::KeyHash);
        let m = loads(&[1, 1, 1, 1]);
        for k in 0..100 {
            let key = format!("customer-{k}");
            let first = b.pick(&m, Some(&key));
            for _ in 0..10 {
                assert_eq!(b.pick(&m, Some(&key)), first);
            }
        }
        assert_eq!(key_hash("a"), key_hash("a"));
        // Keys spread over members.
        let used: std::collections::HashSet<usize> = (0..100)
            .map(|k| b.pick(&m, Some(&format!("k{k}"))))
            .collect();
        assert_eq!(used.len(), 4);
    }

    #[test]
    fn key_hash_spreads_evenly_over_few_members() {
        let mut b = BalancerState::new(Balancer::KeyHash);
        for n in [2usize, 3, 5] {
            let m = loads(&vec![1; n]);
            let mut counts = vec![0usize; n];
            for k in 0..3000 {
                counts[b.pick(&m, Some(&format!("customer-{k}")))] += 1;
            }
            let expected = 3000 / n;
            for c in &counts {
                assert!(c.abs_diff(expected) < expected / 10, "n={n}: {counts:?}");
            }
        }
    }

    #[test]
    fn least_loaded_prefers_idle_members() {
        let mut b = BalancerState::new(Balancer::LeastLoaded);
        let m = [
            MemberLoad {
                weight: 1,
                in_flight: 3,
            },
            MemberLoad {
                weight: 1,
                in_flight: 0,
            },
            MemberLoad {
                weight: 1,
                in_flight: 2,
            },
        ];
        for _ in 0..5 {
            assert_eq!(b.pick(&m, None), 1);
        }
    }
}
