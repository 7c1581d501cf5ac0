//! Live events of a node or a hub (issue 16): every state change a client may want to hear
//! of (an invoice paid, a payment finished, an instance started), numbered in order.
//!
//! - [`EventLog`]: the numbered log. The last [`EventLog::capacity`] events are kept in memory
//!   and appended to a file (one JSON object per line), so a restarted daemon goes on with
//!   the next number and still serves recent history.
//! - [`Subscription`]: what a stream serves. It starts after a cursor (the last sequence
//!   number the client has seen): first the kept events after it, then live ones, with no
//!   gap and no duplicate. A subscriber that falls behind is told where to resume instead of
//!   being buffered without bound.
//! - [`webhook`]: each event POSTed to a URL, signed with HMAC-SHA256, retried with
//!   back-off, in order, from a cursor of its own.
//!
//! The events are derived data, not funds: the file is written without fsync (it survives a
//! killed daemon, not a lost machine), and nothing a remote peer does makes the log grow
//! beyond its capacity.

pub mod webhook;

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// One event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// 1, 2, 3, … with no gap: the cursor a client resumes from.
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// What happened, dotted: `invoice.paid`, `payment.succeeded`, `instance.started`, …
    pub kind: String,
    pub data: serde_json::Value,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventError {
    /// The events after the cursor are no longer kept: the client must resync its state
    /// (list invoices, statuses) and subscribe from `oldest - 1`.
    #[error("events after {cursor} are no longer kept (the oldest kept is {oldest}): resync, then resume from {}", .oldest - 1)]
    CursorTooOld { cursor: u64, oldest: u64 },
    #[error("cursor {cursor} is ahead of the last event, {last}")]
    CursorAhead { cursor: u64, last: u64 },
    #[error("the event log was closed")]
    Closed,
}

/// Live events buffered per subscriber before it counts as lagging.
const LIVE_BUFFER: usize = 4_096;

#[derive(Debug)]
struct Inner {
    kept: VecDeque<Event>,
    next_seq: u64,
    file: Option<(PathBuf, std::fs::File)>,
    lines_in_file: usize,
}

/// The numbered event log of one daemon.
#[derive(Debug)]
pub struct EventLog {
    inner: Mutex<Inner>,
    live: broadcast::Sender<Event>,
    capacity: usize,
}

impl EventLog {
    /// A log kept in memory only (tests, benchmarks).
    pub fn in_memory(capacity: usize) -> Arc<Self> {
        Arc::new(Self::new(
            Inner { kept: VecDeque::new(), next_seq: 1, file: None, lines_in_file: 0 },
            capacity,
        ))
    }

