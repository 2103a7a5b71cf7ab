//! A throwaway PostgreSQL cluster on this machine.
//!
//! Used by the test suite and by `pg-rekey demo`: `initdb` into a fresh
//! directory under the system temp dir, start the server on a free loopback
//! port with `wal_level=logical` and room for many slots and WAL senders, and
//! remove everything afterwards.
//!
//! The server refuses to run as root, so when this process is root the
//! cluster is created and run as an unprivileged account (`postgres` if it
//! exists, else `nobody`), and the temp directory is handed to that account.
//!
//! Clean-up does not rely on destructors (a test binary keeps its cluster in a
//! `static` whose destructor never runs, and a killed process runs none): a
//! small watchdog shell, in its own process group, waits for this process to
//! disappear and then stops the server and removes the directory. [`Cluster`]'s
//! `Drop` does the same at once when it gets the chance.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::pg::{ConnSpec, Host};

/// Options for a new cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Extra `postgresql.conf` lines.
    pub extra_conf: Vec<String>,
    /// `pg_hba.conf` lines placed before the final `trust` lines.
    pub hba_lines: Vec<String>,
    /// Folder holding `initdb`, `pg_ctl`, `postgres`. Defaults to `$PG_BIN`,
    /// else the newest `/usr/lib/postgresql/*/bin`, else the `PATH`.
    pub bin_dir: Option<PathBuf>,
    /// Start with `ssl = on` and this certificate (off when `None`).
    pub tls: Option<ServerTls>,
}

/// The server's TLS material, PEM-encoded.
#[derive(Clone, Debug)]
pub struct ServerTls {
    /// Server certificate (chain).
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
    /// CA that client certificates must chain to (`ssl_ca_file`), if any.
    pub client_ca_pem: Option<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            extra_conf: Vec::new(),
            hba_lines: Vec::new(),
            bin_dir: std::env::var_os("PG_BIN").map(PathBuf::from),
            tls: None,
        }
    }
}

/// Why a cluster could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No server binaries.
    #[error("PostgreSQL server binaries not found ({0}); install Debian's postgresql package (apt-get install postgresql) or set PG_BIN to the folder holding initdb and pg_ctl")]
    NoBinaries(String),
    /// A step failed; the output is included.
    #[error("{step} failed: {output}")]
    Step {
        /// `initdb`, `pg_ctl start`, …
        step: String,
        /// What the program printed.
        output: String,
    },
    /// Local file system trouble.
    #[error("{0}")]
    Io(String),
}

/// A running throwaway cluster. Dropping it stops the server and removes its files.
#[derive(Debug)]
pub struct Cluster {
    /// TCP port on 127.0.0.1.
    pub port: u16,
    /// Server major version (e.g. 15).
    pub major_version: u32,
    base: PathBuf,
    bin: PathBuf,
    run_as: Option<(u32, u32)>,
    stopped: bool,
}

/// The superuser created by `initdb`.
pub const SUPERUSER: &str = "postgres";

