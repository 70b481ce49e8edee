#!/usr/bin/env bash
# H200 timings for issue 12 (run through the device tool from the repo root, .devcarry/gpu2 carried).
# Usage: h200.sh "OFFLOAD1 OFFLOAD2 ..." (each: none = CPU path, or an --offload list)
set -uo pipefail
D=${D:-.devcarry/gpu2}
for f in $D/*.deb; do dpkg -x "$f" /; done; ldconfig
icd=$(ls /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd*.json /usr/share/vulkan/icd.d/nvidia_icd*.json /etc/vulkan/icd.d/nvidia_icd*.json 2>/dev/null | head -n1)
echo "icd: $icd"; [ -n "$icd" ] && export VK_DRIVER_FILES=$icd VK_ICD_FILENAMES=$icd
B=$D/pocketvl
chmod +x $B
nproc; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
$B devices || exit 1
W=/tmp/models; mkdir -p $W
t0=$(date +%s)
[ -e $W/tiny.gguf ] || $B synth --variant deepseek-vl2-tiny --quant q4_0 --tokenizer tests/fixtures/tokenizers/deepseek-v3/tokenizer.json -o $W/tiny.gguf >/dev/null || exit 1
true
echo "synth: $(( $(date +%s) - t0 )) s"; ls -la $W
for m in ${MODELS:-tiny small}; do
  for t in ${THREADS:-16}; do
    for off in ${1:-none vision}; do
      if [ "$off" = none ]; then g=(); else g=(--gpu Vulkan0 --offload "$off"); fi
      echo "== $m threads=$t offload=$off"
      s=$(date +%s)
      $B bench model -m $W/$m.gguf -t $t -p ${NP:-128} -n ${NG:-32} --reps ${REPS:-2} --json "${g[@]}" \
        | tee -a $OUT/bench.jsonl
      echo "   ($(( $(date +%s) - s )) s)"
    done
  done
done
