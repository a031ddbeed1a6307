//! The detector admits each call's working memory before decoding it: large pages
//! sent at once take turns (here, with no time to wait, the extra ones are refused
//! RESOURCE_EXHAUSTED with RetryInfo), and a page that alone exceeds `--work-memory`
//! is refused naming its bytes, while smaller pages still go through.

mod support;

use std::time::Duration;

use image::{ImageEncoder, Rgb, RgbImage};
use plenum_engine::EngineSettings;
use plenum_proto::detector::v1::{self as pb, detector_client::DetectorClient};
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

/// Pages of up to 2000×2000 are admitted: the default budget holds one of them.
const MAX_PIXELS: u64 = 2000 * 2000;

async fn start(
    work_memory: Option<u64>,
    work_wait: Duration,
) -> (DetectorClient<Channel>, CancellationToken) {
    let engine = EngineSettings {
        memory_profile: true,
        work_memory,
        work_wait,
        ..support::cpu_engine()
    };
    support::start("test-2class", engine, MAX_PIXELS).await
}

/// A white page with a few dark lines, PNG-encoded (small on the wire, large decoded).
fn page(width: u32, height: u32) -> Vec<u8> {
    let mut image = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    for y in (0..height).step_by(97) {
        for x in 0..width {
            image.put_pixel(x, y, Rgb([20, 20, 20]));
        }
    }
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(
            image.as_raw(),
            width,
            height,
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
    png
}

fn request(image: Vec<u8>) -> pb::DetectRequest {
    pb::DetectRequest {
        images: vec![image],
        options: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_pages_sent_at_once_take_turns_and_never_run_together() {
    // The default budget holds exactly one largest page; no time to wait for it.
    let (client, shutdown) = start(None, Duration::from_millis(1)).await;
    let large = page(2000, 2000);
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let mut client = client.clone();
            let large = large.clone();
            tokio::spawn(async move { client.detect(request(large)).await })
        })
        .collect();
    let mut answered = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(response) => {
                assert_eq!(response.get_ref().results[0].width, 2000);
                answered += 1;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(status.message().contains("bytes"), "{}", status.message());
                assert!(
                    status.get_details_retry_info().is_some(),
                    "a busy budget says when to retry"
                );
            }
        }
    }
    assert!(answered >= 1, "one large page at a time is admitted");
    assert!(
        answered < 3,
        "three large pages never hold the budget at once"
    );
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_over_the_whole_budget_is_refused_naming_its_bytes() {
    let (mut client, shutdown) = start(Some(64 << 20), Duration::from_secs(30)).await;
    let refused = client
        .detect(request(page(2000, 2000)))
        .await
        .expect_err("2000² needs more than 64 MiB");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("bytes") && refused.message().contains("67108864"),
        "{}",
        refused.message()
    );
    assert!(
        refused.get_details_retry_info().is_none(),
        "retrying cannot help a page over the whole budget"
    );
    let small = client
        .detect(request(page(320, 320)))
        .await
        .expect("a small page fits");
    assert_eq!(small.get_ref().results[0].width, 320);
    shutdown.cancel();
}
