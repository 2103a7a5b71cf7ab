//! The logical replication stream and the rules for what position may be
//! reported back to the server.
//!
//! After `START_REPLICATION` the connection is in CopyBoth mode. Every server
//! message is CopyData holding either XLogData (`'w'`: WAL start, WAL end,
//! send time, one pgoutput message) or a primary keepalive (`'k'`: WAL end,
//! send time, reply-requested flag); the client sends standby status updates
//! (`'r'`: written, flushed and applied positions, clock, reply flag). An
//! ErrorResponse can still arrive at any time.
//!
//! # Tasks
//!
//! [`LogicalStream`] splits the socket between two tasks:
//!
//! - the **reader** (`replication-reader`) frames server messages, feeds every
//!   XLogData payload and keepalive to the [`Feedback`] state machine *before*
//!   handing the event to the consumer through a bounded channel, and answers
//!   nothing itself;
//! - the **status writer** (`replication-status`) owns the write half and sends
//!   a status update whenever [`Feedback::poll_status`] says one is due: at
//!   once when a keepalive asks for a reply, soon after a confirm advances the
//!   position, and at least every `status_interval` (a third of
//!   `wal_sender_timeout`, which is read with `SHOW` before streaming; 10 s
//!   when the timeout is off).
//!
//! The consumer (apply work, lock waits, COPY) never runs on either task, so a
//! busy consumer cannot make the server's `wal_sender_timeout` fire. When the
//! consumer falls behind and the channel fills, the reader waits: unread bytes
//! back up in TCP and the server slows down, which is the intended
//! back-pressure; the status writer keeps reporting on its timer meanwhile, and
//! any status message resets the walsender's timeout whether or not it read
//! our socket's keepalive request.
//!
//! # Feedback rules
//!
//! The *flushed* position tells the server "everything before this is safe
//! with me": it advances the slot's `confirmed_flush_lsn`, after which WAL may
//! be recycled and a reconnect starts decoding there. Reporting too much loses
//! data; reporting too little pins WAL. The rules, all in [`Feedback`]:
//!
//! 1. **Only confirmed commits.** The position is only ever the end LSN of a
//!    commit that the consumer confirmed, with [`FeedbackHandle::confirm`],
//!    as durably applied. A confirm of `x` releases received commits whose end
//!    is `<= x` and the position becomes the largest of them, never `x` itself
//!    when `x` lies between commits: on reconnect the server skips every
//!    transaction whose commit lies before the confirmed position, so a
//!    position inside an unconfirmed transaction's range would lose it.
//!    A confirm never releases a commit that has not been received yet.
//! 2. **Idle advance.** When nothing received is pending (every received
//!    commit confirmed and no transaction partly received: a `'B'` opens one,
//!    a `'C'` closes it), the position may move to the WAL end of the latest
//!    keepalive. A logical walsender sends a transaction's messages when it
//!    decodes the commit record and only then moves its sent pointer, which is
//!    what the keepalive carries; the socket is ordered, so every transaction
//!    that committed before that WAL end was received before the keepalive.
//!    With all of them confirmed, nothing before it is owed. Without this
//!    rule, a database where only unpublished tables change would pin WAL
//!    forever, because no commit ever reaches us to confirm.
//! 3. **Monotonic.** The position never goes backwards: an older confirm is
//!    a no-op, and the idle advance is folded into the position as soon as it
//!    applies, so a transaction opening afterwards cannot pull it back.
//! 4. **Start.** The initial position is the start position, which
//!    [`ReplicationClient::start_replication`](super::wire::ReplicationClient::start_replication)
//!    raises to the slot's `confirmed_flush_lsn` (the server starts there
//!    anyway): it is confirmed by definition, and reporting anything lower
//!    would move the slot backwards.
//! 5. **One number.** Written, flushed and applied are all reported as the
//!    same position: pg-rekey has no use for the distinction, and reporting
//!    "written" ahead of "flushed" would only mislead monitoring.
//!
//! Consumers must confirm every commit they receive, including empty ones
//! (servers before 15 send empty BEGIN/COMMIT pairs for unrelated
//! transactions), or the idle advance never happens. Non-transactional logical
//! messages (`pg_logical_emit_message(false, …)`) arrive outside any
//! transaction and are not units of confirmation; pg-rekey uses only
//! transactional messages. These rules assume protocol version 1 (no
//! streaming of in-progress transactions).
//!
//! # Ending
//!
//! [`LogicalStream::stop`] sends a final status and CopyDone, waits for the
//! server's CopyDone, CommandComplete and ReadyForQuery, and returns the
//! [`ReplicationClient`] for further commands (such as `DROP_REPLICATION_SLOT`).
//! An ErrorResponse mid-stream becomes [`ReplicationError::Server`] with its
//! SQLSTATE (`pg_terminate_backend` gives 57P01, transient); a socket closed
//! without a message becomes [`ReplicationError::Closed`], also transient:
//! reconnect and resume from the slot, which restarts at the last position
//! reported, so nothing confirmed is delivered again and nothing unconfirmed
//! is lost.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

