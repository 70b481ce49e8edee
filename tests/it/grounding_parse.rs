//! Parsing `<|ref|>…<|/ref|><|det|>[[…]]<|/det|>` answers and mapping boxes to pixels.
//!
//! Expected values are written by hand from the reference's rules (spec §8.5,
//! `parse_ref_bbox`: pair i-th label with i-th box list, `int(v / 999 * size)`).

use pocketvl::grounding::{ground, parse_detections, to_pixels, BoxRecord, Detection, PixelBox};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn d(label: &str, coords: [u32; 4]) -> Detection {
    Detection {
        label: label.to_string(),
        coords,
    }
}

#[test]
fn one_label_one_box() {
    // The spec's example answer (§8.5).
    let text = "<|ref|>The giraffe at the back.<|/ref|><|det|>[[580, 270, 999, 900]]<|/det|>";
    assert_eq!(
        parse_detections(text),
        vec![d("The giraffe at the back.", [580, 270, 999, 900])]
    );
}

#[test]
fn one_label_several_boxes() {
    let text =
        "<|ref|>giraffes<|/ref|><|det|>[[10,20,30,40],[50, 60, 70, 80], [0,0,999,999]]<|/det|>";
    assert_eq!(
        parse_detections(text),
        vec![
            d("giraffes", [10, 20, 30, 40]),
            d("giraffes", [50, 60, 70, 80]),
            d("giraffes", [0, 0, 999, 999]),
        ]
    );
}

#[test]
fn several_labels_with_text_around() {
    let text = "In the picture, <|ref|>a tall giraffe<|/ref|><|det|>[[580, 270, 999, 900]]<|/det|> \
                stands next to <|ref|>two trees<|/ref|><|det|>[[0, 0, 200, 500], [700, 10, 900, 400]]<|/det|>.\n\
                The sky is blue.";
    assert_eq!(
        parse_detections(text),
        vec![
            d("a tall giraffe", [580, 270, 999, 900]),
            d("two trees", [0, 0, 200, 500]),
            d("two trees", [700, 10, 900, 400]),
        ]
    );
}

#[test]
fn whitespace_is_tolerated_and_labels_trimmed() {
    let text = "<|ref|>  a cat \n<|/ref|> <|det|> [ [ 1 ,2 , 3,4 ] ,\n [5,6,7,8]\t] <|/det|>";
    assert_eq!(
        parse_detections(text),
        vec![d("a cat", [1, 2, 3, 4]), d("a cat", [5, 6, 7, 8])]
    );
}

#[test]
fn labels_pair_in_order_like_the_reference() {
    // Two labels, then two box lists: the reference pairs the i-th with the i-th.
    let text =
        "<|ref|>A<|/ref|><|ref|>B<|/ref|><|det|>[[1,1,2,2]]<|/det|><|det|>[[3,3,4,4]]<|/det|>";
    assert_eq!(
        parse_detections(text),
        vec![d("A", [1, 1, 2, 2]), d("B", [3, 3, 4, 4])]
    );
}

#[test]
fn box_lists_without_a_label_reuse_the_previous_or_empty() {
    let text = "<|det|>[[1,2,3,4]]<|/det|> then <|ref|>dog<|/ref|><|det|>[[5,6,7,8]]<|/det|> and \
                <|det|>[[9,10,11,12]]<|/det|>";
    assert_eq!(
        parse_detections(text),
        vec![
            d("", [1, 2, 3, 4]),
            d("dog", [5, 6, 7, 8]),
            d("dog", [9, 10, 11, 12]),
        ]
    );
}

