#!/bin/sh
# Soak pg-rekey against the docker-compose PostgreSQL (docker-compose.yml at
# the repository's root):
#
#   scripts/soak.sh [duration] [pg-rekey soak options]      e.g. scripts/soak.sh 10m --rows 500000
#
# Starts the server (`docker compose up -d`), waits for its health check,
# builds the release binary, runs `pg-rekey soak` for the duration (default
# 60s) in a database it creates and drops on that server, then stops the
# server (`docker compose down`; the data volume is kept: add -v by hand to
# remove it). The exit status is the soak's: 0 only when the verification
# passed.
set -eu

cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 2; }

DURATION=60s
case "${1:-}" in
    ""|-*) ;;
    *) DURATION=$1; shift ;;
esac
PASSWORD=${POSTGRES_PASSWORD:-pgrekey}
PORT=${PGREKEY_SOAK_PORT:-5432}
DSN="postgres://postgres:${PASSWORD}@127.0.0.1:${PORT}/pgrekey"

if docker compose version >/dev/null 2>&1; then
    compose() { docker compose "$@"; }
elif command -v docker-compose >/dev/null 2>&1; then
    compose() { docker-compose "$@"; }
else
    die "neither 'docker compose' nor 'docker-compose' is available; install Docker Compose"
fi

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 || die "cargo not found; install Rust 1.85 or newer with rustup"
say "building pg-rekey (release)"
cargo build --release --locked --bin pg-rekey

say "starting PostgreSQL (docker compose up -d)"
compose up -d
stop_server() { say "stopping PostgreSQL (docker compose down)"; compose down; }
trap stop_server EXIT
trap 'exit 130' INT TERM

say "waiting for the server's health check"
tries=0
until [ "$(docker inspect -f '{{.State.Health.Status}}' "$(compose ps -q postgres)" 2>/dev/null)" = healthy ]; do
    tries=$((tries + 1))
    [ "$tries" -le 60 ] || die "the server did not become healthy within 2 minutes; see: docker compose logs postgres"
    sleep 2
done

say "running: pg-rekey soak --duration $DURATION $*"
status=0
./target/release/pg-rekey soak --dsn "$DSN" --duration "$DURATION" "$@" || status=$?
exit "$status"
