//! `teepay watch`: a node's invoice or payment events, or a hub's instance events, as they
//! happen. It resumes from the last event it printed whenever the stream breaks (the daemon
//! restarted, the network blinked), so nothing is missed or printed twice.

use crate::client::{hub, node, runtime};
use anyhow::{Result, bail};
use std::process::ExitCode;
use std::time::Duration;
use teepay_api::pb;

#[derive(clap::Args, Debug)]
pub struct WatchArgs {
    /// `invoices` or `payments` (a node's), or `instances` (the hub's).
    what: String,
    /// Resume after this event (the last `seq` seen); 0: from the oldest the daemon keeps.
    #[arg(long, default_value_t = 0)]
    after: u64,
    /// Exit after this many events (0: watch until interrupted).
    #[arg(long, default_value_t = 0)]
    count: u64,
    #[arg(long, default_value = "http://127.0.0.1:9710", env = "TEEPAY_NODE")]
    node: String,
    #[arg(long, default_value = "http://127.0.0.1:9701", env = "TEEPAY_HUB")]
    hub: String,
    /// One JSON object per event instead of text.
    #[arg(long)]
    json: bool,
}

async fn open(a: &WatchArgs, after: u64) -> Result<tonic::Streaming<pb::Event>, tonic::Status> {
    let req = pb::SubscribeRequest { after };
    let connect = |e: anyhow::Error| tonic::Status::unavailable(format!("{e:#}"));
    match a.what.as_str() {
        "invoices" => node(&a.node).await.map_err(connect)?.subscribe_invoices(req).await,
        "payments" => node(&a.node).await.map_err(connect)?.subscribe_payments(req).await,
        _ => hub(&a.hub).await.map_err(connect)?.subscribe_instances(req).await,
    }
    .map(tonic::Response::into_inner)
}

pub fn run(a: &WatchArgs) -> Result<ExitCode> {
    if !["invoices", "payments", "instances"].contains(&a.what.as_str()) {
        bail!("watch what? `invoices` or `payments` (a node's events), or `instances` (the hub's)");
    }
    runtime()?.block_on(async {
        let mut cursor = a.after;
        let mut printed = 0u64;
        loop {
            let failure = match open(a, cursor).await {
                Ok(mut stream) => loop {
                    match stream.message().await {
                        Ok(Some(e)) => {
                            cursor = e.seq;
                            if a.json {
                                let data: serde_json::Value =
                                    serde_json::from_str(&e.data).unwrap_or(serde_json::Value::Null);
                                println!(
                                    "{}",
                                    serde_json::json!({"seq": e.seq, "at_ms": e.at_ms, "kind": e.kind, "data": data})
                                );
                            } else {
                                println!("{:>6}  {:<18} {}", e.seq, e.kind, e.data);
                            }
                            printed += 1;
                            if a.count > 0 && printed >= a.count {
                                return Ok(ExitCode::SUCCESS);
                            }
                        }
                        Ok(None) => break tonic::Status::unavailable("the stream ended"),
                        Err(s) => break s,
                    }
                },
                Err(s) => s,
            };
            // A cursor the daemon no longer covers cannot be resumed: say where to resync.
            if matches!(failure.code(), tonic::Code::OutOfRange | tonic::Code::Unimplemented | tonic::Code::InvalidArgument) {
                bail!("{}", failure.message());
            }
            eprintln!("stream interrupted ({}); resuming after {cursor}", failure.message());
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
}
