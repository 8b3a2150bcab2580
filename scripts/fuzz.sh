#!/usr/bin/env bash
# Fuzzing Gallop's parsers with cargo-fuzz (libFuzzer); the targets live in fuzz/.
#
#   scripts/fuzz.sh smoke [SECONDS]      every target for SECONDS each (default 20), starting
#                                        from its committed corpus and replaying
#                                        fuzz/regressions/; fails if any target crashes.
#   scripts/fuzz.sh run TARGET SECONDS   one target for longer; new inputs go into
#                                        fuzz/corpus/TARGET (minimize them afterwards)
#   scripts/fuzz.sh cmin TARGET          minimize fuzz/corpus/TARGET in place (keeps every
#                                        covered edge)
#   scripts/fuzz.sh list                 the targets
#
# Targets: plausible_body, batch_body (gateway bodies through gallop_ingest::BodyChecker),
# broker_message (decode_message vs decode_message_view), block_message (the compact block
# decoder), sketch_state (ClickHouse state readers of gallop_processor::sketch). The checks are
# the library gallop-fuzz (fuzz/src/<target>.rs says what each checks); fuzz_targets/ holds
# their libFuzzer entry points (the crate's `libfuzzer` feature). The test suite replays
# fuzz/corpus/ and fuzz/regressions/ through the same checks on stable (fuzz/tests/it), so CI
# needs neither nightly nor this script: it is for exploring.
#
# Needs a nightly toolchain (`rustup toolchain install nightly`); installs cargo-fuzz with
# `cargo install cargo-fuzz --locked` when `cargo fuzz` is missing. Works from any directory.
#
# Builds use `--sanitizer none`: Gallop's own crates forbid `unsafe`, so what the targets look
# for (panics, failed assertions, endless loops, runaway memory) needs no sanitizer, and
# libFuzzer's coverage feedback still works. (The fuzz crate no longer compiles librdkafka,
# whose C build once failed under AddressSanitizer.)
# `--codegen-units 16` (cargo-fuzz defaults to 1 for optimized builds) cuts the build by
# about 10% on 2 cores with no measurable loss of executions per second. The build keeps
# cargo-fuzz's default release mode with debug assertions and overflow checks; `--dev`
# builds ~30% faster but runs 10-15x fewer executions. Override with FUZZ_BUILD_ARGS.
#
# Crash inputs land in fuzz/artifacts/<target>/; reproduce one with
#   cargo +nightly fuzz run --sanitizer none --codegen-units 16 --features libfuzzer <target> fuzz/artifacts/<target>/crash-...
# (the same build options as here, so nothing is rebuilt).
# Environment: FUZZ_TARGET_DIR (build cache), FUZZ_BUILD_ARGS (cargo fuzz build/run options), FUZZ_JOBS (libFuzzer -fork
# workers per target, default 1 = no fork).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

TARGETS=(plausible_body batch_body broker_message block_message sketch_state)
read -r -a BUILD_ARGS <<<"${FUZZ_BUILD_ARGS:---sanitizer none --codegen-units 16}"
# The targets' libFuzzer entry points are behind the fuzz crate's `libfuzzer` feature.
BUILD_ARGS+=(--features libfuzzer)
# Builds go to a cache outside the checkout (FUZZ_TARGET_DIR), so a fresh clone rebuilds only
# Gallop's own crates, not every dependency. A machine without the cache builds everything once.
TARGET_DIR="${FUZZ_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/gallop/fuzz-target}"
BUILD_ARGS+=(--target-dir "$TARGET_DIR")
JOBS="${FUZZ_JOBS:-1}"

usage() {
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
}

# Longest input libFuzzer generates per target: bodies and messages are text, up to a few KiB
# is plenty; a large uniqHLL12 state is 2652 bytes (plus the k byte).
max_len() {
    case "$1" in
        sketch_state) echo 4096 ;;
        *) echo 8192 ;;
    esac
}

known_target() {
    local t
    for t in "${TARGETS[@]}"; do
        [[ "$t" == "$1" ]] && return 0
    done
    echo "unknown target '$1'; targets: ${TARGETS[*]}" >&2
    exit 2
}

ensure_tools() {
    if ! cargo +nightly --version >/dev/null 2>&1; then
        echo "a nightly toolchain is needed: rustup toolchain install nightly" >&2
        exit 1
    fi
    if ! cargo fuzz --version >/dev/null 2>&1; then
        echo "installing cargo-fuzz" >&2
        cargo install cargo-fuzz --locked
    fi
}

# fuzz TARGET SECONDS CORPUS_DIR...: the first corpus dir receives new inputs.
fuzz() {
    local target="$1" seconds="$2"
    shift 2
    local fork=()
    if [[ "$JOBS" -gt 1 ]]; then
        fork=(-fork="$JOBS" -ignore_crashes=0)
    fi
    cargo +nightly fuzz run "${BUILD_ARGS[@]}" "$target" "$@" -- \
        -max_total_time="$seconds" -max_len="$(max_len "$target")" -timeout=30 -rss_limit_mb=2048 \
        -print_final_stats=1 "${fork[@]}"
}

cmd="${1:-}"
case "$cmd" in
    smoke)
        seconds="${2:-20}"
        ensure_tools
        start=$SECONDS
        # One build for all targets (they share every dependency).
        cargo +nightly fuzz build "${BUILD_ARGS[@]}"
        echo "fuzz.sh: build took $((SECONDS - start)) s" >&2
        failed=()
        for target in "${TARGETS[@]}"; do
            # New inputs go to a scratch dir, so a smoke run leaves the committed corpus alone;
            # the reproducers of fixed findings (fuzz/regressions/) are replayed first thing.
            scratch="$(mktemp -d)"
            dirs=("$scratch" "fuzz/corpus/$target")
            if [[ -d "fuzz/regressions/$target" ]]; then
                dirs+=("fuzz/regressions/$target")
            fi
            echo "=== $target: ${seconds}s from ${dirs[*]:1} ===" >&2
            if ! fuzz "$target" "$seconds" "${dirs[@]}"; then
                failed+=("$target")
            fi
            rm -rf "$scratch"
        done
        echo "fuzz.sh: smoke took $((SECONDS - start)) s" >&2
        if [[ ${#failed[@]} -gt 0 ]]; then
            echo "fuzz.sh: crashes in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
            exit 1
        fi
        echo "fuzz.sh: no crashes" >&2
        ;;
    run)
        [[ $# -eq 3 ]] || usage
        known_target "$2"
        ensure_tools
        mkdir -p "fuzz/corpus/$2"
        dirs=("fuzz/corpus/$2")
        if [[ -d "fuzz/regressions/$2" ]]; then
            dirs+=("fuzz/regressions/$2")
        fi
        fuzz "$2" "$3" "${dirs[@]}"
        echo "fuzz.sh: new inputs are in fuzz/corpus/$2; minimize with: scripts/fuzz.sh cmin $2" >&2
        ;;
    cmin)
        [[ $# -eq 2 ]] || usage
        known_target "$2"
        ensure_tools
        # Keep a smallest set of inputs that covers every edge (hit counts ignored): a
        # fraction of what plain -merge=1 keeps, for the same edge coverage.
        cargo +nightly fuzz cmin "${BUILD_ARGS[@]}" "$2" "fuzz/corpus/$2" -- \
            -max_len="$(max_len "$2")" -use_counters=0 -set_cover_merge=1
        ;;
    list)
        printf '%s\n' "${TARGETS[@]}"
        ;;
    *)
        usage
        ;;
esac
