//! `plenum analyze FILE_OR_DIR...`: sends drawings to the gateway, prints what was
//! found on each (a table, or JSON lines for scripts) and writes an annotated copy.
//! Files go a few at a time over one connection, results print in the order given.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use plenum_proto::gateway::v1::{self as pb, gateway_client::GatewayClient};
use tonic::transport::Channel;

use crate::annotate;
use crate::table;

#[derive(Debug, clap::Args)]
pub struct AnalyzeArgs {
    /// Images (PNG, JPEG) or folders of them.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// The gateway's address.
    #[arg(long, env = "PLENUM_GATEWAY", default_value = "127.0.0.1:7000")]
    gateway: String,
    /// Write an annotated PNG per image here (`<name>.annotated.png`).
    #[arg(long, default_value = "plenum-out")]
    out: PathBuf,
    /// Print one JSON object per image instead of tables.
    #[arg(long)]
    json: bool,
    /// Keep symbols scoring above this (0 = the detector's default, and also the weaker
    /// ones its verifier is sure of).
    #[arg(long, default_value_t = 0.0)]
    score_threshold: f32,
    /// Also list page text that belongs to no symbol.
    #[arg(long)]
    unassigned_text: bool,
    /// Files in flight at once.
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
    /// Give up on one file after this long.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

pub async fn run(args: AnalyzeArgs) -> anyhow::Result<ExitCode> {
    let files = image_files(&args.paths)?;
    if files.is_empty() {
        bail!("no PNG or JPEG images in {:?}", args.paths);
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let url = crate::url(&args.gateway);
    let channel = tonic::transport::Endpoint::from_shared(url.clone())?
        .connect()
        .await
        .with_context(|| format!("cannot reach the gateway at {url} (is `plenum up` running?)"))?;
    let client = GatewayClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);

    // JSON goes to stdout line by line, so the bar would only get in the way.
    let progress = if args.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(files.len() as u64)
    };
    progress.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed}]")
            .expect("a valid template"),
    );
    let mut failures = 0usize;
    let mut results = futures::stream::iter(files.iter().map(|file| {
        let client = client.clone();
        let args = &args;
        async move { (file, analyze_one(client, file, args).await) }
    }))
    .buffered(args.concurrency.max(1));
    while let Some((file, result)) = results.next().await {
        progress.inc(1);
        progress.set_message(file.display().to_string());
        match result {
            Ok((response, annotated)) => progress.suspend(|| {
                if args.json {
                    println!("{}", to_json(file, &response, &annotated));
                } else {
                    print_table(file, &response, &annotated);
                }
            }),
            Err(error) => {
                failures += 1;
                progress.suspend(|| eprintln!("{}: {error:#}", file.display()));
            }
        }
    }
    progress.finish_and_clear();
    if failures > 0 {
        eprintln!("{failures} of {} files failed", files.len());
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

async fn analyze_one(
    mut client: GatewayClient<Channel>,
    file: &Path,
    args: &AnalyzeArgs,
) -> anyhow::Result<(pb::AnalyzeResponse, PathBuf)> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut request = tonic::Request::new(pb::AnalyzeRequest {
        image: bytes.clone(),
        options: Some(pb::AnalyzeOptions {
            score_threshold: args.score_threshold,
            include_unassigned_text: args.unassigned_text,
            ..Default::default()
        }),
        request_id: file.display().to_string(),
    });
    request.set_timeout(args.timeout);
    let response = client
        .analyze(request)
        .await
        .map_err(|status| anyhow::anyhow!("{:?}: {}", status.code(), status.message()))?
        .into_inner();
    let stem = file.file_stem().unwrap_or_default().to_string_lossy();
    let annotated = args.out.join(format!("{stem}.annotated.png"));
    let path = annotated.clone();
    let symbols = response.symbols.clone();
    tokio::task::spawn_blocking(move || annotate::write(&bytes, &symbols, &path)).await??;
    Ok((response, annotated))
}

