//! Parsing of the grounding markup DeepSeek-VL2 writes into its answers.
//!
//! The model answers a referring expression with
//! `<|ref|>label<|/ref|><|det|>[[x1, y1, x2, y2], ...]<|/det|>` and a grounded conversation
//! interleaves such pairs with prose (spec §8.5). The reference (`parse_ref_bbox` in
//! DeepSeek-VL2 `deepseek_vl2/serve/app_modules/utils.py`) finds every `<|ref|>…<|/ref|>` and every
//! `<|det|>…<|/det|>` with regular expressions, pairs the i-th label with the i-th box list,
//! strips the outer brackets and `eval`s each inner `[…]`. It gives up on the whole answer when the
//! counts differ or anything fails to evaluate.
//!
//! We keep its pairing but are more forgiving, because a CLI should show what it can of an answer
//! cut short by `max_new_tokens`:
//! - each box list takes the oldest label not yet used (the reference's i-th with i-th pairing
//!   whenever the counts match); a box list with no label left reuses the label of the previous
//!   one, or the empty label if there was none;
//! - a box list cut off by the end of the text (or by the next tag) still yields its complete
//!   boxes; a box that is not exactly four unsigned integers is skipped, not an error;
//! - whitespace anywhere between numbers, brackets and commas is accepted, and labels are trimmed.
//! - a label may span lines (the reference's `.*?` stops at a newline and then loses the pair).
//!
//! Hand-written scanning rather than a regex: the grammar is tiny and this keeps the crate's
//! dependency list short. Every index comes from `str::find` on ASCII patterns, so slicing always
//! lands on character boundaries and no input can panic.

use std::collections::VecDeque;

use super::Detection;

/// Opens a referring expression (the label).
const REF_OPEN: &str = "<|ref|>";
/// Closes a referring expression.
const REF_CLOSE: &str = "<|/ref|>";
/// Opens a box list.
const DET_OPEN: &str = "<|det|>";
/// Closes a box list.
const DET_CLOSE: &str = "<|/det|>";

/// Longest coordinate we try to read; longer digit runs are malformed (and would overflow u32).
const MAX_DIGITS: usize = 9;

/// Every box in `text`, in order of appearance, each with its label (see the module docs for the
/// pairing rule). Never fails: malformed or truncated pieces are skipped.
pub fn parse_detections(text: &str) -> Vec<Detection> {
    let mut detections = Vec::new();
    // Labels seen but not yet paired with a box list, oldest first.
    let mut pending: VecDeque<String> = VecDeque::new();
    // Label of the previous box list, for box lists that come without one.
    let mut previous_label = String::new();
    let mut rest = text;

    while let Some((start, tag)) = next_open_tag(rest) {
        let body = &rest[start + tag.len()..];
        if tag == REF_OPEN {
            match close_of(body, REF_CLOSE) {
                Some((label_end, after)) => {
                    pending.push_back(body[..label_end].trim().to_string());
                    rest = &body[after..];
                }
                // Unterminated label (truncated, or interrupted by another tag): drop it and
                // resume at whatever interrupted it.
                None => rest = skip_to_next_tag(body),
            }
        } else {
            let (body_end, after) = close_of(body, DET_CLOSE).unwrap_or_else(|| {
                // Truncated box list: it runs to the next tag or to the end of the text.
                let end = next_open_tag(body).map_or(body.len(), |(i, _)| i);
                (end, end)
            });
            let label = pending
                .pop_front()
                .unwrap_or_else(|| previous_label.clone());
            for coords in parse_boxes(&body[..body_end]) {
                detections.push(Detection {
                    label: label.clone(),
                    coords,
                });
            }
            previous_label = label;
            rest = &body[after..];
        }
    }
    detections
}

/// The first `<|ref|>` or `<|det|>` in `s`: its byte offset and which tag it is.
fn next_open_tag(s: &str) -> Option<(usize, &'static str)> {
    let r = s.find(REF_OPEN).map(|i| (i, REF_OPEN));
    let d = s.find(DET_OPEN).map(|i| (i, DET_OPEN));
    match (r, d) {
        (Some(a), Some(b)) => Some(if a.0 < b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// Where the body that starts `body` ends: `(end of content, start of what follows the closing
/// tag)`, or `None` when the closing tag is missing or an opening tag comes first.
fn close_of(body: &str, close: &str) -> Option<(usize, usize)> {
    let end = body.find(close)?;
    match next_open_tag(body) {
        Some((open, _)) if open < end => None,
        _ => Some((end, end + close.len())),
    }
}

/// `s` from its next opening tag on (empty when there is none).
fn skip_to_next_tag(s: &str) -> &str {
    next_open_tag(s).map_or("", |(i, _)| &s[i..])
}

/// Every well-formed `[a, b, c, d]` in a box list body. The reference strips one bracket from each
/// end of the body and then takes each innermost `[…]`; taking innermost groups directly gives
/// the same boxes and also accepts a single box written without the outer brackets.
fn parse_boxes(body: &str) -> Vec<[u32; 4]> {
    let mut boxes = Vec::new();
    let mut rest = body;
    while let Some(close) = rest.find(']') {
        let group = &rest[..close];
        // The innermost group ends here; it starts after the last '[' before the ']'.
        if let Some(open) = group.rfind('[') {
            if let Some(coords) = parse_box(&group[open + 1..]) {
                boxes.push(coords);
            }
        }
        rest = &rest[close + 1..];
    }
    boxes
}

/// `"a, b, c, d"` (whitespace allowed around each) as four unsigned integers, else `None`.
fn parse_box(inner: &str) -> Option<[u32; 4]> {
    let mut coords = [0u32; 4];
    let mut parts = inner.split(',');
    for slot in &mut coords {
        let part = parts.next()?.trim();
        if part.is_empty() || part.len() > MAX_DIGITS || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *slot = part.parse().ok()?;
    }
    match parts.next() {
        None => Some(coords),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_box_accepts_whitespace_and_rejects_the_rest() {
        assert_eq!(parse_box(" 1 ,2,\t3 , 999 "), Some([1, 2, 3, 999]));
        assert_eq!(parse_box("1,2,3"), None);
        assert_eq!(parse_box("1,2,3,4,5"), None);
        assert_eq!(parse_box("1,2,3,"), None);
        assert_eq!(parse_box("-1,2,3,4"), None);
        assert_eq!(parse_box("1.5,2,3,4"), None);
        assert_eq!(parse_box("1,2,3,+4"), None);
        assert_eq!(parse_box("1,2,3,4294967296"), None);
        assert_eq!(parse_box(""), None);
    }

    #[test]
    fn parse_boxes_takes_innermost_groups() {
        assert_eq!(
            parse_boxes("[[1,2,3,4],[5,6,7,8]]"),
            vec![[1, 2, 3, 4], [5, 6, 7, 8]]
        );
        assert_eq!(parse_boxes("[1,2,3,4]"), vec![[1, 2, 3, 4]]);
        assert_eq!(parse_boxes("[[1,2,3,4],[5,6"), vec![[1, 2, 3, 4]]);
        assert_eq!(parse_boxes("]]][[["), Vec::<[u32; 4]>::new());
    }

    #[test]
    fn next_open_tag_picks_the_earliest() {
        assert_eq!(next_open_tag("a<|det|>b<|ref|>"), Some((1, DET_OPEN)));
        assert_eq!(next_open_tag("<|ref|><|det|>"), Some((0, REF_OPEN)));
        assert_eq!(next_open_tag("nothing"), None);
    }
}
