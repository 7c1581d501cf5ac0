//! The event log and its subscribers: resumed from a cursor after any disconnect, a
//! subscriber sees every event exactly once and in order; a cursor the log no longer covers
//! is refused with where to resync; the file survives a restart and stays bounded. Webhooks
//! against a local HTTP server that fails the first deliveries: signed, retried with the
//! same delivery id, in order, filtered, resumed from their own cursor after a restart.

use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use teepay_events::webhook::{self, WebhookConfig};
use teepay_events::{EventError, EventLog};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

fn dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("teepay-events-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_resuming_from_its_cursor_misses_nothing_and_sees_nothing_twice() {
    let log = EventLog::in_memory(100_000);
    const N: u64 = 20_000;
    let producer = {
        let log = log.clone();
        tokio::spawn(async move {
            for i in 0..N {
                log.append("payment.succeeded", json!({ "i": i }), i);
                if i % 500 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    // The client disconnects every few events and resumes from the last one it saw.
    let mut seen = Vec::new();
    let mut cursor = 0;
    let mut round = 0u64;
    while seen.len() < N as usize {
        let mut sub = log.subscribe(cursor).expect("a kept cursor");
        for _ in 0..(1 + round % 97) {
            let e = sub.next().await.unwrap();
            seen.push(e.seq);
            if seen.len() == N as usize {
                break;
            }
        }
        cursor = sub.cursor();
        round += 1;
    }
    producer.await.unwrap();
    assert_eq!(seen, (1..=N).collect::<Vec<_>>(), "every event once, in order");
    assert!(round > 100, "it did reconnect");
}

#[tokio::test]
async fn a_cursor_the_log_no_longer_covers_is_refused_with_where_to_resync() {
    let log = EventLog::in_memory(10);
    for i in 0..30 {
        log.append("invoice.created", json!({}), i);
    }
    assert_eq!(log.subscribe(5).unwrap_err(), EventError::CursorTooOld { cursor: 5, oldest: 21 });
    assert_eq!(log.subscribe(31).unwrap_err(), EventError::CursorAhead { cursor: 31, last: 30 });
    let mut sub = log.subscribe(20).unwrap();
    for seq in 21..=30 {
        assert_eq!(sub.next().await.unwrap().seq, seq);
    }
    // A subscriber so slow that the log moved past it is told, not fed a gap.
    for i in 0..30 {
        log.append("invoice.created", json!({}), i);
    }
    assert!(matches!(sub.next().await, Err(EventError::CursorTooOld { .. })));
    // Cursor 0: from the oldest kept.
    assert_eq!(log.subscribe(0).unwrap().next().await.unwrap().seq, 51);
}

#[tokio::test]
async fn the_log_survives_a_restart_and_its_file_stays_bounded() {
    let d = dir("file");
    let path = d.join("events.jsonl");
    let log = EventLog::open(&path, 50).unwrap();
    for i in 0..40 {
        log.append("payment.succeeded", json!({ "i": i }), i);
    }
    drop(log);
    // A torn last line (a crash mid-write) is dropped.
    let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
    std::io::Write::write_all(&mut f, b"{\"seq\":41,\"at_ms\":").unwrap();
    drop(f);
    let log = EventLog::open(&path, 50).unwrap();
    assert_eq!(log.last_seq(), 40);
    let mut sub = log.subscribe(38).unwrap();
    assert_eq!(sub.next().await.unwrap().data, json!({ "i": 38 }));
    for i in 40..1_000 {
        log.append("payment.succeeded", json!({ "i": i }), i);
    }
    let lines = std::fs::read_to_string(&path).unwrap().lines().count();
    assert!(lines <= 2 * 50 + 1, "{lines} lines kept for a capacity of 50");
    drop(log);
    let log = EventLog::open(&path, 50).unwrap();
    assert_eq!(log.last_seq(), 1_000);
    let _ = std::fs::remove_dir_all(&d);
}

/// What the test's HTTP server received: (delivery id, signature, kind, body).
type Received = Arc<Mutex<Vec<(String, String, String, Vec<u8>)>>>;

/// A minimal HTTP/1.1 server: records every request, answers 500 to the first `fail`.
async fn server(fail: usize) -> (String, Received, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let received: Received = Arc::default();
    let log = received.clone();
    let task = tokio::spawn(async move {
        let mut answered = 0;
        loop {
            let (s, _) = listener.accept().await.unwrap();
            answer(s, &log, &mut answered, fail).await;
        }
    });
    (url, received, task)
}

/// An HTTPS receiver with a self-signed certificate for `localhost`: its URL, what it
/// received, its task, and the certificate (PEM) a client must trust to reach it.
async fn tls_server() -> (String, Received, tokio::task::JoinHandle<()>, String) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let pem = cert.cert.pem();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://localhost:{}/hook", listener.local_addr().unwrap().port());
    let received: Received = Arc::default();
    let log = received.clone();
    let task = tokio::spawn(async move {
        let mut answered = 0;
        loop {
            let (s, _) = listener.accept().await.unwrap();
            // A client that does not trust the certificate fails the handshake: no request.
            if let Ok(s) = acceptor.accept(s).await {
                answer(s, &log, &mut answered, 0).await;
            }
        }
    });
    (url, received, task, pem)
}

/// Reads one HTTP request from `s`, records it, answers 500 for the first `fail` requests
/// and 200 after.
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    log: &Received,
    answered: &mut usize,
    fail: usize,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head, body) = loop {
        let n = s.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            break (String::new(), Vec::new());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).to_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            while buf.len() < i + 4 + len {
                let n = s.read(&mut chunk).await.unwrap();
                buf.extend_from_slice(&chunk[..n]);
            }
            break (head, buf[i + 4..i + 4 + len].to_vec());
        }
    };
    if head.is_empty() {
        return;
    }
    let header = |name: &str| {
        head.lines().find_map(|l| l.strip_prefix(&format!("{name}:"))).unwrap_or("").trim().to_string()
    };
    // Header values were lower-cased with the head: the signature is hex anyway.
    log.lock().unwrap().push((
        header("x-teepay-delivery"),
        header("x-teepay-signature"),
        header("x-teepay-event"),
        body,
    ));
    *answered += 1;
    let status = if *answered <= fail { "500 Internal Server Error" } else { "200 OK" };
    let reply = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    let _ = s.write_all(reply.as_bytes()).await;
    let _ = s.shutdown().await;
}

