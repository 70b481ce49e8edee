//! JPEG decode speed: libjpeg-turbo through `turbojpeg` (today's path, Pillow's exact pixels)
//! against the `image` crate's zune-jpeg decoder (the path before it), on the same files, in
//! alternating runs (plain `harness = false` binary). Issue 11 asks for the new decoder to stay
//! within 1.5x of the old one's time.
//!
//! ```text
//! POCKETVL_PYTHON=$PWD/target/venv/bin/python cargo bench --bench jpeg_decode
//! ```
//!
//! The JPEGs are made by Pillow at run time (`POCKETVL_PYTHON` must have Pillow): photo-like
//! content (gradients, a fractal, shapes, blurred noise) at 640x427 and 1920x1080, quality 90,
//! 4:2:0, baseline and progressive. `POCKETVL_BENCH_ROUNDS` sets the rounds (default 30).
//!
//! Timed per file and round, alternating the decoders so all see the same machine load;
//! the medians and the ratio of medians are printed:
//! - `old`: what `image_io::decode_rgb` ran before libjpeg-turbo: the `image` crate's decoder
//!   (zune-jpeg) and `to_rgb8_like_pil`;
//! - `new`: `image_io::decode_rgb` as it is (header check through the `image` crate, then
//!   `jpeg::decode_like_pil`); `turbo` is `decode_like_pil` alone.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::time::Instant;

use image::{DynamicImage, ImageReader};
use pocketvl::image_io::{decode_rgb, jpeg, to_rgb8_like_pil};

/// Writes the benchmark's JPEGs into `dir` with Pillow.
const MAKE_JPEGS: &str = r#"
import random, sys
from PIL import Image, ImageDraw, ImageFilter
out = sys.argv[1]
random.seed(11)
for w, h in [(640, 427), (1920, 1080)]:
    grad = Image.radial_gradient("L").resize((w, h))
    frac = Image.effect_mandelbrot((w, h), (-2.0, -1.2, 0.8, 1.2), 64)
    noise = Image.frombytes("L", (w, h), random.randbytes(w * h)).filter(ImageFilter.GaussianBlur(1))
    img = Image.merge("RGB", (grad, frac, Image.blend(grad, noise, 0.4)))
    d = ImageDraw.Draw(img)
    for _ in range(40):
        x, y = random.randrange(w), random.randrange(h)
        r = random.randrange(5, max(6, w // 8))
        fill = tuple(random.randrange(256) for _ in range(3))
        d.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    img = img.filter(ImageFilter.GaussianBlur(0.7))
    img.save(f"{out}/{w}x{h}-baseline.jpg", quality=90)
    img.save(f"{out}/{w}x{h}-progressive.jpg", quality=90, progressive=True)
"#;

/// A decoder under test: JPEG bytes to the length of its RGB output.
type Decode = fn(&[u8]) -> usize;

/// The decode `decode_rgb` ran before libjpeg-turbo (zune-jpeg through the `image` crate).
fn old_decode(bytes: &[u8]) -> usize {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .expect("in-memory reader");
    let img = DynamicImage::from_decoder(reader.into_decoder().expect("decoder")).expect("decode");
    to_rgb8_like_pil(&img).as_raw().len()
}

fn new_decode(bytes: &[u8]) -> usize {
    decode_rgb(bytes, false).expect("decode").as_raw().len()
}

fn turbo_decode(bytes: &[u8]) -> usize {
    jpeg::decode_like_pil(bytes).expect("decode").as_raw().len()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn bench_file(path: &Path, rounds: usize) {
    let bytes = std::fs::read(path).expect("read the JPEG");
    let decoders: [Decode; 3] = [old_decode, new_decode, turbo_decode];
    // Warm-up (page faults, caches) and a check that all three give the same size.
    let sizes: Vec<usize> = decoders.iter().map(|f| f(&bytes)).collect();
    assert!(sizes.windows(2).all(|w| w[0] == w[1]), "{sizes:?}");
    let mut times = vec![Vec::with_capacity(rounds); decoders.len()];
    for round in 0..rounds {
        // Alternate the order too, so neither decoder always runs right after the other.
        for k in 0..decoders.len() {
            let i = (k + round) % decoders.len();
            let t = Instant::now();
            std::hint::black_box(decoders[i](std::hint::black_box(&bytes)));
            times[i].push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let [old, new, turbo] = [0, 1, 2].map(|i| median(&mut times[i]));
    println!(
        "{:<28} {:>7} B  old {old:7.2} ms  new {new:7.2} ms  turbo {turbo:7.2} ms  \
         new/old {:.2}  turbo/old {:.2}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        bytes.len(),
        new / old,
        turbo / old,
    );
}

fn main() -> anyhow::Result<()> {
    let Some(python) = std::env::var_os("POCKETVL_PYTHON") else {
        println!("skipped: POCKETVL_PYTHON not set (a Python with Pillow makes the JPEGs)");
        return Ok(());
    };
    let rounds = std::env::var("POCKETVL_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(30usize)
        .max(1);
    let dir = tempfile::tempdir()?;
    let status = std::process::Command::new(python)
        .args(["-c", MAKE_JPEGS])
        .arg(dir.path())
        .status()?;
    anyhow::ensure!(
        status.success(),
        "Pillow could not write the JPEGs ({status})"
    );
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.path())?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.sort();
    println!("median of {rounds} alternating rounds, one thread");
    for f in &files {
        bench_file(f, rounds);
    }
    Ok(())
}
