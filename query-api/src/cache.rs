//! Computed report answers kept per (table version, tenant, query), so the
//! pages after the first, and repeated reports on an unchanged table, read
//! rows from memory instead of recomputing the whole report.
//!
//! Bounded by the number of rows held (an empty answer counts as one) and
//! by a number of answers: the least recently used answers are dropped
//! first, and an answer larger than the whole budget is not kept.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The cache key: the table version an answer read, and who asked what.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub version: u64,
    pub tenant: String,
    pub query: u64,
}

#[derive(Debug)]
struct Entry<T> {
    rows: Arc<Vec<T>>,
    used: u64,
}

#[derive(Debug)]
struct Inner<T> {
    entries: HashMap<Key, Entry<T>>,
    rows: usize,
    clock: u64,
}

/// A least-recently-used map of answers, bounded by their total row count.
#[derive(Debug)]
pub struct AnswerCache<T> {
    inner: Mutex<Inner<T>>,
    max_rows: usize,
}

/// The most answers kept, whatever their size: eviction scans them.
pub const MAX_ANSWERS: usize = 4096;

/// The rows an answer is charged for.
fn weight<T>(rows: &[T]) -> usize {
    rows.len().max(1)
}

impl<T> AnswerCache<T> {
    /// A cache holding at most `max_rows` rows over all its answers (0
    /// keeps nothing).
    pub fn new(max_rows: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                rows: 0,
                clock: 0,
            }),
            max_rows,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<T>> {
        // A panic while holding the lock leaves consistent data behind
        // (every update is a single insert or remove), so go on.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The answer stored under `key`, marked as recently used.
    pub fn get(&self, key: &Key) -> Option<Arc<Vec<T>>> {
        let mut inner = self.lock();
        inner.clock += 1;
        let now = inner.clock;
        let entry = inner.entries.get_mut(key)?;
        entry.used = now;
        metrics::counter!(crate::metrics::REPORT_CACHE_HITS_TOTAL.name).increment(1);
        Some(entry.rows.clone())
    }

    /// Stores `rows` under `key`, dropping the least recently used answers
    /// until the budget holds.
    pub fn insert(&self, key: Key, rows: Arc<Vec<T>>) {
        if weight(&rows) > self.max_rows {
            return;
        }
        let mut inner = self.lock();
        inner.clock += 1;
        let used = inner.clock;
        inner.rows += weight(&rows);
        if let Some(old) = inner.entries.insert(key, Entry { rows, used }) {
            inner.rows -= weight(&old.rows);
        }
        while inner.rows > self.max_rows || inner.entries.len() > MAX_ANSWERS {
            let Some(oldest) = inner
                .entries
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(gone) = inner.entries.remove(&oldest) {
                inner.rows -= weight(&gone.rows);
            }
        }
    }

    /// The rows held over all answers.
    pub fn rows(&self) -> usize {
        self.lock().rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(version: u64, query: u64) -> Key {
        Key {
            version,
            tenant: "acme".into(),
            query,
        }
    }

    #[test]
    fn keeps_recent_answers_within_the_row_budget() {
        let cache = AnswerCache::new(10);
        cache.insert(key(1, 1), Arc::new(vec![0; 4]));
        cache.insert(key(1, 2), Arc::new(vec![0; 4]));
        // Touch the first: the second is now the oldest.
        assert!(cache.get(&key(1, 1)).is_some());
        cache.insert(key(1, 3), Arc::new(vec![0; 4]));
        assert!(cache.get(&key(1, 2)).is_none());
        assert!(cache.get(&key(1, 1)).is_some());
        assert!(cache.get(&key(1, 3)).is_some());
        assert_eq!(cache.rows(), 8);
        // Another version or tenant is another answer.
        assert!(cache.get(&key(2, 1)).is_none());
        let other = Key {
            tenant: "globex".into(),
            ..key(1, 1)
        };
        assert!(cache.get(&other).is_none());
        // Too large to keep at all.
        cache.insert(key(1, 4), Arc::new(vec![0; 11]));
        assert!(cache.get(&key(1, 4)).is_none());
        assert_eq!(cache.rows(), 8);
        // Replacing an answer counts its rows once.
        cache.insert(key(1, 1), Arc::new(vec![0; 2]));
        assert_eq!(cache.rows(), 6);
        // Empty answers count as one row each, so they cannot pile up.
        for query in 100..200 {
            cache.insert(key(1, query), Arc::new(Vec::new()));
        }
        assert!(cache.rows() <= 10);
        // A cache of no rows keeps nothing, not even empty answers.
        let none = AnswerCache::<u8>::new(0);
        none.insert(key(1, 1), Arc::new(Vec::new()));
        assert!(none.get(&key(1, 1)).is_none());
    }

    #[test]
    fn keeps_at_most_max_answers() {
        let cache = AnswerCache::new(usize::MAX);
        for query in 0..(MAX_ANSWERS as u64 + 10) {
            cache.insert(key(1, query), Arc::new(vec![0u8]));
        }
        assert_eq!(cache.rows(), MAX_ANSWERS);
        assert!(cache.get(&key(1, 0)).is_none());
    }
}
