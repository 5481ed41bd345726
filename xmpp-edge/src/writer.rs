//! The write side of a connection: one task owns the write half and writes
//! what it is given, in order, coalescing whatever is queued into one
//! write.
//!
//! Two bounds keep a peer that does not read from costing us memory or a
//! task forever: the queue is bounded in *bytes* (the connection's reader
//! stops reading, and so stops producing answers, while the queue is over
//! its bound: [`Writer::wait_for_room`]), and every write must finish
//! within the write timeout, or the writer gives up and the connection is
//! closed.

use crate::conn::BoxIo;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncWriteExt, WriteHalf};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

/// Commands for the writer task.
enum Cmd {
    Data(String),
    /// Write what is queued, then shut the stream down.
    Close,
}

/// State shared with the writer task.
#[derive(Default)]
struct Shared {
    queued: AtomicUsize,
    dead: AtomicBool,
    timed_out: AtomicBool,
    drained: Notify,
}

/// A connection's writer (see the module docs).
pub struct Writer {
    tx: mpsc::UnboundedSender<Cmd>,
    shared: Arc<Shared>,
    max_bytes: usize,
    handle: JoinHandle<Option<WriteHalf<BoxIo>>>,
}

impl Writer {
    /// Starts the task owning `w`.
    pub fn spawn(mut w: WriteHalf<BoxIo>, max_bytes: usize, write_timeout: Duration) -> Writer {
        let (tx, mut rx) = mpsc::unbounded_channel::<Cmd>();
        let shared = Arc::new(Shared::default());
        let task_shared = shared.clone();
        let handle = tokio::spawn(async move {
            let shared = task_shared;
            while let Some(cmd) = rx.recv().await {
                let mut buf = Vec::new();
                let mut close = false;
                let mut next = Some(cmd);
                while let Some(c) = next.take() {
                    match c {
                        Cmd::Data(s) => buf.extend_from_slice(s.as_bytes()),
                        Cmd::Close => {
                            close = true;
                            break;
                        }
                    }
                    next = rx.try_recv().ok();
                }
                let n = buf.len();
                let wrote = tokio::time::timeout(write_timeout, async {
                    w.write_all(&buf).await?;
                    w.flush().await
                })
                .await;
                shared.queued.fetch_sub(n, Ordering::AcqRel);
                shared.drained.notify_waiters();
                if wrote.is_err() {
                    shared.timed_out.store(true, Ordering::Release);
                }
                let ok = matches!(wrote, Ok(Ok(())));
                if close || !ok {
                    if ok {
                        let _ = tokio::time::timeout(write_timeout, w.shutdown()).await;
                    } else {
                        tracing::debug!("write failed or timed out: closing");
                    }
                    shared.dead.store(true, Ordering::Release);
                    shared.drained.notify_waiters();
                    return None;
                }
            }
            Some(w)
        });
        Writer {
            tx,
            shared,
            max_bytes,
            handle,
        }
    }

    /// Queues `s`; false when the writer has given up.
    pub fn write(&self, s: String) -> bool {
        if self.is_dead() {
            return false;
        }
        let n = s.len();
        self.shared.queued.fetch_add(n, Ordering::AcqRel);
        if self.tx.send(Cmd::Data(s)).is_err() {
            self.shared.queued.fetch_sub(n, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Bytes waiting to be written.
    pub fn queued(&self) -> usize {
        self.shared.queued.load(Ordering::Acquire)
    }

    /// Whether a write failed or timed out (the connection is to close).
    pub fn is_dead(&self) -> bool {
        self.shared.dead.load(Ordering::Acquire)
    }

    /// Whether a write did not finish within the write timeout.
    pub fn timed_out(&self) -> bool {
        self.shared.timed_out.load(Ordering::Acquire)
    }

    /// Waits until the queue is within its bound (true) or the writer has
    /// given up (false).
    pub async fn wait_for_room(&self) -> bool {
        loop {
            let notified = self.shared.drained.notified();
            if self.is_dead() {
                return false;
            }
            if self.queued() <= self.max_bytes {
                return true;
            }
            notified.await;
        }
    }

    /// Writes what is queued, then shuts the stream down (bounded by the
    /// write timeout); waits for that.
    pub async fn close(self) {
        let _ = self.tx.send(Cmd::Close);
        drop(self.tx);
        let _ = self.handle.await;
    }

    /// Waits until everything queued is written and hands the write half
    /// back (for STARTTLS and stream restarts); `None` if writing failed.
    pub async fn finish(self) -> Option<WriteHalf<BoxIo>> {
        drop(self.tx);
        self.handle.await.ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer that never reads: the queue grows past its bound (the
    /// reader is told to wait), then the write times out and the writer
    /// gives up, waking whoever waits for room.
    #[tokio::test]
    async fn a_peer_that_never_reads_is_given_up_on() {
        let (ours, _theirs) = tokio::io::duplex(1024);
        let (_r, w) = tokio::io::split(Box::new(ours) as BoxIo);
        let writer = Writer::spawn(w, 4096, Duration::from_millis(300));
        for _ in 0..10 {
            assert!(writer.write("x".repeat(1000)));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(writer.queued() > 4096, "stuck: {}", writer.queued());
        let t = tokio::time::Instant::now();
        assert!(!writer.wait_for_room().await, "no room ever comes");
        assert!(t.elapsed() >= Duration::from_millis(200));
        assert!(writer.is_dead() && writer.timed_out());
        assert!(!writer.write("more".into()), "nothing is queued after");
    }

    #[tokio::test]
    async fn a_reading_peer_gets_everything_in_order() {
        use tokio::io::AsyncReadExt;
        let (ours, mut theirs) = tokio::io::duplex(64);
        let (_r, w) = tokio::io::split(Box::new(ours) as BoxIo);
        let writer = Writer::spawn(w, 4096, Duration::from_secs(5));
        let reading = tokio::spawn(async move {
            let mut got = String::new();
            let _ = theirs.read_to_string(&mut got).await;
            got
        });
        for i in 0..100 {
            writer.write(format!("<{i}/>"));
        }
        writer.close().await;
        let got = reading.await.unwrap();
        let want: String = (0..100).map(|i| format!("<{i}/>")).collect();
        assert_eq!(got, want);
    }
}
