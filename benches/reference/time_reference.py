"""Times the official DeepSeek-VL2 PyTorch code on CPU (benches/compare_reference.sh runs it).

Usage: time_reference.py HF_DIR [--threads 2] [--reps 3]
(the reference checkout and the xformers stand-in must be on PYTHONPATH).

Measures, for one image tiled 2x2 (global view + 4 local tiles) plus a short question, the
same two things `pocketvl bench model` reports:
  vision_ms_per_tile: preprocessing + SigLIP tower + projector + layout (prepare_inputs_embeds
                      minus the language embedding lookup, which is negligible) / tiles;
  ttft_ms:            processor + prepare_inputs_embeds + the language model's prefill over
                      the whole prompt + the greedy first token.
Float32 weights (the checkpoint's bf16 values widened), torch.no_grad, `--threads` intra-op
threads. The image is the same deterministic synthetic picture as src/bench/model.rs
(tiled_2x2_image): a square of twice the tile side.

Prints the human-readable lines, then one JSON object on the last line.
"""

import argparse
import json
import statistics
import time

import numpy as np
import PIL.Image
import torch

from deepseek_vl2.models import DeepseekVLV2ForCausalLM, DeepseekVLV2Processor

QUESTION = "Describe this image."


def synthetic_image(tile):
    """The same pixels as tiled_2x2_image in src/bench/model.rs."""
    side = 2 * tile
    y, x = np.mgrid[0:side, 0:side].astype(np.int64)
    checker = np.where(((x // 32) + (y // 32)) % 2 == 0, 40, 0)
    r = np.minimum(x * 255 // side + checker, 255)
    g = np.minimum(y * 255 // side + checker, 255)
    b = ((x + y) * 127 // side + checker) % 256
    return PIL.Image.fromarray(np.stack([r, g, b], axis=-1).astype(np.uint8), "RGB")


def spread(v):
    return {"median": statistics.median(v), "min": min(v), "max": max(v)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("hf_dir")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    t0 = time.perf_counter()
    processor = DeepseekVLV2Processor.from_pretrained(a.hf_dir)
    model = DeepseekVLV2ForCausalLM.from_pretrained(a.hf_dir, torch_dtype=torch.float32).eval()
    load_s = time.perf_counter() - t0
    image = synthetic_image(processor.image_size)
    conversation = [
        {"role": "<|User|>", "content": "<image>\n" + QUESTION},
        {"role": "<|Assistant|>", "content": ""},
    ]

    vision, ttft, tiles, n_tokens = [], [], 0, 0
    with torch.no_grad():
        for rep in range(a.reps):
            t0 = time.perf_counter()
            inputs = processor(conversations=conversation, images=[image], force_batchify=True,
                               system_prompt="")
            embeds = model.prepare_inputs_embeds(**inputs)
            t_vis = time.perf_counter() - t0
            out = model.language(inputs_embeds=embeds, attention_mask=inputs.attention_mask,
                                 use_cache=True)
            first = int(out.logits[0, -1].argmax())
            t_first = time.perf_counter() - t0
            crop = inputs.images_spatial_crop[0, 0]
            tiles = 1 + int(crop[0]) * int(crop[1])
            n_tokens = int(inputs.input_ids.shape[1])
            vision.append(t_vis * 1000.0 / tiles)
            ttft.append(t_first * 1000.0)
            print(f"rep {rep + 1}/{a.reps}: vision {t_vis:.2f} s ({tiles} tiles), "
                  f"ttft {t_first:.2f} s, first token {first}", flush=True)

    result = {
        "impl": "official PyTorch DeepSeek-VL2 (float32)",
        "torch": torch.__version__,
        "threads": a.threads,
        "reps": a.reps,
        "load_s": load_s,
        "vision_tiles": tiles,
        "ttft_prompt_tokens": n_tokens,
        "vision_ms_per_tile": statistics.median(vision),
        "ttft_ms": statistics.median(ttft),
        "spread": {"vision_ms_per_tile": spread(vision), "ttft_ms": spread(ttft)},
    }
    v, t = result["spread"]["vision_ms_per_tile"], result["spread"]["ttft_ms"]
    print(f"vision per tile {v['median']:.1f} ms (range {v['min']:.1f} to {v['max']:.1f}); "
          f"ttft {t['median']:.1f} ms (range {t['min']:.1f} to {t['max']:.1f}); "
          f"{n_tokens} prompt tokens, {a.threads} thread(s)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
