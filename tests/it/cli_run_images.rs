//! `pocketvl run` with images, through the real binary: prompt ids and greedy tokens against
//! the reference goldens, the `--json` image fields, the feature cache, EXIF orientation,
//! `--draw-boxes`, interactive `/image`, and every kind of bad image input giving a clear
//! message and a non-zero exit, never a panic.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use convert::write::{convert, ConvertOptions};
use serde_json::Value;

use crate::common;
use common::{fixture, s};

fn image(name: &str) -> PathBuf {
    fixture("tiny-mha").join("images").join(name)
}

/// tiny-mha converted once (f32) for all tests of this file; the mmproj lies beside it.
fn model() -> &'static Path {
    static MODEL: OnceLock<PathBuf> = OnceLock::new();
    MODEL.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli_run_images");
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("model.gguf");
        convert(&ConvertOptions {
            input: fixture("tiny-mha").join("hf"),
            output: out.clone(),
            quant: Some("f32".to_string()),
            overrides: Vec::new(),
            force: true,
            threads: Some(2),
            progress: false,
        })
        .unwrap();
        out
    })
}

fn pocketvl(args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pocketvl"));
    cmd.args(["run", "-m", s(model()), "-t", "2", "--temperature", "0"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run pocketvl");
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

/// The `--json` object (the last stdout line) of a run that must succeed.
fn json_of(o: &Output) -> Value {
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "failed: {stderr}");
    let stdout = String::from_utf8_lossy(&o.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// Runs a command expected to fail; returns its stderr after checking the failure is clean.
fn fails(args: &[&str]) -> String {
    let o = pocketvl(args, None);
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "expected failure; stderr: {stderr}");
    assert!(stderr.contains("error:"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

fn case(name: &str) -> Value {
    let cases: Value =
        serde_json::from_slice(&std::fs::read(fixture("tiny-mha").join("cases.json")).unwrap())
            .unwrap();
    cases["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap()
        .clone()
}

fn golden_ids(name: &str) -> Vec<u64> {
    let g = convert::safetensors::SafeTensorsFile::open(
        &fixture("tiny-mha").join("golden.safetensors"),
    )
    .unwrap();
    g.tensor(name)
        .unwrap()
        .to_i64()
        .unwrap()
        .iter()
        .map(|&x| x as u64)
        .collect()
}

fn u64s(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

/// The PNG case through the binary: prompt ids and all 16 greedy tokens equal the
/// reference's; the JSON carries the image fields.
#[test]
fn png_case_matches_reference_through_cli() {
    let c = case("img_synth");
    let prompt = c["conversation"][0]["content"].as_str().unwrap();
    let o = pocketvl(
        &[
            "--image",
            s(&image("shapes_500x300.png")),
            "-p",
            prompt,
            "-n",
            "16",
            "--repeat-penalty",
            "1",
            "--json",
        ],
        None,
    );
    let j = json_of(&o);
    assert_eq!(u64s(&j["prompt_tokens"]), golden_ids("img_synth.input_ids"));
    assert_eq!(u64s(&j["image_tokens"]), vec![617]);
    assert_eq!(j["image_sizes"], serde_json::json!([[500, 300]]));
    assert_eq!(j["vision_cached"], 0);
    assert!(j["vision_ms"].as_f64().unwrap() > 0.0);
    let kernels = j["timings"]["kernels"].as_str().unwrap_or_default();
    assert!(quant::kernels::TIER_NAMES.contains(&kernels), "{j}");
    assert!(j["boxes"].as_array().unwrap().is_empty());
    let want = golden_ids("img_synth.gen_ids");
    let got = u64s(&j["tokens"]);
    assert_eq!(got[..], want[..got.len()], "greedy tokens");
    assert!(got.len() == 16 || j["stop"] != "maxtokens", "{j}");
    // An f16 KV cache keeps the greedy path here (decoder_oracle measures its logit error).
    let png = image("shapes_500x300.png");
    let args = ["--image", s(&png), "-p", prompt, "-n", "16", "--json"];
    let j16 = json_of(&pocketvl(
        &[&args[..], &["--cache-type", "f16"]].concat(),
        None,
    ));
    assert_eq!(u64s(&j16["tokens"]), got, "greedy tokens over an f16 cache");
}

/// Two images without tags: one `<image>\n` each in front; the same image twice is encoded
/// once (the second comes from the feature cache) and the prompt equals the reference's
/// two-image layout when the tags are written out.
#[test]
fn repeated_images_tags_and_cache() {
    let giraffe = image("giraffe.jpg");
    let shapes = image("shapes_500x300.png");
    let c = case("two_images");
    let prompt = c["conversation"][0]["content"].as_str().unwrap();
    let j = json_of(&pocketvl(
        &[
            "--image",
            s(&giraffe),
            "--image",
            s(&shapes),
            "-p",
            prompt,
            "-n",
            "1",
            "--json",
            "--no-exif-rotate",
        ],
        None,
    ));
    assert_eq!(
        u64s(&j["prompt_tokens"]),
        golden_ids("two_images.input_ids")
    );
    assert_eq!(u64s(&j["image_tokens"]), vec![631, 617]);

    let j = json_of(&pocketvl(
        &[
            "--image",
            s(&shapes),
            "--image",
            s(&shapes),
            "-p",
            "Same?",
            "-n",
            "1",
            "--json",
        ],
        None,
    ));
    assert_eq!(u64s(&j["image_tokens"]), vec![617, 617]);
    assert_eq!(j["vision_cached"], 1);
    let ids = u64s(&j["prompt_tokens"]);
    let image_id = *ids
        .iter()
        .max_by_key(|&&id| ids.iter().filter(|&&x| x == id).count())
        .unwrap();
    assert_eq!(ids.iter().filter(|&&x| x == image_id).count(), 2 * 617);

    // Three images: no tiling for any of them.
    let j = json_of(&pocketvl(
        &[
            "--image",
            s(&giraffe),
            "--image",
            s(&shapes),
            "--image",
            s(&image("corn.jpg")),
            "--raw-prompt",
            "<|User|>: <image><image><image>\n\n<|Assistant|>:",
            "-n",
            "1",
            "--json",
        ],
        None,
    ));
    assert_eq!(u64s(&j["image_tokens"]), vec![421, 421, 421]);
}

/// A JPEG with EXIF orientation 6 ("rotate 90° clockwise to display"), 40x24 as stored.
fn exif_rotated_jpeg(dir: &Path) -> PathBuf {
    let mut px = Vec::new();
    for y in 0..24u32 {
        for x in 0..40u32 {
            px.extend_from_slice(&[(x * 6) as u8, (y * 10) as u8, 128]);
        }
    }
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
        .encode(&px, 40, 24, image::ExtendedColorType::Rgb8)
        .unwrap();
    // APP1 "Exif\0\0", little-endian TIFF, one IFD entry: Orientation (0x0112) SHORT 1 = 6.
    let mut tiff = b"II*\0".to_vec();
    tiff.extend_from_slice(&8u32.to_le_bytes());
    tiff.extend_from_slice(&1u16.to_le_bytes());
    tiff.extend_from_slice(&0x0112u16.to_le_bytes());
    tiff.extend_from_slice(&3u16.to_le_bytes());
    tiff.extend_from_slice(&1u32.to_le_bytes());
    tiff.extend_from_slice(&[6, 0, 0, 0]);
    tiff.extend_from_slice(&0u32.to_le_bytes());
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    let path = dir.join("rotated.jpg");
    std::fs::write(&path, out).unwrap();
    path
}

/// Default: the image is turned upright (boxes and drawings refer to it as shown);
/// `--no-exif-rotate`: as stored, like the reference. `--draw-boxes` writes the shown image.
#[test]
fn exif_orientation_and_draw_boxes() {
    let dir = tempfile::tempdir().unwrap();
    let jpg = exif_rotated_jpeg(dir.path());
    let drawn = dir.path().join("boxes.png");
    let j = json_of(&pocketvl(
        &[
            "--image",
            s(&jpg),
            "-p",
            "Where?",
            "-n",
            "2",
            "--json",
            "--draw-boxes",
            s(&drawn),
        ],
        None,
    ));
    assert_eq!(j["image_sizes"], serde_json::json!([[24, 40]]));
    let img = pocketvl::image_io::load_rgb(&drawn, false).unwrap();
    assert_eq!((img.width(), img.height()), (24, 40));
    let j = json_of(&pocketvl(
        &[
            "--image",
            s(&jpg),
            "-p",
            "Where?",
            "-n",
            "2",
            "--json",
            "--no-exif-rotate",
        ],
        None,
    ));
    assert_eq!(j["image_sizes"], serde_json::json!([[40, 24]]));
    let stderr = fails(&["-p", "Where?", "--draw-boxes", s(&drawn)]);
    assert!(stderr.contains("--draw-boxes needs an --image"), "{stderr}");
}

/// Interactive: `/image` adds to the next message; the follow-up reuses the features; a
/// third image re-lays out the earlier two; a bad path is reported and the chat goes on.
#[test]
fn chat_image_command() {
    let input = format!(
        "/image {}\nWhat is it?\nAnd the colours?\n/image /nonexistent/x.png\n/image {}\n/image {}\nAll three?\n<image> too many\n/exit\n",
        s(&image("shapes_500x300.png")),
        s(&image("giraffe.jpg")),
        s(&image("corn.jpg")),
    );
    let o = pocketvl(&["-n", "2"], Some(&input));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let vision: Vec<&str> = stderr.lines().filter(|l| l.contains("vision:")).collect();
    assert_eq!(vision.len(), 3, "{stderr}");
    assert!(
        vision[0].contains("vision: 1 image(s), 0 from cache") && vision[0].contains("[617]"),
        "{stderr}"
    );
    assert!(
        vision[1].contains("vision: 1 image(s), 1 from cache"),
        "{stderr}"
    );
    assert!(
        vision[2].contains("vision: 3 image(s), 0 from cache")
            && vision[2].contains("[421, 421, 421]"),
        "{stderr}"
    );
    assert!(
        stderr.contains("note: 3 images in the conversation"),
        "{stderr}"
    );
    assert!(stderr.contains("/nonexistent/x.png"), "{stderr}");
    // The last message has a tag but no image: refused, the conversation is kept.
    assert!(
        stderr.contains("1 <image> tag(s) but only 0 image(s)"),
        "{stderr}"
    );
    let prefill: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("prefill:"))
        .collect();
    assert_eq!(prefill.len(), 3, "{stderr}");

    // `--image` without a prompt: the image goes with the first chat message.
    let shapes = image("shapes_500x300.png");
    let o = pocketvl(&["-n", "1", "--image", s(&shapes)], Some("What is it?\n"));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.contains("vision: 1 image(s), 0 from cache") && stderr.contains("[617]"),
        "{stderr}"
    );
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
}

/// A PNG whose header claims `w`x`h` RGB8, with a token IDAT: no pixel data to speak of.
fn png_header(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &ihdr);
    png_chunk(
        &mut out,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    png_chunk(&mut out, b"IEND", &[]);
    out
}

/// A BMP whose header claims `w`x`h` at 24 bits, without pixel data.
fn bmp_header(w: i32, h: i32) -> Vec<u8> {
    let mut out = b"BM".to_vec();
    out.extend_from_slice(&54u32.to_le_bytes()); // file size (header only)
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&54u32.to_le_bytes()); // pixel data offset
    out.extend_from_slice(&40u32.to_le_bytes());
    out.extend_from_slice(&w.to_le_bytes());
    out.extend_from_slice(&h.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&24u16.to_le_bytes());
    out.extend_from_slice(&[0u8; 24]);
    out
}

#[test]
fn bad_image_inputs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let run = |img: &Path| fails(&["--image", s(img), "-p", "Describe.", "-n", "1"]);

    let e = run(&dir.path().join("missing.png"));
    assert!(
        e.contains("reading image") && e.contains("missing.png"),
        "{e}"
    );

    let png = std::fs::read(image("shapes_500x300.png")).unwrap();
    let e = run(&write("truncated.png", &png[..png.len() / 3]));
    assert!(e.contains("truncated.png"), "{e}");

    let jpg = std::fs::read(image("giraffe.jpg")).unwrap();
    let e = run(&write("truncated.jpg", &jpg[..jpg.len() / 2]));
    assert!(
        e.contains("truncated.jpg") && e.contains("truncated"),
        "{e}"
    );

    let e = run(&write("empty.png", b""));
    assert!(e.contains("empty"), "{e}");

    let e = run(&write("zero.png", &png_header(0, 100)));
    assert!(e.contains("zero.png"), "{e}");
    let e = run(&write("zero.bmp", &bmp_header(0, 100)));
    assert!(e.contains("zero.bmp"), "{e}");

    for name in ["huge.png", "huge.bmp"] {
        let bytes = if name.ends_with("png") {
            png_header(30000, 30000)
        } else {
            bmp_header(30000, 30000)
        };
        let e = run(&write(name, &bytes));
        assert!(e.contains("too large") && e.contains("30000x30000"), "{e}");
    }

    let giraffe = image("giraffe.jpg");
    let e = fails(&[
        "--image",
        s(&giraffe),
        "-p",
        "<image> and <image>?",
        "-n",
        "1",
    ]);
    assert!(e.contains("2 <image> tag(s) but only 1 image(s)"), "{e}");
    let e = fails(&["-p", "<image> what?", "-n", "1"]);
    assert!(e.contains("1 <image> tag(s) but only 0 image(s)"), "{e}");
    let e = fails(&[
        "--image",
        s(&giraffe),
        "--image",
        s(&giraffe),
        "-p",
        "<image> which?",
    ]);
    assert!(
        e.contains("2 image(s) were given but the prompt has only 1"),
        "{e}"
    );

    // A tiled photo (631 image tokens) cannot fit a 600-token context.
    let e = fails(&["--image", s(&giraffe), "-p", "Describe.", "--ctx", "600"]);
    assert!(
        e.contains("631 of them for 1 image(s)") && e.contains("600"),
        "{e}"
    );

    // An mmproj that is not there.
    let e = fails(&[
        "--image",
        s(&giraffe),
        "-p",
        "x",
        "--mmproj",
        s(&dir.path().join("no.gguf")),
    ]);
    assert!(e.contains("no.gguf"), "{e}");
}
