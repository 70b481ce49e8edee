#!/usr/bin/env python3
"""Pillow oracle for pocketvl's image tests (run with Pillow 13.0.0, as the fixtures were).

Writes test vectors that the Rust tests compare against, byte for byte:

  resize OUT   random RGB images resized with Image.resize(size, BICUBIC)
  pad OUT      random RGB images through ImageOps.pad(size, BICUBIC, (127,127,127))
  modes OUT    small images encoded in many modes/formats, and PIL's
               Image.open(f).convert("RGB") bytes for each
  decode OUT FILE...  PIL's Image.open(f).convert("RGB") bytes of existing files
  jpegs OUT    JPEGs made with Pillow in every layout its decoder has a separate path for
               (baseline, progressive, 4:4:4 / 4:2:2 / 4:2:0, grey, restart markers, CMYK,
               sizes off the MCU grid), and PIL's convert("RGB") bytes for each

Each command writes OUT/manifest.json (a list of cases) plus raw files: *.rgb are
interleaved 8-bit RGB, row-major, no header.
"""
import io
import json
import os
import random
import sys

import PIL
from PIL import Image, ImageOps


def rand_image(rng, w, h, kind):
    """A deterministic test image: noise (stresses clipping and rounding) or smooth."""
    if kind == "noise":
        data = rng.randbytes(3 * w * h)
    else:
        fx, fy, fc = rng.randint(1, 9), rng.randint(1, 9), rng.randint(0, 255)
        data = bytes(
            (x * fx + y * fy + c * fc + ((x * y) % 7) * 3) % 256
            for y in range(h)
            for x in range(w)
            for c in range(3)
        )
    return Image.frombytes("RGB", (w, h), data)


def save_raw(path, im):
    assert im.mode == "RGB"
    with open(path, "wb") as f:
        f.write(im.tobytes())


RESIZE_CASES = [
    # (w_in, h_in, w_out, h_out)
    (2, 2, 5, 3),
    (7, 5, 3, 2),
    (37, 23, 80, 50),
    (64, 48, 16, 12),
    (100, 300, 90, 279),  # dh 21 > 2*dw 20: vertical first (Pillow 13)
    (100, 300, 90, 280),  # dh 20 == 2*dw: horizontal first
    (100, 300, 90, 281),
    (50, 500, 40, 100),
    (100, 100, 150, 50),  # width grows, height shrinks
    (300, 100, 100, 90),
    (362, 543, 256, 384),  # giraffe global view
    (362, 543, 384, 576),  # giraffe local view (upscale)
    (500, 300, 384, 230),  # shapes global view
    (500, 300, 640, 384),  # shapes local view
    (450, 308, 384, 263),  # corn global view
    (1000, 333, 1152, 384),
    (640, 480, 384, 288),
    (801, 613, 50, 37),  # strong downscale: wide support
    (13, 400, 13, 41),  # vertical only
    (400, 13, 41, 13),  # horizontal only
    (3, 1000, 384, 128),
]

PAD_CASES = [
    # (w_in, h_in, w_out, h_out)
    (362, 543, 384, 384),
    (362, 543, 384, 768),
    (500, 300, 384, 384),
    (500, 300, 768, 384),
    (450, 308, 384, 384),
    (1000, 333, 1152, 384),
    (640, 480, 768, 768),
    (99, 301, 384, 384),
    (301, 99, 384, 384),
    (3, 1, 4, 4),
    (1, 2, 5, 5),
    (384, 384, 384, 384),
    (5000, 3, 384, 384),
    (7, 9, 1152, 768),
]


def cmd_resize(out):
    rng = random.Random(20261128)
    cases = []
    for i, (wi, hi, wo, ho) in enumerate(RESIZE_CASES):
        for kind in ("noise", "smooth"):
            name = f"resize{i:02d}_{kind}"
            im = rand_image(rng, wi, hi, kind)
            save_raw(os.path.join(out, name + ".in.rgb"), im)
            save_raw(os.path.join(out, name + ".out.rgb"), im.resize((wo, ho), Image.BICUBIC))
            cases.append(dict(name=name, in_w=wi, in_h=hi, out_w=wo, out_h=ho))
    return cases


