//! A minimal physical replication client, to put a *physical* WAL sender on
//! the test server (what a streaming replica looks like from the primary).
//!
//! Tests prefer `pg_receivewal`; but a `pg_receivewal` older than the server
//! refuses to stream from it, and the server packages used for the version
//! matrix ship no client programs. This client speaks just enough of the
//! protocol: startup with `replication=true` (trust or clear-text password),
//! `IDENTIFY_SYSTEM`, `START_REPLICATION PHYSICAL` at the current position,
//! then it reads the stream and reports its position twice a second so the
//! WAL sender stays.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, BytesMut};
use pg_rekey::pg::{ConnSpec, Host};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The streaming task; dropped, it disconnects.
pub struct PhysicalStream(tokio::task::JoinHandle<()>);

impl Drop for PhysicalStream {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One server message: its tag and body.
async fn read_message(s: &mut TcpStream, buf: &mut BytesMut) -> (u8, BytesMut) {
    loop {
        if buf.len() >= 5 {
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if buf.len() > len {
                let mut frame = buf.split_to(len + 1);
                let tag = frame.get_u8();
                frame.advance(4);
                return (tag, frame);
            }
        }
        let n = s.read_buf(buf).await.expect("read from the server");
        assert!(
            n > 0,
            "the server closed the physical replication connection"
        );
    }
}

/// A standby status update (`r`) reporting `pos` as written, flushed and applied.
fn status(pos: u64) -> BytesMut {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
        - 946_684_800_000_000;
    let mut body = BytesMut::new();
    body.put_u8(b'r');
    body.put_u64(pos);
    body.put_u64(pos);
    body.put_u64(pos);
    body.put_i64(micros);
    body.put_u8(0);
    let mut out = BytesMut::new();
    out.put_u8(b'd');
    out.put_u32(body.len() as u32 + 4);
    out.put_slice(&body);
    out
}

impl PhysicalStream {
    /// Connect to `spec`'s server (TCP only) and start streaming.
    pub async fn start(spec: &ConnSpec) -> PhysicalStream {
        let Host::Tcp(host) = &spec.host else {
            panic!("the physical test client connects over TCP only")
        };
        let mut s = TcpStream::connect((host.as_str(), spec.port))
            .await
            .expect("connect for physical replication");
        let mut out = BytesMut::new();
        frontend::startup_message(
            [
                ("user", spec.user.as_str()),
                ("replication", "true"),
                ("application_name", spec.application_name.as_str()),
            ],
            &mut out,
        )
        .unwrap();
        s.write_all(&out).await.unwrap();
        let mut buf = BytesMut::new();
        loop {
            let (tag, mut body) = read_message(&mut s, &mut buf).await;
            match tag {
                b'R' => match body.get_i32() {
                    0 => {}
                    3 => {
                        let mut out = BytesMut::new();
                        let pw = spec.password.clone().unwrap_or_default();
                        frontend::password_message(pw.as_bytes(), &mut out).unwrap();
                        s.write_all(&out).await.unwrap();
                    }
                    other => panic!("authentication method {other} is not supported by the physical test client"),
                },
                b'Z' => break,
                b'E' => panic!("physical replication login refused: {body:?}"),
                _ => {}
            }
        }
        // IDENTIFY_SYSTEM: the current WAL position is the third column.
        let mut out = BytesMut::new();
        frontend::query("IDENTIFY_SYSTEM", &mut out).unwrap();
        s.write_all(&out).await.unwrap();
        let mut xlogpos = String::new();
        loop {
            let (tag, mut raw) = read_message(&mut s, &mut buf).await;
            match tag {
                b'D' => {
                    // Column count, then per column a 4-byte length and the text.
                    raw.advance(2);
                    for column in 0..3 {
                        let len = raw.get_i32() as usize;
                        if column == 2 {
                            xlogpos = String::from_utf8(raw[..len].to_vec()).unwrap();
                        }
                        raw.advance(len);
                    }
                }
                b'Z' => break,
                b'E' => panic!("IDENTIFY_SYSTEM failed: {raw:?}"),
                _ => {}
            }
        }
        let mut out = BytesMut::new();
        frontend::query(&format!("START_REPLICATION PHYSICAL {xlogpos}"), &mut out).unwrap();
        s.write_all(&out).await.unwrap();
        loop {
            match read_message(&mut s, &mut buf).await {
                (b'W', _) => break,
                (b'E', body) => panic!("START_REPLICATION failed: {body:?}"),
                _ => {}
            }
        }
        let (hi, lo) = xlogpos.split_once('/').unwrap();
        let mut pos =
            (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap();
        PhysicalStream(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    (tag, mut data) = read_message(&mut s, &mut buf) => {
                        if tag != b'd' { return; }
                        // XLogData: start position, end, time, then WAL.
                        if data.first() == Some(&b'w') && data.len() >= 25 {
                            data.advance(1);
                            let start = data.get_u64();
                            pos = pos.max(start + (data.len() as u64 - 16));
                        }
                    }
                    // A status twice a second: well within wal_sender_timeout,
                    // so keepalives need no answer of their own.
                    _ = tick.tick() => {
                        if s.write_all(&status(pos)).await.is_err() { return; }
                    }
                }
            }
        }))
    }
}
