#!/usr/bin/env bash
# pocketvl against the official PyTorch DeepSeek-VL2 code, on the same synthetic checkpoint:
# vision tower per tile and time to first token for one 2x2-tiled image (global view + 4 local
# tiles) plus a short question, alternately, printing ratios.
#
# Nothing of the reference is copied into this repository: give a checkout of
# the public deepseek-ai/DeepSeek-VL2 repository as the first argument. It runs in a venv with the
# versions the reference pins (torch 2.0.1, transformers 4.38.2), on CPU:
#   * with PIP_CPU_INDEX set to PyTorch's CPU wheel index: torch 2.0.1+cpu and torchvision
#     0.15.2+cpu from it with --no-deps (~200 MB) plus torch's few pure deps (filelock,
#     typing-extensions, sympy, networkx, jinja2), the leanest install; otherwise (only PyPI
#     reachable) PyPI's torch 2.0.1, whose import needs its ~2.5 GB of nvidia-*-cu11 packages
#     (they only sit on disk: nothing runs on a GPU), and torchvision 0.15.2 with --no-deps;
#   * then transformers 4.38.2, timm, einops, attrdict, sentencepiece, accelerate with their
#     deps, with torch==2.0.1 on the same command line (without it pip upgrades torch for the
#     newest accelerate/timm: seen here, it installed torch 2.15);
#   * xformers has no CPU build: benches/reference/xformers (first on PYTHONPATH) supplies an
#     exact-attention `xformers.ops.memory_efficient_attention`.
#
# Usage:
#   benches/compare_reference.sh REFERENCE_CHECKOUT [HF_DIR] [MODEL.gguf]
# Defaults: HF_DIR=/work/models/tiny-hf (bf16, real Tiny shapes, random weights),
#           MODEL.gguf=/work/models/tiny-q4_0.gguf (converted from HF_DIR; mmproj beside it).
# Environment:
#   REF_VENV   the venv (default: target/reference-venv; created when missing)
#   THREADS    threads on both sides (default 2)
#   ROUNDS     alternating rounds (default 2); each side runs REPS repetitions per round
#   REPS       repetitions per side and round (default 2)
#   SETTLE_S   seconds to wait before each program's run (default 30; 0: none)
#   PIP_CPU_INDEX  PyTorch's CPU wheel index, if reachable (unset: PyPI only)
#   OURS_ARGS  more arguments for `pocketvl bench model` (e.g. "--vision-precision bf16")
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REF="${1:-}"
HF_DIR="${2:-/work/models/tiny-hf}"
GGUF="${3:-/work/models/tiny-q4_0.gguf}"
REF_VENV="${REF_VENV:-$ROOT/target/reference-venv}"
THREADS="${THREADS:-2}"
ROUNDS="${ROUNDS:-2}"
REPS="${REPS:-2}"
SETTLE_S="${SETTLE_S:-30}"
PIP_CPU_INDEX="${PIP_CPU_INDEX:-}"
read -r -a OURS_ARGS <<<"${OURS_ARGS:-}"

log() { echo "[compare_reference] $*" >&2; }
die() { echo "[compare_reference] ERROR: $*" >&2; exit 1; }

[ -n "$REF" ] || die "usage: $0 REFERENCE_CHECKOUT [HF_DIR] [MODEL.gguf]"
[ -f "$REF/deepseek_vl2/models/modeling_deepseek_vl_v2.py" ] \
    || die "$REF is not a DeepSeek-VL2 checkout (no deepseek_vl2/models/modeling_deepseek_vl_v2.py)"
[ -f "$HF_DIR/config.json" ] || die "$HF_DIR has no config.json"
[ -f "$GGUF" ] || die "no such file: $GGUF"
[[ "$SETTLE_S" =~ ^[0-9]+$ ]] || die "SETTLE_S must be a whole number of seconds, not '$SETTLE_S'"