#[test]
fn truncated_mid_box_keeps_the_complete_boxes() {
    // Generation stopped by max_new_tokens in the middle of the second box.
    let text = "<|ref|>people<|/ref|><|det|>[[100, 200, 300, 400], [500, 6";
    assert_eq!(
        parse_detections(text),
        vec![d("people", [100, 200, 300, 400])]
    );
    // Cut inside the first box: nothing.
    assert_eq!(parse_detections("<|ref|>x<|/ref|><|det|>[[100, 2"), vec![]);
    // Cut inside the label: nothing.
    assert_eq!(parse_detections("<|ref|>the gir"), vec![]);
    // Cut right after the last box but before <|/det|>.
    assert_eq!(
        parse_detections("<|ref|>x<|/ref|><|det|>[[1,2,3,4]]"),
        vec![d("x", [1, 2, 3, 4])]
    );
}

#[test]
fn unterminated_det_stops_at_the_next_tag() {
    let text = "<|ref|>a<|/ref|><|det|>[[1,2,3,4],[5,6<|ref|>b<|/ref|><|det|>[[9,9,9,9]]<|/det|>";
    assert_eq!(
        parse_detections(text),
        vec![d("a", [1, 2, 3, 4]), d("b", [9, 9, 9, 9])]
    );
}

#[test]
fn malformed_boxes_are_skipped() {
    let text = "<|ref|>m<|/ref|><|det|>[[1,2,3],[1,2,3,4,5],[a,b,c,d],[-1,2,3,4],[1.5,2,3,4],\
                [12345678901,1,1,1],[],[10,20,30,40]]<|/det|>";
    assert_eq!(parse_detections(text), vec![d("m", [10, 20, 30, 40])]);
}

#[test]
fn garbage_gives_nothing() {
    for text in [
        "",
        "plain prose without any tags",
        "[[1,2,3,4]]",
        "<|ref|><|/ref|>",
        "<|/det|>[[1,2,3,4]]<|det|>",
        "<|det|><|/det|>",
        "<|det|>]]]][[[[<|/det|>",
        "<|ref|>é漢字<|/ref|><|det|>[[１,２,３,４]]<|/det|>",
        "<|ref<|det<|/ref|>|>",
    ] {
        assert_eq!(parse_detections(text), vec![], "{text:?}");
    }
}

#[test]
fn non_ascii_labels_survive() {
    let text = "<|ref|>长颈鹿<|/ref|><|det|>[[1,2,3,4]]<|/det|>";
    assert_eq!(parse_detections(text), vec![d("长颈鹿", [1, 2, 3, 4])]);
}

#[test]
fn mapping_by_hand() {
    // giraffe.jpg of the fixtures is 362 x 543.
    // 580/999*362 = 210.17 -> 210; 270/999*543 = 146.76 -> 146;
    // 999/999*362 = 362 -> clamped to 361; 900/999*543 = 489.19 -> 489.
    let det = d("g", [580, 270, 999, 900]);
    assert_eq!(
        to_pixels(&det, 362, 543),
        PixelBox {
            x1: 210,
            y1: 146,
            x2: 361,
            y2: 489
        }
    );
    // 1/999*1000 = 1.001 -> 1; 998/999*1000 = 998.998 -> 998; 500/999*640 = 320.32 -> 320;
    // 499/999*480 = 239.76 -> 239.
    let det = d("", [1, 499, 998, 500]);
    assert_eq!(to_pixels(&det, 1000, 480).to_array(), [1, 239, 998, 240]);
    assert_eq!(
        to_pixels(&d("", [500, 0, 500, 0]), 640, 1).to_array(),
        [320, 0, 320, 0]
    );
    // Out-of-grid values are clamped to the last pixel; reversed corners are ordered.
    assert_eq!(
        to_pixels(&d("", [2000, 5000, 0, 0]), 100, 50).to_array(),
        [0, 0, 99, 49]
    );
}