impl Cluster {
    /// initdb, configure and start a cluster.
    pub fn start(opts: &ClusterOptions) -> Result<Cluster, ClusterError> {
        let bin = find_bin_dir(opts.bin_dir.as_deref())?;
        let run_as = if unsafe { libc::geteuid() } == 0 {
            Some(unprivileged_account()?)
        } else {
            None
        };
        let base = std::env::temp_dir().join(format!(
            "pg-rekey-cluster-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base)
            .map_err(|e| ClusterError::Io(format!("create {}: {e}", base.display())))?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&base, Some(uid), Some(gid))
                .map_err(|e| ClusterError::Io(format!("chown {}: {e}", base.display())))?;
        }
        let mut cluster = Cluster {
            port: 0,
            major_version: 0,
            base,
            bin,
            run_as,
            stopped: false,
        };
        cluster.spawn_watchdog()?;
        let data = cluster.data_dir();
        cluster.run(
            "initdb",
            cluster.cmd("initdb").arg("-D").arg(&data).args([
                "-U",
                SUPERUSER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ]),
        )?;
        let version = std::fs::read_to_string(data.join("PG_VERSION")).unwrap_or_default();
        cluster.major_version = version.trim().parse().unwrap_or(0);

        let mut hba = String::from("local all all trust\n");
        for l in &opts.hba_lines {
            hba.push_str(l);
            hba.push('\n');
        }
        hba.push_str("host all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n");
        let mut tls_conf = String::new();
        if let Some(tls) = &opts.tls {
            let mut files = vec![("server.crt", &tls.cert_pem), ("server.key", &tls.key_pem)];
            if let Some(ca) = &tls.client_ca_pem {
                files.push(("client_ca.crt", ca));
                tls_conf.push_str("ssl_ca_file = 'client_ca.crt'\n");
            }
            for (name, pem) in files {
                let path = data.join(name);
                std::fs::write(&path, pem)
                    .map_err(|e| ClusterError::Io(format!("write {}: {e}", path.display())))?;
                // The server refuses a key others can read.
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| ClusterError::Io(format!("chmod {}: {e}", path.display())))?;
                if let Some((uid, gid)) = cluster.run_as {
                    std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                        .map_err(|e| ClusterError::Io(format!("chown {}: {e}", path.display())))?;
                }
            }
            tls_conf
                .push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        }
        std::fs::write(data.join("pg_hba.conf"), hba)
            .map_err(|e| ClusterError::Io(format!("write pg_hba.conf: {e}")))?;

