#!/usr/bin/env bash
# Builds the `vulkan` feature and runs the GPU-offload parity tests on Mesa's lavapipe (a
# Vulkan driver on the CPU), so the Vulkan backend is tested without a GPU
# (tests/it/backend_offload.rs: every offloaded stage against the CPU path and the
# reference, the fixtures' greedy tokens). Exits non-zero on any failure.
#
# On a fresh Debian 12 machine (as root) it installs what it needs from apt: cmake,
# libclang-dev (bindgen), the Vulkan loader, glslc, Debian 12's lavapipe (for its library
# dependencies). ggml-vulkan needs Vulkan headers >= 1.3.261, newer than Debian 12's
# 1.3.239: Debian 13's libvulkan-dev and spirv-headers packages are downloaded with
# `apt-get download` through a private apt state under target/vulkan-headers (nothing
# installed system-wide), unpacked with dpkg-deb and put first on the include and CMake
# search paths. The lavapipe tested is Debian 12 backports' (Mesa 25.0), fetched the same
# way into target/lavapipe (why: below).
#
# Usage: scripts/test-vulkan.sh [extra cargo test args]
# TEST_VULKAN_PROFILE=release builds and tests in the release profile (default: dev, which
# shares the dependencies `scripts/test.sh` built; ggml itself is built optimised in both, as
# the dev profile's package override gives it opt-level 2 and cmake a Release build). Only the
# binary and the `it` test target are built: ggml (C++ and ~1000 Vulkan shaders) is most of
# the time (a cold dev build with its dependencies: 48 min on a 2-core machine under a load
# of ~10). Where a profile's ggml is already built (e.g. by `cargo build --release --features
# vulkan`), use that profile (its build script re-runs for the GGML_* variables set below).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)

