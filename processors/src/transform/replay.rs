//! Replay detection: drops log entries the lake already holds. The lake
//! records, per log partition, the last offset committed (a Delta
//! application transaction); anything at or below it was written before a
//! crash or a rebalance and must not be written again. (Versions of one
//! expense are not deduplicated here: each is a row; reports take the
//! latest.)

use spendstream_log::{Consumed, Partition};
use std::collections::BTreeMap;

/// The application transaction id of one partition of one log, for one
/// group. The log's identity is part of it: offsets of a wiped, recreated
/// or other log start again at 0 and must not be taken for replays of
/// what the old one held.
pub fn app_id(group: &str, log_id: &str, partition: Partition) -> String {
    format!("{group}-{log_id}-{partition}")
}

/// Keeps the entries above each partition's committed version; returns how
/// many were dropped.
pub fn drop_committed(entries: &mut Vec<Consumed>, committed: &BTreeMap<Partition, i64>) -> usize {
    let before = entries.len();
    entries.retain(|e| committed.get(&e.partition).is_none_or(|v| e.offset > *v));
    before - entries.len()
}

/// The highest offset of each partition in `entries`.
pub fn last_offsets(entries: &[Consumed]) -> BTreeMap<Partition, i64> {
    let mut out = BTreeMap::new();
    for e in entries {
        let slot = out.entry(e.partition).or_insert(e.offset);
        *slot = (*slot).max(e.offset);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(partition: u32, offset: i64) -> Consumed {
        Consumed {
            partition,
            offset,
            key: Default::default(),
            value: Default::default(),
            headers: Default::default(),
            timestamp_ms: 0,
        }
    }

    #[test]
    fn drops_only_what_the_lake_has() {
        let mut entries = vec![c(0, 4), c(0, 5), c(0, 6), c(1, 0), c(2, 9)];
        let committed = BTreeMap::from([(0, 5), (2, 8)]);
        assert_eq!(drop_committed(&mut entries, &committed), 2);
        assert_eq!(entries, vec![c(0, 6), c(1, 0), c(2, 9)]);
        assert_eq!(
            last_offsets(&entries),
            BTreeMap::from([(0, 6), (1, 0), (2, 9)])
        );
    }

    #[test]
    fn app_ids_differ_per_log() {
        assert_ne!(app_id("g", "log-a", 0), app_id("g", "log-b", 0));
        assert_ne!(app_id("g", "a", 1), app_id("g", "a", 11));
    }
}
