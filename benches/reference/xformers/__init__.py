"""Stand-in for the `xformers` package, which has no CPU build (benches/compare_reference.sh).

Only what DeepSeek-VL2's SigLIP attention imports exists: `xformers.ops.memory_efficient_attention`.
"""
