#!/usr/bin/env bash
# llama.cpp interop check for pocketvl GGUF files.
#
# Why: llama.cpp is the de-facto consumer of GGUF. If it loads our language-model GGUF and
# generates, our metadata keys, tensor names and layouts are what the ecosystem expects; its
# last-position logits on the fixture prompts are an independent second opinion next to the
# official implementation's goldens.
#
# What it does (idempotent; everything is cached under $LLAMACPP_DIR, default target/llamacpp):
#   1. installs cmake/compilers with apt-get when missing and we are root;
#   2. `pip download`s the llama-cpp-python sdist (pinned below), which vendors llama.cpp, and
#      extracts it;
#   3. configures llama.cpp (Release, CPU only, shared libs, no curl/server/tests) and builds
#      `llama-simple` and libllama;
#   4. compiles scripts/llamacpp_logits.c against the vendored llama.h / libllama;
#   5. unless --build-only: for each GGUF given as argument (default: both fixtures converted
#      with `pocketvl convert --quant f32` into a temp dir) runs `llama-simple -n 16 "Hello"`
#      and our logits tool on the fixture's `text` case prompt ids, and fails loudly if loading
#      or generation fails. With POCKETVL_PYTHON (a python with numpy + safetensors) set, it also
#      compares the last-position logits with the fixture's golden `text.logits_last`.
#
# Usage:
#   scripts/llamacpp-interop.sh [--build-only | --fetch-only] [FILE.gguf[:FIXTURE_DIR] ...]
# --fetch-only stops after step 2 and prints the llama.cpp source directory (for
# benches/compare_llamacpp.sh, which builds llama-bench its own way).
# Environment:
#   LLAMACPP_DIR       build cache (default: target/llamacpp under the repository root)
#   LLAMACPP_VERSION   llama-cpp-python sdist version (default: the pinned one below)
#   LLAMACPP_JOBS      parallel build jobs (default: nproc)
#   POCKETVL_PYTHON    python for the logits comparison (skipped when unset)
#   LLAMACPP_EXTRA_TARGETS  further llama.cpp targets to build beside llama-simple, e.g.
#                      llama-bench (benches/compare_llamacpp.sh builds it through this script)
set -euo pipefail

PINNED_VERSION="0.3.36"
VERSION="${LLAMACPP_VERSION:-$PINNED_VERSION}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LLAMACPP_DIR="${LLAMACPP_DIR:-$ROOT/target/llamacpp}"
JOBS="${LLAMACPP_JOBS:-$(nproc 2>/dev/null || echo 2)}"
BUILD_ONLY=0
FETCH_ONLY=0
FILES=()
for arg in "$@"; do
    case "$arg" in
        --build-only) BUILD_ONLY=1 ;;
        --fetch-only) FETCH_ONLY=1 ;;
        -h|--help) sed -n '2,33p' "$0"; exit 0 ;;
        *) FILES+=("$arg") ;;
    esac
done

log() { echo "[llamacpp-interop] $*" >&2; }
die() { echo "[llamacpp-interop] ERROR: $*" >&2; exit 1; }

# --- 1. tools -----------------------------------------------------------------------------
ensure_tools() {
    local missing=()
    command -v cmake >/dev/null 2>&1 || missing+=(cmake)
    command -v cc >/dev/null 2>&1 || missing+=(gcc)
    command -v c++ >/dev/null 2>&1 || missing+=(g++)
    command -v make >/dev/null 2>&1 || missing+=(make)
    command -v python3 >/dev/null 2>&1 || missing+=(python3)
    python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
    if [ "${#missing[@]}" -eq 0 ]; then return 0; fi
    if [ "$(id -u)" -ne 0 ]; then
        die "missing tools: ${missing[*]} (not root: install them, e.g. apt-get install -y ${missing[*]})"
    fi
    log "installing ${missing[*]} with apt-get"
    # Other processes may hold the dpkg lock: wait for it rather than failing.
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y -qq "${missing[@]}"
}