pub use super::wire::StartOptions;
use super::wire::{log_notice, server_error, BoxedStream, Cursor, FrameReader, ReplicationClient};
use super::ReplicationError;
use crate::pg::Lsn;

impl ReplicationClient {
    /// `START_REPLICATION SLOT slot LOGICAL start (proto_version '1',
    /// publication_names '…', messages 'true')` and hand the connection to a
    /// [`LogicalStream`].
    ///
    /// Before starting, `SHOW wal_sender_timeout` fixes the status interval
    /// and the slot's `confirmed_flush_lsn` is read: the server starts from
    /// the later of the two positions, and the stream's initial reported
    /// position is that one (so feedback never moves the slot backwards).
    /// (Defined here, not in [`super::wire`], so that the walsender client
    /// does not depend on the stream built over it.)
    pub async fn start_replication(
        mut self,
        slot: &str,
        start: Lsn,
        publications: &[String],
        options: StartOptions,
    ) -> Result<LogicalStream, ReplicationError> {
        let (effective, timeout) = self
            .start_copy_both(slot, start, publications, &options)
            .await?;
        Ok(LogicalStream::spawn(
            self,
            slot.to_string(),
            effective,
            timeout,
            options,
        ))
    }
}

/// One XLogData message: a pgoutput message and where it sits in the WAL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XLogData {
    /// WAL position of the message's start.
    pub wal_start: Lsn,
    /// The server's WAL end when it sent this.
    pub wal_end: Lsn,
    /// Server clock at sending, microseconds since 2000-01-01 UTC.
    pub send_time: i64,
    /// One pgoutput message (decode with `pgoutput::decode`).
    pub payload: Bytes,
}

/// A server message inside CopyData.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationMessage {
    /// `'w'`.
    XLogData(XLogData),
    /// `'k'`.
    Keepalive {
        /// The server's WAL end (its sent pointer, for a logical walsender).
        wal_end: Lsn,
        /// Server clock, microseconds since 2000-01-01 UTC.
        send_time: i64,
        /// The server wants a status update now.
        reply_requested: bool,
    },
}

/// Parse a CopyData body from the walsender.
pub fn parse_copy_data(body: Bytes) -> Result<ReplicationMessage, ReplicationError> {
    let mut c = Cursor::new(&body, "CopyData");
    match c.u8()? {
        b'w' => {
            let wal_start = Lsn(c.u64()?);
            let wal_end = Lsn(c.u64()?);
            let send_time = c.i64()?;
            Ok(ReplicationMessage::XLogData(XLogData {
                wal_start,
                wal_end,
                send_time,
                payload: body.slice(25..),
            }))
        }
        b'k' => {
            let wal_end = Lsn(c.u64()?);
            let send_time = c.i64()?;
            let reply_requested = c.u8()? != 0;
            Ok(ReplicationMessage::Keepalive {
                wal_end,
                send_time,
                reply_requested,
            })
        }
        other => Err(ReplicationError::Protocol(format!(
            "unknown replication message type {:?} in CopyData",
            char::from(other)
        ))),
    }
}

