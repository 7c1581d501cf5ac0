//! The link over real loopback TCP, with the handshake signed by a real node enclave and a
//! real hub enclave: accepted peers talk; a wrong or unregistered peer, and a tampered,
//! replayed or oversized frame (injected by a man-in-the-middle proxy) end the link with a
//! typed error.

use std::net::SocketAddr;
use teepay_coordinator::{Coordinator, HubConfig};
use teepay_enclave::{NodeConfig, NodeEnclave, Request, Response};
use teepay_link::{Link, LinkError, MAX_FRAME, MAX_HANDSHAKE_FRAME, handshake};
use teepay_types::{Address, Amount, ChainId, LinkRole, SigningKey, SimPlatform};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

type TcpLink = Link<OwnedReadHalf, OwnedWriteHalf>;

fn hub() -> Coordinator<SimPlatform> {
    let config = HubConfig {
        measurement: [2; 32],
        attestation_authority: SigningKey::from_entropy([9; 32]).unwrap().address(),
        allowed_node_measurements: vec![[1; 32]],
        prepare_timeout: 100,
        retransmit_after: 10,
        round_auth: teepay_types::RoundAuth::default(),
        peer_acks: false,
        swap_lock_time: teepay_coordinator::DAY_MS,
    };
    Coordinator::create(SimPlatform::new([3; 32]), config, [4; 32]).unwrap()
}

fn node(seed: u8) -> NodeEnclave<SimPlatform> {
    let config = NodeConfig {
        measurement: [1; 32],
        attestation_authority: SigningKey::from_entropy([9; 32]).unwrap().address(),
        allowed_hub_measurements: vec![[2; 32]],
        contracts: vec![(ChainId(1), Address([0xcc; 20]))],
        max_tx_fee: Amount(1),
        require_peer_acks: false,
    };
    NodeEnclave::create(SimPlatform::new([seed; 32]), config, [seed + 1; 32]).unwrap().0
}

/// Node side: dials and has its enclave sign the transcript.
async fn dial(
    addr: SocketAddr,
    node: &mut NodeEnclave<SimPlatform>,
    expected_hub: Address,
) -> Result<TcpLink, LinkError> {
    let (r, w) = TcpStream::connect(addr).await?.into_split();
    let sign = |transcript| {
        let response =
            node.handle(0, Request::SignLink { transcript, role: LinkRole::Initiator }).unwrap().response;
        let Response::Signature(signature) = response else { panic!("{response:?}") };
        std::future::ready(Ok(signature))
    };
    handshake(r, w, LinkRole::Initiator, [7; 32], CREDENTIALS, sign, |peer, _| peer == expected_hub).await
}

/// What the dialing node presents with its signature (the services send its quote).
const CREDENTIALS: &[u8] = b"quote of the node";

/// Hub side: accepts one connection; admits only `node`.
async fn answer(
    listener: TcpListener,
    hub: Coordinator<SimPlatform>,
    node: Address,
) -> Result<TcpLink, LinkError> {
    let (stream, _) = listener.accept().await?;
    let (r, w) = stream.into_split();
    handshake(
        r,
        w,
        LinkRole::Responder,
        [8; 32],
        &[],
        |t| std::future::ready(Ok(hub.sign_link(&t, LinkRole::Responder))),
        |p, credentials| p == node && credentials == CREDENTIALS,
    )
    .await
}

/// A node enclave (from `seed`) linked to the hub over loopback: (node's end, hub's end).
async fn linked_pair(seed: u8) -> (TcpLink, TcpLink) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hub = hub();
    let hub_addr = hub.address();
    let mut n = node(seed);
    let server = tokio::spawn(answer(listener, hub, n.address()));
    let link = dial(addr, &mut n, hub_addr).await.unwrap();
    let peer = server.await.unwrap().unwrap();
    assert_eq!((link.peer, peer.peer), (hub_addr, n.address()));
    (link, peer)
}