def cmd_pad(out):
    rng = random.Random(1128)
    cases = []
    for i, (wi, hi, wo, ho) in enumerate(PAD_CASES):
        name = f"pad{i:02d}"
        im = rand_image(rng, wi, hi, "noise" if i % 2 else "smooth")
        save_raw(os.path.join(out, name + ".in.rgb"), im)
        padded = ImageOps.pad(im, (wo, ho), Image.BICUBIC, color=(127, 127, 127))
        save_raw(os.path.join(out, name + ".out.rgb"), padded)
        cases.append(dict(name=name, in_w=wi, in_h=hi, out_w=wo, out_h=ho))
    return cases


def mode_images(rng):
    """(name, PIL image, format, save kwargs) covering PIL's convert("RGB") table."""
    w, h = 13, 7
    rgb = rand_image(rng, w, h, "noise")
    rgba = Image.frombytes("RGBA", (w, h), rng.randbytes(4 * w * h))
    grey = Image.frombytes("L", (w, h), rng.randbytes(w * h))
    la = Image.frombytes("LA", (w, h), rng.randbytes(2 * w * h))
    pal = rgb.quantize(colors=16)
    pal_t = pal.copy()
    pal_t.info["transparency"] = 3
    bilevel = grey.convert("1", dither=Image.Dither.NONE)
    # Half the 16-bit grey samples below 256, so that clipping and pass-through both show.
    g16_vals = [rng.randrange(256) if rng.random() < 0.5 else rng.randrange(65536)
                for _ in range(w * h)]
    g16 = Image.frombytes("I;16", (w, h), b"".join(v.to_bytes(2, "little") for v in g16_vals))
    out = [
        ("rgb_png", rgb, "PNG", {}),
        ("rgba_png", rgba, "PNG", {}),
        ("l_png", grey, "PNG", {}),
        ("la_png", la, "PNG", {}),
        ("p_png", pal, "PNG", {}),
        ("p_trns_png", pal_t, "PNG", {"transparency": 3}),
        ("bilevel_png", bilevel, "PNG", {}),
        ("i16_png", g16, "PNG", {}),
        ("rgb_bmp", rgb, "BMP", {}),
        ("p_gif", pal, "GIF", {}),
        ("p_trns_gif", pal, "GIF", {"transparency": 3}),
        ("rgb_webp_lossless", rgb, "WEBP", {"lossless": True}),
        ("rgba_webp_lossless", rgba, "WEBP", {"lossless": True}),
        ("rgb_webp_lossy", rgb, "WEBP", {"quality": 90}),
        ("rgb_jpeg", rgb, "JPEG", {"quality": 90}),
        ("l_jpeg", grey, "JPEG", {"quality": 90}),
    ]
    return out


def png16(w, h, color_type, samples, data):
    """A 16-bit PNG written by hand (Pillow cannot save 16-bit RGB/RGBA/LA)."""
    import struct
    import zlib

    def chunk(t, d):
        c = struct.pack(">I", len(d)) + t + d
        return c + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    raw = b""
    stride = 2 * samples * w
    for y in range(h):
        raw += b"\x00" + data[y * stride:(y + 1) * stride]
    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def cmd_modes(out):
    rng = random.Random(7)
    cases = []
    encoded = []
    for name, im, fmt, kw in mode_images(rng):
        buf = io.BytesIO()
        im.save(buf, fmt, **kw)
        encoded.append((name, fmt, buf.getvalue()))
    w, h = 11, 5
    for name, ct, s in (("rgb16_png", 2, 3), ("rgba16_png", 6, 4), ("la16_png", 4, 2)):
        encoded.append((name, "PNG", png16(w, h, ct, s, rng.randbytes(2 * s * w * h))))
    # EXIF orientation 6 (rotate 90 CW to display): compared with exif_transpose applied.
    exif = Image.Exif()
    exif[0x0112] = 6
    for name, fmt in (("exif6_png", "PNG"), ("exif6_jpeg", "JPEG")):
        buf = io.BytesIO()
        rand_image(rng, 13, 7, "smooth").save(buf, fmt, exif=exif.tobytes())
        encoded.append((name, fmt, buf.getvalue()))
    for name, fmt, data in encoded:
        ext = {"PNG": "png", "BMP": "bmp", "GIF": "gif", "WEBP": "webp", "JPEG": "jpg"}[fmt]
        fname = f"{name}.{ext}"
        with open(os.path.join(out, fname), "wb") as f:
            f.write(data)
        src = Image.open(io.BytesIO(data))
        mode = src.mode
        apply_exif = name.startswith("exif")
        conv = (ImageOps.exif_transpose(src) if apply_exif else src).convert("RGB")
        save_raw(os.path.join(out, name + ".rgb"), conv)
        cases.append(dict(name=name, file=fname, pil_mode=mode, w=conv.width, h=conv.height,
                          lossy=fmt == "JPEG" or "lossy" in name, apply_exif=apply_exif))
    return cases


