//! The process's edges that commands share: stdout (a closed pipe is not
//! an error) and the stop signal (Ctrl-C, SIGTERM).

use std::io::Write;

use tokio::sync::watch;

use crate::error::Error;

/// Write to stdout; a closed pipe (`| head`) is not an error.
pub fn print(text: &str) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Error::Io {
            context: "write to stdout".into(),
            source: e,
        }),
    }
}

/// Write bytes to stdout; a closed pipe is not an error.
pub fn write_bytes(b: &[u8]) -> Result<(), Error> {
    print(&String::from_utf8_lossy(b))
}

/// A channel that turns `true` on Ctrl-C (SIGINT) or SIGTERM.
pub fn shutdown_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    crate::task::spawn("stop-signal", async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => {
                        let _ = ctrl_c.await;
                        let _ = tx.send(true);
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("stop requested");
        let _ = tx.send(true);
    });
    rx
}