/// The end LSN of a pgoutput Commit payload (`'C'`, flags, commit LSN, end
/// LSN, time), or `None` for any other message.
pub fn commit_end_lsn(payload: &[u8]) -> Result<Option<Lsn>, ReplicationError> {
    let mut c = Cursor::new(payload, "pgoutput Commit");
    if c.u8().ok() != Some(b'C') {
        return Ok(None);
    }
    c.u8()?; // flags
    c.u64()?; // commit LSN
    let end = Lsn(c.u64()?);
    c.i64()?; // commit time: present, or the message is truncated
    Ok(Some(end))
}

/// Smallest spacing between status updates triggered by confirms, so a
/// consumer confirming every small transaction does not flood the server.
const CONFIRM_GAP: Duration = Duration::from_millis(100);

/// The feedback rules as a pure state machine (see the module docs). Time is
/// passed in, so every decision is unit-tested without I/O.
#[derive(Debug, Clone)]
pub struct Feedback {
    /// The position that may be reported; only grows.
    position: Lsn,
    /// End LSNs of received, unconfirmed commits, ascending.
    pending: VecDeque<Lsn>,
    /// A `'B'` was received without its `'C'`.
    in_txn: bool,
    /// WAL end of the latest keepalive.
    keepalive_end: Lsn,
    /// A keepalive asked for a reply that has not been sent yet.
    reply_requested: bool,
    /// When and what was last sent.
    last_sent: Option<(Instant, Lsn)>,
    interval: Duration,
}

impl Feedback {
    /// Start at `start` (confirmed by definition), sending at least every `interval`.
    pub fn new(start: Lsn, interval: Duration) -> Self {
        Feedback {
            position: start,
            pending: VecDeque::new(),
            in_txn: false,
            keepalive_end: Lsn::ZERO,
            reply_requested: false,
            last_sent: None,
            interval,
        }
    }

    /// Whether anything received is still owed: an unconfirmed commit or a
    /// partly received transaction.
    pub fn is_pending(&self) -> bool {
        self.in_txn || !self.pending.is_empty()
    }

    /// Rule 2, folded into the position (rule 3).
    fn idle_advance(&mut self) {
        if !self.is_pending() {
            self.position = self.position.max(self.keepalive_end);
        }
    }

    /// Track a received XLogData payload: `'B'` opens a transaction, `'C'`
    /// closes it and makes its end LSN confirmable.
    pub fn on_xlogdata(&mut self, payload: &[u8]) -> Result<(), ReplicationError> {
        match payload.first() {
            Some(b'B') => self.in_txn = true,
            Some(b'C') => {
                self.in_txn = false;
                if let Some(end) = commit_end_lsn(payload)? {
                    // A commit at or below the position is already covered.
                    if end > self.position && self.pending.back().is_none_or(|b| end > *b) {
                        self.pending.push_back(end);
                    }
                }
                self.idle_advance();
            }
            _ => {}
        }
        Ok(())
    }

    /// Track a keepalive.
    pub fn on_keepalive(&mut self, wal_end: Lsn, reply_requested: bool) {
        self.keepalive_end = self.keepalive_end.max(wal_end);
        self.reply_requested |= reply_requested;
        self.idle_advance();
    }

    /// The consumer durably applied everything up to the commit ending at
    /// `end_lsn`. Returns whether the reportable position advanced.
    pub fn confirm(&mut self, end_lsn: Lsn) -> bool {
        let before = self.position;
        while let Some(&front) = self.pending.front() {
            if front > end_lsn {
                break;
            }
            self.pending.pop_front();
            self.position = self.position.max(front);
        }
        self.idle_advance();
        self.position > before
    }

    /// The position that may be reported now.
    pub fn position(&self) -> Lsn {
        self.position
    }

    /// The position last sent to the server, if any.
    pub fn last_sent(&self) -> Option<Lsn> {
        self.last_sent.map(|(_, l)| l)
    }

    /// If a status update is due at `now`, record it as sent and return the
    /// position to report. Due: first status, a requested reply, the interval
    /// elapsed, or the position advanced and a short gap (100 ms) elapsed.
    pub fn poll_status(&mut self, now: Instant) -> Option<Lsn> {
        let due = match self.last_sent {
            None => true,
            Some((at, sent)) => {
                self.reply_requested
                    || now >= at + self.interval
                    || (self.position > sent && now >= at + CONFIRM_GAP)
            }
        };
        due.then(|| self.force_status(now))
    }

