#!/usr/bin/env bash
# scripts/fuzz.sh — run every cargo-fuzz target of the workspace, one after the other.
#
# NOT run in CI: CI is stable-only and time-limited, while libFuzzer needs a nightly
# toolchain and minutes per target. Run it by hand before a release or after touching a
# parser. See docs/FUZZING.md for what each target checks and the latest results.
#
# Targets (each fuzz crate is its own workspace, so the main workspace never builds it):
#   parse      crates/canopy-proto/fuzz     protocol parser, every role, whole vs chunked feed
#   parse_str  crates/canopy-conf/fuzz      config parser + option builder + validation
#   sublist    crates/canopy-subject/fuzz   Sublist vs brute-force model, subject validators
#   transform  crates/canopy-subject/fuzz   subject transforms: parse random mappings, apply to random subjects
#   decoders   crates/canopy-store/fuzz     store decoders: records, sidecar indexes, snapshots, consumer state
#   jwt        crates/canopy-server/fuzz    JWT decoding and operator/account verification
#   creds      crates/canopy-server/fuzz    .creds files: JWT and seed blocks, claims, nkey
#   server_url crates/canopy-server/fuzz    leaf/route URLs; host:port parses back the same
#   monitor_query crates/canopy-server/fuzz monitoring query strings on every endpoint
#
# For each target the script builds it, replays the saved crash inputs in
# crates/<crate>/fuzz/regressions/ (if any), then fuzzes for SECONDS, growing the local
# corpus in crates/<crate>/fuzz/corpus/<target>/ (gitignored). A crash writes its input to
# crates/<crate>/fuzz/artifacts/<target>/ (gitignored): copy it into regressions/ to keep it.
# All targets run even when one fails; the exit status is non-zero if any build, replay
# or fuzz run failed.
#
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
#   SECONDS   fuzzing time per target (default 60)
#   TARGET    any of parse, parse_str, sublist, transform, decoders, jwt, creds, server_url,
#             monitor_query (default: all)
# Environment:
#   CARGO_TARGET_DIR  honoured (default: each fuzz crate's own fuzz/target)
#   FUZZ_ARGS         extra libFuzzer flags, e.g. FUZZ_ARGS="-fork=2 -ignore_crashes=1"
#   FUZZ_LOG_DIR      where the per-target logs go (default: a fresh temp dir, kept)
#
# Requirements (one-time setup):
#   rustup toolchain install nightly
#   cargo install cargo-fuzz          # any toolchain can build it; it runs as `cargo +nightly fuzz`
# libFuzzer itself is compiled from source by the libfuzzer-sys crate (needs a C++ compiler).
set -uo pipefail

usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

SECS=60
case "${1:-}" in
    -h | --help) usage; exit 0 ;;
    '' | *[!0-9]*) ;;
    *) SECS=$1; shift ;;
esac

ROOT=$(cd "$(dirname "$0")/.." && pwd)
declare -A CRATE=([parse]=canopy-proto [parse_str]=canopy-conf [sublist]=canopy-subject [transform]=canopy-subject [decoders]=canopy-store [jwt]=canopy-server [creds]=canopy-server [server_url]=canopy-server [monitor_query]=canopy-server)
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=(parse parse_str sublist transform decoders jwt creds server_url monitor_query)
for t in "${TARGETS[@]}"; do
    [ -n "${CRATE[$t]:-}" ] || { echo "fuzz.sh: unknown target $t (try --help)" >&2; exit 2; }
done

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz.sh: no nightly toolchain; install it with: rustup toolchain install nightly" >&2
    exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: cargo-fuzz missing; install it with: cargo install cargo-fuzz" >&2
    exit 2
fi

LOGS=${FUZZ_LOG_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/canopy-fuzz.XXXXXX")}
mkdir -p "$LOGS"
# shellcheck disable=SC2206 # word splitting of FUZZ_ARGS is intended
EXTRA=(${FUZZ_ARGS:-})
FAILED=0
ROWS=()

for t in "${TARGETS[@]}"; do
    dir="$ROOT/crates/${CRATE[$t]}"
    log="$LOGS/$t.log"
    echo "== $t (${CRATE[$t]}): build"
    if ! (cd "$dir" && cargo +nightly fuzz build "$t") >"$LOGS/$t.build.log" 2>&1; then
        tail -20 "$LOGS/$t.build.log"
        ROWS+=("$t|$SECS|-|-|BUILD FAILED")
        FAILED=1
        continue
    fi

    replay=none
    shopt -s nullglob
    saved=("$dir"/fuzz/regressions/*)
    shopt -u nullglob
    if [ ${#saved[@]} -gt 0 ]; then
        echo "== $t: replay ${#saved[@]} saved input(s) from fuzz/regressions/"
        if (cd "$dir" && cargo +nightly fuzz run "$t" "${saved[@]}") >"$LOGS/$t.replay.log" 2>&1; then
            replay=ok
        else
            replay=FAIL
            FAILED=1
            grep -E 'panicked at|^Running:|SUMMARY' "$LOGS/$t.replay.log" | head -20
        fi
    fi

    echo "== $t: fuzz for ${SECS}s (log: $log)"
    (cd "$dir" && cargo +nightly fuzz run "$t" -- \
        -max_total_time="$SECS" -print_final_stats=1 "${EXTRA[@]}") >"$log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    corpus=$(find "$dir/fuzz/corpus/$t" -type f 2>/dev/null | wc -l)
    if [ $rc -eq 0 ]; then
        result=ok
    else
        result="CRASH (rc $rc)"
        FAILED=1
        grep -E -A2 'panicked at|ERROR: AddressSanitizer|ERROR: libFuzzer|SUMMARY' "$log" | head -30
        grep -E 'Test unit written to' "$log" | tail -1
    fi
    ROWS+=("$t|$SECS|${execs:--}|$corpus|$result, regressions: $replay")
done

echo
printf '%-10s %8s %12s %8s  %s\n' target seconds executions corpus result
for r in "${ROWS[@]}"; do
    IFS='|' read -r a b c d e <<<"$r"
    printf '%-10s %8s %12s %8s  %s\n' "$a" "$b" "$c" "$d" "$e"
done
echo "logs: $LOGS"
exit $FAILED
