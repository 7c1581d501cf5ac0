//! Webhooks: every event of the kinds a merchant asked for, POSTed to its URL in order.
//!
//! Each delivery is the event as JSON with a delivery id that stays the same across retries
//! (`X-Teepay-Delivery`, also in the body): the receiver deduplicates by it, since a delivery
//! whose answer was lost is sent again (at least once, never skipped). The body is signed
//! with HMAC-SHA256 under the webhook's secret (`X-Teepay-Signature: sha256=<hex>`), so the
//! receiver knows it came from this daemon and was not altered. A failed delivery (no
//! answer, or not 2xx) is retried with exponential back-off (0.2 s doubling to 60 s) until
//! it succeeds; later events wait behind it, so they arrive in order. The last delivered
//! sequence number is kept in a file of the webhook's own, so a restart resumes where it
//! stopped.
//!
//! `https://` URLs are verified against the system's root certificates, plus the PEM
//! certificates of the webhook's `ca_file` if it names one (a private CA, or a receiver's
//! self-signed certificate); rustls on the `ring` provider. `http://` stays possible for a
//! receiver on the same machine or a private network.

use crate::{Event, EventError, EventLog};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub url: String,
    /// The shared secret the receiver checks signatures with.
    pub secret: String,
    /// Event kinds delivered, by prefix (`invoice.`, `payment.succeeded`); empty: all.
    pub kinds: Vec<String>,
    /// PEM certificates trusted for an `https://` URL besides the system's roots.
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook URL {0:?}: not an http:// or https:// URL with a host")]
    BadUrl(String),
    #[error("webhook CA file {path}: {why}")]
    CaFile { path: String, why: String },
    #[error("webhook TLS client: {0}")]
    Tls(String),
    #[error("webhook secret must be at least 16 characters")]
    WeakSecret,
    #[error("webhook cursor file {path}: {source}")]
    Cursor { path: String, source: std::io::Error },
}

impl WebhookConfig {
    pub fn validate(&self) -> Result<(), WebhookError> {
        let parsed = reqwest::Url::parse(&self.url).map_err(|_| WebhookError::BadUrl(self.url.clone()))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(WebhookError::BadUrl(self.url.clone()));
        }
        if self.secret.len() < 16 {
            return Err(WebhookError::WeakSecret);
        }
        Ok(())
    }

    fn wants(&self, kind: &str) -> bool {
        self.kinds.is_empty() || self.kinds.iter().any(|k| kind.starts_with(k.as_str()))
    }
}

/// `sha256=<hex>` of HMAC-SHA256(secret, body): the `X-Teepay-Signature` header.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// True iff `header` is the signature of `body` under `secret` (compared in constant time).
pub fn verify(secret: &str, body: &[u8], header: &str) -> bool {
    let Some(hex_sig) = header.strip_prefix("sha256=") else { return false };
    let Ok(sig) = hex::decode(hex_sig) else { return false };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

const FIRST_RETRY: Duration = Duration::from_millis(200);
const LONGEST_RETRY: Duration = Duration::from_secs(60);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Delivers `log`'s events to one webhook until the task is aborted. `source` names the
/// daemon in delivery ids (its enclave address); `cursor_file` keeps the last delivered
/// sequence number (a new webhook starts with the events after it was configured).
pub fn spawn(
    log: Arc<EventLog>,
    config: WebhookConfig,
    source: String,
    cursor_file: PathBuf,
) -> Result<tokio::task::JoinHandle<()>, WebhookError> {
    config.validate()?;
    let cursor_err = |source| WebhookError::Cursor { path: cursor_file.display().to_string(), source };
    let cursor = match std::fs::read_to_string(&cursor_file) {
        Ok(text) => text.trim().parse::<u64>().unwrap_or(0),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let now = log.last_seq();
            write_cursor(&cursor_file, now).map_err(cursor_err)?;
            now
        }
        Err(e) => return Err(cursor_err(e)),
    };
    let client = client(&config)?;
    Ok(tokio::spawn(deliver_all(log, config, source, cursor_file, cursor, client)))
}

