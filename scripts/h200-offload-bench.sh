#!/usr/bin/env bash
# H200 timings for issue 12 (BENCHMARKS.md "GPU offload on an NVIDIA H200"), run through the
# device tool from the repo root with the folder $D carried: a stripped `--features vulkan`
# release build of pocketvl built elsewhere, and the Debian 12 Vulkan loader + libglvnd .debs
# (the machine has the NVIDIA driver and its ICD but no loader).
# Usage: h200-offload-bench.sh ["OFFLOAD1 OFFLOAD2 ..."]: each `none` (the CPU path) or an
# --offload list. MODELS (tiny small), THREADS, NP, NG, REPS as below; SMALL_IF_BEFORE_S: the
# Small shape runs only if fewer seconds than this have passed (device time is short).
set -uo pipefail
D=${D:-.devcarry/gpu2}
T0=$(date +%s)
for f in "$D"/*.deb; do dpkg -x "$f" /; done; ldconfig
icd=$(ls /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd*.json /usr/share/vulkan/icd.d/nvidia_icd*.json /etc/vulkan/icd.d/nvidia_icd*.json 2>/dev/null | head -n1)
echo "icd: $icd"; [ -n "$icd" ] && export VK_DRIVER_FILES=$icd VK_ICD_FILENAMES=$icd
B=$D/pocketvl
chmod +x "$B"
nproc; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"$B" devices || exit 1
W=/tmp/models; mkdir -p $W
for m in ${MODELS:-tiny small}; do
  if [ "$m" = small ] && [ $(( $(date +%s) - T0 )) -ge "${SMALL_IF_BEFORE_S:-100000}" ]; then
    echo "== small skipped at $(( $(date +%s) - T0 )) s"; continue
  fi
  t0=$(date +%s)
  [ -e $W/$m.gguf ] || "$B" synth --variant deepseek-vl2-$m --quant q4_0 -o $W/$m.gguf >/dev/null || exit 1
  echo "synth $m: $(( $(date +%s) - t0 )) s"; ls -la $W
  for t in ${THREADS:-16}; do
    for off in ${1:-none vision attn,dense experts all}; do
      if [ "$off" = none ]; then g=(); else g=(--gpu Vulkan0 --offload "$off"); fi
      echo "== $m threads=$t offload=$off"
      s=$(date +%s)
      "$B" bench model -m $W/$m.gguf -t "$t" -p "${NP:-128}" -n "${NG:-32}" --reps "${REPS:-3}" --json "${g[@]}" \
        | tee -a "$OUT/bench.jsonl"
      echo "   ($(( $(date +%s) - s )) s)"
    done
  done
done
echo "total $(( $(date +%s) - T0 )) s"