async fn wait_for(received: &Received, n: usize) {
    let started = std::time::Instant::now();
    while received.lock().unwrap().len() < n {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "only {} deliveries",
            received.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_retried_with_one_delivery_id_in_order_and_resumed() {
    let d = dir("webhook");
    let log = EventLog::in_memory(1_000);
    log.append("invoice.created", json!({ "before": true }), 0); // before the webhook: not sent
    let (url, received, server) = server(2).await;
    let secret = "a merchant's secret, 32 bytes...";
    let config = WebhookConfig { url, secret: secret.into(), kinds: vec!["invoice.".into()], ca_file: None };
    let cursor = d.join("hook-1.cursor");
    let task = webhook::spawn(log.clone(), config.clone(), "0xnode".into(), cursor.clone()).unwrap();
    log.append("invoice.paid", json!({ "invoice": "a" }), 1);
    log.append("payment.succeeded", json!({}), 2); // filtered out
    log.append("invoice.paid", json!({ "invoice": "b" }), 3);
    // Two failures (500), then both delivered: four requests.
    wait_for(&received, 4).await;
    let got = received.lock().unwrap().clone();
    let ids: Vec<&str> = got.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(
        ids,
        ["0xnode-2", "0xnode-2", "0xnode-2", "0xnode-4"],
        "one id per event, kept across retries"
    );
    for (id, sig, kind, body) in &got {
        assert!(webhook::verify(secret, body, sig), "signed");
        assert!(!webhook::verify("another secret, 32 bytes long...", body, sig));
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["delivery"], id.as_str());
        assert_eq!((kind.as_str(), v["kind"].as_str()), ("invoice.paid", Some("invoice.paid")));
    }
    let mut altered = got[3].3.clone();
    altered[10] ^= 1;
    assert!(!webhook::verify(secret, &altered, &got[3].1), "an altered body fails");
    // Restarted, the webhook resumes after what it delivered.
    tokio::time::sleep(Duration::from_millis(100)).await;
    task.abort();
    log.append("invoice.paid", json!({ "invoice": "c" }), 5);
    let task = webhook::spawn(log.clone(), config, "0xnode".into(), cursor).unwrap();
    wait_for(&received, 5).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 5, "nothing delivered twice after the restart");
    assert_eq!(got[4].0, "0xnode-5");
    task.abort();
    server.abort();
    // HTTP(S) URLs and a real secret only.
    let config = |url: &str, secret: &str| WebhookConfig {
        url: url.into(),
        secret: secret.into(),
        kinds: vec![],
        ca_file: None,
    };
    assert!(config("https://shop.example/hook", secret).validate().is_ok());
    for bad in ["ftp://shop.example/hook", "shop.example/hook", "https://"] {
        assert!(matches!(config(bad, secret).validate(), Err(webhook::WebhookError::BadUrl(_))), "{bad}");
    }
    assert!(config("http://127.0.0.1:1/", "short").validate().is_err());
    let _ = std::fs::remove_dir_all(&d);
}

