#!/usr/bin/env bash
# pocketvl against llama.cpp's `llama-bench` on the same language-model GGUF: prompt processing
# (pp, default 512 tokens) and decode (tg, default 64 tokens), alternating the two programs
# within each round so that both see the same machine load, and printing the ratios.
#
# llama.cpp's source is the one scripts/llamacpp-interop.sh fetches (same pinned sdist, same
# cache). llama-bench gets its own build directory with the x86 instruction sets named
# explicitly (GGML_NATIVE=OFF; AVX, AVX2, FMA, F16C, AVX-512 F/BW/VL, VNNI, BF16 where the CPU has
# AVX-512): a -march=native build of this version crashed (SIGSEGV in the prompt phase) on the
# real Tiny shapes, and a statically linked binary can be reused from another checkout.
#
# Usage:
#   benches/compare_llamacpp.sh [NAME.gguf ...]
# Default files: /work/models/tiny-{q4_0,q8_0,q4_k}.gguf (real Tiny shapes). For the Small
# shape, make the pair with `pocketvl synth --variant deepseek-vl2-small --quant q4_0 -o ...`
# (or synth + convert) and pass it.
# Environment:
#   THREADS   thread counts to compare (default "1 2")
#   ROUNDS    alternating rounds per file and thread count (default 2)
#   REPS      repetitions inside each program's run (default 2)
#   N_PROMPT  prompt tokens (default 512); N_GEN decode tokens (default 64)
#   DEPTH     tokens already in the context before both measurements (llama-bench's -d,
#             `bench model -d`; default 0): an image chat decodes at a depth of ~1,000;
#             at a depth the roofline column (`roof+kv`) counts the KV cache's bytes too
#   LLAMA_CACHE_TYPE  llama-bench's KV cache type for keys and values (-ctk/-ctv; default:
#             its own default, f16; the pinned llama-bench takes f16, bf16, q8_0, q4_0, ...,
#             not f32)
#   CACHE_TYPE  pocketvl's KV cache type (`--cache-type`: f32, the default, or f16, the type
#             llama.cpp stores by default): at a depth an f32 cache reads twice f16's bytes
#   LLAMACPP_DIR, LLAMACPP_JOBS: passed to scripts/llamacpp-interop.sh
#   LLAMA_BENCH_BUILD  llama-bench's build directory (default $LLAMACPP_DIR/bench-build, or
#                      bench-build-avx2 with ISA=avx2); the binary is
#                      $LLAMA_BENCH_BUILD/bin/llama-bench, built once
#   ISA       "avx2" compares both programs as an AVX2-only CPU runs them (most laptops: Intel
#             client cores, AMD before Zen 4): llama-bench built without AVX-512, pocketvl with
#             POCKETVL_MAX_TIER=avx2. "avx2-vnni" as a CPU with AVX-VNNI but no AVX-512 runs
#             them (Intel Core 12th generation on): llama-bench built with GGML_AVX_VNNI,
#             pocketvl with POCKETVL_MAX_TIER=avx2-vnni; needs a CPU with AVX-VNNI to run (the
#             build works anywhere). Default: each program's best for this CPU.
#   POCKETVL_BIN  a built pocketvl to time instead of building target/release/pocketvl (for a
#             machine without the Rust toolchain)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
THREADS="${THREADS:-1 2}"
ROUNDS="${ROUNDS:-2}"
REPS="${REPS:-2}"
N_PROMPT="${N_PROMPT:-512}"
N_GEN="${N_GEN:-64}"
DEPTH="${DEPTH:-0}"
LLAMA_CACHE_TYPE="${LLAMA_CACHE_TYPE:-}"
CACHE_TYPE="${CACHE_TYPE:-f32}"
[[ "$DEPTH" =~ ^[0-9]+$ ]] || { echo "[compare_llamacpp] ERROR: DEPTH must be a whole number, not '$DEPTH'" >&2; exit 1; }
# Each row compares both measurements: a 0 would leave one column without a number.
for v in N_PROMPT N_GEN; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] \
        || { echo "[compare_llamacpp] ERROR: $v must be a whole number of at least 1, not '${!v}'" >&2; exit 1; }
done
FILES=("$@")
if [ "${#FILES[@]}" -eq 0 ]; then
    FILES=(/work/models/tiny-q4_0.gguf /work/models/tiny-q8_0.gguf /work/models/tiny-q4_k.gguf)
fi

log() { echo "[compare_llamacpp] $*" >&2; }
die() { echo "[compare_llamacpp] ERROR: $*" >&2; exit 1; }
for f in "${FILES[@]}"; do [ -f "$f" ] || die "no such file: $f"; done

LLAMACPP_DIR="${LLAMACPP_DIR:-$ROOT/target/llamacpp}"
ISA="${ISA:-native}"
case "$ISA" in
    native) BUILD_NAME=bench-build ;;
    avx2) BUILD_NAME=bench-build-avx2; export POCKETVL_MAX_TIER=avx2 ;;
    avx2-vnni) BUILD_NAME=bench-build-avx2-vnni; export POCKETVL_MAX_TIER=avx2-vnni ;;
    *) die "ISA must be native, avx2 or avx2-vnni, not '$ISA'" ;;