#[test]
fn records_serialise_as_label_and_box() {
    let det = d("The giraffe at the back.", [580, 270, 999, 900]);
    let rec = BoxRecord::new(&det, 362, 543);
    let json = serde_json::to_string(&rec).unwrap();
    assert_eq!(
        json,
        r#"{"label":"The giraffe at the back.","box":[210,146,361,489]}"#
    );
    let px = to_pixels(&det, 362, 543);
    assert_eq!(BoxRecord::from_pixels(&det.label, px), rec);
    let all = ground("<|ref|>a<|/ref|><|det|>[[0,0,999,999]]<|/det|>", 10, 20);
    assert_eq!(
        all,
        vec![(
            "a".to_string(),
            PixelBox {
                x1: 0,
                y1: 0,
                x2: 9,
                y2: 19
            }
        )]
    );
}

/// Pieces that make random strings hit every branch of the parser far more often than uniform
/// characters would.
const PIECES: &[&str] = &[
    "<|ref|>",
    "<|/ref|>",
    "<|det|>",
    "<|/det|>",
    "<|",
    "|>",
    "[",
    "]",
    "[[",
    "]]",
    ",",
    ", ",
    " ",
    "\n",
    "0",
    "7",
    "42",
    "999",
    "1000",
    "-",
    ".",
    "label",
    "é",
    "漢",
    "🦒",
    "4294967296",
    "<|grounding|>",
    "<",
    ">",
    "|",
];

fn random_text(rng: &mut StdRng) -> String {
    let n = rng.gen_range(0..40);
    let mut s = String::new();
    for _ in 0..n {
        if rng.gen_bool(0.1) {
            // An arbitrary char, anything from ASCII controls to astral planes.
            s.push(rng.gen::<char>());
        } else {
            s.push_str(PIECES[rng.gen_range(0..PIECES.len())]);
        }
    }
    s
}

#[test]
fn property_random_strings_never_panic_and_boxes_come_from_the_text() {
    let mut rng = StdRng::seed_from_u64(0x6772_6f75_6e64);
    for _ in 0..20_000 {
        let text = random_text(&mut rng);
        let dets = parse_detections(&text);
        for det in &dets {
            // A detection needs a box list in the text, and each coordinate must be written there.
            assert!(text.contains("<|det|>"), "{text:?} -> {dets:?}");
            for c in det.coords {
                assert!(text.contains(&c.to_string()), "{text:?} -> {dets:?}");
            }
            if !det.label.is_empty() {
                assert!(text.contains(&det.label), "{text:?} -> {dets:?}");
            }
            let w = rng.gen_range(0..3000);
            let h = rng.gen_range(0..3000);
            let b = to_pixels(det, w, h);
            assert!(b.x1 <= b.x2 && b.y1 <= b.y2);
            assert!(b.x2 <= w.saturating_sub(1) && b.y2 <= h.saturating_sub(1));
        }
    }
}

#[test]
fn property_well_formed_answers_round_trip() {
    let mut rng = StdRng::seed_from_u64(17);
    for _ in 0..2_000 {
        let mut text = String::new();
        let mut expected = Vec::new();
        for _ in 0..rng.gen_range(0..5) {
            // Prose between groundings: arbitrary characters, but never a '<' that could start
            // a tag.
            let prose: String = (0..rng.gen_range(0..20))
                .map(|_| rng.gen::<char>())
                .filter(|c| *c != '<')
                .collect();
            text.push_str(&prose);
            let label: String = (0..rng.gen_range(1..12))
                .map(|_| rng.gen_range('a'..='z'))
                .collect();
            let n_boxes = rng.gen_range(1..4);
            let boxes: Vec<[u32; 4]> = (0..n_boxes)
                .map(|_| [0; 4].map(|_| rng.gen_range(0..1000)))
                .collect();
            let sep = if rng.gen_bool(0.5) { ", " } else { "," };
            let list: Vec<String> = boxes
                .iter()
                .map(|b| format!("[{}]", b.map(|v| v.to_string()).join(sep)))
                .collect();
            text.push_str(&format!(
                "<|ref|>{label}<|/ref|><|det|>[{}]<|/det|>",
                list.join(sep)
            ));
            expected.extend(boxes.iter().map(|b| d(&label, *b)));
        }
        assert_eq!(parse_detections(&text), expected, "{text:?}");
    }
}
