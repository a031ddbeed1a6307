//! A gRPC server on a Unix socket: it serves over the socket, replaces the file a
//! dead process left, refuses a live socket or a file that is no socket (and leaves
//! both alone), and removes its own file on clean shutdown.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use plenum_runtime::grpc::GrpcServer;
use plenum_runtime::listen::{ListenAddr, ListenError, Listener};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

struct Running {
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

async fn serve_at(path: &Path) -> Running {
    let listener = Listener::bind(&ListenAddr::Unix(path.to_owned()))
        .await
        .expect("bind");
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let task = tokio::spawn(async move {
        GrpcServer::new()
            .serve(listener, stop, Duration::from_secs(1))
            .await
            .expect("serves");
    });
    Running { shutdown, task }
}

async fn health(path: &Path) -> ServingStatus {
    let channel = tonic::transport::Endpoint::from_shared(format!("unix://{}", path.display()))
        .unwrap()
        .connect()
        .await
        .expect("reachable over the socket");
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .expect("health answers")
        .into_inner();
    ServingStatus::try_from(response.status).unwrap()
}

fn socket_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("not/yet/there/grpc.sock")
}

#[tokio::test]
async fn serves_over_a_unix_socket_and_removes_its_file_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let path = socket_path(&dir);
    let server = serve_at(&path).await;

    assert_eq!(health(&path).await, ServingStatus::Serving);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);

    server.shutdown.cancel();
    server.task.await.unwrap();
    assert!(!path.exists(), "the socket file outlived a clean shutdown");
}

#[tokio::test]
async fn a_stale_socket_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = socket_path(&dir);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    // Binding and dropping leaves the file behind, as a killed process does.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());

    let server = serve_at(&path).await;
    assert_eq!(health(&path).await, ServingStatus::Serving);
    server.shutdown.cancel();
}

#[tokio::test]
async fn a_live_socket_is_refused_and_left_serving() {
    let dir = tempfile::tempdir().unwrap();
    let path = socket_path(&dir);
    let first = serve_at(&path).await;

    let error = match Listener::bind(&ListenAddr::Unix(path.clone())).await {
        Ok(_) => panic!("a second server took over a live socket"),
        Err(error) => error,
    };
    assert!(
        matches!(error, ListenError::SocketInUse { .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("another process"), "{message}");
    assert_eq!(health(&path).await, ServingStatus::Serving);
    first.shutdown.cancel();
}

#[tokio::test]
async fn a_file_that_is_not_a_socket_is_refused_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, "precious").unwrap();

    let error = match Listener::bind(&ListenAddr::Unix(path.clone())).await {
        Ok(_) => panic!("bound over a regular file"),
        Err(error) => error,
    };
    assert!(matches!(error, ListenError::NotASocket { .. }), "{error:?}");
    assert!(
        error.to_string().contains(&path.display().to_string()),
        "{error}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
}
