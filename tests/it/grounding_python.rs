//! Cross-check against the reference's own logic, re-stated in `scripts/grounding_ref.py`
//! (DeepSeek-VL2 `parse_ref_bbox`: regex pairing, `eval` of each box, `int(v / 999 * size)`
//! in Python floats).
//!
//! Needs `POCKETVL_PYTHON` (any Python 3; only the standard library is used); without it the
//! tests report themselves skipped (a failure under `CI=true`; tests/support/prereq.rs).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use pocketvl::grounding::{ground, to_pixels, Detection};
use serde_json::{json, Value};

fn run_oracle(request: &Value) -> Option<Value> {
    let python = crate::prereq::python()?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/grounding_ref.py");
    let mut child = Command::new(python)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the Python oracle");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "oracle failed");
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

/// Our value where the reference's is inside the image; the reference's `size` (from 999) is
/// one past the last pixel, which we clamp to `size - 1`.
fn clamp(v: u64, size: u32) -> u32 {
    let v = u32::try_from(v).unwrap();
    v.min(size.saturating_sub(1))
}

#[test]
fn mapping_matches_python_floats_on_every_grid_value() {
    let sizes = [
        (1u32, 1u32),
        (7, 3),
        (362, 543),
        (640, 480),
        (1000, 999),
        (1023, 4097),
        (1920, 1080),
        (3001, 2999),
        (8191, 12345),
    ];
    let request = json!({ "grid": sizes });
    let Some(reply) = run_oracle(&request) else {
        return;
    };
    let grid = reply["grid"].as_array().unwrap();
    assert_eq!(grid.len(), sizes.len());
    for ((w, h), axes) in sizes.iter().zip(grid) {
        let xs = axes[0].as_array().unwrap();
        let ys = axes[1].as_array().unwrap();
        for v in 0..1000u32 {
            let det = Detection {
                label: String::new(),
                coords: [v, v, v, v],
            };
            let b = to_pixels(&det, *w, *h);
            let rx = clamp(xs[v as usize].as_u64().unwrap(), *w);
            let ry = clamp(ys[v as usize].as_u64().unwrap(), *h);
            assert_eq!((b.x1, b.y1), (rx, ry), "v={v} on {w}x{h}");
        }
    }
}

#[test]
fn well_formed_answers_match_the_reference() {
    let texts = [
        "<|ref|>The giraffe at the back.<|/ref|><|det|>[[580, 270, 999, 900]]<|/det|>",
        "<|ref|>giraffes<|/ref|><|det|>[[10,20,30,40],[50, 60, 70, 80], [0,0,999,999]]<|/det|>",
        "In the picture, <|ref|>a tall giraffe<|/ref|><|det|>[[580, 270, 999, 900]]<|/det|> \
         stands next to <|ref|>two trees<|/ref|><|det|>[[0, 0, 200, 500], [700, 10, 900, 400]]<|/det|>.",
        "<|ref|>A<|/ref|><|ref|>B<|/ref|><|det|>[[1,1,2,2]]<|/det|><|det|>[[3,3,4,4]]<|/det|>",
        "<|ref|>长颈鹿<|/ref|><|det|>[[333,333,666,666]]<|/det|>",
        "<|ref|>x<|/ref|><|det|>[[0,0,1,1],[998,998,999,999],[500,1,501,998]]<|/det|>",
    ];
    let sizes = [(362u32, 543u32), (1920, 1080), (5, 9)];
    let mut cases = Vec::new();
    for t in texts {
        for (w, h) in sizes {
            cases.push(json!({"text": t, "w": w, "h": h}));
        }
    }
    let Some(reply) = run_oracle(&json!({ "cases": cases })) else {
        return;
    };
    let results = reply["cases"].as_array().unwrap();
    assert_eq!(results.len(), cases.len());
    for (case, expected) in cases.iter().zip(results) {
        let text = case["text"].as_str().unwrap();
        let w = case["w"].as_u64().unwrap() as u32;
        let h = case["h"].as_u64().unwrap() as u32;
        let expected = expected
            .as_array()
            .unwrap_or_else(|| panic!("reference rejected {text:?}"));
        let ours = ground(text, w, h);
        assert_eq!(ours.len(), expected.len(), "{text:?} on {w}x{h}");
        for ((label, b), e) in ours.iter().zip(expected) {
            assert_eq!(label, e[0].as_str().unwrap(), "{text:?}");
            let eb: Vec<u64> = e[1]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            let want = [
                clamp(eb[0], w),
                clamp(eb[1], h),
                clamp(eb[2], w),
                clamp(eb[3], h),
            ];
            assert_eq!(b.to_array(), want, "{text:?} on {w}x{h}");
        }
    }
}