# --- 2. source ----------------------------------------------------------------------------
fetch_source() {
    local sdist_dir="$LLAMACPP_DIR/sdist"
    local src="$LLAMACPP_DIR/llama_cpp_python-$VERSION"
    if [ -f "$src/vendor/llama.cpp/include/llama.h" ]; then
        LLAMA_SRC="$src/vendor/llama.cpp"
        return 0
    fi
    mkdir -p "$sdist_dir"
    local tarball
    tarball="$(ls "$sdist_dir"/llama_cpp_python-"$VERSION".tar.gz 2>/dev/null || true)"
    if [ -z "$tarball" ]; then
        log "downloading llama-cpp-python==$VERSION sdist"
        python3 -m pip download --no-deps --no-binary llama-cpp-python \
            -d "$sdist_dir" "llama-cpp-python==$VERSION" >&2 \
            || die "pip download of llama-cpp-python==$VERSION failed"
        tarball="$(ls "$sdist_dir"/llama_cpp_python-"$VERSION".tar.gz 2>/dev/null || true)"
        [ -n "$tarball" ] || die "no llama_cpp_python-$VERSION.tar.gz in $sdist_dir after pip download"
    fi
    log "extracting $tarball"
    rm -rf "$src.tmp" && mkdir -p "$src.tmp"
    tar -xzf "$tarball" -C "$src.tmp"
    local top
    top="$(find "$src.tmp" -mindepth 1 -maxdepth 1 -type d | head -n 1)"
    [ -f "$top/vendor/llama.cpp/include/llama.h" ] \
        || die "sdist has no vendor/llama.cpp/include/llama.h (layout changed?)"
    rm -rf "$src" && mv "$top" "$src" && rm -rf "$src.tmp"
    LLAMA_SRC="$src/vendor/llama.cpp"
}

# --- 3. llama.cpp build --------------------------------------------------------------------
build_llama() {
    BUILD="$LLAMACPP_DIR/build-$VERSION"
    if [ ! -f "$BUILD/CMakeCache.txt" ]; then
        log "configuring llama.cpp in $BUILD"
        cmake -S "$LLAMA_SRC" -B "$BUILD" \
            -DCMAKE_BUILD_TYPE=Release \
            -DBUILD_SHARED_LIBS=ON \
            -DGGML_NATIVE=ON \
            -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_OPENCL=OFF \
            -DLLAMA_CURL=OFF \
            -DLLAMA_BUILD_SERVER=OFF \
            -DLLAMA_BUILD_TESTS=OFF \
            -DLLAMA_BUILD_EXAMPLES=ON \
            -DLLAMA_BUILD_TOOLS=ON >&2 || { rm -f "$BUILD/CMakeCache.txt"; die "cmake configure failed"; }
    fi
    # Tools (llama-bench) are configured but only built when asked for: a cache configured
    # before they were is re-configured once.
    if ! grep -q '^LLAMA_BUILD_TOOLS:BOOL=ON' "$BUILD/CMakeCache.txt"; then
        cmake -S "$LLAMA_SRC" -B "$BUILD" -DLLAMA_BUILD_TOOLS=ON >&2 || die "cmake re-configure failed"
    fi
    local targets=(llama-simple)
    # shellcheck disable=SC2206 # a space-separated list of target names
    [ -n "${LLAMACPP_EXTRA_TARGETS:-}" ] && targets+=($LLAMACPP_EXTRA_TARGETS)
    log "building ${targets[*]} (jobs=$JOBS)"
    cmake --build "$BUILD" --config Release -j "$JOBS" --target "${targets[@]}" >&2 \
        || die "llama.cpp build failed"
    SIMPLE="$BUILD/bin/llama-simple"
    [ -x "$SIMPLE" ] || die "no $SIMPLE after build"
    LIBDIR="$(dirname "$(find "$BUILD" -name 'libllama.so' | head -n 1)")"
    [ -f "$LIBDIR/libllama.so" ] || die "no libllama.so under $BUILD"
}

# --- 4. our logits tool -------------------------------------------------------------------
build_logits_tool() {
    LOGITS_TOOL="$BUILD/bin/pocketvl-llamacpp-logits"
    local srcfile="$ROOT/scripts/llamacpp_logits.c"
    if [ -x "$LOGITS_TOOL" ] && [ "$LOGITS_TOOL" -nt "$srcfile" ] && [ "$LOGITS_TOOL" -nt "$LIBDIR/libllama.so" ]; then
        return 0
    fi
    log "compiling scripts/llamacpp_logits.c"
    local ggml_libdir
    ggml_libdir="$(dirname "$(find "$BUILD" -name 'libggml.so' | head -n 1)")"
    cc -O2 -std=c11 -Wall -Wextra -o "$LOGITS_TOOL" "$srcfile" \
        -I "$LLAMA_SRC/include" -I "$LLAMA_SRC/ggml/include" \
        -L "$LIBDIR" -L "$ggml_libdir" -lllama -lggml -lggml-base -lm \
        -Wl,-rpath,"$LIBDIR" -Wl,-rpath,"$ggml_libdir" \
        || die "compiling llamacpp_logits.c failed"
}

ensure_tools
mkdir -p "$LLAMACPP_DIR"
fetch_source
if [ "$FETCH_ONLY" -eq 1 ]; then echo "$LLAMA_SRC"; exit 0; fi
build_llama
build_logits_tool
log "llama.cpp $VERSION ready: $SIMPLE, $LOGITS_TOOL"
if [ "$BUILD_ONLY" -eq 1 ]; then exit 0; fi

