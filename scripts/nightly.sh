# The nightly toolchain, for the scripts that need nightly-only flags (cross-aarch64.sh:
# -Zbuild-std; fuzz.sh: cargo-fuzz's -Zsanitizer). Sourced, not run.
#
# NIGHTLY is the toolchain's rustup name: POCKETVL_NIGHTLY, else `nightly` (the machines carry
# nightly-x86_64-unknown-linux-gnu). Nothing is downloaded: rustup's server is not a package
# registry, so a machine without the toolchain fails here, loudly, instead of skipping.

NIGHTLY="${POCKETVL_NIGHTLY:-nightly}"

# Exits non-zero unless `cargo +$NIGHTLY` works; $1 names the caller in the message.
require_nightly() {
    rustup run "$NIGHTLY" rustc --version >/dev/null 2>&1 || {
        echo "$1: no '$NIGHTLY' toolchain (rustup toolchain list); set POCKETVL_NIGHTLY" >&2
        exit 1
    }
}
