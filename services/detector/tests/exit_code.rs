//! The real `plenum-detector` binary, as a child process, exits with 75 (EX_TEMPFAIL)
//! when its model is stuck, so that its supervisor restarts it. The stall here is
//! real: a stall timeout of 1 ms is far below one forward pass of the 640 px model.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use plenum_engine::ModelStopped;

#[tokio::test]
async fn a_stuck_model_ends_the_process_with_exit_code_75() {
    let models = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models");
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_plenum-detector"))
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .args(["--device", "cpu"])
        .args(["--model", "hvac-yolov8n", "--stall-timeout", "1ms"])
        .args(["--drain-timeout", "1s", "--log-format", "text"])
        .arg("--models")
        .arg(&models)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the detector binary starts");
    let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("the detector exits by itself")
        .expect("its output is read");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        output.status.code(),
        Some(ModelStopped::EXIT_CODE),
        "exit status {:?}; log:\n{log}",
        output.status
    );
    assert!(
        log.contains("hvac-yolov8n") && log.contains("stuck"),
        "{log}"
    );
}
