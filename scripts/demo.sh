#!/bin/sh
# The README's first command: try pg-rekey on a fresh Debian (or Ubuntu) machine.
#
#   scripts/demo.sh [pg-rekey demo options, e.g. --users 5000 --rows 200000]
#
# 1. Finds PostgreSQL server binaries (initdb, pg_ctl): $PG_BIN, then
#    /usr/lib/postgresql/*/bin, then PATH. When there are none it installs
#    Debian's `postgresql` package with apt-get (as root, or through sudo).
#    The demo only uses the binaries: it runs its own throwaway cluster on a
#    free loopback port (as the unprivileged `postgres` account when run as
#    root) and removes it at the end. The package's own system cluster, if the
#    package starts one, is left alone.
# 2. Builds the release binary with cargo (Rust 1.85 or newer; https://rustup.rs).
# 3. Runs `pg-rekey demo`: example schema, concurrent workload, rewrite,
#    cutover, verification, summary. Its exit status is the script's: 0 only
#    when the verification passed.
set -eu

cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 2; }

have_server_binaries() {
    if [ -n "${PG_BIN:-}" ]; then
        [ -x "$PG_BIN/initdb" ] && return 0
        die "PG_BIN=$PG_BIN holds no initdb; point it at the folder holding initdb and pg_ctl, or unset it"
    fi
    for d in /usr/lib/postgresql/*/bin; do
        [ -x "$d/initdb" ] && return 0
    done
    command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1
}

# Run a command as root: directly when we are root, else through sudo.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root to run: $*; run this script as root or install sudo"
    fi
}

apt_install() {
    command -v apt-get >/dev/null 2>&1 ||
        die "no apt-get here; install the PostgreSQL server (initdb, pg_ctl) with your package manager, or set PG_BIN to the folder holding them"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

if have_server_binaries; then
    say "PostgreSQL server binaries found"
else
    say "no PostgreSQL server binaries found: installing Debian's postgresql package with apt-get (the demo runs its own throwaway cluster from these binaries)"
    apt_install postgresql
    have_server_binaries || die "postgresql was installed but initdb is still not found; set PG_BIN to the folder holding initdb and pg_ctl"
fi

if ! command -v cargo >/dev/null 2>&1; then
    [ -x "$HOME/.cargo/bin/cargo" ] && PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 ||
    die "cargo not found; install Rust 1.85 or newer with rustup (curl https://sh.rustup.rs -sSf | sh), then run this script again"
if ! command -v cc >/dev/null 2>&1; then
    say "no C compiler/linker found (Rust needs one to link): installing gcc and libc6-dev with apt-get"
    apt_install gcc libc6-dev
fi

say "building pg-rekey (release)"
cargo build --release --locked --bin pg-rekey

say "running: pg-rekey demo $*"
# The demo starts its own server; a DATABASE_URL from the environment would
# send it to that server instead. Pass --dsn explicitly for that.
exec env -u DATABASE_URL ./target/release/pg-rekey demo "$@"
