#!/usr/bin/env bash
# Cross build for aarch64-unknown-linux-gnu (Raspberry Pi 5, ARM servers and laptops) and the
# test suite under qemu-user, from what a Debian machine can install without touching rustup:
#
#   scripts/cross-aarch64.sh build [cargo build args]   -> target/aarch64/aarch64-unknown-linux-gnu/<profile>/pocketvl
#   scripts/cross-aarch64.sh test  [cargo test args]    runs the tests under qemu-aarch64, once per CPU
#                                                       model in POCKETVL_QEMU_CPUS; non-zero on failure
#   scripts/cross-aarch64.sh env                        prints the environment (for running cargo by hand)
#
# How:
# - the C cross compiler, the aarch64 glibc and qemu come from Debian (gcc-aarch64-linux-gnu,
#   libc6-dev-arm64-cross, qemu-user-static); they are installed with apt-get when missing;
# - the aarch64 standard library is built from source (`-Zbuild-std`) by the nightly toolchain the
#   machine carries, from Debian's `rust-src` package (pinned version and checksum below), fetched
#   from the Debian archive and unpacked with `dpkg-deb -x` into target/aarch64-tools: no rustup
#   component or target is installed and nothing outside target/ changes (`rustup target add`
#   reaches a server that is not a package registry, so it is not used);
# - builds go to target/aarch64, apart from the stable toolchain's target/ dirs.
#
# CPU models for `test` (qemu 7.2, Debian bookworm): cortex-a53 = plain NEON (no dotprod, no fp16
# arithmetic), cortex-a76 = the Pi 5's core (dotprod, fp16), max = dotprod + i8mm + fp16 (+ SVE).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/nightly.sh
. scripts/nightly.sh

TRIPLE=aarch64-unknown-linux-gnu
# Debian sid's rust-src; 1.97.1 builds with the machines' 1.97 nightly.
RUST_SRC_VERSION=1.97.1
RUST_SRC_DEB="rust-src_${RUST_SRC_VERSION}+dfsg1-1_all.deb"
RUST_SRC_SHA256=d0637f8f464234ffb12baa55fc0e851f5f9dcfd0199c1a0922e4488a4f591992
DEBIAN_MIRROR="${POCKETVL_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
TOOLS="$PWD/target/aarch64-tools"
SYSROOT=/usr/aarch64-linux-gnu
QEMU_CPUS="${POCKETVL_QEMU_CPUS:-cortex-a53 cortex-a76 max}"

die() {
    echo "cross-aarch64: $*" >&2
    exit 1
}

# Debian packages of the cross toolchain and the emulator, installed when missing.
install_debian_tools() {
    local need=()
    command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu)
    [ -e "$SYSROOT/lib/libc.so.6" ] || need+=(libc6-dev-arm64-cross)
    command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
    command -v dpkg-deb >/dev/null || need+=(dpkg)
    if [ ${#need[@]} -gt 0 ]; then
        [ "$(id -u)" = 0 ] || die "missing ${need[*]}: run 'sudo apt-get install ${need[*]}'"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
    fi
}

# Debian's rust-src unpacked under target/aarch64-tools (downloaded once, checksum-verified).
fetch_rust_src() {
    LIBRARY="$TOOLS/rust-src/usr/src/rustc-$RUST_SRC_VERSION/library"
    [ -f "$LIBRARY/Cargo.lock" ] && return
    mkdir -p "$TOOLS"
    local deb="$TOOLS/$RUST_SRC_DEB"
    if ! echo "$RUST_SRC_SHA256  $deb" | sha256sum -c --quiet - 2>/dev/null; then
        curl -fsS --retry 3 -o "$deb.tmp" "$DEBIAN_MIRROR/pool/main/r/rustc/$RUST_SRC_DEB" ||
            die "could not download $RUST_SRC_DEB from $DEBIAN_MIRROR (set POCKETVL_DEBIAN_MIRROR)"
        echo "$RUST_SRC_SHA256  $deb.tmp" | sha256sum -c --quiet - || die "$RUST_SRC_DEB: checksum mismatch"
        mv "$deb.tmp" "$deb"
    fi
    rm -rf "$TOOLS/rust-src.tmp"
    dpkg-deb -x "$deb" "$TOOLS/rust-src.tmp"
    rm -rf "$TOOLS/rust-src"
    mv "$TOOLS/rust-src.tmp" "$TOOLS/rust-src"
    [ -f "$LIBRARY/Cargo.lock" ] || die "$RUST_SRC_DEB has no library/Cargo.lock"
}

# Cargo and cc-rs settings for the target (C code: onig in tokenizers).
setup_env() {
    export CARGO_TARGET_DIR="$PWD/target/aarch64"
    # Where -Zbuild-std takes the standard library's source from instead of the toolchain's
    # rust-src component (which rustup would have to download).
    export __CARGO_TESTS_ONLY_SRC_ROOT="$LIBRARY"
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
    export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
    export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
    export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
    # Tests and `cargo run` go through qemu; QEMU_CPU picks the CPU model.
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64-static -L $SYSROOT"
    export QEMU_LD_PREFIX="$SYSROOT"
}

prepare() {
    install_debian_tools
    # -Zbuild-std is nightly-only; the stable toolchain stays the default.
    require_nightly cross-aarch64
    fetch_rust_src
    setup_env
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
build)
    prepare
    cargo "+$NIGHTLY" build -Zbuild-std --target "$TRIPLE" "$@"
    ;;
test)
    prepare
    # Build once, then run under every CPU model: the kernel table is chosen at run time.
    cargo "+$NIGHTLY" test -Zbuild-std --target "$TRIPLE" --no-run "$@"
    for cpu in $QEMU_CPUS; do
        echo "[cross-aarch64] tests under qemu -cpu $cpu"
        QEMU_CPU="$cpu" cargo "+$NIGHTLY" test -Zbuild-std --target "$TRIPLE" "$@" ||
            die "tests failed under -cpu $cpu"
    done
    ;;
env)
    prepare
    env | grep -E '^(CARGO_TARGET|__CARGO|CC_|CXX_|AR_|QEMU_)' | sed 's/^/export /'
    echo "# then: cargo +$NIGHTLY <build|test|run> -Zbuild-std --target $TRIPLE ..."
    ;;
*)
    die "usage: $0 build|test|env [cargo args]"
    ;;
esac
