//! `plenum analyze` against a test double of the gateway on a real socket: a table
//! per image in the order given, an annotated PNG beside it, JSON for scripts, and a
//! failing exit code naming the file the gateway refused.

use std::path::Path;
use std::process::Command;

use plenum_proto::common::v1::Box as PbBox;
use plenum_proto::gateway::v1::{
    self as pb,
    gateway_server::{Gateway, GatewayServer},
};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

/// Answers one symbol per image, tagged with the image's width; refuses images
/// narrower than 20 px the way the real gateway refuses bad input.
struct FakeGateway;

#[tonic::async_trait]
impl Gateway for FakeGateway {
    async fn analyze(
        &self,
        request: Request<pb::AnalyzeRequest>,
    ) -> Result<Response<pb::AnalyzeResponse>, Status> {
        let request = request.into_inner();
        let image = image::load_from_memory(&request.image)
            .map_err(|_| Status::invalid_argument("image: not an image"))?;
        if image.width() < 20 {
            return Err(Status::invalid_argument("image: too small"));
        }
        Ok(Response::new(pb::AnalyzeResponse {
            request_id: request.request_id,
            symbols: vec![pb::Symbol {
                r#box: Some(PbBox {
                    x_min: 10.0,
                    y_min: 30.0,
                    x_max: 50.0,
                    y_max: 60.0,
                }),
                class_name: "vav_box".into(),
                score: 0.93,
                tag: format!("VAV-{}", image.width()),
                tag_score: 0.99,
                ..Default::default()
            }],
            width: image.width(),
            height: image.height(),
            ..Default::default()
        }))
    }

    type AnalyzeStreamStream = tokio_stream::Empty<Result<pb::AnalyzeResponse, Status>>;

    async fn analyze_stream(
        &self,
        _request: Request<tonic::Streaming<pb::AnalyzeRequest>>,
    ) -> Result<Response<Self::AnalyzeStreamStream>, Status> {
        Err(Status::unimplemented("not used by the CLI"))
    }
}

fn start_fake_gateway() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                tonic::transport::Server::builder()
                    .add_service(GatewayServer::new(FakeGateway))
                    .serve_with_incoming(TcpListenerStream::new(listener))
                    .await
                    .unwrap();
            });
    });
    addr
}

fn write_png(path: &Path, width: u32) {
    image::RgbImage::from_pixel(width, 80, image::Rgb([255, 255, 255]))
        .save(path)
        .unwrap();
}

fn plenum(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_plenum"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn a_folder_gives_a_table_per_image_in_order_and_annotated_copies() {
    let gateway = start_fake_gateway();
    let dir = tempfile::tempdir().unwrap();
    let pages = dir.path().join("pages");
    std::fs::create_dir(&pages).unwrap();
    write_png(&pages.join("b.png"), 120);
    write_png(&pages.join("a.png"), 100);
    std::fs::write(pages.join("notes.txt"), "not an image").unwrap();
    let out = dir.path().join("out");

    let output = plenum(&[
        "analyze",
        pages.to_str().unwrap(),
        "--gateway",
        &gateway,
        "--out",
        out.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let a = stdout.find("VAV-100").expect("a.png's tag in the table");
    let b = stdout.find("VAV-120").expect("b.png's tag in the table");
    assert!(a < b, "results print in file order:\n{stdout}");
    assert!(stdout.contains("CLASS") && stdout.contains("vav_box"));
    assert!(!stdout.contains("notes.txt"), "non-images are skipped");

    let annotated = image::open(out.join("a.annotated.png")).unwrap().to_rgb8();
    assert_eq!(annotated.dimensions(), (100, 80));
    let marked = annotated
        .pixels()
        .filter(|p| p.0 != [255, 255, 255])
        .count();
    assert!(marked > 100, "the symbol's box and label are drawn");
}

#[test]
fn json_mode_prints_one_object_per_image_and_a_refusal_fails_the_run() {
    let gateway = start_fake_gateway();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.png");
    let tiny = dir.path().join("tiny.png");
    write_png(&good, 64);
    write_png(&tiny, 10);

    let output = plenum(&[
        "analyze",
        good.to_str().unwrap(),
        tiny.to_str().unwrap(),
        "--gateway",
        &gateway,
        "--out",
        dir.path().to_str().unwrap(),
        "--json",
    ]);
    assert!(!output.status.success(), "one file was refused");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let objects: Vec<serde_json::Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(objects.len(), 1);
    assert_eq!(objects[0]["symbols"][0]["tag"], "VAV-64");
    assert_eq!(objects[0]["width"], 64);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("tiny.png") && stderr.contains("InvalidArgument"),
        "{stderr}"
    );
}

#[test]
fn an_unreachable_gateway_is_said_plainly() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("p.png");
    write_png(&page, 64);
    let output = plenum(&[
        "analyze",
        page.to_str().unwrap(),
        "--gateway",
        &format!("127.0.0.1:{port}"),
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot reach the gateway"), "{stderr}");
}
