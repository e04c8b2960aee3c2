#!/usr/bin/env bash
# Builds every cargo-fuzz target (fuzz/) and runs each for a bounded time from its committed
# seed corpus (fuzz/corpus/<target>), failing on any crash or broken invariant.
# Usage: .ci/fuzz.sh [SECONDS_PER_TARGET]   (default 20; WEFT_FUZZ_SECONDS also sets it)
# A longer run of one target (docs/testing.md):
#   cargo +nightly fuzz run <target> fuzz/corpus/<target> -- -max_total_time=600
# Needs a nightly toolchain (libFuzzer's sanitizer flags) and cargo-fuzz. Without nightly it
# skips, exit 0, and says so; cargo-fuzz is installed into the CI cache when missing. The build
# goes to a target folder in that cache, so a later run rebuilds only Weft's own crates.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-${WEFT_FUZZ_SECONDS:-20}}"
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz: SKIPPED, no nightly toolchain (rustup toolchain install nightly to run the fuzz targets)"
    exit 0
fi
cache="${WEFT_CI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/weft-ci}"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    [ -x "$cache/cargo-fuzz-0.13.2/bin/cargo-fuzz" ] \
        || cargo install --locked --quiet --version 0.13.2 --root "$cache/cargo-fuzz-0.13.2" cargo-fuzz
    export PATH="$cache/cargo-fuzz-0.13.2/bin:$PATH"
fi
target_dir="${WEFT_FUZZ_TARGET_DIR:-$cache/fuzz-target}"
started=$(date +%s)
cargo +nightly fuzz build --target-dir "$target_dir"
echo "fuzz: targets built in $(( $(date +%s) - started ))s"
total=0
for target in $(cargo +nightly fuzz list); do
    # A scratch corpus: what the run finds stays out of the clone; the seeds are only read.
    work=$(mktemp -d)
    mkdir "$work/corpus"
    if ! cargo +nightly fuzz run --target-dir "$target_dir" "$target" "$work/corpus" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 > "$work/log" 2>&1; then
        tail -n 60 "$work/log" >&2
        echo "fuzz: $target FAILED; the input is in fuzz/artifacts/$target/" >&2
        exit 1
    fi
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$work/log" | grep -o '[0-9]*$' || echo 0)
    total=$((total + runs))
    echo "fuzz: $target ${seconds}s, $runs executions, corpus $(ls "$work/corpus" | wc -l) inputs"
    rm -rf "$work"
done
echo "fuzz: all targets passed, $total executions"