def cmd_decode(out, files):
    cases = []
    for i, path in enumerate(files):
        im = Image.open(path)
        mode = im.mode
        conv = im.convert("RGB")
        name = f"decode{i:02d}"
        save_raw(os.path.join(out, name + ".rgb"), conv)
        cases.append(dict(name=name, file=os.path.abspath(path), pil_mode=mode,
                          w=conv.width, h=conv.height))
    return cases


def cmd_jpegs(out):
    # Pillow's encoder cannot suspend mid-image for progressive/optimized/restart output: give
    # it a buffer larger than any of these files ("Suspension not allowed here").
    from PIL import ImageFile
    ImageFile.MAXBLOCK = 1 << 24
    rng = random.Random(11)
    cases = []
    sizes = [(64, 48), (37, 23), (301, 199), (17, 130)]
    variants = [
        ("q90_420", {"quality": 90, "subsampling": 2}),
        ("q75_422", {"quality": 75, "subsampling": 1}),
        ("q95_444", {"quality": 95, "subsampling": 0}),
        ("q50_420_optimized", {"quality": 50, "subsampling": 2, "optimize": True}),
        ("q85_420_progressive", {"quality": 85, "subsampling": 2, "progressive": True}),
        ("q85_444_progressive", {"quality": 85, "subsampling": 0, "progressive": True}),
        ("q80_420_restart_blocks", {"quality": 80, "subsampling": 2,
                                    "restart_marker_blocks": 3}),
        ("q80_422_restart_rows", {"quality": 80, "subsampling": 1, "restart_marker_rows": 1}),
    ]
    encoded = []
    for (w, h) in sizes:
        for kind in ("smooth", "noise"):
            im = rand_image(rng, w, h, kind)
            for vname, kw in variants:
                encoded.append((f"{vname}_{kind}_{w}x{h}", im, kw))
            encoded.append((f"grey_{kind}_{w}x{h}", im.convert("L"), {"quality": 85}))
            encoded.append((f"grey_progressive_{kind}_{w}x{h}", im.convert("L"),
                            {"quality": 85, "progressive": True}))
            encoded.append((f"cmyk_{kind}_{w}x{h}", im.convert("CMYK"), {"quality": 90}))
    # Recoverable corruption (libjpeg warns "Corrupt JPEG data: 2 extraneous bytes before
    # marker 0xd9" and PIL keeps the pixels).
    encoded.append(("extraneous_bytes_before_eoi", rand_image(rng, 40, 24, "smooth"),
                    {"quality": 80, "_extraneous": True}))
    for name, im, kw in encoded:
        buf = io.BytesIO()
        extraneous = kw.pop("_extraneous", False)
        im.save(buf, "JPEG", **kw)
        data = buf.getvalue()
        if extraneous:
            data = data[:-2] + b"\x12\x34" + data[-2:]
        fname = name + ".jpg"
        with open(os.path.join(out, fname), "wb") as f:
            f.write(data)
        src = Image.open(io.BytesIO(data))
        mode = src.mode
        conv = src.convert("RGB")
        save_raw(os.path.join(out, name + ".rgb"), conv)
        cases.append(dict(name=name, file=fname, pil_mode=mode, w=conv.width, h=conv.height))
    return cases


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    cmd, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    if cmd == "resize":
        cases = cmd_resize(out)
    elif cmd == "pad":
        cases = cmd_pad(out)
    elif cmd == "modes":
        cases = cmd_modes(out)
    elif cmd == "decode":
        cases = cmd_decode(out, sys.argv[3:])
    elif cmd == "jpegs":
        cases = cmd_jpegs(out)
    else:
        sys.exit(f"unknown command {cmd}\n{__doc__}")
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump({"pillow": PIL.__version__, "cases": cases}, f, indent=1)


if __name__ == "__main__":
    main()
