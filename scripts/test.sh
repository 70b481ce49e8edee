#!/usr/bin/env bash
# The project's one test command (README "run the tests"; .ci/run calls exactly this).
# Builds a Python venv with the independent references the tests compare against
# (the PyPI `gguf` package, Hugging Face `tokenizers`, numpy; the official `openai` client for
# the server tests), then runs every Rust test.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${POCKETVL_VENV:-target/venv}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
# Pinned so golden bytes and tokenizations are reproducible.
if ! "$VENV/bin/python" -c "import gguf, numpy, tokenizers, safetensors, PIL, openai" 2>/dev/null; then
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r scripts/requirements.txt
fi
export POCKETVL_PYTHON="$PWD/$VENV/bin/python"

# Tests whose prerequisite (the venv, llama.cpp) is missing print "SKIPPED <test>: <why>" and,
# under CI=true, fail instead (tests/support/prereq.rs); list the skips at the end so that a
# skipped test is never mistaken for a passing one.
mkdir -p target
log=target/test-output.log
status=0
cargo test --workspace "$@" 2>&1 | tee "$log" || status=$?
skips=$(grep -o 'SKIPPED [^ ]*: .*' "$log" || true)
if [ -n "$skips" ]; then
    echo
    echo "[test.sh] $(printf '%s\n' "$skips" | wc -l) tests SKIPPED (prerequisite missing; they fail under CI=true):"
    printf '%s\n' "$skips"
fi
exit "$status"
