#!/usr/bin/env bash
# Cross build for aarch64-unknown-linux-gnu (Raspberry Pi 5, ARM servers and laptops) and the
# test suite under qemu-user, from what a Debian machine can install without touching rustup:
#
#   scripts/cross-aarch64.sh build [cargo build args]   -> target/aarch64/aarch64-unknown-linux-gnu/<profile>/pocketvl
#   scripts/cross-aarch64.sh test  [cargo test args]    runs the tests under qemu-aarch64, once per CPU
#                                                       model in POCKETVL_QEMU_CPUS; non-zero on failure
#   scripts/cross-aarch64.sh pi-check                   the Pi build checked end to end: `convert` and `run`
#                                                       on the bundled fixture, aarch64 `--profile pi` binary
#                                                       under qemu against the native binary; non-zero unless
#                                                       the GGUF files and the greedy tokens and text are equal
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

# The Pi binary (`--profile pi`, the README's build) under qemu on each CPU model in
# POCKETVL_PI_CPUS (default: the Pi 5's cortex-a76) against the native binary (stable toolchain,
# dev profile: the build `cargo test --workspace` leaves), same commands on the bundled tiny-mha fixture:
# `convert --quant q4_0` must write byte-identical GGUF files (model and mmproj), and `run` with
# an image (JPEG: libjpeg-turbo's NEON decoder on aarch64) and a prompt must give the same
# prompt ids, greedy ids and text. The float sums differ in order between the NEON and x86
# kernels, so equal tokens also say no greedy step is a near tie.
pi_check() {
    local pi="$CARGO_TARGET_DIR/$TRIPLE/pi/pocketvl"
    local native="$PWD/target/debug/pocketvl"
    # Both binaries come from the test builds CI has already made (`--test it` builds the
    # binary for the CLI tests): a plain `cargo build --bin` resolves the dependencies'
    # features without the dev-dependencies and would build every crate a second time.
    cargo "+$NIGHTLY" test -Zbuild-std --target "$TRIPLE" --profile pi -p pocketvl --test it --no-run
    (unset CARGO_TARGET_DIR && cargo test --workspace --no-run)
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    mkdir -p "$work/x86"
    local fixture=tests/fixtures/tiny-mha
    local run_args=(-t 2 --temperature 0 --repeat-penalty 1 -n 16 --json
        --image "$fixture/images/giraffe.jpg" -p "Describe this image.")
    echo "[pi-check] native: convert $fixture/hf --quant q4_0, run ${run_args[*]}"
    "$native" convert "$fixture/hf" -o "$work/x86/tiny.gguf" --quant q4_0 >/dev/null 2>"$work/x86-convert.log" ||
        die "native convert failed: $(cat "$work/x86-convert.log")"
    "$native" run -m "$work/x86/tiny.gguf" "${run_args[@]}" >"$work/x86.json" 2>"$work/x86-run.log" ||
        die "native run failed: $(cat "$work/x86-run.log")"
    local cpu
    for cpu in ${POCKETVL_PI_CPUS:-cortex-a76}; do
        echo "[pi-check] aarch64 (pi profile) under qemu -cpu $cpu: the same commands"
        local arm=(qemu-aarch64-static -L "$SYSROOT" -cpu "$cpu" "$pi")
        local out="$work/arm-$cpu"
        mkdir -p "$out"
        "${arm[@]}" convert "$fixture/hf" -o "$out/tiny.gguf" --quant q4_0 >/dev/null 2>"$out.log" ||
            die "aarch64 convert failed under -cpu $cpu: $(cat "$out.log")"
        local f
        for f in tiny.gguf mmproj-tiny.gguf; do
            cmp -s "$work/x86/$f" "$out/$f" || die "$f differs between x86-64 and aarch64 -cpu $cpu"
        done
        "${arm[@]}" run -m "$out/tiny.gguf" "${run_args[@]}" >"$out.json" 2>"$out.log" ||
            die "aarch64 run failed under -cpu $cpu: $(cat "$out.log")"
        python3 - "$work/x86.json" "$out.json" "$cpu" <<'PY' || die "outputs differ under -cpu $cpu"
import json, sys
x86, arm = (json.loads(open(p).read().splitlines()[-1]) for p in sys.argv[1:3])
keys = ("prompt_tokens", "tokens", "text", "stop", "image_tokens")
for k in keys:
    print(f"  {k}: x86 {json.dumps(x86[k])[:200]} | aarch64 {'same' if arm[k] == x86[k] else json.dumps(arm[k])[:200]}")
sys.exit(0 if all(arm[k] == x86[k] for k in keys) and len(x86["tokens"]) > 0 else 1)
PY
    done
    echo "[pi-check] equal: GGUF files, prompt ids, greedy ids and text"
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
pi-check)
    prepare
    pi_check "$@"
    ;;
env)
    prepare
    env | grep -E '^(CARGO_TARGET|__CARGO|CC_|CXX_|AR_|QEMU_)' | sed -E "s/^([^=]*)=(.*)$/export \\1='\\2'/"
    echo "# then: cargo +$NIGHTLY <build|test|run> -Zbuild-std --target $TRIPLE ..."
    ;;
*)
    die "usage: $0 build|test|pi-check|env [cargo args]"
    ;;
esac
