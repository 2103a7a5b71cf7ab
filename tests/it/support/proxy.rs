//! A fault-injecting TCP proxy in front of the real test server.
//!
//! [`CommitDropProxy`] forwards every byte both ways, reading the client's
//! messages as it goes. On a connection whose client has sent a simple query
//! containing `RENAME TO` (the swap), the next simple query `COMMIT` is
//! forwarded to the server and then the client's side is closed without an
//! answer: the server commits, the client sees its connection drop during
//! COMMIT — the case where a cutover cannot know from its own session
//! whether the swap happened. The server's side is drained, not reset, so the
//! server reads (and runs) the COMMIT before it notices the client is gone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pg_rekey::pg::{ConnSpec, Host};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// See the module docs.
pub struct CommitDropProxy {
    /// A connection spec that goes through the proxy.
    pub spec: ConnSpec,
    /// How many connections were dropped during COMMIT.
    pub drops: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CommitDropProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

async fn connect_server(spec: &ConnSpec) -> std::io::Result<Box<dyn Stream>> {
    Ok(match &spec.host {
        Host::Tcp(h) => Box::new(tokio::net::TcpStream::connect((h.as_str(), spec.port)).await?),
        Host::Unix(dir) => Box::new(
            tokio::net::UnixStream::connect(dir.join(format!(".s.PGSQL.{}", spec.port))).await?,
        ),
    })
}

impl CommitDropProxy {
    /// Listen on a free port of 127.0.0.1 in front of `server`.
    pub async fn start(server: &ConnSpec) -> CommitDropProxy {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let drops = Arc::new(AtomicU64::new(0));
        let target = server.clone();
        let counter = drops.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let target = target.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    if let Ok(server) = connect_server(&target).await {
                        relay(client, server, counter).await;
                    }
                });
            }
        });
        let mut spec = server.clone();
        spec.host = Host::Tcp("127.0.0.1".into());
        spec.port = port;
        CommitDropProxy { spec, drops, task }
    }
}

/// Read exactly `n` bytes.
async fn read_n<R: AsyncRead + Unpin>(r: &mut R, n: usize) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; n];
    r.read_exact(&mut buf).await.ok()?;
    Some(buf)
}

async fn relay(client: tokio::net::TcpStream, server: Box<dyn Stream>, drops: Arc<AtomicU64>) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = tokio::io::split(server);
    let (cut_tx, mut cut_rx) = watch::channel(false);
    // Server → client, until told to cut; then drain the server's side.
    let back = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            tokio::select! {
                n = sr.read(&mut buf) => match n {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if *cut_rx.borrow() {
                            continue;
                        }
                        if cw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                },
                _ = cut_rx.changed() => {
                    // Close the client's side; keep reading the server's.
                    let _ = cw.shutdown().await;
                    let _ = tokio::time::timeout(Duration::from_secs(5), async {
                        while let Ok(n) = sr.read(&mut buf).await {
                            if n == 0 { break; }
                        }
                    })
                    .await;
                    return;
                }
            }
        }
    });
    // Client → server, message by message. The first messages have no type
    // byte (SSLRequest / startup); everything after does.
    let mut typed = false;
    let mut swapping = false;
    loop {
        let (head, body) = if typed {
            let Some(head) = read_n(&mut cr, 5).await else {
                break;
            };
            let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            let Some(body) = read_n(&mut cr, len.saturating_sub(4)).await else {
                break;
            };
            (head, body)
        } else {
            let Some(head) = read_n(&mut cr, 4).await else {
                break;
            };
            let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
            let Some(body) = read_n(&mut cr, len.saturating_sub(4)).await else {
                break;
            };
            // SSLRequest / GSSENCRequest are followed by another untyped message.
            let code = body
                .get(..4)
                .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
            typed = !matches!(code, Some(80877103) | Some(80877104));
            (head, body)
        };
        let mut cut = false;
        if head.len() == 5 && head[0] == b'Q' {
            let text = String::from_utf8_lossy(&body);
            let text = text.trim_end_matches('\0').trim();
            if text.contains("RENAME TO") {
                swapping = true;
            } else if swapping && text.eq_ignore_ascii_case("COMMIT") {
                cut = true;
            }
        }
        if sw.write_all(&head).await.is_err() || sw.write_all(&body).await.is_err() {
            break;
        }
        let _ = sw.flush().await;
        if cut {
            drops.fetch_add(1, Ordering::SeqCst);
            let _ = cut_tx.send(true);
            // Keep the server's side open while it runs the COMMIT.
            let _ = back.await;
            return;
        }
    }
    drop(cut_tx);
    let _ = back.await;
}
