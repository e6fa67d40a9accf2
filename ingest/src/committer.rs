//! Group commit: concurrent requests share log appends. One task owns the
//! producer; chunks that queued up while it was busy go out together in
//! the next append, so throughput does not hinge on request size. A group
//! is formed as soon as the write before it started and prepared (the
//! embedded log partitions and compresses it) while that write runs;
//! chunks arriving after it formed go into the group after it.

use spendstream_log::{LogProducer, Record};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, warn};

/// Why an append was not confirmed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AppendError {
    #[error("the log refused the append")]
    Log(#[source] Arc<spendstream_log::Error>),
    #[error("the log did not confirm the append within {0:?}")]
    Timeout(Duration),
    #[error("the committer has stopped")]
    Stopped,
}

impl AppendError {
    /// A short fixed word for the `error_type` label of
    /// `spendstream_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            AppendError::Log(e) => e.kind(),
            AppendError::Timeout(_) => "timeout",
            AppendError::Stopped => "stopped",
        }
    }
}

struct Job {
    records: Vec<Record>,
    reply: oneshot::Sender<Result<usize, AppendError>>,
}

/// A handle to the group-commit task.
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Committer")
    }
}

impl Committer {
    /// Starts the task. It ends when every handle is dropped.
    pub fn spawn(producer: Arc<dyn LogProducer>, max_records: usize, timeout: Duration) -> Self {
        let (tx, rx) = mpsc::channel::<Job>(1024);
        tokio::spawn(run(producer, rx, max_records, timeout));
        Self { tx }
    }

    /// Appends `records` durably; resolves once the log confirmed all of them
    /// (or none is claimed).
    pub async fn append(&self, records: Vec<Record>) -> Result<usize, AppendError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { records, reply })
            .await
            .map_err(|_| AppendError::Stopped)?;
        rx.await.map_err(|_| AppendError::Stopped)?
    }
}

