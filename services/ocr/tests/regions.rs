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
                })
                .await
                .unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument);
            assert!(status.message().contains(field), "{}", status.message());
        }
    }
    shutdown.cancel();
}
