#!/usr/bin/env bash
# The first answer after a reboot: time to first token of one 2x2-tiled image request from
# opening model files that are not in the page cache (`pocketvl bench model --cold`), with the
# background preload of the files (the default) and without it (`--no-preload`), alternating
# on the same build. Optionally under a read-rate limit on the files' disk (a cgroup's block
# I/O throttle), to see a slower disk than the machine's own: a laptop's SATA SSD reads ~500
# MB/s, a Raspberry Pi's microSD card ~50-90.
#
# Usage:
#   benches/cold_start.sh MODEL.gguf            (the mmproj beside it, as `run` finds it)
# Environment:
#   THREADS     compute threads (default 2)
#   ROUNDS      alternating rounds (default 2)
#   READ_MBPS   read limit in MB/s on the disk holding the files (default: none). Needs
#               root and cgroup v1's blkio or v2's io controller.
#   POCKETVL_BIN  the binary to time (default: target/release/pocketvl, built if missing)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
THREADS="${THREADS:-2}"
ROUNDS="${ROUNDS:-2}"
READ_MBPS="${READ_MBPS:-}"

log() { echo "[cold_start] $*" >&2; }
die() { echo "[cold_start] ERROR: $*" >&2; exit 1; }
[ "$#" -eq 1 ] || die "usage: $0 MODEL.gguf"
MODEL="$1"
[ -f "$MODEL" ] || die "no such file: $MODEL"
case "$THREADS$ROUNDS" in *[!0-9]*) die "THREADS and ROUNDS must be whole numbers" ;; esac
[ "$ROUNDS" -ge 1 ] || die "ROUNDS must be at least 1"

if [ -n "${POCKETVL_BIN:-}" ]; then
    POCKETVL="$POCKETVL_BIN"
else
    POCKETVL="$ROOT/target/release/pocketvl"
    [ -x "$POCKETVL" ] || (cd "$ROOT" && cargo build --release >&2) || die "cargo build failed"
fi
[ -x "$POCKETVL" ] || die "$POCKETVL is not an executable"

# --- the read limit ---------------------------------------------------------------------
GROUP=""
cleanup() {
    [ -n "$GROUP" ] && [ -d "$GROUP" ] && rmdir "$GROUP" 2>/dev/null
    return 0
}
trap cleanup EXIT
if [ -n "$READ_MBPS" ]; then
    case "$READ_MBPS" in *[!0-9]* | "") die "READ_MBPS must be a whole number of MB/s" ;; esac
    [ "$READ_MBPS" -ge 1 ] || die "READ_MBPS must be at least 1"
    [ "$(id -u)" -eq 0 ] || die "READ_MBPS needs root (a block I/O cgroup)"
    SOURCE="$(df --output=source "$MODEL" | tail -1)"
    DEV="$(lsblk -dno MAJ:MIN "$SOURCE" 2>/dev/null | tr -d ' ')" \
        || die "cannot find the block device of $MODEL ($SOURCE)"
    [ -n "$DEV" ] || die "cannot find the block device of $MODEL ($SOURCE)"
    BPS=$((READ_MBPS * 1000000))
    if [ -d /sys/fs/cgroup/blkio ]; then
        GROUP="/sys/fs/cgroup/blkio/pocketvl-cold-$$"
        mkdir "$GROUP" || die "cannot create $GROUP"
        echo "$DEV $BPS" > "$GROUP/blkio.throttle.read_bps_device" \
            || die "the blkio controller refused a read limit on $DEV"
    elif grep -qw io /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
        grep -qw io /sys/fs/cgroup/cgroup.subtree_control \
            || echo "+io" > /sys/fs/cgroup/cgroup.subtree_control \
            || die "cannot enable the io controller"
        GROUP="/sys/fs/cgroup/pocketvl-cold-$$"
        mkdir "$GROUP" || die "cannot create $GROUP"
        echo "$DEV rbps=$BPS" > "$GROUP/io.max" || die "the io controller refused a limit on $DEV"
    else
        die "READ_MBPS needs cgroup v1's blkio or v2's io controller"
    fi
    log "reads from $SOURCE ($DEV) limited to $READ_MBPS MB/s"
fi

# One `bench model --cold` in the group (when there is one); prints its JSON line.
one() {
    local cmd=("$POCKETVL" bench model -m "$MODEL" -t "$THREADS" -p 0 -n 0 --reps 1 --cold --json "$@")
    if [ -n "$GROUP" ]; then
        bash -c 'echo $$ > "$1/cgroup.procs" && shift && exec "$@"' _ "$GROUP" "${cmd[@]}"
    else
        "${cmd[@]}"
    fi | tail -1
}

printf '%-6s %-10s %14s %14s %12s %12s %10s\n' round preload "cold ttft ms" "warm ttft ms" \
    "cold/warm" "preload ms" resident
for r in $(seq 1 "$ROUNDS"); do
    for mode in on off; do
        flags=()
        [ "$mode" = off ] && flags=(--no-preload)
        log "round $r, preload $mode"
        json="$(one "${flags[@]}")" || die "bench model failed (round $r, preload $mode)"
        python3 - "$r" "$mode" "$json" <<'EOF'
import json, sys
r, mode, line = sys.argv[1:]
j = json.loads(line)
cold, warm = j.get("cold_ttft_ms"), j.get("ttft_ms")
if cold is None or warm is None:
    sys.exit(f"[cold_start] ERROR: no cold_ttft_ms/ttft_ms in the JSON (is the mmproj beside the model?)")
pre = j.get("preload_ms")
res = j.get("cold_resident_after_drop")
print(f"{r:<6} {mode:<10} {cold:14.1f} {warm:14.1f} {cold / warm:12.3f} "
      f"{'-' if pre is None else f'{pre:.0f}':>12} {'-' if res is None else f'{res:.3f}':>10}")
EOF
    done
done
