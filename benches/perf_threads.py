#!/usr/bin/env python3
"""How busy each thread of a profiled run was: the share of a sampling window in which
`perf` found it running, and what it ran.

A thread that waits for another (at the end of a parallel region, or while the calling
thread does serial work) is not running and is not sampled, so with a fixed sampling rate
its sample count over a window, against the busiest thread's, is the share of the window it
worked. The window runs from the first to the last sample in a symbol matching PATTERN (the
GEMM kernels by default), which leaves out model loading and the bench's probes.

Usage (the fourteenth session's profile, BENCHMARKS.md):
    POCKETVL_MAX_TIER=avx2 perf record -F 1999 -o prof.data -- \\
        target/release/pocketvl bench model -m tiny-q8_0.gguf --no-vision -t 2 -p 512 -n 0 --reps 2
    perf script -i prof.data -F tid,time,ip,sym | benches/perf_threads.py [PATTERN] [TOP]
"""
import collections
import re
import sys


def main() -> int:
    pattern = re.compile(sys.argv[1] if len(sys.argv) > 1 else r"RowLanes|gemm_groups|gemm_units")
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 12
    samples = []
    for line in sys.stdin:
        parts = line.split(None, 3)
        if len(parts) < 4:
            continue
        try:
            samples.append((int(parts[0]), float(parts[1].rstrip(":")), parts[3].strip()))
        except ValueError:
            continue
    marks = [t for _, t, sym in samples if pattern.search(sym)]
    if not marks:
        print(f"no sample in a symbol matching {pattern.pattern!r}", file=sys.stderr)
        return 1
    t0, t1 = min(marks), max(marks)
    counts = collections.Counter()
    symbols = collections.defaultdict(collections.Counter)
    for tid, t, sym in samples:
        if t0 <= t <= t1:
            counts[tid] += 1
            symbols[tid][sym[:100]] += 1
    busiest = max(counts.values())
    print(f"window {t1 - t0:.3f} s, {len(counts)} threads")
    for tid, n in counts.most_common():
        print(f"thread {tid}: {n} samples, {100.0 * n / busiest:.1f}% of the busiest thread's")
        for sym, k in symbols[tid].most_common(top):
            print(f"    {k:7d}  {sym}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
