#!/usr/bin/env bash
# Decode and prompt speed under a real memory limit: each program runs alone inside a fresh
# memory cgroup limited to a fraction of the model file (default half), starting from a cold
# page cache. Compared: llama.cpp's `llama-bench` (default mmap), pocketvl with plain mmap
# (no --mem-budget) and pocketvl with the paging expert store (--mem-budget, one run per
# cache policy / prefetch mode asked for, optionally with the low-bit expert copy). Reports decode tok/s, prompt tok/s, time to first
# token, major page faults, peak cgroup memory and the store's hit rate.
#
# cgroup v1 (`memory.limit_in_bytes`, which charges the page cache of mapped and read files
# to the group, so mmap's resident weights count) is used where mounted, cgroup v2
# (`memory.max`) otherwise. Needs root (cgroup creation, drop_caches).
#
# llama-bench is built from the llama.cpp vendored in the llama-cpp-python sdist that
# scripts/llamacpp-interop.sh pins, but in its own build directory and with GGML_NATIVE=OFF and
# explicit AVX2/AVX-512 flags (a -march=native build of that version was seen to crash on
# real shapes).
#
# Usage:
#   benches/paging_cgroup.sh MODEL.gguf [MODEL.gguf ...]
# Environment:
#   THREADS        compute threads (default 2)
#   LIMIT_FRACTION cgroup limit as a fraction of the file size (default 0.5)
#   BUDGET_FRACTION --mem-budget as a fraction of the limit, leaving room for the KV cache,
#                  activations, tokenizer and binary (default 0.85)
#   N_PROMPT, N_GEN prompt and decode tokens (default 64, 32); REPS repetitions (default 2)
#   STORES         pocketvl configurations, space-separated: mmap or paged:POLICY:PREFETCH:IO
#                  or paged:POLICY:PREFETCH:IO:lowbit (--cold-experts lowbit: the sidecar
#                  cold-<model> written by `pocketvl convert --cold-experts TYPE` must exist)
#                  (default "mmap paged:lru:routed:direct")
#   SKIP_LLAMA=1   leave llama-bench out
#   LLAMACPP_DIR   build cache (default target/llamacpp-bench)
#   LLAMA_BENCH    a llama-bench binary built the same way, used instead of building one
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
THREADS="${THREADS:-2}"
LIMIT_FRACTION="${LIMIT_FRACTION:-0.5}"
BUDGET_FRACTION="${BUDGET_FRACTION:-0.85}"
N_PROMPT="${N_PROMPT:-64}"
N_GEN="${N_GEN:-32}"
REPS="${REPS:-2}"
STORES="${STORES:-mmap paged:lru:routed:direct}"
VERSION="$(sed -n 's/^PINNED_VERSION="\(.*\)"/\1/p' "$ROOT/scripts/llamacpp-interop.sh")"
LLAMACPP_DIR="${LLAMACPP_DIR:-$ROOT/target/llamacpp-bench}"

log() { echo "[paging_cgroup] $*" >&2; }
die() { echo "[paging_cgroup] ERROR: $*" >&2; exit 1; }
[ "$#" -ge 1 ] || die "usage: $0 MODEL.gguf [MODEL.gguf ...]"
for f in "$@"; do [ -f "$f" ] || die "no such file: $f"; done
[ "$(id -u)" -eq 0 ] || die "needs root (memory cgroups, drop_caches)"