esac
LLAMA_BENCH_BUILD="${LLAMA_BENCH_BUILD:-$LLAMACPP_DIR/$BUILD_NAME}"
LLAMA_BENCH="$LLAMA_BENCH_BUILD/bin/llama-bench"
if [ ! -x "$LLAMA_BENCH" ]; then
    LLAMA_SRC="$(LLAMACPP_DIR="$LLAMACPP_DIR" "$ROOT/scripts/llamacpp-interop.sh" --fetch-only)" \
        || die "fetching llama.cpp's source failed"
    AVX512=OFF
    [ "$ISA" = native ] && grep -q avx512_vnni /proc/cpuinfo 2>/dev/null \
        && grep -q avx512_bf16 /proc/cpuinfo && AVX512=ON
    AVX_VNNI=OFF
    [ "$ISA" = avx2-vnni ] && AVX_VNNI=ON
    log "configuring llama-bench in $LLAMA_BENCH_BUILD (AVX-512: $AVX512, AVX-VNNI: $AVX_VNNI)"
    cmake -S "$LLAMA_SRC" -B "$LLAMA_BENCH_BUILD" -DCMAKE_BUILD_TYPE=Release \
        -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=OFF \
        -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX_VNNI="$AVX_VNNI" \
        -DGGML_AVX512="$AVX512" -DGGML_AVX512_VNNI="$AVX512" -DGGML_AVX512_BF16="$AVX512" \
        -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_OPENCL=OFF \
        -DLLAMA_CURL=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON >&2 \
        || { rm -f "$LLAMA_BENCH_BUILD/CMakeCache.txt"; die "cmake configure of llama-bench failed"; }
    cmake --build "$LLAMA_BENCH_BUILD" --config Release -j "${LLAMACPP_JOBS:-$(nproc)}" \
        --target llama-bench >&2 || die "building llama-bench failed"
fi
[ -x "$LLAMA_BENCH" ] || die "no $LLAMA_BENCH after the build"
if [ "$ISA" = avx2-vnni ] && ! grep -qw avx_vnni /proc/cpuinfo; then
    die "ISA=avx2-vnni: this CPU lacks AVX-VNNI ($LLAMA_BENCH is built; run it on one that has it)"
fi
if [ -n "${POCKETVL_BIN:-}" ]; then
    POCKETVL="$POCKETVL_BIN"
    [ -x "$POCKETVL" ] || die "POCKETVL_BIN=$POCKETVL is not an executable"
else
    (cd "$ROOT" && cargo build --release --quiet) || die "cargo build --release failed"
    POCKETVL="$ROOT/target/release/pocketvl"
fi
export GGML_NO_BACKTRACE=1

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# llama-bench's JSON: one object per test; avg_ts is tokens/s.
LLAMA_CACHE_ARGS=()
[ -n "$LLAMA_CACHE_TYPE" ] && LLAMA_CACHE_ARGS=(-ctk "$LLAMA_CACHE_TYPE" -ctv "$LLAMA_CACHE_TYPE")
llama_run() { # file threads -> "pp_tok_s tg_tok_s"
    "$LLAMA_BENCH" -m "$1" -t "$2" -p "$N_PROMPT" -n "$N_GEN" -d "$DEPTH" -r "$REPS" \
        "${LLAMA_CACHE_ARGS[@]}" -o json \
        >"$TMP/llama.json" 2>"$TMP/llama.err" \
        || { tail -n 20 "$TMP/llama.err" >&2; die "llama-bench failed on $1"; }
    python3 - "$TMP/llama.json" <<'EOF'
import json, sys
pp = tg = float("nan")
for t in json.load(open(sys.argv[1])):
    if t["n_gen"] == 0:
        pp = t["avg_ts"]
    elif t["n_prompt"] == 0:
        tg = t["avg_ts"]
print(pp, tg)
EOF
}

# The roofline column: weights only at depth 0 (issue 7's), weights and the KV cache read per
# token at a depth, where the cache is a large part of a step's bytes.
ROOF_KEY=decode_roofline_tok_s
ROOF_HEAD=roofline
[ "$DEPTH" -gt 0 ] && ROOF_KEY=decode_roofline_kv_tok_s && ROOF_HEAD=roof+kv

ours_run() { # file threads -> "pp_tok_s tg_tok_s roofline_tok_s"
    "$POCKETVL" bench model -m "$1" -t "$2" -p "$N_PROMPT" -n "$N_GEN" -d "$DEPTH" --reps "$REPS" \
        --cache-type "$CACHE_TYPE" --no-vision --json >"$TMP/ours.out" 2>"$TMP/ours.err" \
        || { tail -n 20 "$TMP/ours.err" >&2; die "pocketvl bench model failed on $1"; }
    tail -n 1 "$TMP/ours.out" | python3 -c "
import json, sys
j = json.load(sys.stdin)
print(j['prefill_tok_s'], j['decode_tok_s'], j['$ROOF_KEY'])"
}

AT=""
[ "$DEPTH" -gt 0 ] && AT="@d$DEPTH"
printf '%-22s %3s %5s %12s %12s %7s %12s %12s %7s %9s\n' file thr round \
    "llama pp$N_PROMPT$AT" "ours pp$N_PROMPT$AT" ratio "llama tg$N_GEN$AT" "ours tg$N_GEN$AT" ratio "$ROOF_HEAD"
for f in "${FILES[@]}"; do
    for t in $THREADS; do
        for r in $(seq 1 "$ROUNDS"); do
            log "$(basename "$f") t=$t round $r: llama-bench"
            read -r lpp ltg <<<"$(llama_run "$f" "$t")"
            log "$(basename "$f") t=$t round $r: pocketvl"
            read -r opp otg roof <<<"$(ours_run "$f" "$t")"
            python3 -c "
import sys
f, t, r = sys.argv[1:4]
lpp, opp, ltg, otg, roof = map(float, sys.argv[4:9])
print(f'{f:<22} {t:>3} {r:>5} {lpp:>12.2f} {opp:>12.2f} {opp / lpp:>6.2f}x {ltg:>12.2f} {otg:>12.2f} {otg / ltg:>6.2f}x {roof:>9.2f}')
" "$(basename "$f")" "$t" "$r" "$lpp" "$opp" "$ltg" "$otg" "$roof"
        done
    done
done
