//! The tag rule on the real geometry of the sample pages: given every symbol's box
//! and every tag's box from the ground truth (in shuffled order), each symbol gets
//! its own tag.

use std::path::PathBuf;

use plenum_gateway::assign::{Padding, Rect, assign};
use serde::Deserialize;

#[derive(Deserialize)]
struct Page {
    symbols: Vec<Symbol>,
}

#[derive(Deserialize)]
struct Symbol {
    #[serde(rename = "box")]
    bbox: [f32; 4],
    tag: String,
    tag_box: [f32; 4],
}

fn rect(b: [f32; 4]) -> Rect {
    Rect::new(b[0], b[1], b[2], b[3])
}

#[test]
fn every_sample_page_tag_goes_to_its_own_symbol() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/pages");
    let mut pages = 0;
    let (mut symbols_seen, mut right) = (0, 0);
    let mut wrong = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let page: Page = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let symbols: Vec<Rect> = page.symbols.iter().map(|s| rect(s.bbox)).collect();
        // Lines in reverse order, so the answer cannot lean on the input order.
        let lines: Vec<Rect> = page.symbols.iter().rev().map(|s| rect(s.tag_box)).collect();
        let n = symbols.len();
        let out = assign(&symbols, &vec![true; n], &lines, Padding::Relative);
        for (i, tag) in out.tag_of.iter().enumerate() {
            symbols_seen += 1;
            if *tag == Some(n - 1 - i) {
                right += 1;
            } else {
                wrong.push(format!("{}: {}", path.display(), page.symbols[i].tag));
            }
        }
        pages += 1;
    }
    assert!(pages >= 30, "only {pages} pages");
    assert_eq!(right, symbols_seen, "wrong tags: {wrong:?}");
}