    /// Record a status as sent at `now` regardless (used when stopping).
    pub fn force_status(&mut self, now: Instant) -> Lsn {
        self.reply_requested = false;
        self.last_sent = Some((now, self.position));
        self.position
    }

    /// When [`poll_status`](Self::poll_status) will next say yes, absent new events.
    pub fn next_wakeup(&self, now: Instant) -> Instant {
        match self.last_sent {
            None => now,
            Some(_) if self.reply_requested => now,
            Some((at, sent)) if self.position > sent => (at + CONFIRM_GAP).max(now),
            Some((at, _)) => (at + self.interval).max(now),
        }
    }
}

struct Shared {
    feedback: Mutex<Feedback>,
    /// Wakes the status writer (reply requested, position advanced, stop).
    wake_writer: Notify,
    /// Wakes the reader when a stop is requested.
    wake_reader: Notify,
    /// Stop requested: send CopyDone and drain.
    stopping: AtomicBool,
    /// The reader has ended: the writer quits without CopyDone.
    dead: AtomicBool,
}

impl Shared {
    fn feedback(&self) -> MutexGuard<'_, Feedback> {
        // A poisoned lock only means a panic elsewhere; the state is still valid.
        self.feedback.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Confirms applied commits from any task; cheap to clone.
#[derive(Clone)]
pub struct FeedbackHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for FeedbackHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedbackHandle")
            .field("position", &self.position())
            .finish()
    }
}

impl FeedbackHandle {
    /// The commit ending at `end_lsn` (and everything before it) is durably
    /// applied. Safe to call with any LSN: it never reports more than the
    /// received commits it covers, and older LSNs are ignored.
    pub fn confirm(&self, end_lsn: Lsn) {
        if self.shared.feedback().confirm(end_lsn) {
            self.shared.wake_writer.notify_one();
        }
    }

    /// The position that may be reported now.
    pub fn position(&self) -> Lsn {
        self.shared.feedback().position()
    }

    /// The position last sent to the server.
    pub fn last_reported(&self) -> Option<Lsn> {
        self.shared.feedback().last_sent()
    }
}

type Event = Result<XLogData, ReplicationError>;

/// A running logical replication stream (see the module docs).
pub struct LogicalStream {
    rx: mpsc::Receiver<Event>,
    shared: Arc<Shared>,
    reader: Option<JoinHandle<Result<FrameReader<ReadHalf<BoxedStream>>, ReplicationError>>>,
    writer: Option<JoinHandle<Result<WriteHalf<BoxedStream>, ReplicationError>>>,
    parts: Option<(std::collections::HashMap<String, String>, u32, String)>,
    backend_pid: i32,
    slot: String,
    start: Lsn,
    status_interval: Duration,
}

impl std::fmt::Debug for LogicalStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogicalStream")
            .field("slot", &self.slot)
            .field("start", &self.start)
            .field("backend_pid", &self.backend_pid)
            .finish()
    }
}