        // A free port can be taken between our probe and the server's bind:
        // try a few times.
        let mut last = None;
        for _ in 0..5 {
            let port = free_port()?;
            let mut conf = format!(
                "\n# pg-rekey embedded cluster\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
                 wal_level = logical\nmax_replication_slots = 64\nmax_wal_senders = 64\nmax_connections = 300\n\
                 wal_sender_timeout = '10s'\nfsync = off\nfull_page_writes = off\nshared_buffers = '128MB'\n\
                 max_wal_size = '2GB'\nlogging_collector = off\nlog_min_messages = warning\n",
                cluster.base.display()
            );
            conf.push_str(&tls_conf);
            for l in &opts.extra_conf {
                conf.push_str(l);
                conf.push('\n');
            }
            let conf_path = data.join("postgresql.auto.conf");
            std::fs::write(&conf_path, conf)
                .map_err(|e| ClusterError::Io(format!("write {}: {e}", conf_path.display())))?;
            let log = cluster.base.join("server.log");
            match cluster.run(
                "pg_ctl start",
                cluster
                    .cmd("pg_ctl")
                    .arg("-D")
                    .arg(&data)
                    .arg("-l")
                    .arg(&log)
                    .args(["-w", "-t", "60", "start"]),
            ) {
                Ok(_) => {
                    cluster.port = port;
                    return Ok(cluster);
                }
                Err(e) => {
                    let tail = std::fs::read_to_string(&log).unwrap_or_default();
                    if tail.contains("Address already in use") {
                        last = Some(e);
                        continue;
                    }
                    return Err(ClusterError::Step {
                        step: "pg_ctl start".into(),
                        output: format!(
                            "{e}; server log: {}",
                            tail.lines().rev().take(10).collect::<Vec<_>>().join(" | ")
                        ),
                    });
                }
            }
        }
        Err(last.unwrap_or(ClusterError::Io("no free port".into())))
    }

    /// Connection spec for `dbname` as the superuser over TCP.
    pub fn spec(&self, dbname: &str) -> ConnSpec {
        ConnSpec {
            host: Host::Tcp("127.0.0.1".into()),
            port: self.port,
            user: SUPERUSER.into(),
            password: None,
            dbname: dbname.into(),
            application_name: "pg-rekey".into(),
            connect_timeout: std::time::Duration::from_secs(10),
            options: Default::default(),
        }
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.base.join("data")
    }

    /// The server log file.
    pub fn log_file(&self) -> PathBuf {
        self.base.join("server.log")
    }

    /// `pg_ctl restart -m fast`: every session ends (clients see their
    /// connections drop), the server comes back on the same port with the
    /// same data. For tests of what survives a server restart.
    pub fn restart_fast(&self) -> Result<(), ClusterError> {
        let data = self.data_dir();
        let log = self.log_file();
        self.run(
            "pg_ctl restart",
            self.cmd("pg_ctl")
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(&log)
                .args(["-m", "fast", "-w", "-t", "60", "restart"]),
        )
        .map(|_| ())
    }

    /// Stop the server now (fast shutdown) and remove its files.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let data = self.data_dir();
        let _ = self
            .cmd("pg_ctl")
            .arg("-D")
            .arg(&data)
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.base);
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(self.bin.join(program));
        c.env_remove("PGDATA")
            .env("LC_ALL", "C")
            .env("LANG", "C")
            .process_group(0);
        if let Some((uid, gid)) = self.run_as {
            c.uid(uid).gid(gid).current_dir(&self.base);
        }
        c
    }

    fn run(&self, step: &str, cmd: &mut Command) -> Result<String, ClusterError> {
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .map_err(|e| ClusterError::Step {
                step: step.into(),
                output: e.to_string(),
            })?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(text)
        } else {
            Err(ClusterError::Step {
                step: step.into(),
                output: text.trim().to_string(),
            })
        }
    }

    fn spawn_watchdog(&self) -> Result<(), ClusterError> {
        let script = format!(
            "while [ -d /proc/{pid} ]; do sleep 0.5; done; \
             [ -f '{data}/postmaster.pid' ] && '{pg_ctl}' -D '{data}' -m immediate stop >/dev/null 2>&1; rm -rf '{base}'",
            pid = std::process::id(),
            data = self.data_dir().display(),
            pg_ctl = self.bin.join("pg_ctl").display(),
            base = self.base.display(),
        );
        let mut c = Command::new("/bin/sh");
        c.arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        if let Some((uid, gid)) = self.run_as {
            c.uid(uid).gid(gid).current_dir(&self.base);
        }
        c.spawn()
            .map_err(|e| ClusterError::Io(format!("start the clean-up watchdog: {e}")))?;
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn find_bin_dir(explicit: Option<&Path>) -> Result<PathBuf, ClusterError> {
    if let Some(dir) = explicit {
        return if dir.join("initdb").is_file() {
            Ok(dir.to_path_buf())
        } else {
            Err(ClusterError::NoBinaries(format!(
                "no initdb in {}",
                dir.display()
            )))
        };
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let d = Path::new(dir);
        if d.join("initdb").is_file() && d.join("pg_ctl").is_file() {
            return Ok(d.to_path_buf());
        }
    }
    Err(ClusterError::NoBinaries(
        "looked in $PG_BIN, /usr/lib/postgresql/*/bin and PATH".into(),
    ))
}

/// uid and gid of `postgres`, else `nobody`, from /etc/passwd.
fn unprivileged_account() -> Result<(u32, u32), ClusterError> {
    let passwd = std::fs::read_to_string("/etc/passwd")
        .map_err(|e| ClusterError::Io(format!("read /etc/passwd: {e}")))?;
    for wanted in ["postgres", "nobody"] {
        for line in passwd.lines() {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() >= 4 && f[0] == wanted {
                if let (Ok(uid), Ok(gid)) = (f[2].parse(), f[3].parse()) {
                    return Ok((uid, gid));
                }
            }
        }
    }
    Err(ClusterError::Io(
        "running as root and no unprivileged account (postgres or nobody) to run the server as; create one with useradd".into(),
    ))
}

fn free_port() -> Result<u16, ClusterError> {
    let l = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| ClusterError::Io(format!("find a free port: {e}")))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| ClusterError::Io(format!("find a free port: {e}")))
}
