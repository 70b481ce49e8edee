#!/usr/bin/env bash
# Builds the `vulkan` feature and runs the GPU-offload parity tests on Mesa's lavapipe (a
# Vulkan driver on the CPU), so the Vulkan backend is tested without a GPU
# (tests/it/backend_offload.rs: every offloaded stage against the CPU path and the
# reference, the fixtures' greedy tokens). Exits non-zero on any failure.
#
# On a fresh Debian 12 machine (as root) it installs what it needs from apt: cmake,
# libclang-dev (bindgen), the Vulkan loader, glslc, lavapipe. ggml-vulkan needs Vulkan
# headers >= 1.3.261, newer than Debian 12's 1.3.239: Debian 13's libvulkan-dev and
# spirv-headers packages are downloaded with `apt-get download` through a private apt state
# under target/vulkan-headers (nothing installed system-wide), unpacked with dpkg-deb and put
# first on the include and CMake search paths.
#
# Usage: scripts/test-vulkan.sh [extra cargo test args]
# TEST_VULKAN_PROFILE=release builds and tests in the release profile (default: dev, which
# shares the dependencies `scripts/test.sh` built; ggml itself is built optimised in both, as
# the dev profile's package override gives it opt-level 2 and cmake a Release build). Only the
# binary and the `it` test target are built: ggml (C++ and ~1000 Vulkan shaders) is most of
# the time. Where a profile's ggml is already built (e.g. by `cargo build --release --features
# vulkan`), use that profile: nothing of ggml is rebuilt.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)

need=()
command -v cmake >/dev/null || need+=(cmake)
command -v c++ >/dev/null || need+=(build-essential)
command -v glslc >/dev/null || need+=(glslc)
[ -e /usr/lib/x86_64-linux-gnu/libclang.so ] || ls /usr/lib/llvm-*/lib/libclang.so >/dev/null 2>&1 || need+=(libclang-dev)
[ -e /usr/lib/x86_64-linux-gnu/libvulkan.so ] || need+=(libvulkan-dev)
ls /usr/share/vulkan/icd.d/lvp_icd.*.json >/dev/null 2>&1 || need+=(mesa-vulkan-drivers)
dpkg -s spirv-headers >/dev/null 2>&1 || need+=(spirv-headers)
if [ ${#need[@]} -gt 0 ]; then
    echo "[test-vulkan] apt-get install ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq "${need[@]}"
fi

# Debian 13's Vulkan and SPIR-V headers, unpacked into a private folder.
hdr="$PWD/target/vulkan-headers"
root="$hdr/root"
if [ ! -e "$root/usr/include/vulkan/vulkan.hpp" ] || [ ! -d "$root/usr/share/cmake/SPIRV-Headers" ]; then
    echo "[test-vulkan] fetching Debian 13 libvulkan-dev + spirv-headers into $hdr"
    rm -rf "$hdr"
    mkdir -p "$hdr/lists/partial" "$hdr/archives/partial" "$root"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
        > "$hdr/sources.list"
    apt_private=(-o "Dir::Etc::SourceList=$hdr/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$hdr/lists" -o "Dir::Cache::Archives=$hdr/archives"
        -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache= -o Debug::NoLocking=1
        -o APT::Sandbox::User=root)
    apt-get "${apt_private[@]}" update -qq
    (cd "$hdr" && apt-get "${apt_private[@]}" download libvulkan-dev spirv-headers)
    for deb in "$hdr"/*.deb; do dpkg-deb -x "$deb" "$root"; done
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
# shaders are what f32 parity can be tested on. (Seen on Debian 12's Mesa 22.3.6 lavapipe:
# the vision tests pass this way, max diff 4e-6; the attention tests still miss by 2e-3 to
# 4e-3, as ggml-vulkan converts strided operands to f16; the MLP tests abort with heap
# corruption inside a lavapipe worker thread. README "GPU offload" has the details.)
# TEST_VULKAN_F16=1 keeps ggml-vulkan's default (f16 operands) instead.
if [ "${TEST_VULKAN_F16:-0}" = 1 ]; then
    unset GGML_VK_DISABLE_F16
else
    export GGML_VK_DISABLE_F16=1
fi
# Only lavapipe, even where a GPU driver is installed.
lvp=$(ls /usr/share/vulkan/icd.d/lvp_icd.*.json | head -n1)
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