# --- llama-bench ---------------------------------------------------------------------------
build_llama_bench() {
    LLAMA_BENCH="${LLAMA_BENCH:-$LLAMACPP_DIR/build/bin/llama-bench}"
    [ -x "$LLAMA_BENCH" ] && return 0
    local src="$LLAMACPP_DIR/llama_cpp_python-$VERSION"
    if [ ! -f "$src/vendor/llama.cpp/include/llama.h" ]; then
        mkdir -p "$LLAMACPP_DIR/sdist"
        python3 -m pip download --no-deps --no-binary llama-cpp-python \
            -d "$LLAMACPP_DIR/sdist" "llama-cpp-python==$VERSION" >&2 || die "pip download failed"
        tar -xzf "$LLAMACPP_DIR/sdist/llama_cpp_python-$VERSION.tar.gz" -C "$LLAMACPP_DIR"
    fi
    local isa=(-DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON)
    if grep -qw avx512f /proc/cpuinfo; then
        isa+=(-DGGML_AVX512=ON)
        grep -qw avx512_vnni /proc/cpuinfo && isa+=(-DGGML_AVX512_VNNI=ON)
        grep -qw avx512vbmi /proc/cpuinfo && isa+=(-DGGML_AVX512_VBMI=ON)
        grep -qw avx512_bf16 /proc/cpuinfo && isa+=(-DGGML_AVX512_BF16=ON)
    fi
    log "building llama-bench (GGML_NATIVE=OFF ${isa[*]})"
    cmake -S "$src/vendor/llama.cpp" -B "$LLAMACPP_DIR/build" -DCMAKE_BUILD_TYPE=Release \
        -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=OFF "${isa[@]}" -DGGML_CUDA=OFF -DGGML_METAL=OFF \
        -DLLAMA_CURL=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON >&2 || die "cmake configure failed"
    cmake --build "$LLAMACPP_DIR/build" -j "$(nproc)" --target llama-bench >&2 \
        || die "building llama-bench failed"
}
[ "${SKIP_LLAMA:-0}" = 1 ] || build_llama_bench
(cd "$ROOT" && cargo build --release --quiet) || die "cargo build --release failed"
POCKETVL="$ROOT/target/release/pocketvl"
export GGML_NO_BACKTRACE=1

# --- cgroup --------------------------------------------------------------------------------
if [ -f /sys/fs/cgroup/memory/memory.limit_in_bytes ]; then
    CG_ROOT=/sys/fs/cgroup/memory; CG_V=1