#[tokio::test]
async fn authenticated_encrypted_round_trip() {
    let (mut link, mut peer) = linked_pair(20).await;
    link.writer.send(b"hello").await.unwrap();
    let msg = peer.reader.recv().await.unwrap();
    peer.writer.send(&[msg.as_slice(), b" back"].concat()).await.unwrap();
    assert_eq!(link.reader.recv().await.unwrap(), b"hello back");
    link.writer.send(&vec![7u8; 1 << 20]).await.unwrap();
    assert_eq!(peer.reader.recv().await.unwrap().len(), 1 << 20);
}

#[tokio::test]
async fn a_burst_sent_in_one_write_arrives_as_separate_messages_in_order() {
    let (mut link, mut peer) = linked_pair(21).await;
    // Small frames around one larger than the read buffer, then an empty burst (sends
    // nothing, consumes no nonce) and a single send: sequence numbers stay in step.
    let burst: Vec<Vec<u8>> = vec![b"one".to_vec(), vec![9u8; 200_000], b"".to_vec(), b"three".to_vec()];
    let sent = teepay_link::BYTES_SENT.load(std::sync::atomic::Ordering::Relaxed);
    link.writer.send_all(burst.iter().map(Vec::as_slice)).await.unwrap();
    link.writer.send_all(std::iter::empty()).await.unwrap();
    link.writer.send(b"after").await.unwrap();
    for expected in burst.iter().chain([&b"after".to_vec()]) {
        assert_eq!(&peer.reader.recv().await.unwrap(), expected);
    }
    // Each frame: 4-byte length + message + 16-byte tag (other tests' links may add more).
    let frames: usize = burst.iter().chain([&b"after".to_vec()]).map(|m| 4 + m.len() + 16).sum();
    let counted = teepay_link::BYTES_SENT.load(std::sync::atomic::Ordering::Relaxed) - sent;
    assert!(counted >= frames as u64, "{counted} < {frames}");
}

#[tokio::test]
async fn refuses_unexpected_peers() {
    // The hub admits only another node: it refuses this one before signing anything, and
    // the node sees the connection close.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut n = node(30);
    let server = tokio::spawn(answer(listener, hub(), Address([5; 20])));
    let hub_addr = hub().address();
    let err = dial(addr, &mut n, hub_addr).await.unwrap_err();
    assert!(matches!(err, LinkError::Io(_)), "{err}");
    let err = server.await.unwrap().unwrap_err();
    assert!(matches!(err, LinkError::Rejected(a) if a == n.address()), "{err}");
    // The hub admits the node, but the node expects another hub.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(answer(listener, hub(), n.address()));
    let err = dial(addr, &mut n, Address([1; 20])).await.unwrap_err();
    assert!(matches!(err, LinkError::Rejected(a) if a == hub_addr), "{err}");
    drop(server);
}

#[derive(Clone, Copy)]
enum Attack {
    FlipBit,
    Replay,
}

/// Forwards client→server frames, attacking the first frame after the handshake (the
/// client's third); server→client bytes pass untouched.
async fn mitm(listen: TcpListener, server: SocketAddr, attack: Attack) {
    let (client, _) = listen.accept().await.unwrap();
    let upstream = TcpStream::connect(server).await.unwrap();
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = upstream.into_split();
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut ur, &mut cw).await;
    });
    for index in 0.. {
        let mut len = [0u8; 4];
        if cr.read_exact(&mut len).await.is_err() {
            return;
        }
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        cr.read_exact(&mut body).await.unwrap();
        let mut frame = [len.as_slice(), &body].concat();
        match (index, attack) {
            (2, Attack::FlipBit) => frame[10] ^= 1,
            (2, Attack::Replay) => frame = [frame.clone(), frame].concat(),
            _ => {}
        }
        if uw.write_all(&frame).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn tampered_and_replayed_frames_fail_authentication() {
    for attack in [Attack::FlipBit, Attack::Replay] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server_addr = listener.local_addr().unwrap();
        let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_addr = proxy.local_addr().unwrap();
        let hub = hub();
        let hub_addr = hub.address();
        let mut n = node(40);
        let server = tokio::spawn(answer(listener, hub, n.address()));
        tokio::spawn(mitm(proxy, server_addr, attack));
        let mut link = dial(proxy_addr, &mut n, hub_addr).await.unwrap();
        let mut peer = server.await.unwrap().unwrap();
        link.writer.send(b"pay 10").await.unwrap();
        match attack {
            Attack::FlipBit => assert!(matches!(peer.reader.recv().await, Err(LinkError::Decrypt))),
            Attack::Replay => {
                assert_eq!(peer.reader.recv().await.unwrap(), b"pay 10");
                assert!(
                    matches!(peer.reader.recv().await, Err(LinkError::Decrypt)),
                    "the replayed copy is refused"
                );
            }
        }
    }
}