need=()
command -v cmake >/dev/null || need+=(cmake)
command -v c++ >/dev/null || need+=(build-essential)
command -v glslc >/dev/null || need+=(glslc)
[ -e /usr/lib/x86_64-linux-gnu/libclang.so ] || ls /usr/lib/llvm-*/lib/libclang.so >/dev/null 2>&1 || need+=(libclang-dev)
[ -e /usr/lib/x86_64-linux-gnu/libvulkan.so ] || need+=(libvulkan-dev)
dpkg -s spirv-headers >/dev/null 2>&1 || need+=(spirv-headers)
# Debian 12's lavapipe: not the one tested (see below), but it brings the libraries the newer
# one links (LLVM 15, libdrm, xcb).
ls /usr/share/vulkan/icd.d/lvp_icd.*.json >/dev/null 2>&1 || need+=(mesa-vulkan-drivers)
if [ ${#need[@]} -gt 0 ]; then
    echo "[test-vulkan] apt-get install ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq "${need[@]}"
fi

# Packages of another Debian release, downloaded with `apt-get download` through a private apt
# state in folder $1 (its own sources.list: line $2) and unpacked with dpkg-deb into $1/root;
# nothing is installed system-wide.
fetch_debs() {
    local dir="$1" source="$2"
    shift 2
    rm -rf "$dir"
    mkdir -p "$dir/lists/partial" "$dir/archives/partial" "$dir/root"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $source" \
        > "$dir/sources.list"
    local apt_private=(-o "Dir::Etc::SourceList=$dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$dir/lists" -o "Dir::Cache::Archives=$dir/archives"
        -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache= -o Debug::NoLocking=1
        -o APT::Sandbox::User=root)
    apt-get "${apt_private[@]}" update -qq
    (cd "$dir" && apt-get "${apt_private[@]}" download "$@")
    for deb in "$dir"/*.deb; do dpkg-deb -x "$deb" "$dir/root"; done
}

# Debian 13's Vulkan and SPIR-V headers.
hdr="$PWD/target/vulkan-headers"
root="$hdr/root"
if [ ! -e "$root/usr/include/vulkan/vulkan.hpp" ] || [ ! -d "$root/usr/share/cmake/SPIRV-Headers" ]; then
    echo "[test-vulkan] fetching Debian 13 libvulkan-dev + spirv-headers into $hdr"
    fetch_debs "$hdr" "trixie main" libvulkan-dev spirv-headers
fi
version=$(sed -n 's/^#define VK_HEADER_VERSION \([0-9]*\)/\1/p' "$root/usr/include/vulkan/vulkan_core.h")
echo "[test-vulkan] Vulkan headers 1.x.$version from $root"
# FindVulkan looks under $VULKAN_SDK first (headers; the loader library itself is Debian 12's,
# found on the system path), find_package(SPIRV-Headers) under CMAKE_PREFIX_PATH; CPATH puts
# the new headers before /usr/include for every compile.
export VULKAN_SDK="$root/usr"
export CMAKE_PREFIX_PATH="$root/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
export CPATH="$root/usr/include${CPATH:+:$CPATH}"

# ggml lists CPU-type Vulkan devices (lavapipe) only when named here.
export GGML_VK_VISIBLE_DEVICES="${GGML_VK_VISIBLE_DEVICES:-0}"
# On a device with 16-bit float support (lavapipe has it) ggml-vulkan's f32 matrix products
# stage their operands in f16 (its default, for speed): the decoder's logits then differ from
# the CPU path by 2.5e-3 to 4.9e-3, beyond the f32 tolerance (1e-3) the tests hold. Its f32
# shaders are what f32 parity can be tested on. (Even then it converts a matrix-product
# operand whose rows are strided to f16: the attention graphs (decoder.rs) keep their cache
# one matrix per head and make permuted queries contiguous, so every operand stays f32.)
# TEST_VULKAN_F16=1 keeps ggml-vulkan's default (f16 operands) instead. llama-cpp-sys-2's
# build script hands every GGML_* variable to cmake and re-runs when one changes, so these
# are set alike for the build and the test run.
if [ "${TEST_VULKAN_F16:-0}" = 1 ]; then
    unset GGML_VK_DISABLE_F16
else
    export GGML_VK_DISABLE_F16=1
fi
# Lavapipe from Debian 12's backports (Mesa 25.0.7, built for Debian 12: its glibc and LLVM
# 15), not Debian 12's own (Mesa 22.3.6): on that one the dense-MLP graph aborts the test run
# with heap corruption inside a lavapipe worker thread ("malloc(): unsorted double linked list
# corrupted"), while the same test binary passes on Mesa 25.0.7 (logits 1.1e-5 from the CPU
# path) and on ggml's CPU backend. Debian 13's Mesa needs Debian 13's glibc (2.39), so not
# that one. Unpacked under target/lavapipe (its libraries' dependencies are Debian 12's own
# lavapipe's, installed above); only this ICD is used, even where a GPU driver is installed.
lvp_dir="$PWD/target/lavapipe"
lvp="$lvp_dir/lvp_icd.json"
if [ ! -e "$lvp" ]; then
    echo "[test-vulkan] fetching Debian 12 backports' mesa-vulkan-drivers (lavapipe) into $lvp_dir"
    fetch_debs "$lvp_dir" "bookworm-backports main" mesa-vulkan-drivers/bookworm-backports
    lib="$lvp_dir/root/usr/lib/x86_64-linux-gnu/libvulkan_lvp.so"
    sed "s|\"library_path\": *\"[^\"]*\"|\"library_path\": \"$lib\"|" \
        "$lvp_dir/root/usr/share/vulkan/icd.d/lvp_icd.json" > "$lvp"
fi
export VK_ICD_FILENAMES="$lvp"
export VK_DRIVER_FILES="$lvp"

profile="${TEST_VULKAN_PROFILE:-dev}"
case "$profile" in dev) out=debug ;; *) out="$profile" ;; esac
cargo build --profile "$profile" --features vulkan --bin pocketvl
cargo test --profile "$profile" --features vulkan --test it --no-run
built=$(date +%s)
echo "[test-vulkan] built in $(( built - start )) s"
"${CARGO_TARGET_DIR:-target}/$out/pocketvl" devices
export POCKETVL_TEST_GPU="${POCKETVL_TEST_GPU:-Vulkan0}"
cargo test --profile "$profile" --features vulkan --test it backend_offload:: "$@" \
    -- --nocapture --test-threads 1
echo "[test-vulkan] tests ran in $(( $(date +%s) - built )) s; passed in $(( $(date +%s) - start )) s"