elif [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    CG_ROOT=/sys/fs/cgroup; CG_V=2
else
    die "no memory cgroup hierarchy under /sys/fs/cgroup"
fi
CG="$CG_ROOT/pocketvl-paging-$$"
TMP="$(mktemp -d)"
cleanup() { [ -d "$CG" ] && rmdir "$CG" 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT

cold_cache() { # file: drop the page cache (globally where allowed, else the file's pages)
    sync
    if ! { echo 3 >/proc/sys/vm/drop_caches; } 2>/dev/null; then
        python3 -c "import os,sys; fd=os.open(sys.argv[1], os.O_RDONLY); os.posix_fadvise(fd,0,0,os.POSIX_FADV_DONTNEED)" "$1"
    fi
}

# Runs "$@" alone in a fresh cgroup limited to $LIMIT bytes; leaves "peak majfaults" in
# $TMP/cg and the command's stdout/stderr in $TMP/out, $TMP/err; returns its status.
in_cgroup() {
    mkdir "$CG"
    if [ "$CG_V" = 1 ]; then
        echo "$LIMIT" >"$CG/memory.limit_in_bytes"
    else
        echo "$LIMIT" >"$CG/memory.max"
    fi
    local rc=0
    sh -c 'echo $$ >"$1/cgroup.procs"; shift; exec "$@"' sh "$CG" "$@" >"$TMP/out" 2>"$TMP/err" || rc=$?
    local peak faults
    if [ "$CG_V" = 1 ]; then
        peak="$(cat "$CG/memory.max_usage_in_bytes")"
        faults="$(awk '$1 == "pgmajfault" { print $2 }' "$CG/memory.stat")"
    else
        peak="$(cat "$CG/memory.peak" 2>/dev/null || echo nan)"
        faults="$(awk '$1 == "pgmajfault" { print $2 }' "$CG/memory.stat")"
    fi
    echo "$peak ${faults:-nan}" >"$TMP/cg"
    rmdir "$CG"
    return "$rc"
}

printf '%-20s %-28s %9s %9s %9s %9s %10s %9s %9s %9s %9s\n' file program limit_MB "pp tok/s" \
    "tg tok/s" "ttft ms" majfaults peak_MB "wall s" "hit rate" "low-bit"
for f in "$@"; do
    size="$(stat -c %s "$f")"
    LIMIT="$(python3 -c "print(int($size * $LIMIT_FRACTION))")"
    BUDGET="$(python3 -c "print(int($LIMIT * $BUDGET_FRACTION))")"
    runs=()
    [ "${SKIP_LLAMA:-0}" = 1 ] || runs+=(llama)
    for s in $STORES; do runs+=("$s"); done
    for r in "${runs[@]}"; do
        cold_cache "$f"
        t0="$(date +%s.%N)"
        rc=0
        case "$r" in
            llama)
                # --repack 0: by default the CPU backend copies Q4_0/Q8_0 weights into
                # anonymous repacked buffers (the whole file, not pageable), which a limit
                # below the file size kills at load (measured: status 137); without repack
                # the weights stay in the mapping, llama.cpp's paging-friendly mode.
                in_cgroup "$LLAMA_BENCH" -m "$f" -t "$THREADS" -p "$N_PROMPT" -n "$N_GEN" \
                    -r "$REPS" -lm mmap --repack 0 -o json || rc=$?
                ;;
            mmap)
                in_cgroup "$POCKETVL" bench model -m "$f" -t "$THREADS" -p "$N_PROMPT" \
                    -n "$N_GEN" --reps "$REPS" --no-vision --json || rc=$?
                ;;
            paged:*)
                IFS=: read -r _ pol pre io cold <<<"$r"
                in_cgroup "$POCKETVL" bench model -m "$f" -t "$THREADS" -p "$N_PROMPT" \
                    -n "$N_GEN" --reps "$REPS" --no-vision --json --stats \
                    --mem-budget "$BUDGET" --expert-cache "$pol" --expert-prefetch "$pre" \
                    --expert-io "$io" --cold-experts "${cold:-off}" || rc=$?
                ;;
        esac
        wall="$(python3 -c "import time; print(f'{time.time() - $t0:.1f}')")"
        read -r peak faults <"$TMP/cg"
        if [ "$rc" -ne 0 ]; then
            log "$r on $(basename "$f") failed (status $rc; 137 = killed by the cgroup):"
            tail -n 5 "$TMP/err" >&2
            printf '%-20s %-28s %9d %9s %9s %9s %10s %9.0f %9s %9s %9s\n' "$(basename "$f")" "$r" \
                "$((LIMIT / 1000000))" failed - - "$faults" "$(python3 -c "print($peak/1e6)")" "$wall" - -
            continue
        fi
        name="$r"
        [ "$r" = llama ] || [ "$r" = mmap ] || name="$r budget=$((BUDGET / 1000000))MB"
        python3 - "$r" "$TMP/out" "$N_PROMPT" <<EOF
import json, sys
kind, path, n_prompt = sys.argv[1], sys.argv[2], int(sys.argv[3])
text = open(path).read()
pp = tg = float("nan"); hit = "-"; low = "-"
if kind == "llama":
    for t in json.loads(text):
        if t["n_gen"] == 0: pp = t["avg_ts"]
        elif t["n_prompt"] == 0: tg = t["avg_ts"]
else:
    j = json.loads(text.strip().splitlines()[-1])
    pp, tg = j["prefill_tok_s"] or float("nan"), j["decode_tok_s"] or float("nan")
    st = j.get("expert_stats") or {}
    if st.get("hit_rate") is not None: hit = f"{st['hit_rate'] * 100:.1f}%"
    if st.get("lowbit_bytes") and st.get("requests"):
        low = f"{st['lowbit_served'] / st['requests'] * 100:.1f}%"
ttft = n_prompt / pp * 1000 if pp == pp and pp > 0 else float("nan")
print(f"{'$(basename "$f")':<20} {'$name':<28} {$LIMIT / 1e6:>9.0f} {pp:>9.2f} {tg:>9.2f} "
      f"{ttft:>9.0f} {int('$faults' if '$faults'.isdigit() else 0):>10d} {$peak / 1e6:>9.0f} "
      f"{float('$wall'):>9.1f} {hit:>9} {low:>9}")
EOF
    done
done
