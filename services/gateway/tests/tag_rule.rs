//! The tag rule on the real geometry of both page sets: given every symbol's box and
//! every tag's box from the ground truth (in reversed order), each symbol gets its own
//! tag. The generator's pages (tests/pages) put tags a few pixels beside their symbol;
//! the independent renderer's (tests/pages-independent) put them on any of eight sides
//! up to 1.5 symbol widths away, some written vertically.

use std::path::{Path, PathBuf};

use plenum_gateway::assign::{Fit, Padding, Rect, Symbol as Claim, assign};
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

/// (pages, symbols, wrong tags) over every page of `dir`.
fn run(dir: &Path) -> (usize, usize, Vec<String>) {
    let (mut pages, mut seen) = (0, 0);
    let mut wrong = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let page: Page = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let symbols: Vec<Claim> = page
            .symbols
            .iter()
            .map(|s| Claim::at(rect(s.bbox)))
            .collect();
        // Lines in reverse order, so the answer cannot lean on the input order.
        let lines: Vec<Rect> = page.symbols.iter().rev().map(|s| rect(s.tag_box)).collect();
        let n = symbols.len();
        let out = assign(&symbols, &lines, Padding::Relative, |_, _| Fit::Unknown);
        for (i, tag) in out.tag_of.iter().enumerate() {
            seen += 1;
            if *tag != Some(n - 1 - i) {
                wrong.push(format!("{}: {}", path.display(), page.symbols[i].tag));
            }
        }
        pages += 1;
    }
    (pages, seen, wrong)
}

fn pages(set: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests")
        .join(set)
}

#[test]
fn every_sample_page_tag_goes_to_its_own_symbol() {
    let (pages, _, wrong) = run(&pages("pages"));
    assert!(pages >= 30, "only {pages} pages");
    assert!(wrong.is_empty(), "wrong tags: {wrong:?}");
}

#[test]
fn every_independent_page_tag_goes_to_its_own_symbol() {
    let (pages, seen, wrong) = run(&pages("pages-independent"));
    assert!(
        pages >= 12 && seen >= 200,
        "only {pages} pages, {seen} symbols"
    );
    assert!(wrong.is_empty(), "wrong tags: {wrong:?}");
}