    /// The log at `path`: its last `capacity` events are read back, numbering goes on after
    /// the last one. A torn last line (a crash mid-write) is dropped.
    pub fn open(path: &Path, capacity: usize) -> std::io::Result<Arc<Self>> {
        let mut kept = VecDeque::new();
        let mut lines = 0;
        let mut last_seq = 0;
        if let Ok(f) = std::fs::File::open(path) {
            for line in std::io::BufReader::new(f).lines() {
                let Ok(event) = serde_json::from_str::<Event>(&line?) else { continue };
                // Only ever increasing: a line out of order is not this log's.
                if event.seq <= last_seq {
                    continue;
                }
                last_seq = event.seq;
                lines += 1;
                kept.push_back(event);
                if kept.len() > capacity {
                    kept.pop_front();
                }
            }
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        let mut log = Self::new(
            Inner {
                kept,
                next_seq: last_seq + 1,
                file: Some((path.to_path_buf(), file)),
                lines_in_file: lines,
            },
            capacity,
        );
        // A file far longer than what is kept is rewritten at once.
        log.compact_if_due()?;
        Ok(Arc::new(log))
    }

    fn new(inner: Inner, capacity: usize) -> Self {
        let (live, _) = broadcast::channel(LIVE_BUFFER);
        EventLog { inner: Mutex::new(inner), live, capacity: capacity.max(1) }
    }

    /// How many events are kept for subscribers that resume.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The last sequence number given out (0: none yet).
    pub fn last_seq(&self) -> u64 {
        self.lock().next_seq - 1
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends an event (numbered next) and hands it to every live subscriber.
    pub fn append(&self, kind: &str, data: serde_json::Value, at_ms: u64) -> Event {
        let mut inner = self.lock();
        let event = Event { seq: inner.next_seq, at_ms, kind: kind.to_string(), data };
        inner.next_seq += 1;
        if let Some((path, file)) = &mut inner.file {
            let line = serde_json::to_string(&event).expect("events serialize");
            if let Err(e) = writeln!(file, "{line}") {
                // Events are derived data: a full disk must not stop payments.
                tracing::warn!(path = %path.display(), error = %e, "event not written to the log file");
            } else {
                inner.lines_in_file += 1;
            }
        }
        inner.kept.push_back(event.clone());
        if inner.kept.len() > self.capacity {
            inner.kept.pop_front();
        }
        // Sent under the lock: a subscriber that took its backlog under the same lock sees
        // every later event live, none twice.
        let _ = self.live.send(event.clone());
        if inner.lines_in_file > 2 * self.capacity {
            drop(inner);
            if let Err(e) = self.compact() {
                tracing::warn!(error = %e, "event log not compacted");
            }
        }
        event
    }

    fn compact_if_due(&mut self) -> std::io::Result<()> {
        if self.lock().lines_in_file > 2 * self.capacity { self.compact() } else { Ok(()) }
    }

    /// Rewrites the file with the kept events only (written aside, then renamed).
    fn compact(&self) -> std::io::Result<()> {
        let mut inner = self.lock();
        let Some((path, _)) = &inner.file else { return Ok(()) };
        let path = path.clone();
        let tmp = path.with_extension("compacting");
        let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        for e in &inner.kept {
            writeln!(out, "{}", serde_json::to_string(e).expect("events serialize"))?;
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        let file = std::fs::OpenOptions::new().append(true).open(&path)?;
        inner.lines_in_file = inner.kept.len();
        inner.file = Some((path, file));
        Ok(())
    }

    /// The events after `cursor` (0: from the oldest kept), then every live one.
    pub fn subscribe(self: &Arc<Self>, cursor: u64) -> Result<Subscription, EventError> {
        let inner = self.lock();
        let last = inner.next_seq - 1;
        if cursor > last {
            return Err(EventError::CursorAhead { cursor, last });
        }
        let oldest = inner.kept.front().map_or(inner.next_seq, |e| e.seq);
        let cursor = if cursor == 0 { oldest - 1 } else { cursor };
        if cursor + 1 < oldest {
            return Err(EventError::CursorTooOld { cursor, oldest });
        }
        // Subscribed under the lock appends take: every event after `last` reaches it.
        let live = self.live.subscribe();
        drop(inner);
        Ok(Subscription { log: self.clone(), live, last: cursor, page: VecDeque::new() })
    }

    /// Up to `max` kept events after `cursor`, or why they are gone.
    fn page_after(&self, cursor: u64, max: usize) -> Result<VecDeque<Event>, EventError> {
        let inner = self.lock();
        let Some(oldest) = inner.kept.front().map(|e| e.seq) else { return Ok(VecDeque::new()) };
        if cursor + 1 < oldest {
            return Err(EventError::CursorTooOld { cursor, oldest });
        }
        // Sequence numbers are dense: the event after `cursor` sits at a known offset.
        let start = (cursor + 1 - oldest) as usize;
        Ok(inner.kept.iter().skip(start).take(max).cloned().collect())
    }
}

/// Kept events a subscriber copies at a time while it catches up.
const PAGE: usize = 256;

/// A subscriber's view: kept events after its cursor, then live ones. Catching up reads the
/// log a page at a time, so a subscriber far behind holds a page, not the history.
#[derive(Debug)]
pub struct Subscription {
    log: Arc<EventLog>,
    live: broadcast::Receiver<Event>,
    /// The last sequence number handed out.
    last: u64,
    page: VecDeque<Event>,
}

impl Subscription {
    /// The next event, in order, none skipped or repeated. `CursorTooOld` if the subscriber
    /// fell so far behind that the log no longer keeps what comes next.
    pub async fn next(&mut self) -> Result<Event, EventError> {
        loop {
            if let Some(e) = self.page.pop_front() {
                self.last = e.seq;
                return Ok(e);
            }
            self.page = self.log.page_after(self.last, PAGE)?;
            if !self.page.is_empty() {
                continue;
            }
            // Caught up with the log: wait for the next live event. One missed while the
            // live buffer overflowed is read from the log on the next turn.
            match self.live.recv().await {
                Ok(e) if e.seq == self.last + 1 => {
                    self.last = e.seq;
                    return Ok(e);
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return Err(EventError::Closed),
            }
        }
    }

    /// The last sequence number handed out: where to resume.
    pub fn cursor(&self) -> u64 {
        self.last
    }
}

/// Feeds a subscription's events of the kinds `wanted` accepts into a bounded channel, for a
/// server stream: the task ends when the receiver is dropped (the client went away) or the
/// subscription fails (the error is sent last).
pub fn forward(
    mut sub: Subscription,
    wanted: impl Fn(&str) -> bool + Send + 'static,
) -> tokio::sync::mpsc::Receiver<Result<Event, EventError>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            // A client gone while nothing happens is noticed at once, not at the next event.
            let next = tokio::select! {
                next = sub.next() => next,
                () = tx.closed() => return,
            };
            let stop = next.is_err();
            if matches!(&next, Ok(e) if !wanted(&e.kind)) {
                continue;
            }
            if tx.send(next).await.is_err() || stop {
                return;
            }
        }
    });
    rx
}
