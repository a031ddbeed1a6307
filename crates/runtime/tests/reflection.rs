//! Server reflection lists only the services a server answers: a `GrpcServer`
//! carrying one Plenum API must not offer the other three, which would answer
//! UNIMPLEMENTED. It still describes what it lists, in both protocol versions.

use std::time::Duration;

use plenum_proto::ocr::v1::{self as ocr, ocr_server};
use plenum_runtime::grpc::GrpcServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tonic_reflection::pb::{v1, v1alpha};

/// An Ocr service that reads nothing: reflection never calls it.
struct IdleOcr;

#[tonic::async_trait]
impl ocr_server::Ocr for IdleOcr {
    async fn recognize(
        &self,
        _request: Request<ocr::RecognizeRequest>,
    ) -> Result<Response<ocr::RecognizeResponse>, Status> {
        Err(Status::unimplemented("not part of this test"))
    }

    async fn read_text(
        &self,
        _request: Request<ocr::ReadTextRequest>,
    ) -> Result<Response<ocr::ReadTextResponse>, Status> {
        Err(Status::unimplemented("not part of this test"))
    }
}

/// The services this server answers, as reflection must list them.
const EXPECTED: [&str; 4] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
    "plenum.ocr.v1.Ocr",
];

async fn serve_ocr_only() -> (Channel, tokio_util::sync::DropGuard) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let server = GrpcServer::new().add_service(ocr_server::OcrServer::new(IdleOcr));
    let stop = shutdown.clone();
    tokio::spawn(async move {
        server
            .serve(listener, stop, Duration::from_millis(100))
            .await
            .unwrap();
    });
    let channel = tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    (channel, shutdown.drop_guard())
}

/// One v1 reflection request and its answer.
async fn ask_v1(
    channel: &Channel,
    request: v1::server_reflection_request::MessageRequest,
) -> v1::server_reflection_response::MessageResponse {
    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    answers
        .message()
        .await
        .unwrap()
        .expect("one answer")
        .message_response
        .expect("a message")
}

#[tokio::test]
async fn reflection_lists_only_the_services_served() {
    let (channel, _shutdown) = serve_ocr_only().await;

    let listed = match ask_v1(
        &channel,
        v1::server_reflection_request::MessageRequest::ListServices(String::new()),
    )
    .await
    {
        v1::server_reflection_response::MessageResponse::ListServicesResponse(list) => list,
        other => panic!("not a service list: {other:?}"),
    };
    let mut names: Vec<String> = listed.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(names, EXPECTED);

    // grpcurl falls back to v1alpha on older servers; that version lists the same.
    let mut client =
        v1alpha::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let answer = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .expect("one answer");
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answer.message_response
    else {
        panic!("not a service list: {answer:?}");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(names, EXPECTED);
}

#[tokio::test]
async fn every_listed_service_can_be_described() {
    let (channel, _shutdown) = serve_ocr_only().await;
    for name in EXPECTED {
        let answer = ask_v1(
            &channel,
            v1::server_reflection_request::MessageRequest::FileContainingSymbol(name.into()),
        )
        .await;
        assert!(
            matches!(
                &answer,
                v1::server_reflection_response::MessageResponse::FileDescriptorResponse(files)
                    if !files.file_descriptor_proto.is_empty()
            ),
            "describe {name}: {answer:?}"
        );
    }
}
