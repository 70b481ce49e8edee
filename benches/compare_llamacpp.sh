#!/usr/bin/env bash
# pocketvl against llama.cpp's `llama-bench` on the same language-model GGUF: prompt processing
# (pp, default 512 tokens) and decode (tg, default 64 tokens), alternating the two programs
# within each round so that both see the same machine load, and printing the ratios.
#
# llama.cpp is built by scripts/llamacpp-interop.sh (same pinned source, same build directory;
# LLAMACPP_EXTRA_TARGETS=llama-bench adds the benchmark tool), so nothing is built twice.
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
#   LLAMACPP_DIR, LLAMACPP_JOBS: passed to scripts/llamacpp-interop.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
THREADS="${THREADS:-1 2}"
ROUNDS="${ROUNDS:-2}"
REPS="${REPS:-2}"
N_PROMPT="${N_PROMPT:-512}"
N_GEN="${N_GEN:-64}"
FILES=("$@")
if [ "${#FILES[@]}" -eq 0 ]; then
    FILES=(/work/models/tiny-q4_0.gguf /work/models/tiny-q8_0.gguf /work/models/tiny-q4_k.gguf)
fi

log() { echo "[compare_llamacpp] $*" >&2; }
die() { echo "[compare_llamacpp] ERROR: $*" >&2; exit 1; }
for f in "${FILES[@]}"; do [ -f "$f" ] || die "no such file: $f"; done

LLAMACPP_EXTRA_TARGETS=llama-bench "$ROOT/scripts/llamacpp-interop.sh" --build-only \
    || die "building llama.cpp failed"
VERSION="$(sed -n 's/^PINNED_VERSION="\(.*\)"/\1/p' "$ROOT/scripts/llamacpp-interop.sh")"
LLAMA_BENCH="${LLAMACPP_DIR:-$ROOT/target/llamacpp}/build-${LLAMACPP_VERSION:-$VERSION}/bin/llama-bench"
[ -x "$LLAMA_BENCH" ] || die "no $LLAMA_BENCH after the build"
(cd "$ROOT" && cargo build --release --quiet) || die "cargo build --release failed"
POCKETVL="$ROOT/target/release/pocketvl"
export GGML_NO_BACKTRACE=1

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# llama-bench's JSON: one object per test; avg_ts is tokens/s.
llama_run() { # file threads -> "pp_tok_s tg_tok_s"
    "$LLAMA_BENCH" -m "$1" -t "$2" -p "$N_PROMPT" -n "$N_GEN" -r "$REPS" -o json \
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

ours_run() { # file threads -> "pp_tok_s tg_tok_s roofline_tok_s"
    "$POCKETVL" bench model -m "$1" -t "$2" -p "$N_PROMPT" -n "$N_GEN" --reps "$REPS" \
        --no-vision --json >"$TMP/ours.out" 2>"$TMP/ours.err" \
        || { tail -n 20 "$TMP/ours.err" >&2; die "pocketvl bench model failed on $1"; }
    tail -n 1 "$TMP/ours.out" | python3 -c "
import json, sys
j = json.load(sys.stdin)
print(j['prefill_tok_s'], j['decode_tok_s'], j['decode_roofline_tok_s'])"
}

printf '%-22s %3s %5s %12s %12s %7s %12s %12s %7s %9s\n' file thr round \
    "llama pp$N_PROMPT" "ours pp$N_PROMPT" ratio "llama tg$N_GEN" "ours tg$N_GEN" ratio "roofline"
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
