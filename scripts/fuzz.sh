#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time (libFuzzer, AddressSanitizer) and
# prints the executions per target. .ci/run calls it after the tests; a crash fails it and
# leaves the input under target/fuzz-artifacts/<target>/ (add it to fuzz/corpus and a
# regression test, then fix).
#
#   ./scripts/fuzz.sh              every target, FUZZ_SECONDS (default 60) each
#   ./scripts/fuzz.sh gguf image   only these
#
# The committed seeds in fuzz/corpus/<target> are read, never written; what the fuzzer finds
# goes to target/fuzz-corpus/<target> and is kept between runs on the same machine.
# fuzz/dict/<target>.dict, where there is one, is the target's libFuzzer dictionary.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET="${FUZZ_SECONDS:-60}"
CARGO_FUZZ_VERSION=0.13.2
if [ $# -gt 0 ]; then
    targets=("$@")
else
    targets=(gguf safetensors image chat grounding server)
fi

# shellcheck source=scripts/nightly.sh
. scripts/nightly.sh
# cargo-fuzz passes nightly-only flags (-Zsanitizer=address): no nightly is a failure.
require_nightly fuzz
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    start=$(date +%s)
    cargo install --quiet --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
    echo "[fuzz] cargo-fuzz $CARGO_FUZZ_VERSION installed in $(( $(date +%s) - start )) s"
fi
fuzz=(cargo "+$NIGHTLY" fuzz)

start=$(date +%s)
"${fuzz[@]}" build -O
echo "[fuzz] built in $(( $(date +%s) - start )) s"

failed=()
summary=()
for t in "${targets[@]}"; do
    work="target/fuzz-corpus/$t"
    artifacts="target/fuzz-artifacts/$t/"
    mkdir -p "$work" "$artifacts"
    log="target/fuzz-$t.log"
    dict=()
    [ -f "fuzz/dict/$t.dict" ] && dict=("-dict=fuzz/dict/$t.dict")
    status=0
    "${fuzz[@]}" run -O "$t" "$work" "fuzz/corpus/$t" -- \
        -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048 -timeout=10 \
        -print_final_stats=1 -artifact_prefix="$artifacts" "${dict[@]}" >"$log" 2>&1 || status=$?
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
    if [ "$status" -ne 0 ]; then
        failed+=("$t")
        summary+=("$t: CRASH after ${execs:-?} executions (exit $status), see $log and $artifacts")
        tail -40 "$log"
    else
        summary+=("$t: ${execs:-?} executions in ${SECONDS_PER_TARGET} s, no crash")
    fi
done

echo "[fuzz] summary:"
printf '  %s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "[fuzz] crashes in: ${failed[*]}"
    exit 1
fi