/// An `https://` webhook reaches a receiver whose certificate the webhook trusts (its
/// `ca_file`), signed as over HTTP; a webhook that does not trust it delivers nothing (the
/// certificate is verified, and the event waits for a later retry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_webhooks_verify_the_receivers_certificate() {
    let d = dir("https");
    let (url, received, server, pem) = tls_server().await;
    let ca = d.join("receiver.pem");
    std::fs::write(&ca, pem).unwrap();
    let secret = "a merchant's secret, 32 bytes...";
    let untrusting = EventLog::in_memory(100);
    let config = WebhookConfig { url: url.clone(), secret: secret.into(), kinds: vec![], ca_file: None };
    let refused = webhook::spawn(untrusting.clone(), config, "0xnode".into(), d.join("a.cursor")).unwrap();
    untrusting.append("invoice.paid", json!({ "invoice": "x" }), 1);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(received.lock().unwrap().is_empty(), "an unknown certificate is not trusted");
    refused.abort();

    let log = EventLog::in_memory(100);
    let config = WebhookConfig { url, secret: secret.into(), kinds: vec![], ca_file: Some(ca.clone()) };
    let task = webhook::spawn(log.clone(), config, "0xnode".into(), d.join("b.cursor")).unwrap();
    log.append("invoice.paid", json!({ "invoice": "y" }), 1);
    wait_for(&received, 1).await;
    let got = received.lock().unwrap().clone();
    assert!(webhook::verify(secret, &got[0].3, &got[0].1), "signed");
    assert_eq!(got[0].0, "0xnode-1");
    task.abort();
    server.abort();
    // A CA file that is missing or holds no certificate is refused when configured.
    for (path, text) in [(d.join("missing.pem"), None), (d.join("empty.pem"), Some("not a certificate"))] {
        if let Some(text) = text {
            std::fs::write(&path, text).unwrap();
        }
        let config = WebhookConfig {
            url: "https://localhost:1/hook".into(),
            secret: secret.into(),
            kinds: vec![],
            ca_file: Some(path),
        };
        let r = webhook::spawn(log.clone(), config, "0xnode".into(), d.join("c.cursor"));
        assert!(matches!(r, Err(webhook::WebhookError::CaFile { .. })), "{r:?}");
    }
    let _ = std::fs::remove_dir_all(&d);
}
