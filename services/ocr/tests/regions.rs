//! `ReadText`'s regions: what the caller knows is not text is painted out before
//! reading (`ignore_regions`), only the lines touching `read_within` are read, and a
//! malformed region in either field is refused by name.

use plenum_proto::common::v1 as common;
use plenum_proto::ocr::v1::{self as pb, ocr_client::OcrClient};
use tonic::Code;
use tonic::transport::Channel;

mod support;

use support::{repo, start};

fn region(x_min: f32, y_min: f32, x_max: f32, y_max: f32) -> common::Box {
    common::Box {
        x_min,
        y_min,
        x_max,
        y_max,
    }
}

async fn texts(client: &mut OcrClient<Channel>, ignore: Vec<common::Box>) -> Vec<String> {
    read(client, ignore, vec![]).await
}

async fn read(
    client: &mut OcrClient<Channel>,
    ignore: Vec<common::Box>,
    within: Vec<common::Box>,
) -> Vec<String> {
    let image = std::fs::read(repo().join("tests/ocr/read/tags_small.png")).unwrap();
    client
        .read_text(pb::ReadTextRequest {
            image,
            classify_angle: false,
            ignore_regions: ignore,
            read_within: within,
            join_broken_lines: false,
            read_turned: vec![],
        })
        .await
        .unwrap()
        .into_inner()
        .lines
        .into_iter()
        .map(|line| line.text)
        .collect()
}

#[tokio::test]
async fn an_ignored_region_is_not_read_and_the_rest_of_the_page_still_is() {
    let (mut client, shutdown) = start().await;
    let all = texts(&mut client, vec![]).await;
    assert!(all.contains(&"EF-12".to_owned()), "{all:?}");
    assert!(all.contains(&"VAV-104".to_owned()), "{all:?}");

    // EF-12 sits at (39, 30)-(121, 60) on this image.
    let without = texts(&mut client, vec![region(30.0, 22.0, 130.0, 68.0)]).await;
    assert!(!without.iter().any(|t| t.contains("EF")), "{without:?}");
    assert!(without.contains(&"VAV-104".to_owned()), "{without:?}");
    assert_eq!(without.len(), all.len() - 1);
    shutdown.cancel();
}

#[tokio::test]
async fn only_the_lines_touching_a_read_within_region_are_read() {
    let (mut client, shutdown) = start().await;
    let all = texts(&mut client, vec![]).await;
    assert!(all.len() >= 3, "{all:?}");

    // EF-12 sits at (39, 30)-(121, 60): a region touching its right end reads it alone.
    let near = read(&mut client, vec![], vec![region(115.0, 40.0, 125.0, 50.0)]).await;
    assert_eq!(near, vec!["EF-12".to_owned()]);
    // Text far from every region is not read at all.
    let none = read(&mut client, vec![], vec![region(0.0, 0.0, 2.0, 2.0)]).await;
    assert_eq!(none, Vec::<String>::new());
    // A region over the whole page reads what an empty list reads.
    let page = read(&mut client, vec![], vec![region(0.0, 0.0, 1e6, 1e6)]).await;
    assert_eq!(page, all);
    shutdown.cancel();
}

#[tokio::test]
async fn a_malformed_region_is_refused_naming_it() {
    let (mut client, shutdown) = start().await;
    let image = std::fs::read(repo().join("tests/ocr/read/tag_vav.png")).unwrap();
    for bad in [
        region(50.0, 0.0, 10.0, 5.0),
        region(f32::NAN, 0.0, 1.0, 1.0),
    ] {
        let fine = vec![region(0.0, 0.0, 1.0, 1.0)];
        let with_bad = vec![region(0.0, 0.0, 1.0, 1.0), bad];
        for (ignore_regions, read_within, field) in [
            (with_bad.clone(), fine.clone(), "ignore_regions[1]"),
            (fine, with_bad, "read_within[1]"),
        ] {
            let status = client
                .read_text(pb::ReadTextRequest {
                    image: image.clone(),
                    classify_angle: false,
                    ignore_regions,
                    read_within,
                    join_broken_lines: false,
                    read_turned: vec![],
                })
                .await
                .unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument);
            assert!(status.message().contains(field), "{}", status.message());
        }
    }
    shutdown.cancel();
}

/// A line's text and box, as compared between two reads.
type Read = Vec<(String, [f32; 4])>;

async fn read_page(client: &mut OcrClient<Channel>, page: &str, within: Vec<common::Box>) -> Read {
    let image = std::fs::read(repo().join(page)).unwrap();
    client
        .read_text(pb::ReadTextRequest {
            image,
            classify_angle: true,
            ignore_regions: vec![],
            read_within: within,
            join_broken_lines: true,
            read_turned: vec![],
        })
        .await
        .unwrap()
        .into_inner()
        .lines
        .into_iter()
        .map(|line| {
            let b = line.r#box.unwrap();
            (line.text, [b.x_min, b.y_min, b.x_max, b.y_max])
        })
        .collect()
}

/// The page's true symbols, from the generator's JSON beside it.
fn true_symbols(page: &str) -> Vec<serde_json::Value> {
    let path = repo().join(page.replace(".png", ".json"));
    let truth: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    truth["symbols"].as_array().unwrap().clone()
}

/// The gateway's search regions around a page's true symbols: each box grown by 1.6
/// times its longer side.
fn search_regions(page: &str) -> Vec<common::Box> {
    true_symbols(page)
        .iter()
        .map(|symbol| {
            let b: Vec<f32> = symbol["box"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            let pad = 1.6 * (b[2] - b[0]).max(b[3] - b[1]);
            region(b[0] - pad, b[1] - pad, b[2] + pad, b[3] + pad)
        })
        .collect()
}

/// Which of the page's true tags the lines read exactly (spaces removed).
fn tags_read(page: &str, read: &Read) -> Vec<String> {
    let texts: Vec<String> = read
        .iter()
        .map(|(text, _)| text.chars().filter(|c| !c.is_whitespace()).collect())
        .collect();
    true_symbols(page)
        .iter()
        .filter_map(|symbol| symbol["tag"].as_str())
        .filter(|tag| texts.iter().any(|text| text == tag))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn the_fast_way_of_reading_within_regions_reads_the_true_tags_as_well_as_rapidocrs() {
    let engine = support::engine_settings();
    let (mut fast, stop_fast) = support::start_configured(engine.clone(), true).await;
    let (mut exact, stop_exact) = support::start_configured(engine, false).await;
    let (mut fast_tags, mut exact_tags, mut differ) = (0, 0, 0);
    for page in [
        "tests/pages/page_0003.png",
        "tests/pages/page_0011.png",
        "tests/pages-independent/page_0002.png",
        "tests/pages-independent/page_0008.png",
    ] {
        let within = search_regions(page);
        let by_fast = read_page(&mut fast, page, within.clone()).await;
        let by_exact = read_page(&mut exact, page, within).await;
        assert!(by_exact.len() >= 5, "{page}: {by_exact:?}");
        fast_tags += tags_read(page, &by_fast).len();
        exact_tags += tags_read(page, &by_exact).len();
        differ += by_fast
            .iter()
            .filter(|line| !by_exact.contains(line))
            .count();
    }
    eprintln!(
        "true tags read: fast {fast_tags}, exact {exact_tags}; {differ} lines not read alike"
    );
    assert!(
        fast_tags >= exact_tags,
        "fast {fast_tags} < exact {exact_tags}"
    );
    stop_fast.cancel();
    stop_exact.cancel();
}