/// The webhook's HTTP(S) client: system roots plus the webhook's own CA file, if any.
fn client(config: &WebhookConfig) -> Result<reqwest::Client, WebhookError> {
    // One process-wide provider; a second install (another webhook) is refused harmlessly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder().timeout(REQUEST_TIMEOUT);
    if let Some(path) = &config.ca_file {
        let ca_err = |why: String| WebhookError::CaFile { path: path.display().to_string(), why };
        let pem = std::fs::read(path).map_err(|e| ca_err(e.to_string()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ca_err(e.to_string()))?;
        if certs.is_empty() {
            return Err(ca_err("no PEM certificate in it".into()));
        }
        builder = builder.tls_certs_merge(certs);
    }
    builder.build().map_err(|e| WebhookError::Tls(e.to_string()))
}

fn write_cursor(path: &std::path::Path, seq: u64) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, seq.to_string())?;
    std::fs::rename(&tmp, path)
}

async fn deliver_all(
    log: Arc<EventLog>,
    config: WebhookConfig,
    source: String,
    cursor_file: PathBuf,
    mut cursor: u64,
    client: reqwest::Client,
) {
    loop {
        let mut sub = match log.subscribe(cursor) {
            Ok(sub) => sub,
            Err(EventError::CursorTooOld { oldest, .. }) => {
                // Down longer than the log keeps events: what was missed is lost to this
                // webhook; say so and go on from what is kept.
                tracing::warn!(url = %config.url, cursor, oldest, "webhook missed events the log no longer keeps");
                cursor = oldest - 1;
                continue;
            }
            Err(EventError::CursorAhead { last, .. }) => {
                // The log was reset under it (its file removed): go on from its end.
                tracing::warn!(url = %config.url, cursor, last, "webhook cursor is ahead of the event log");
                cursor = last;
                continue;
            }
            Err(EventError::Closed) => return,
        };
        loop {
            let event = match sub.next().await {
                Ok(e) => e,
                Err(EventError::Closed) => return,
                Err(_) => break, // fell behind the log: resubscribe from the cursor
            };
            if config.wants(&event.kind) {
                deliver(&client, &config, &source, &event).await;
            }
            cursor = event.seq;
            if let Err(e) = write_cursor(&cursor_file, cursor) {
                tracing::warn!(path = %cursor_file.display(), error = %e, "webhook cursor not saved");
            }
        }
    }
}

/// The JSON body of one delivery.
pub fn body(source: &str, event: &Event) -> (String, Vec<u8>) {
    let id = format!("{source}-{}", event.seq);
    let body = serde_json::json!({
        "delivery": id,
        "seq": event.seq,
        "kind": event.kind,
        "at_ms": event.at_ms,
        "data": event.data,
    });
    (id, serde_json::to_vec(&body).expect("JSON serializes"))
}

/// POSTs one event until the receiver answers 2xx.
async fn deliver(client: &reqwest::Client, config: &WebhookConfig, source: &str, event: &Event) {
    let (id, body) = body(source, event);
    let signature = signature(&config.secret, &body);
    let mut wait = FIRST_RETRY;
    let mut attempt = 1u32;
    loop {
        let sent = client
            .post(&config.url)
            .header("content-type", "application/json")
            .header("x-teepay-delivery", &id)
            .header("x-teepay-event", &event.kind)
            .header("x-teepay-signature", &signature)
            .body(body.clone())
            .send()
            .await;
        let failure = match sent {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => format!("answered {}", r.status()),
            Err(e) => e.to_string(),
        };
        tracing::info!(url = %config.url, delivery = %id, attempt, %failure, retry_in_ms = wait.as_millis() as u64, "webhook delivery failed");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(LONGEST_RETRY);
        attempt += 1;
    }
}
