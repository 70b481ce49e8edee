#!/usr/bin/env python3
"""Reference tokenization with the Hugging Face `tokenizers` library.

Usage: tokenizer_ref.py TOKENIZER_JSON [--add-vl-specials] < strings.json > ids.json

Reads a JSON list of strings on stdin and prints a JSON list of id lists:
`encode(s, add_special_tokens=False)`, exactly what the DeepSeek-VL2
processor calls. With --add-vl-specials the processor's special tokens are
added first, only if missing and in the processor's order (fixtures README
rule 3), each as a special added token at id = current size.
"""
import json
import sys

from tokenizers import AddedToken, Tokenizer

VL_SPECIALS = [
    "<｜▁pad▁｜>",
    "<image>",
    "<|ref|>",
    "<|/ref|>",
    "<|det|>",
    "<|/det|>",
    "<|grounding|>",
    "<|User|>",
    "<|Assistant|>",
]


def main() -> None:
    path = sys.argv[1]
    tok = Tokenizer.from_file(path)
    if "--add-vl-specials" in sys.argv[2:]:
        for t in VL_SPECIALS:
            if tok.token_to_id(t) is None:
                tok.add_special_tokens([AddedToken(t, special=True, normalized=False)])
    strings = json.load(sys.stdin)
    out = [tok.encode(s, add_special_tokens=False).ids for s in strings]
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
