#!/usr/bin/env bash
# The whole test suite, from a fresh machine: lint, build, Rust tests (unit,
# transcript, integration; SQLite and PostgreSQL), then real-client interop
# tests (tests/interop, slixmpp) against the built binary, then a bounded
# fuzzing run of every cargo-fuzz target (scripts/fuzz.sh).
#
# Installs what it needs and skips what is already there, so it is quick to
# run again. Every step runs even when an earlier one failed (except tests that
# need a binary that did not build); the exit code is non-zero if any failed.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Versions the interop suite is verified with.
SLIXMPP_VERSION=1.17.0
PYTEST_VERSION=9.2.0
PYTEST_TIMEOUT_VERSION=2.4.0

PG_URL_BASE="postgres://postgres@127.0.0.1:5432"
PG_DB=test

export WAXWING_TEST_POSTGRES="${WAXWING_TEST_POSTGRES:-$PG_URL_BASE/$PG_DB}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

failed=()
step() { echo; echo "==> $*"; }
fail() { echo "!!! FAILED: $1" >&2; failed+=("$1"); }

apt_updated=0
apt_install() {
    if [ "$apt_updated" = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_python_packages() {
    if python3 - "$SLIXMPP_VERSION" "$PYTEST_VERSION" "$PYTEST_TIMEOUT_VERSION" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
want = dict(zip(("slixmpp", "pytest", "pytest-timeout"), sys.argv[1:]))
sys.exit(0 if all(version(p) == v for p, v in want.items()) else 1)
PY
    then
        return 0
    fi
    if ! python3 -m pip --version >/dev/null 2>&1; then
        apt_install python3-pip
    fi
    python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore \
        "slixmpp==$SLIXMPP_VERSION" "pytest==$PYTEST_VERSION" \
        "pytest-timeout==$PYTEST_TIMEOUT_VERSION"
}

ensure_postgres() {
    if ! command -v pg_ctlcluster >/dev/null 2>&1; then
        apt_install postgresql postgresql-client
    fi
    if ! pg_isready -q -h 127.0.0.1 -p 5432; then
        local version
        version="$(ls /etc/postgresql | sort -V | tail -n1)"
        pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
        for _ in $(seq 1 30); do
            pg_isready -q -h 127.0.0.1 -p 5432 && break
            sleep 1
        done
        pg_isready -q -h 127.0.0.1 -p 5432 || return 1
    fi
    # A fresh database each run: migrations left by another checkout (a
    # branch with a migration this one lacks, or an edited one) would make
    # sqlx refuse to start, whatever this checkout's code does.
    dropdb -h 127.0.0.1 -U postgres --if-exists --force "$PG_DB" &&
        createdb -h 127.0.0.1 -U postgres "$PG_DB"
}

# Redis for the cluster tests (tests/cluster.rs: three nodes sharing it,
# each test run with a key prefix of its own; the Redis-restart test runs a
# redis-server of its own, so the binary is needed too). Started as a
# daemon on 127.0.0.1:6379 when nothing answers there.
ensure_redis() {
    if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
        apt_install redis-server redis-tools || return 1
    fi
    if redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; then
        return 0
    fi
    redis-server --bind 127.0.0.1 --port 6379 --daemonize yes --save '' --appendonly no \
        >/dev/null || return 1
    for _ in $(seq 1 30); do
        redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG && return 0
        sleep 0.2
    done
    return 1
}

# Prosody and ejabberd (Debian packages) for tests/interop/federation. They run there as
# their own users with configs in a temporary directory; the packaged system instances
# would listen on 0.0.0.0:5222/5269 (and ejabberd's node ejabberd@localhost), so they are
# kept from starting at install (policy-rc.d), stopped if running, and disabled.
ensure_federation_peers() {
    local missing=() p created_policy=0
    for p in prosody ejabberd openssl; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    if [ "${#missing[@]}" -ne 0 ]; then
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
            chmod 755 /usr/sbin/policy-rc.d
            created_policy=1
        fi
        apt_install "${missing[@]}"
        local rc=$?
        [ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
        [ "$rc" = 0 ] || return 1
    fi
    # Stop and disable the packaged instances (no-ops when they are not running).
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        systemctl disable --now prosody ejabberd >/dev/null 2>&1 || true
    else
        update-rc.d prosody disable >/dev/null 2>&1 || true
        update-rc.d ejabberd disable >/dev/null 2>&1 || true
        if [ -s /run/prosody/prosody.pid ] && kill -0 "$(cat /run/prosody/prosody.pid)" 2>/dev/null; then
            kill "$(cat /run/prosody/prosody.pid)" || true
        fi
        if pgrep -u ejabberd -f 'beam.smp.*ejabberd@localhost' >/dev/null 2>&1; then
            su ejabberd -s /bin/sh -c 'ejabberdctl stop' >/dev/null 2>&1 || true
        fi
    fi
}

step "setup: Python packages (slixmpp $SLIXMPP_VERSION, pytest $PYTEST_VERSION)"
ensure_python_packages || fail "python packages"

# xmpp.js for tests/interop/test_xmppjs.py: the versions its package-lock.json
# pins, from the npm registry. Node comes from the system (Debian's nodejs
# when missing); without it the tests skip, which fails a CI=true run.
ensure_xmppjs() {
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        apt_install nodejs npm || return 1
    fi
    (cd tests/interop/xmppjs && npm ci --no-audit --no-fund --loglevel=error)
}

step "setup: xmpp.js for the SASL2/FAST interop tests (npm ci in tests/interop/xmppjs)"
ensure_xmppjs || fail "xmpp.js (npm ci)"

# Converse.js and playwright-core for tests/interop/test_web.py (pinned by
# tests/interop/web/package-lock.json), and Debian's Chromium that
# playwright-core drives headless (no browser download from elsewhere).
ensure_web_client() {
    if [ ! -x /usr/bin/chromium ]; then
        apt_install chromium || return 1
    fi
    (cd tests/interop/web && npm ci --no-audit --no-fund --loglevel=error)
}

step "setup: Converse.js and Chromium for the web interop test (npm ci in tests/interop/web, apt chromium)"
ensure_web_client || fail "converse.js/chromium"

# Debian's docker-compose validates docker-compose.yml without a daemon.
ensure_compose() {
    command -v docker-compose >/dev/null 2>&1 || apt_install docker-compose
}

step "setup: a C compiler and make (jemalloc, the server's allocator, is built from source)"
{ command -v cc >/dev/null 2>&1 && command -v make >/dev/null 2>&1; } || apt_install build-essential || fail "build-essential"

step "setup: docker-compose (Debian's) to validate docker-compose.yml"
ensure_compose || fail "docker-compose"

step "setup: PostgreSQL at 127.0.0.1:5432 (WAXWING_TEST_POSTGRES=$WAXWING_TEST_POSTGRES)"
ensure_postgres || fail "postgresql"

step "setup: Redis at 127.0.0.1:6379 (cluster tests)"
ensure_redis || fail "redis"

step "setup: Prosody and ejabberd for the federation interop tests (packaged instances stopped)"
ensure_federation_peers || fail "prosody/ejabberd"

step "cargo fmt --check"
cargo fmt --all --check || fail "cargo fmt"

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --quiet --all-targets -- -D warnings || fail "cargo clippy"

step "cargo clippy --no-default-features --bin waxwing (the system allocator still builds)"
cargo clippy --quiet --no-default-features --bin waxwing -- -D warnings || fail "cargo clippy --no-default-features"

step "cargo build --bins"
built=1
cargo build --quiet --bins || { fail "cargo build"; built=0; }

step "containers: docker-compose.yml and docker/waxwing.toml are valid"
docker-compose -f docker-compose.yml config -q || fail "docker-compose config"
if [ "$built" = 1 ]; then
    target/debug/waxwing check-config --config docker/waxwing.toml || fail "docker/waxwing.toml"
fi

step "Rust tests"
if command -v cargo-nextest >/dev/null 2>&1; then
    # A run that selects no test fails (a typo in a filter must not pass);
    # under CI the `ci` profile of .config/nextest.toml applies (hang limits).
    profile=default
    [ "${CI:-}" = true ] && profile=ci
    cargo nextest run --profile "$profile" --no-fail-fast --no-tests=fail || fail "cargo nextest"
    if [ -f src/lib.rs ]; then
        cargo test --quiet --doc --no-fail-fast || fail "doc tests"
    fi
else
    cargo test --no-fail-fast || fail "cargo test"
fi

step "interop tests (tests/interop, slixmpp and xmpp.js against ${WAXWING_BIN:-target/debug/waxwing})"
# A WAXWING_BIN from the environment must be a program; otherwise the tests
# would run against whatever it names, or fail far from the cause.
if [ -n "${WAXWING_BIN:-}" ] && [ ! -x "$WAXWING_BIN" ]; then
    fail "interop tests (WAXWING_BIN=$WAXWING_BIN is not an executable file)"
elif [ "$built" = 1 ]; then
    # Under CI a skipped interop test fails the run (tests/interop/conftest.py).
    WAXWING_BIN="${WAXWING_BIN:-target/debug/waxwing}" \
        python3 -m pytest -q -rs tests/interop || fail "interop tests"
else
    fail "interop tests (not run: no binary)"
fi

step "fuzzing (scripts/fuzz.sh: regressions replayed, then ${FUZZ_SECONDS:-60} s per target)"
# Skipped only on request (a quick local run); CI always fuzzes.
if [ "${WAXWING_SKIP_FUZZ:-}" = 1 ] && [ "${CI:-}" != true ]; then
    echo "!!! fuzzing SKIPPED (WAXWING_SKIP_FUZZ=1)" >&2
else
    bash ./scripts/fuzz.sh </dev/null || fail "fuzzing"
fi

echo
if [ "${#failed[@]}" -ne 0 ]; then
    echo "==> FAILED steps: ${failed[*]}"
    exit 1
fi
echo "==> all steps passed"