#[tokio::test]
async fn oversized_frames_are_refused_before_allocation() {
    // Before authentication: anything above the handshake cap, first frame or second.
    for valid_first in [false, true] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(answer(listener, hub(), Address([5; 20])));
        let mut raw = TcpStream::connect(addr).await.unwrap();
        if valid_first {
            let key = secp256k1::PublicKey::from_secret_key(
                &secp256k1::SecretKey::from_secret_bytes([3; 32]).unwrap(),
            );
            raw.write_all(&33u32.to_be_bytes()).await.unwrap();
            raw.write_all(&key.serialize()).await.unwrap();
        }
        raw.write_all(&((MAX_HANDSHAKE_FRAME as u32) + 1).to_be_bytes()).await.unwrap();
        let err = server.await.unwrap().unwrap_err();
        assert!(matches!(err, LinkError::FrameTooLarge(n) if n == MAX_HANDSHAKE_FRAME + 1), "{err}");
    }
    // After it: the link's own cap.
    let (mut link, mut peer) = linked_pair(22).await;
    assert!(matches!(link.writer.send(&vec![0u8; MAX_FRAME + 1]).await, Err(LinkError::FrameTooLarge(_))));
    link.writer.send(b"still fine").await.unwrap();
    assert_eq!(peer.reader.recv().await.unwrap(), b"still fine");
}

/// Issue 14 item 10: a responder checks who the initiator is, with its credentials, before
/// its enclave signs anything: an unaccepted key never makes the hub enclave work.
#[tokio::test]
async fn an_unaccepted_initiator_never_gets_the_responder_enclave_to_sign() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let signed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = signed.clone();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (r, w) = stream.into_split();
        let hub = hub();
        let sign = |t| {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            std::future::ready(Ok(hub.sign_link(&t, LinkRole::Responder)))
        };
        handshake(r, w, LinkRole::Responder, [8; 32], &[], sign, |_, credentials| {
            credentials == b"a valid quote"
        })
        .await
    });
    let mut n = node(31);
    let err = dial(addr, &mut n, Address([1; 20])).await.unwrap_err();
    assert!(matches!(err, LinkError::Io(_)), "the hub hangs up without answering: {err}");
    let err = server.await.unwrap().unwrap_err();
    assert!(matches!(err, LinkError::Rejected(a) if a == n.address()), "{err}");
    assert!(!signed.load(std::sync::atomic::Ordering::SeqCst), "the hub enclave signed for a refused peer");
}

/// A hub group's follower answers a dialing node with where the leader is, instead of a
/// handshake: the node's enclave signs nothing and the node gets the hint as a typed error
/// (it then dials that replica if, and only if, it is one it is configured with).
#[tokio::test]
async fn a_follower_names_the_leader_instead_of_shaking_hands() {
    for hint in [Some("127.0.0.1:9720"), None] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let follower = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            teepay_link::send_follower_hint(&mut stream, hint).await.unwrap();
            let mut first = [0u8; 64];
            let _ = stream.read(&mut first).await;
        });
        let signed = std::cell::Cell::new(false);
        let (r, w) = TcpStream::connect(addr).await.unwrap().into_split();
        let sign = |_| {
            signed.set(true);
            std::future::ready(Err(LinkError::Signer("must not be asked".into())))
        };
        let answer = handshake(r, w, LinkRole::Initiator, [7; 32], CREDENTIALS, sign, |_, _| true).await;
        match answer {
            Err(LinkError::Follower(leader)) => assert_eq!(leader.as_deref(), hint),
            other => panic!("expected the follower's hint, got {:?}", other.map(|l| l.peer)),
        }
        assert!(!signed.get(), "the enclave signed a transcript for a follower");
        follower.await.unwrap();
    }
}