impl LogicalStream {
    pub(crate) fn spawn(
        client: ReplicationClient,
        slot: String,
        start: Lsn,
        wal_sender_timeout: Option<Duration>,
        options: StartOptions,
    ) -> LogicalStream {
        let status_interval = options.status_interval.unwrap_or_else(|| {
            wal_sender_timeout
                .map(|t| (t / 3).clamp(Duration::from_millis(100), Duration::from_secs(10)))
                .unwrap_or(Duration::from_secs(10))
        });
        let (reader, params, major, pid) = client.into_parts();
        let FrameReader { io, buf, target } = reader;
        let (rd, wr) = tokio::io::split(io);
        let rd = FrameReader {
            io: rd,
            buf,
            target: target.clone(),
        };
        let shared = Arc::new(Shared {
            feedback: Mutex::new(Feedback::new(start, status_interval)),
            wake_writer: Notify::new(),
            wake_reader: Notify::new(),
            stopping: AtomicBool::new(false),
            dead: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel(options.buffer.max(1));
        let reader = crate::task::spawn(
            "replication-reader",
            run_reader(rd, shared.clone(), tx.clone())
                .instrument(tracing::info_span!("replication-reader", slot = %slot, pid)),
        );
        let writer = crate::task::spawn(
            "replication-writer",
            run_writer(wr, shared.clone(), tx, target.clone())
                .instrument(tracing::info_span!("replication-status", slot = %slot, pid)),
        );
        LogicalStream {
            rx,
            shared,
            reader: Some(reader),
            writer: Some(writer),
            parts: Some((params, major, target)),
            backend_pid: pid,
            slot,
            start,
            status_interval,
        }
    }

    /// The next XLogData event. After an error, or after the server ended the
    /// stream, every call returns an error.
    pub async fn recv(&mut self) -> Result<XLogData, ReplicationError> {
        match self.rx.recv().await {
            Some(e) => e,
            None => Err(ReplicationError::Closed(format!(
                "the replication stream on slot {} has ended",
                self.slot
            ))),
        }
    }

    /// A handle to confirm applied commits, usable from other tasks.
    pub fn feedback(&self) -> FeedbackHandle {
        FeedbackHandle {
            shared: self.shared.clone(),
        }
    }

    /// The slot streamed from.
    pub fn slot(&self) -> &str {
        &self.slot
    }

    /// The position streaming started from (the slot's confirmed position
    /// when that was later than the one asked for).
    pub fn start_lsn(&self) -> Lsn {
        self.start
    }

    /// How often a status update is sent at least.
    pub fn status_interval(&self) -> Duration {
        self.status_interval
    }

    /// PID of the walsender.
    pub fn backend_pid(&self) -> i32 {
        self.backend_pid
    }

    /// Stop cleanly: final status, CopyDone, wait for the server to end the
    /// copy, and return the connection for further commands. Events not yet
    /// received are discarded (they are unconfirmed, so the slot keeps them).
    pub async fn stop(mut self) -> Result<ReplicationClient, ReplicationError> {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.wake_writer.notify_one();
        self.shared.wake_reader.notify_one();
        // Unblocks a reader waiting for channel space.
        self.rx.close();
        let joined = |e: tokio::task::JoinError| {
            ReplicationError::Protocol(format!("replication task failed: {e}"))
        };
        let writer = self.writer.take();
        let reader = self.reader.take();
        let wr = match writer {
            Some(w) => w.await.map_err(joined)?,
            None => Err(ReplicationError::Closed("stream already stopped".into())),
        };
        let rd = match reader {
            Some(r) => r.await.map_err(joined)?,
            None => Err(ReplicationError::Closed("stream already stopped".into())),
        };
        // A reader error is the real story (the writer only sees its effects).
        let rd = rd?;
        let wr = wr?;
        let (params, major, _) = self.parts.take().unwrap_or_default();
        let FrameReader { io, buf, target } = rd;
        let io = io.unsplit(wr);
        tracing::debug!(slot = %self.slot, "logical replication stopped");
        Ok(ReplicationClient::from_parts(
            FrameReader { io, buf, target },
            params,
            major,
            self.backend_pid,
        ))
    }
}

impl Drop for LogicalStream {
    fn drop(&mut self) {
        // Let the tasks end the copy cleanly on their own; the reader gives up
        // after DRAIN_TIMEOUT, which closes the socket.
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.wake_writer.notify_one();
        self.shared.wake_reader.notify_one();
    }
}

/// How long a stopping reader waits for the server to end the copy.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

async fn run_reader(
    mut rd: FrameReader<ReadHalf<BoxedStream>>,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Event>,
) -> Result<FrameReader<ReadHalf<BoxedStream>>, ReplicationError> {
    let result = read_loop(&mut rd, &shared, &tx).await;
    shared.dead.store(true, Ordering::SeqCst);
    shared.wake_writer.notify_one();
    match result {
        Ok(()) => Ok(rd),
        Err(e) => {
            let stopping = shared.stopping.load(Ordering::SeqCst);
            if stopping {
                tracing::debug!(error = %e, "replication stream ended while stopping");
            } else {
                tracing::warn!(error = %e, "replication stream ended with an error");
            }
            if stopping || tx.is_closed() {
                Err(e)
            } else {
                let summary = ReplicationError::Closed(format!("stream failed: {e}"));
                let _ = tx.send(Err(e)).await;
                Err(summary)
            }
        }
    }
}

async fn read_loop(
    rd: &mut FrameReader<ReadHalf<BoxedStream>>,
    shared: &Shared,
    tx: &mpsc::Sender<Event>,
) -> Result<(), ReplicationError> {
    let mut stopping = false;
    let mut server_done = false;
    loop {
        stopping |= shared.stopping.load(Ordering::SeqCst);
        let frame = if stopping {
            tokio::time::timeout(DRAIN_TIMEOUT, rd.read_frame())
                .await
                .map_err(|_| {
                    ReplicationError::Closed(format!(
                        "the server did not end the stream within {DRAIN_TIMEOUT:?} of CopyDone"
                    ))
                })??
        } else {
            tokio::select! {
                // read_frame is cancel-safe: partial input stays buffered.
                f = rd.read_frame() => f?,
                _ = shared.wake_reader.notified() => continue,
            }
        };
        match frame.tag {
            b'd' => match parse_copy_data(frame.body)? {
                ReplicationMessage::XLogData(x) => {
                    shared.feedback().on_xlogdata(&x.payload)?;
                    if !stopping {
                        tokio::select! {
                            r = tx.send(Ok(x)) => { if r.is_err() { stopping = true; } }
                            _ = shared.wake_reader.notified() => { stopping = true; }
                        }
                    }
                }
                ReplicationMessage::Keepalive {
                    wal_end,
                    reply_requested,
                    ..
                } => {
                    shared.feedback().on_keepalive(wal_end, reply_requested);
                    if reply_requested {
                        shared.wake_writer.notify_one();
                    }
                    tracing::trace!(%wal_end, reply_requested, "keepalive");
                }
            },
            b'c' => {
                // Our own stop may have been requested while this frame was
                // being read: the server's CopyDone is then the answer to
                // ours, the normal end of the stream, not an error.
                stopping |= shared.stopping.load(Ordering::SeqCst);
                if !stopping {
                    return Err(ReplicationError::Closed(
                        "the server ended the replication stream (CopyDone) unasked".into(),
                    ));
                }
                server_done = true;
            }
            // CommandComplete of START_REPLICATION.
            b'C' if server_done => {}
            b'Z' if server_done => return Ok(()),
            b'E' => return Err(server_error(&frame.body)),
            b'N' => log_notice(&frame.body),
            b'S' => {}
            other => {
                return Err(ReplicationError::Protocol(format!(
                    "unexpected message {:?} during streaming",
                    char::from(other)
                )))
            }
        }
    }
}

/// Microseconds since 2000-01-01 UTC, the protocol's clock.
fn pg_now() -> i64 {
    const PG_EPOCH_UNIX_SECS: u64 = 946_684_800;
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| d.checked_sub(Duration::from_secs(PG_EPOCH_UNIX_SECS)))
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A standby status update (`'r'`) inside CopyData.
pub fn status_update(position: Lsn, clock: i64, buf: &mut BytesMut) {
    let mut body = BytesMut::with_capacity(34);
    body.put_u8(b'r');
    body.put_u64(position.0); // written
    body.put_u64(position.0); // flushed
    body.put_u64(position.0); // applied
    body.put_i64(clock);
    body.put_u8(0); // no reply requested
                    // 34 bytes cannot overflow the length word.
    if let Ok(m) = frontend::CopyData::new(body.freeze()) {
        m.write(buf);
    }
}

async fn run_writer(
    mut wr: WriteHalf<BoxedStream>,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Event>,
    target: String,
) -> Result<WriteHalf<BoxedStream>, ReplicationError> {
    let mut buf = BytesMut::with_capacity(128);
    loop {
        if shared.dead.load(Ordering::SeqCst) {
            return Ok(wr);
        }
        let stopping = shared.stopping.load(Ordering::SeqCst);
        let now = Instant::now();
        let (due, wake_at) = {
            let mut fb = shared.feedback();
            let due = if stopping {
                Some(fb.force_status(now))
            } else {
                fb.poll_status(now)
            };
            (due, fb.next_wakeup(now))
        };
        if let Some(pos) = due {
            status_update(pos, pg_now(), &mut buf);
            tracing::debug!(position = %pos, "standby status sent");
        }
        if stopping {
            frontend::copy_done(&mut buf);
        }
        if !buf.is_empty() {
            let r = async {
                wr.write_all(&buf).await?;
                wr.flush().await
            }
            .await;
            buf.clear();
            if let Err(source) = r {
                let e = ReplicationError::Io {
                    target: target.clone(),
                    context: "sending a standby status update".into(),
                    source,
                };
                tracing::warn!(error = %e, "status writer stopped");
                // The reader will see the broken socket too; this is a hint.
                let _ = tx.try_send(Err(e));
                return Err(ReplicationError::Closed(
                    "the status writer could not write to the server".into(),
                ));
            }
        }
        if stopping {
            return Ok(wr);
        }
        tokio::select! {
            _ = shared.wake_writer.notified() => {}
            _ = tokio::time::sleep_until(wake_at) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(end: u64) -> Vec<u8> {
        let mut v = vec![b'C', 0];
        v.extend_from_slice(&(end - 8).to_be_bytes());
        v.extend_from_slice(&end.to_be_bytes());
        v.extend_from_slice(&0i64.to_be_bytes());
        v
    }

    fn txn(f: &mut Feedback, end: u64) {
        f.on_xlogdata(b"B........").unwrap();
        f.on_xlogdata(b"I...").unwrap();
        f.on_xlogdata(&commit(end)).unwrap();
    }

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn reports_only_confirmed_commit_ends() {
        let mut f = Feedback::new(Lsn(100), SEC);
        txn(&mut f, 200);
        txn(&mut f, 300);
        assert_eq!(f.position(), Lsn(100), "nothing confirmed yet");
        // Between two commits: only the first is covered.
        assert!(f.confirm(Lsn(250)));
        assert_eq!(f.position(), Lsn(200));
        // A keepalive far ahead must not be used while 300 is unconfirmed.
        f.on_keepalive(Lsn(1000), false);
        assert_eq!(f.position(), Lsn(200));
        assert!(f.confirm(Lsn(300)));
        // Now nothing is pending: the keepalive's WAL end is safe.
        assert_eq!(f.position(), Lsn(1000));
    }

    #[test]
    fn never_confirms_what_was_not_received() {
        let mut f = Feedback::new(Lsn(100), SEC);
        txn(&mut f, 200);
        f.on_xlogdata(b"B").unwrap();
        assert!(f.is_pending());
        assert!(f.confirm(Lsn(u64::MAX)));
        assert_eq!(f.position(), Lsn(200), "the open transaction holds it");
        f.on_keepalive(Lsn(500), false);
        assert_eq!(f.position(), Lsn(200));
        f.on_xlogdata(&commit(600)).unwrap();
        assert_eq!(f.position(), Lsn(200), "received but not confirmed");
        f.confirm(Lsn(600));
        assert_eq!(f.position(), Lsn(600));
    }

    #[test]
    fn monotonic() {
        let mut f = Feedback::new(Lsn(100), SEC);
        f.on_keepalive(Lsn(400), false);
        assert_eq!(f.position(), Lsn(400), "idle advance");
        // A transaction opening afterwards does not pull it back.
        f.on_xlogdata(b"B").unwrap();
        assert_eq!(f.position(), Lsn(400));
        f.on_xlogdata(&commit(500)).unwrap();
        assert!(!f.confirm(Lsn(50)), "older confirm is a no-op");
        assert_eq!(f.position(), Lsn(400));
        // An older keepalive does not lower anything either.
        f.confirm(Lsn(500));
        f.on_keepalive(Lsn(300), false);
        assert_eq!(f.position(), Lsn(500));
        // Start position is never undercut by old commits.
        let mut g = Feedback::new(Lsn(1000), SEC);
        g.on_xlogdata(&commit(900)).unwrap();
        assert!(!g.is_pending());
        assert_eq!(g.position(), Lsn(1000));
    }

    #[test]
    fn status_timing() {
        let t0 = Instant::now();
        let mut f = Feedback::new(Lsn(100), SEC);
        assert_eq!(f.next_wakeup(t0), t0);
        assert_eq!(f.poll_status(t0), Some(Lsn(100)), "first status at once");
        assert_eq!(f.poll_status(t0), None);
        assert_eq!(f.next_wakeup(t0), t0 + SEC);
        // A requested reply goes out at once.
        f.on_keepalive(Lsn(50), true);
        assert_eq!(f.next_wakeup(t0), t0);
        assert_eq!(f.poll_status(t0), Some(Lsn(100)));
        // A confirm is reported after the short gap, not the full interval.
        txn(&mut f, 200);
        f.confirm(Lsn(200));
        let t1 = t0 + Duration::from_millis(10);
        assert_eq!(f.poll_status(t1), None);
        assert_eq!(f.next_wakeup(t1), t0 + CONFIRM_GAP);
        assert_eq!(f.poll_status(t0 + CONFIRM_GAP), Some(Lsn(200)));
        // And the interval keeps statuses flowing with nothing new.
        let t2 = t0 + CONFIRM_GAP;
        assert_eq!(f.poll_status(t2 + SEC / 2), None);
        assert_eq!(f.poll_status(t2 + SEC), Some(Lsn(200)));
    }

    #[test]
    fn parses_copy_data() {
        let mut w = vec![b'w'];
        w.extend_from_slice(&1u64.to_be_bytes());
        w.extend_from_slice(&2u64.to_be_bytes());
        w.extend_from_slice(&3i64.to_be_bytes());
        w.extend_from_slice(b"Bxyz");
        match parse_copy_data(Bytes::from(w.clone())).unwrap() {
            ReplicationMessage::XLogData(x) => {
                assert_eq!((x.wal_start, x.wal_end, x.send_time), (Lsn(1), Lsn(2), 3));
                assert_eq!(&x.payload[..], b"Bxyz");
            }
            other => panic!("{other:?}"),
        }
        let mut k = vec![b'k'];
        k.extend_from_slice(&9u64.to_be_bytes());
        k.extend_from_slice(&4i64.to_be_bytes());
        k.push(1);
        assert_eq!(
            parse_copy_data(Bytes::from(k.clone())).unwrap(),
            ReplicationMessage::Keepalive {
                wal_end: Lsn(9),
                send_time: 4,
                reply_requested: true
            }
        );
        // Every truncation is an error, never a panic.
        for n in 0..k.len() {
            assert!(parse_copy_data(Bytes::copy_from_slice(&k[..n])).is_err());
        }
        for n in 0..25 {
            assert!(parse_copy_data(Bytes::copy_from_slice(&w[..n])).is_err());
        }
        assert!(parse_copy_data(Bytes::from_static(b"z")).is_err());
    }

    #[test]
    fn truncated_commit_is_an_error() {
        let c = commit(200);
        assert_eq!(commit_end_lsn(&c).unwrap(), Some(Lsn(200)));
        for n in 1..c.len() {
            assert!(commit_end_lsn(&c[..n]).is_err(), "{n}");
        }
        assert_eq!(commit_end_lsn(b"").unwrap(), None);
        let mut f = Feedback::new(Lsn(0), SEC);
        assert!(f.on_xlogdata(&c[..5]).is_err());
    }

    #[test]
    fn status_message_layout() {
        let mut buf = BytesMut::new();
        status_update(Lsn(0x0102), 7, &mut buf);
        assert_eq!(buf.len(), 1 + 4 + 34);
        assert_eq!(&buf[..6], &[b'd', 0, 0, 0, 38, b'r']);
        assert_eq!(&buf[6..14], &0x0102u64.to_be_bytes());
        assert_eq!(&buf[30..38], &7i64.to_be_bytes());
        assert_eq!(buf[38], 0);
    }
}