async fn run(
    producer: Arc<dyn LogProducer>,
    mut rx: mpsc::Receiver<Job>,
    max_records: usize,
    timeout: Duration,
) {
    // The write of the group before: the next group is prepared meanwhile
    // and written after it ended, so the log takes groups in the order
    // they came. (A write that timed out is not waited for: the next one
    // may then reach the log first, as before writes were pipelined.)
    let mut writing: Option<tokio::task::JoinHandle<()>> = None;
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        let mut total = jobs[0].records.len();
        while total < max_records {
            match rx.try_recv() {
                Ok(job) => {
                    total += job.records.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let mut sizes = Vec::with_capacity(jobs.len());
        let mut replies = Vec::with_capacity(jobs.len());
        let mut records = Vec::with_capacity(total);
        for job in jobs {
            sizes.push(job.records.len());
            replies.push(job.reply);
            records.extend(job.records);
        }
        let group = Group {
            replies,
            sizes,
            total,
        };
        let preparing = Instant::now();
        let prepared = match tokio::time::timeout(timeout, producer.prepare(records)).await {
            Ok(Ok(prepared)) => prepared,
            // Nothing was written: answered at once, without waiting for
            // the write before.
            Ok(Err(e)) => {
                group.answer(Err(AppendError::Log(Arc::new(e))), preparing.elapsed());
                continue;
            }
            Err(_) => {
                group.answer(Err(AppendError::Timeout(timeout)), preparing.elapsed());
                continue;
            }
        };
        if let Some(before) = writing.take() {
            joined(before.await);
        }
        let producer = producer.clone();
        writing = Some(tokio::spawn(async move {
            // Timed from the write's start, as before writes were
            // pipelined: waiting behind another group is not held
            // against this one.
            let started = Instant::now();
            let result =
                match tokio::time::timeout(timeout, producer.append_prepared(prepared)).await {
                    Ok(Ok(_positions)) => Ok(()),
                    Ok(Err(e)) => Err(AppendError::Log(Arc::new(e))),
                    Err(_) => Err(AppendError::Timeout(timeout)),
                };
            group.answer(result, started.elapsed());
        }));
    }
    if let Some(last) = writing {
        joined(last.await);
    }
}

/// The requests of one append: who to answer, and with how many records.
struct Group {
    replies: Vec<oneshot::Sender<Result<usize, AppendError>>>,
    sizes: Vec<usize>,
    total: usize,
}

impl Group {
    /// Answers every request of the group with `result`, which took
    /// `seconds` (the write; the preparation when that failed).
    fn answer(self, result: Result<(), AppendError>, seconds: Duration) {
        metrics::histogram!(crate::metrics::LOG_APPEND_SECONDS.name).record(seconds.as_secs_f64());
        metrics::histogram!(crate::metrics::LOG_APPEND_RECORDS.name).record(self.total as f64);
        if let Err(error) = &result {
            spendstream_schemas::metrics::error("log_append", error.kind());
            warn!(error = %spendstream_schemas::error::Chain(error), records = self.total, "Log append failed.");
        }
        for (reply, n) in self.replies.into_iter().zip(self.sizes) {
            let _ = reply.send(result.clone().map(|()| n));
        }
    }
}

/// A write task that panicked left its requests unanswered (they see the
/// committer as stopped): said once here, where it happened.
fn joined(outcome: Result<(), tokio::task::JoinError>) {
    if let Err(e) = outcome {
        spendstream_schemas::metrics::error("log_append", "panic");
        error!(error = %e, "A log append task failed; its requests were not confirmed.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use spendstream_log::Position;
    use std::sync::Mutex;
    use tokio::sync::Semaphore;

    /// Records the size of each append; the first one waits for a permit so
    /// that others queue up behind it.
    struct Gated {
        calls: Mutex<Vec<usize>>,
        gate: Semaphore,
    }

    #[async_trait]
    impl LogProducer for Gated {
        async fn append(&self, records: Vec<Record>) -> spendstream_log::Result<Vec<Position>> {
            let first = {
                let mut calls = self.calls.lock().unwrap();
                calls.push(records.len());
                calls.len() == 1
            };
            if first {
                let _permit = self.gate.acquire().await;
            }
            Ok(positions(records.len()))
        }
    }

    fn positions(n: usize) -> Vec<Position> {
        vec![
            Position {
                partition: 0,
                offset: 0
            };
            n
        ]
    }

    type Reply = oneshot::Receiver<Result<usize, AppendError>>;

    /// A committer over `producer`; the function returned queues a
    /// request of `n` records and gives its answer to come.
    fn start(producer: Arc<dyn LogProducer>, timeout: Duration) -> impl Fn(usize) -> Reply {
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(run(producer, rx, 1000, timeout));
        move |n| {
            let (reply, rx) = oneshot::channel();
            tx.try_send(Job {
                records: records(n),
                reply,
            })
            .unwrap();
            rx
        }
    }

    /// Yields until `done`, failing after 10 s with `what`.
    async fn until(what: &str, done: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            tokio::task::yield_now().await;
        }
    }

    fn records(n: usize) -> Vec<Record> {
        vec![
            Record {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                headers: Default::default(),
            };
            n
        ]
    }

    #[tokio::test]
    async fn requests_waiting_behind_an_append_share_the_next_one() {
        let producer = Arc::new(Gated {
            calls: Mutex::new(Vec::new()),
            gate: Semaphore::new(0),
        });
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(run(producer.clone(), rx, 1000, Duration::from_secs(10)));
        let job = |n| {
            let (reply, rx) = oneshot::channel();
            (
                Job {
                    records: records(n),
                    reply,
                },
                rx,
            )
        };
        let (first, first_rx) = job(10);
        tx.send(first).await.unwrap();
        until("the first append never started", || {
            !producer.calls.lock().unwrap().is_empty()
        })
        .await;
        let mut waiting = Vec::new();
        for n in [1, 2, 3, 4, 5] {
            let (j, rx) = job(n);
            tx.send(j).await.unwrap();
            waiting.push((n, rx));
        }
        producer.gate.add_permits(1);
        assert_eq!(first_rx.await.unwrap().unwrap(), 10);
        for (n, rx) in waiting {
            assert_eq!(rx.await.unwrap().unwrap(), n);
        }
        assert_eq!(*producer.calls.lock().unwrap(), vec![10, 15]);
    }

    /// Logs what it is asked; the first write waits for a permit.
    struct Staged {
        events: Mutex<Vec<String>>,
        gate: Semaphore,
    }

    #[async_trait]
    impl LogProducer for Staged {
        async fn append(&self, _: Vec<Record>) -> spendstream_log::Result<Vec<Position>> {
            unreachable!("the committer prepares every append")
        }

        async fn prepare(
            &self,
            records: Vec<Record>,
        ) -> spendstream_log::Result<spendstream_log::Prepared> {
            let event = format!("prepare {}", records.len());
            self.events.lock().unwrap().push(event);
            Ok(spendstream_log::Prepared::records(records))
        }

        async fn append_prepared(
            &self,
            prepared: spendstream_log::Prepared,
        ) -> spendstream_log::Result<Vec<Position>> {
            let first = {
                let mut events = self.events.lock().unwrap();
                events.push(format!("write {}", prepared.len()));
                events.iter().filter(|e| e.starts_with("write")).count() == 1
            };
            if first {
                let _permit = self.gate.acquire().await;
                self.events.lock().unwrap().push("written".into());
            }
            Ok(positions(prepared.len()))
        }
    }

    /// The next append is prepared while the one before is written, and
    /// written only after it: the log takes them in the order they came.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_next_append_is_prepared_during_a_write_and_written_after_it() {
        let producer = Arc::new(Staged {
            events: Mutex::new(Vec::new()),
            gate: Semaphore::new(0),
        });
        let send = start(producer.clone(), Duration::from_secs(10));
        let wait_for = |event: &'static str| {
            let producer = producer.clone();
            async move {
                let no = format!("no `{event}`");
                until(&no, || {
                    producer.events.lock().unwrap().iter().any(|e| e == event)
                })
                .await;
            }
        };
        let first = send(1);
        wait_for("write 1").await;
        let second = send(2);
        wait_for("prepare 2").await;
        assert_eq!(
            *producer.events.lock().unwrap(),
            ["prepare 1", "write 1", "prepare 2"],
            "the second is prepared, not written, while the first is held"
        );
        producer.gate.add_permits(1);
        assert_eq!(first.await.unwrap().unwrap(), 1);
        assert_eq!(second.await.unwrap().unwrap(), 2);
        assert_eq!(
            *producer.events.lock().unwrap(),
            ["prepare 1", "write 1", "prepare 2", "written", "write 2"]
        );
    }

    /// What a [`Scripted`] producer does with the append of `n` records.
    #[derive(Clone, Copy)]
    enum Script {
        /// Prepared and written at once.
        Ok,
        /// Its preparation fails.
        PrepareFails,
        /// Its write waits for a permit of the gate.
        Gated,
        /// Its write never ends.
        Hangs,
        /// Its write panics.
        Panics,
    }

    /// Does with each append what the script says for its record count.
    struct Scripted {
        script: fn(usize) -> Script,
        gate: Semaphore,
        writes_started: std::sync::atomic::AtomicUsize,
    }

    #[async_trait]
    impl LogProducer for Scripted {
        async fn append(&self, _: Vec<Record>) -> spendstream_log::Result<Vec<Position>> {
            unreachable!("the committer prepares every append")
        }

        async fn prepare(
            &self,
            records: Vec<Record>,
        ) -> spendstream_log::Result<spendstream_log::Prepared> {
            match (self.script)(records.len()) {
                Script::PrepareFails => Err(spendstream_log::Error::ForeignAppend),
                _ => Ok(spendstream_log::Prepared::records(records)),
            }
        }

        async fn append_prepared(
            &self,
            prepared: spendstream_log::Prepared,
        ) -> spendstream_log::Result<Vec<Position>> {
            self.writes_started
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            match (self.script)(prepared.len()) {
                Script::Gated => drop(self.gate.acquire().await),
                Script::Hangs => std::future::pending::<()>().await,
                Script::Panics => panic!("a write that panics"),
                Script::Ok | Script::PrepareFails => {}
            }
            Ok(positions(prepared.len()))
        }
    }

    fn scripted(
        script: fn(usize) -> Script,
        timeout: Duration,
    ) -> (Arc<Scripted>, impl Fn(usize) -> Reply) {
        let producer = Arc::new(Scripted {
            script,
            gate: Semaphore::new(0),
            writes_started: Default::default(),
        });
        let send = start(producer.clone(), timeout);
        (producer, send)
    }

    /// A group whose preparation failed wrote nothing: it is answered at
    /// once, not after the write before it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_preparation_is_answered_without_waiting_for_the_write_before() {
        let (producer, send) = scripted(
            |n| {
                if n == 1 {
                    Script::Gated
                } else {
                    Script::PrepareFails
                }
            },
            Duration::from_secs(30),
        );
        let mut first = send(1);
        until("no write started", || {
            producer
                .writes_started
                .load(std::sync::atomic::Ordering::SeqCst)
                > 0
        })
        .await;
        let second = send(2);
        let answered = tokio::time::timeout(Duration::from_secs(10), second).await;
        let answer = answered.expect("answered while the write before is held");
        assert!(matches!(answer.unwrap(), Err(AppendError::Log(_))));
        assert!(first.try_recv().is_err(), "the first write is still held");
        producer.gate.add_permits(1);
        assert_eq!(first.await.unwrap().unwrap(), 1);
    }

    /// A write past the append timeout is answered as a timeout, and the
    /// groups after it are written: a log that hangs costs each group its
    /// own timeout, not the committer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_that_hangs_times_out_and_the_next_group_is_written() {
        let (_producer, send) = scripted(
            |n| if n == 1 { Script::Hangs } else { Script::Ok },
            Duration::from_millis(200),
        );
        let first = send(1);
        assert!(matches!(first.await.unwrap(), Err(AppendError::Timeout(_))));
        let next = tokio::time::timeout(Duration::from_secs(10), send(2)).await;
        assert_eq!(
            next.expect("the hung write held the next one")
                .unwrap()
                .unwrap(),
            2
        );
    }

    /// A write that panics leaves its requests unconfirmed (they see the
    /// committer as stopped, a 503), and the committer goes on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_that_panics_fails_its_group_only() {
        let (_producer, send) = scripted(
            |n| if n == 1 { Script::Panics } else { Script::Ok },
            Duration::from_secs(30),
        );
        let first = send(1);
        assert!(first.await.is_err(), "no answer from a panicked write");
        assert_eq!(send(2).await.unwrap().unwrap(), 2);
    }
}