/// The images named, with folders expanded to the images directly inside them, sorted.
fn image_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let is_image = |path: &Path| {
        path.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
            && !path.to_string_lossy().ends_with(".annotated.png")
    };
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut inside: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("cannot read {}", path.display()))?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && is_image(p))
                .collect();
            inside.sort();
            files.extend(inside);
        } else if path.is_file() {
            files.push(path.clone());
        } else {
            bail!("{} does not exist", path.display());
        }
    }
    Ok(files)
}

fn print_table(file: &Path, response: &pb::AnalyzeResponse, annotated: &Path) {
    let tagged = response
        .symbols
        .iter()
        .filter(|s| !s.tag.is_empty())
        .count();
    println!(
        "{} ({}x{}): {} symbols, {} tags read, {} ms [detect {} ms, ocr {} ms]",
        file.display(),
        response.width,
        response.height,
        response.symbols.len(),
        tagged,
        timing(response, |t| t.total_us),
        timing(response, |t| t.detect_us),
        timing(response, |t| t.ocr_us),
    );
    let mut rows = Vec::new();
    for symbol in &response.symbols {
        let tag = if symbol.tag.is_empty() {
            format!("- ({})", missing_reason(symbol))
        } else {
            format!("{} ({:.2})", symbol.tag, symbol.tag_score)
        };
        rows.push(vec![
            symbol.class_name.clone(),
            tag,
            format!("{:.2}", symbol.score),
            symbol.r#box.as_ref().map(box_text).unwrap_or_default(),
        ]);
    }
    print!(
        "{}",
        table::render(&["CLASS", "TAG", "SCORE", "BOX"], &rows)
    );
    for text in &response.unassigned_text {
        println!(
            "  text {:?} ({:.2}) at {}",
            text.text,
            text.score,
            text.r#box.as_ref().map(box_text).unwrap_or_default()
        );
    }
    println!("  annotated: {}", annotated.display());
    println!();
}

/// `TAG_MISSING_REASON_NO_TEXT_NEARBY` as "no text nearby".
fn missing_reason(symbol: &pb::Symbol) -> String {
    match pb::TagMissingReason::try_from(symbol.tag_missing_reason) {
        Ok(pb::TagMissingReason::Unspecified) => String::new(),
        Ok(reason) => reason
            .as_str_name()
            .trim_start_matches("TAG_MISSING_REASON_")
            .to_ascii_lowercase()
            .replace('_', " "),
        Err(_) => format!("reason {}", symbol.tag_missing_reason),
    }
}

fn timing(response: &pb::AnalyzeResponse, stage: fn(&pb::StageTimings) -> u64) -> u64 {
    response.timings.as_ref().map(stage).unwrap_or_default() / 1000
}

fn box_text(b: &plenum_proto::common::v1::Box) -> String {
    format!(
        "{:.0},{:.0} {:.0}x{:.0}",
        b.x_min,
        b.y_min,
        b.x_max - b.x_min,
        b.y_max - b.y_min
    )
}

fn to_json(file: &Path, response: &pb::AnalyzeResponse, annotated: &Path) -> serde_json::Value {
    let bbox = |b: &Option<plenum_proto::common::v1::Box>| {
        b.as_ref()
            .map(|b| serde_json::json!([b.x_min, b.y_min, b.x_max, b.y_max]))
    };
    serde_json::json!({
        "file": file.display().to_string(),
        "width": response.width,
        "height": response.height,
        "annotated": annotated.display().to_string(),
        "symbols": response.symbols.iter().map(|s| serde_json::json!({
            "class": s.class_name,
            "score": s.score,
            "box": bbox(&s.r#box),
            "tag": s.tag,
            "tag_score": s.tag_score,
            "tag_box": bbox(&s.tag_box),
            "tag_missing_reason": missing_reason(s),
        })).collect::<Vec<_>>(),
        "unassigned_text": response.unassigned_text.iter().map(|t| serde_json::json!({
            "text": t.text, "score": t.score, "box": bbox(&t.r#box),
        })).collect::<Vec<_>>(),
        "timings_us": response.timings.as_ref().map(|t| serde_json::json!({
            "decode": t.decode_us, "detect": t.detect_us, "ocr": t.ocr_us, "total": t.total_us,
        })),
    })
}