# --- 5. run -------------------------------------------------------------------------------
# Prompt ids of a fixture's `text` case: golden.safetensors `text.input_ids` (int64), read with
# the python3 standard library only so that this step needs no venv.
prompt_ids() {
    local fixture="$1"
    python3 - "$fixture/golden.safetensors" <<'EOF'
import json, struct, sys
data = open(sys.argv[1], "rb").read()
(hlen,) = struct.unpack("<Q", data[:8])
header = json.loads(data[8:8 + hlen])
info = header.get("text.input_ids")
if info is None or info["dtype"] != "I64":
    sys.exit("no int64 text.input_ids in " + sys.argv[1])
a, b = info["data_offsets"]
raw = data[8 + hlen + a:8 + hlen + b]
print(",".join(str(v) for v in struct.unpack("<%dq" % (len(raw) // 8), raw)))
EOF
}

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

if [ "${#FILES[@]}" -eq 0 ]; then
    for fx in tiny-mha tiny-mla; do
        log "converting tests/fixtures/$fx/hf -> $TMP/$fx.gguf (f32)"
        (cd "$ROOT" && cargo run --release --quiet -- convert "tests/fixtures/$fx/hf" \
            -o "$TMP/$fx.gguf" --quant f32) >&2 || die "pocketvl convert failed for $fx"
        FILES+=("$TMP/$fx.gguf:$ROOT/tests/fixtures/$fx")
    done
fi

# ggml's abort handler attaches gdb for a backtrace, which can hang; a failure must fail fast.
export GGML_NO_BACKTRACE=1
RUN_TIMEOUT="${LLAMACPP_TIMEOUT:-300}"

FAILED=0
for spec in "${FILES[@]}"; do
    file="${spec%%:*}"
    fixture=""
    [ "$spec" != "$file" ] && fixture="${spec#*:}"
    if [ -z "$fixture" ]; then
        case "$(basename "$file")" in
            *mha*) fixture="$ROOT/tests/fixtures/tiny-mha" ;;
            *mla*) fixture="$ROOT/tests/fixtures/tiny-mla" ;;
        esac
    fi
    [ -f "$file" ] || die "no such file: $file"
    name="$(basename "$file" .gguf)"
    log "=== $file (fixture: ${fixture:-none})"

    log "llama-simple -m $file -n 16 Hello"
    if ! timeout "$RUN_TIMEOUT" "$SIMPLE" -m "$file" -n 16 "Hello" \
            >"$TMP/$name.simple.out" 2>"$TMP/$name.simple.err"; then
        grep -a -i -E "error|unsupported|failed|missing|wrong|abort" "$TMP/$name.simple.err" | head -n 20 >&2 \
            || tail -n 20 "$TMP/$name.simple.err" >&2
        log "FAIL: llama-simple could not load/generate with $file"
        FAILED=1
        continue
    fi
    echo "llama-simple output for $name:"; cat "$TMP/$name.simple.out"; echo

    if [ -n "$fixture" ] && [ -f "$fixture/golden.safetensors" ]; then
        ids="$(prompt_ids "$fixture")"
        outdir="${LLAMACPP_LOGITS_OUT:-$TMP}"
        mkdir -p "$outdir"
        # Two runs: llama.cpp's defaults (f16 KV cache, flash attention as it decides), and
        # float32 throughout (--no-fa --kv-f32), which isolates file content from llama.cpp's
        # own roundings.
        for mode in default f32; do
            opts=()
            [ "$mode" = f32 ] && opts=(--no-fa --kv-f32)
            out="$outdir/$name.$mode.logits_last.npy"
            if ! timeout "$RUN_TIMEOUT" "$LOGITS_TOOL" -m "$file" --ids "$ids" -n 16 "${opts[@]}" -o "$out" \
                    >"$TMP/$name.$mode.out" 2>"$TMP/$name.$mode.err"; then
                tail -n 20 "$TMP/$name.$mode.err" >&2
                log "FAIL: logits tool failed with $file ($mode)"
                FAILED=1
                continue
            fi
            echo "llama.cpp ($mode settings) on $name:"
            cat "$TMP/$name.$mode.out"
            if [ -n "${POCKETVL_PYTHON:-}" ]; then
                gen="$(sed -n 's/^generated //p' "$TMP/$name.$mode.out")"
                "$POCKETVL_PYTHON" "$ROOT/scripts/llamacpp_compare.py" "$out" "$fixture" --gen "$gen" \
                    || { log "FAIL: logits comparison for $name"; FAILED=1; }
            else
                log "skipped logits comparison: POCKETVL_PYTHON not set"
            fi
        done
    fi
done
[ "$FAILED" -eq 0 ] || die "one or more files failed (see above)"
log "all files loaded and generated"
