//! `ReadText`'s `read_turned`: regions read turned 90° clockwise instead of the page,
//! for tags written along a column that reading the page does not find, over real
//! gRPC with the real models, on a page of the independent renderer (drawn by code
//! the models never saw).

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

/// Page 11 of `tests/pages-independent`: thermostat `T-54` at (235, 343)-(275, 378)
/// with its tag written bottom to top at (214, 339)-(228, 382), 14 px across, and a
/// room name `IT CLOSET` just below.
fn page() -> Vec<u8> {
    std::fs::read(repo().join("tests/pages-independent/page_0011.png")).unwrap()
}

/// The thermostat's reach as the gateway sends it: its box grown by 1.6 times its
/// longer side.
fn reach() -> common::Box {
    region(171.0, 279.0, 339.0, 442.0)
}

fn symbol() -> common::Box {
    region(233.0, 341.0, 277.0, 380.0)
}

async fn read(
    client: &mut OcrClient<Channel>,
    within: Vec<common::Box>,
    turned: Vec<common::Box>,
) -> Result<Vec<pb::TextLine>, tonic::Status> {
    client
        .read_text(pb::ReadTextRequest {
            image: page(),
            classify_angle: true,
            ignore_regions: vec![symbol()],
            read_within: within,
            join_broken_lines: true,
            read_turned: turned,
        })
        .await
        .map(|response| response.into_inner().lines)
}

#[tokio::test]
async fn a_tag_along_a_column_the_page_reading_misses_is_read_turned_where_it_lies() {
    let (mut client, shutdown) = start().await;
    let page_lines = read(&mut client, vec![reach()], vec![]).await.unwrap();
    assert!(
        !page_lines.iter().any(|l| l.text == "T-54"),
        "reading the page found the tag: {page_lines:?}"
    );

    let turned = read(&mut client, vec![], vec![reach()]).await.unwrap();
    let tag = turned
        .iter()
        .find(|l| l.text == "T-54")
        .unwrap_or_else(|| panic!("not read turned: {turned:?}"));
    let b = tag.r#box.unwrap();
    // Where the renderer drew it, within a few pixels of DB's unclipped box.
    for (got, truth) in [
        (b.x_min, 214.0),
        (b.y_min, 339.0),
        (b.x_max, 228.0),
        (b.y_max, 382.0),
    ] {
        assert!((got - truth).abs() <= 5.0, "{b:?}");
    }
    assert_eq!(tag.direction(), pb::ReadingDirection::BottomToTop);
    // The room name below, running across, is read in the same region too.
    assert!(
        turned.iter().any(|l| l.text.contains("CLOSET")),
        "{turned:?}"
    );
    // Nothing outside the region comes back.
    for line in &turned {
        let b = line.r#box.unwrap();
        assert!(
            b.x_max >= 171.0 - 5.0 && b.x_min <= 339.0 + 5.0 && b.y_min <= 442.0 + 5.0,
            "{line:?}"
        );
    }
    shutdown.cancel();
}

#[tokio::test]
async fn turned_regions_are_refused_by_name_with_read_within_too_many_or_too_large() {
    let (mut client, shutdown) = start().await;
    let field = |status: tonic::Status| {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        status.message().to_owned()
    };
    let with_within = read(&mut client, vec![reach()], vec![reach()]).await;
    assert!(field(with_within.unwrap_err()).starts_with("read_turned:"));
    let many = read(&mut client, vec![], vec![region(0.0, 0.0, 10.0, 10.0); 65]).await;
    assert!(field(many.unwrap_err()).starts_with("read_turned:"));
    let whole = region(0.0, 0.0, 1600.0, 1200.0);
    let too_large = read(&mut client, vec![], vec![whole, whole]).await;
    let message = field(too_large.unwrap_err());
    assert!(message.contains("more than the page"), "{message}");
    let inverted = read(&mut client, vec![], vec![region(10.0, 0.0, 0.0, 10.0)]).await;
    assert!(field(inverted.unwrap_err()).starts_with("read_turned[0]:"));
    // The service keeps serving.
    assert!(read(&mut client, vec![], vec![reach()]).await.is_ok());
    shutdown.cancel();
}