# --- the reference's venv --------------------------------------------------------------------
# attrdict is only looked up, not imported: it imports collections.Mapping, which Python >= 3.10
# no longer has, so importing it fails on every run and would rebuild the venv each time.
if ! "$REF_VENV/bin/python" -c "import importlib.util, torch, transformers, timm, einops; assert importlib.util.find_spec('attrdict')" 2>/dev/null; then
    log "creating $REF_VENV (torch 2.0.1+cpu, transformers 4.38.2)"
    python3 -m venv "$REF_VENV"
    pip=("$REF_VENV/bin/python" -m pip install -q)
    if [ -n "$PIP_CPU_INDEX" ]; then
        "${pip[@]}" --no-deps --index-url "$PIP_CPU_INDEX" torch==2.0.1 torchvision==0.15.2
        "${pip[@]}" filelock typing-extensions sympy networkx jinja2
    else
        log "PyPI's torch 2.0.1 with its CUDA packages (~3 GB on disk; set PIP_CPU_INDEX to avoid)"
        "${pip[@]}" torch==2.0.1
        "${pip[@]}" --no-deps torchvision==0.15.2
    fi
    "${pip[@]}" numpy==1.26.4 pillow
    # torch is named again so that pip keeps 2.0.1: unpinned, timm/accelerate pull the newest.
    "${pip[@]}" torch==2.0.1 transformers==4.38.2 timm einops attrdict sentencepiece accelerate
fi
"$REF_VENV/bin/python" -c "import torch; assert torch.__version__.startswith('2.0.1'), torch.__version__" \
    || die "the venv's torch is not 2.0.1"

# --- pocketvl --------------------------------------------------------------------------------
(cd "$ROOT" && cargo build --release --quiet) || die "cargo build --release failed"
POCKETVL="$ROOT/target/release/pocketvl"

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
ref_run() {
    PYTHONPATH="$ROOT/benches/reference:$REF" OMP_NUM_THREADS="$THREADS" \
        "$REF_VENV/bin/python" "$ROOT/benches/reference/time_reference.py" "$HF_DIR" \
        --threads "$THREADS" --reps "$REPS" >"$TMP/ref.out" 2>"$TMP/ref.err" \
        || { tail -n 30 "$TMP/ref.err" >&2; die "the reference run failed"; }
    cat "$TMP/ref.out" >&2
    tail -n 1 "$TMP/ref.out"
}
ours_run() {
    "$POCKETVL" bench model -m "$GGUF" --threads "$THREADS" -p 0 -n 0 --reps "$REPS" --json \
        ${OURS_ARGS[@]+"${OURS_ARGS[@]}"} \
        >"$TMP/ours.out" 2>"$TMP/ours.err" \
        || { tail -n 30 "$TMP/ours.err" >&2; die "pocketvl bench model failed"; }
    cat "$TMP/ours.out" >&2
    tail -n 1 "$TMP/ours.out"
}
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }

# Each run starts after the same pause: on the 2-core VM, pocketvl started the moment the
# reference (~13 GB) exited ran 3.8-4.0 s per tile, and 3.4 s a minute later (the cause was not
# pinned down: no CPU was busy in between). Both programs get the pause, so neither inherits the
# other's aftermath.
printf '%-6s %-10s %18s %18s %12s\n' round stage "pytorch f32" pocketvl "speed-up" 
for r in $(seq 1 "$ROUNDS"); do
    log "round $r/$ROUNDS: reference (after ${SETTLE_S} s)"
    sleep "$SETTLE_S"
    ref="$(ref_run)"
    log "round $r/$ROUNDS: pocketvl (after ${SETTLE_S} s)"
    sleep "$SETTLE_S"
    ours="$(ours_run)"
    for key in vision_ms_per_tile ttft_ms; do
        a="$(field "$ref" "$key")"; b="$(field "$ours" "$key")"
        printf '%-6s %-18s %12.1f ms %12.1f ms %11.2fx\n' "$r" "$key" "$a" "$b" \
            "$(python3 -c "print($a / $b)")"
    done
done
