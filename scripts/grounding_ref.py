#!/usr/bin/env python3
"""Independent oracle for pocketvl's grounding tests: DeepSeek-VL2's `parse_ref_bbox` logic.

Re-states, with the standard library only, what the reference
(`deepseek_vl2/serve/app_modules/utils.py`, `parse_ref_bbox`) does before it draws: find every
`<|ref|>...<|/ref|>` and `<|det|>...<|/det|>` with non-greedy regexes, require equal counts,
strip one character from each end of every box list, evaluate each `[...]` inside it, and map
`int(v / 999 * size)` on the original image. `ast.literal_eval` stands in for the reference's
`eval` (identical on the literal lists the model writes).

stdin: {"cases": [{"text": str, "w": int, "h": int}, ...], "grid": [[w, h], ...]}
stdout: {"cases": [null | [[label, [x1, y1, x2, y2]], ...], ...],
         "grid": [[[int(v/999*w) for v in 0..999], [int(v/999*h) ...]], ...]}
A case is null where the reference returns None (count mismatch, no ref, bad box).
"""
import ast
import json
import re
import sys


def reference_boxes(text, w, h):
    try:
        refs = re.findall(r"<\|ref\|>.*?<\|/ref\|>", text)
        dets = re.findall(r"<\|det\|>.*?<\|/det\|>", text)
        assert len(refs) == len(dets)
        if not refs:
            return None
        out = []
        for det, ref in zip(dets, refs):
            det = det.replace("<|det|>", "").replace("<|/det|>", "")
            label = ref.replace("<|ref|>", "").replace("<|/ref|>", "")
            det = det[1:-1]
            for one in re.findall(r"\[.*?\]", det):
                b = ast.literal_eval(one)
                out.append([label, [int(b[0] / 999 * w), int(b[1] / 999 * h),
                                    int(b[2] / 999 * w), int(b[3] / 999 * h)]])
        return out
    except Exception:
        return None


def main():
    req = json.load(sys.stdin)
    cases = [reference_boxes(c["text"], c["w"], c["h"]) for c in req.get("cases", [])]
    grid = [[[int(v / 999 * w) for v in range(1000)], [int(v / 999 * h) for v in range(1000)]]
            for w, h in req.get("grid", [])]
    json.dump({"cases": cases, "grid": grid}, sys.stdout)


if __name__ == "__main__":
    main()
