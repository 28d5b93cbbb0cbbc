#!/usr/bin/env bash
# Bounded fuzzing of Waxwing's parsers and negotiation rules (cargo-fuzz,
# libFuzzer); see FUZZING.md.
#
#   scripts/fuzz.sh                 build, replay fuzz/regressions, fuzz each
#                                   target for FUZZ_SECONDS (default 60)
#   scripts/fuzz.sh TARGET...       only these targets
#
# Environment:
#   FUZZ_SECONDS   seconds per target (default 60)
#   FUZZ_RSS_MB    libFuzzer -rss_limit_mb (default 1024: ASan's own
#                  quarantine and shadow pages count in the RSS)
#   FUZZ_MALLOC_MB libFuzzer -malloc_limit_mb: most one input may allocate
#                  at once (default 512)
#   FUZZ_TIMEOUT   seconds one input may take (default 10)
#   FUZZ_SANITIZER address (default) or none (default under CI=true: building
#                  every dependency with AddressSanitizer took most of an
#                  hour on this 2-core machine under load; the targets are
#                  safe Rust, so CI keeps the panics, overflow checks,
#                  timeouts and the RSS limit, and a longer ASan run is in
#                  FUZZING.md)
#   FUZZ_SEED      libFuzzer -seed (default under CI=true: 1, so a CI run
#                  explores the same inputs as the same run here; random
#                  otherwise)
#   FUZZ_TARGET_DIR where the instrumented build goes (default fuzz/target;
#                  under CI=true /var/cache/waxwing/fuzz-target, kept between
#                  runs on one machine so only the first build is cold)
#
# Exits non-zero on any crash, failed assertion, leak, out-of-memory or
# slow input, after printing the artifact that reproduces it. Needs only
# the stable toolchain: RUSTC_BOOTSTRAP=1 lets it take the nightly-only
# flags cargo-fuzz passes (sanitizer, coverage instrumentation).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FUZZ="$ROOT/fuzz"
SECONDS_PER_TARGET=${FUZZ_SECONDS:-60}
RSS_MB=${FUZZ_RSS_MB:-1024}
MALLOC_MB=${FUZZ_MALLOC_MB:-512}
TIMEOUT=${FUZZ_TIMEOUT:-10}
SEED_FLAG=()
if [ "${CI:-}" = true ]; then
    SEED_FLAG=(-seed="${FUZZ_SEED:-1}")
    SANITIZER=${FUZZ_SANITIZER:-none}
    TARGET_DIR=${FUZZ_TARGET_DIR:-/var/cache/waxwing/fuzz-target}
else
    if [ -n "${FUZZ_SEED:-}" ]; then SEED_FLAG=(-seed="$FUZZ_SEED"); fi
    SANITIZER=${FUZZ_SANITIZER:-address}
    TARGET_DIR=${FUZZ_TARGET_DIR:-$ROOT/fuzz/target}
fi
mkdir -p "$TARGET_DIR"
# What every cargo-fuzz build and run of this script passes.
FUZZ_FLAGS=(-O -a -s "$SANITIZER" --target-dir "$TARGET_DIR")
export RUSTC_BOOTSTRAP=1
# A smaller ASan quarantine keeps the RSS limit about the input, not ASan.
export ASAN_OPTIONS=${ASAN_OPTIONS:-quarantine_size_mb=64:malloc_context_size=20}

ALL_TARGETS=(xml_stream c2s_negotiation s2s_negotiation component_negotiation sasl)
if [ $# -gt 0 ]; then TARGETS=("$@"); else TARGETS=("${ALL_TARGETS[@]}"); fi

# Largest input per target: big enough for a whole negotiation with a few
# stanzas, small enough that libFuzzer's mutations stay effective.
max_len() {
    case "$1" in
        xml_stream) echo 16384 ;;
        c2s_negotiation | s2s_negotiation | component_negotiation) echo 8192 ;;
        sasl) echo 1024 ;;
        *) echo 4096 ;;
    esac
}
dict() {
    case "$1" in
        sasl) echo "$FUZZ/sasl.dict" ;;
        *) echo "$FUZZ/xml.dict" ;;
    esac
}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install cargo-fuzz --locked </dev/null
fi

cd "$FUZZ"
echo "fuzz: building ${TARGETS[*]}"
# -O -a: optimised, with debug assertions, so integer overflow panics
# instead of wrapping.
build_log="$FUZZ/artifacts/build.log"
mkdir -p "$FUZZ/artifacts"
for t in "${TARGETS[@]}"; do
    if ! cargo fuzz build "${FUZZ_FLAGS[@]}" "$t" </dev/null >"$build_log" 2>&1; then
        tail -n 40 "$build_log" >&2
        echo "fuzz: cannot build target $t; log: fuzz/artifacts/build.log" >&2
        exit 1
    fi
done

status=0
for t in "${TARGETS[@]}"; do
    mkdir -p "corpus-run/$t" "artifacts/$t" "corpus/$t"
    log="artifacts/$t/fuzz.log"
    common=(-rss_limit_mb="$RSS_MB" -malloc_limit_mb="$MALLOC_MB" -timeout="$TIMEOUT"
        -max_len="$(max_len "$t")" -dict="$(dict "$t")" -artifact_prefix="artifacts/$t/"
        ${SEED_FLAG[@]+"${SEED_FLAG[@]}"})

    # Inputs that once failed must keep passing.
    if [ -d "regressions/$t" ] && [ -n "$(ls -A "regressions/$t")" ]; then
        echo "fuzz: $t: replaying regressions/$t"
        if ! cargo fuzz run "${FUZZ_FLAGS[@]}" "$t" "regressions/$t" -- "${common[@]}" -runs=0 \
            </dev/null >"$log" 2>&1; then
            echo "fuzz: $t: a regression input fails again; log: fuzz/$log" >&2
            tail -n 30 "$log" >&2
            status=1
            continue
        fi
    fi

    echo "fuzz: $t: ${SECONDS_PER_TARGET}s"
    # New inputs go to corpus-run/ (first directory); the committed seeds
    # in corpus/ are only read.
    if cargo fuzz run "${FUZZ_FLAGS[@]}" "$t" "corpus-run/$t" "corpus/$t" -- "${common[@]}" \
        -max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1 \
        </dev/null >"$log" 2>&1; then
        grep -E '^#[0-9]+[[:space:]]+DONE|^stat::number_of_executed_units|^stat::average_exec_per_sec|^stat::peak_rss_mb' "$log" |
            tr '\n' ' ' | sed "s/^/fuzz: $t: /"
        echo
    else
        status=1
        echo "fuzz: $t: FAILED; log: fuzz/$log" >&2
        grep -E 'ERROR: libFuzzer|panicked at|Test unit written to|SUMMARY' "$log" >&2 || tail -n 40 "$log" >&2
        artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
        if [ -n "$artifact" ]; then
            echo "fuzz: $t: reproduce with: (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run ${FUZZ_FLAGS[*]} $t $artifact)" >&2
        fi
    fi
done
exit $status
