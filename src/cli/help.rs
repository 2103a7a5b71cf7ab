//! Examples shown after each command's `--help`, and the generated shell
//! completions and manual page (both from the clap definition in
//! [`crate::cli`], so they cannot drift from it).

use clap::CommandFactory;

/// `pg-rekey --help`.
pub const TOP: &str = "\
Examples:
  export DATABASE_URL=postgres://app@db.internal/app
  pg-rekey plan --parent users --uuid-column uuid_id
  pg-rekey rewrite --parent users --uuid-column uuid_id --table sessions
  pg-rekey status --watch
  pg-rekey cutover --table sessions
  pg-rekey verify --table sessions

Exit codes (every command): 0 done; 1 found something or gave up with nothing harmed (plan blockers, verify differences or no consistent point, a cutover that gave up or whose swap rolled back, a rewrite refused by its preflight or stopped by its data or by Ctrl-C); 2 error.";

/// `plan --help`.
pub const PLAN: &str = "\
Examples:
  pg-rekey plan --parent users --uuid-column uuid_id
  pg-rekey plan --parent users --uuid-column uuid_id --table sessions --json";

/// `prepare --help`.
pub const PREPARE: &str = "\
Examples:
  pg-rekey prepare --parent users --uuid-column uuid_id
  pg-rekey prepare --parent users --uuid-column uuid_id --batch-rows 5000 --max-replica-lag 30s
  pg-rekey prepare --parent users --uuid-column uuid_id --column-exists   # complete a half-filled column";

/// `promote --help`.
pub const PROMOTE: &str = "\
Examples:
  pg-rekey promote --parent users --uuid-column uuid_id --dry-run
  pg-rekey promote --parent users --uuid-column uuid_id                       # integer kept, UNIQUE
  pg-rekey promote --parent users --uuid-column uuid_id --rename              # users.id is the uuid, users.legacy_id the integer
  pg-rekey promote --parent users --uuid-column uuid_id --drop-integer-key    # later, when nothing uses the integer";

/// `rewrite --help`.
pub const REWRITE: &str = "\
Examples:
  pg-rekey rewrite --parent users --uuid-column uuid_id --table sessions --table api_access_tokens
  pg-rekey rewrite --parent users --uuid-column uuid_id --table sessions \\
      --metrics-addr 127.0.0.1:9187 --max-replica-lag 30s --max-slot-wal 10GB --log-file rewrite.log
  pg-rekey rewrite --parent users --uuid-column uuid_id --table sessions --cutover auto --max-lag-bytes 16MB";

/// `status --help`.
pub const STATUS: &str = "\
Examples:
  pg-rekey status
  pg-rekey status --watch 5s
  pg-rekey status --json
  pg-rekey status --json --journeys             # {\"tables\": [...], \"journeys\": [...]}
  pg-rekey status --parent users --uuid-column uuid_id   # the journey before any job
  pg-rekey status --prune        # clear the rows of finished jobs";

/// `abort --help`.
pub const ABORT: &str = "\
Examples:
  pg-rekey abort --table sessions
  pg-rekey abort --table sessions --yes    # no question on a terminal";

/// `cutover --help`.
pub const CUTOVER: &str = "\
Examples:
  pg-rekey cutover --table sessions --dry-run
  pg-rekey cutover --table sessions --table api_access_tokens --lock-timeout 200ms --max-hold 2s
  pg-rekey cutover --table sessions --wait-for-lag 5m --max-lag-bytes 16MB
  pg-rekey cutover --table sessions --yes --json
  pg-rekey cutover --table sessions --hook-dir /etc/pg-rekey/hooks";

/// `rollback --help`.
pub const ROLLBACK: &str = "\
Examples:
  pg-rekey cutover --table sessions --way-back     # first: a cutover that keeps the way back
  pg-rekey rollback --table sessions --dry-run
  pg-rekey rollback --table sessions --lock-timeout 200ms --max-hold 2s --yes";

/// `finish --help`.
pub const FINISH: &str = "\
Examples:
  pg-rekey finish --table sessions
  pg-rekey finish --table sessions --table api_access_tokens --keep-old --yes";

/// `verify --help`.
pub const VERIFY: &str = "\
Examples:
  pg-rekey verify --table sessions
  pg-rekey verify --table sessions --table api_access_tokens --chunk-rows 50000 --json";

/// `demo --help`.
pub const DEMO: &str = "\
Examples:
  pg-rekey demo
  pg-rekey demo --users 20000 --rows 200000 --stream-for 10s
  pg-rekey demo --dsn postgres://postgres@localhost/postgres --keep";

/// `soak --help`.
pub const SOAK: &str = "\
Examples:
  pg-rekey soak --dsn postgres://postgres:pgrekey@localhost:5432/pgrekey --duration 10m";

/// `completions --help`.
pub const COMPLETIONS: &str = "\
Examples:
  pg-rekey completions bash > /etc/bash_completion.d/pg-rekey
  pg-rekey completions zsh > \"${fpath[1]}/_pg-rekey\"
  pg-rekey completions fish > ~/.config/fish/completions/pg-rekey.fish";

/// `man --help`.
pub const MAN: &str = "\
Examples:
  pg-rekey man > /usr/local/share/man/man1/pg-rekey.1
  pg-rekey man | man -l -";

/// The completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) -> Vec<u8> {
    let mut cmd = super::Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "pg-rekey", &mut out);
    out
}

/// The manual page: the top command, then each subcommand's page, as one
/// roff document.
pub fn man_page() -> std::io::Result<Vec<u8>> {
    let cmd = super::Cli::command();
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut out)?;
    for sub in cmd.get_subcommands() {
        let name = format!("pg-rekey-{}", sub.get_name());
        clap_mangen::Man::new(sub.clone())
            .title(name)
            .render(&mut out)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_and_man_page_cover_every_command() {
        let bash = String::from_utf8(completions(clap_complete::Shell::Bash)).unwrap();
        for c in [
            "rewrite",
            "cutover",
            "--wait-for-lag",
            "--prune",
            "--hook-dir",
        ] {
            assert!(bash.contains(c), "{c} missing from the bash completions");
        }
        let man = String::from_utf8(man_page().unwrap()).unwrap();
        assert!(man.contains(".TH pg-rekey"), "{}", &man[..200]);
        assert!(man.contains("pg\\-rekey\\-cutover") || man.contains("pg-rekey-cutover"));
        assert!(man.contains("wait\\-for\\-lag"));
    }
}
