//! teepay-link: the node↔hub connection — length-prefixed frames over any async byte stream,
//! a handshake authenticated by the attested enclave keys, and authenticated encryption.
//!
//! Handshake (both sides, in this order):
//! 1. each sends a fresh ephemeral secp256k1 public key (33 bytes, plaintext frame);
//! 2. transcript = keccak("teepay/link-transcript/v1" ‖ initiator key ‖ responder key);
//! 3. the initiator sends its *enclave's* signature over `link_digest(transcript, initiator)`
//!    — the enclave signs only under that tag — with its credentials (a node: its attestation
//!    quote); the responder checks that the signature recovers to an address its policy
//!    accepts with those credentials (the hub: an attested node enclave) *before* it asks its
//!    own enclave to sign, so an unauthenticated peer never gets the hub enclave to work;
//!    then the responder answers with its signature, which the initiator checks likewise (a
//!    node: its attested hub). Before this point frames are capped at
//!    [`MAX_HANDSHAKE_FRAME`];
//! 4. directional ChaCha20-Poly1305 keys = keccak(tag ‖ ECDH(ephemerals) ‖ transcript); each
//!    frame's nonce is its sequence number, so a dropped, replayed, reordered or modified
//!    frame fails to decrypt and ends the link.
//!
//! The ephemeral keys live in the host: a host could read its own traffic anyway. What the
//! enclave signature buys is that the far end is the attested enclave it expects, and that
//! no third party on the path can read or alter the stream.

pub mod host;
pub mod tcp;
pub mod wire;

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use secp256k1::{PublicKey, SecretKey, ecdh::SharedSecret};
use teepay_types::crypto::keccak256_parts;
use teepay_types::{Address, Hash32, LinkRole, Signature, link_digest, recover_signer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

/// Largest frame accepted: a batch for thousands of instances fits with room to spare; a
/// peer announcing more is cut off before anything is allocated.
pub const MAX_FRAME: usize = 64 << 20;

/// Poly1305 tag appended to every frame.
const TAG_LEN: usize = 16;

/// Largest frame before the peer is authenticated (an ephemeral key, a signature with a
/// quote): nobody can make a responder allocate more than this before it knows who talks.
pub const MAX_HANDSHAKE_FRAME: usize = 4096;

/// Read buffer per link: holds a burst of round messages; larger frames bypass it.
const READ_BUFFER: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    FrameTooLarge(usize),
    #[error("handshake: {0}")]
    Handshake(&'static str),
    #[error("peer {0} is not an accepted enclave")]
    Rejected(Address),
    #[error("frame failed authentication (tampered, replayed or out of order)")]
    Decrypt,
    #[error("entropy does not form a valid key")]
    BadEntropy,
    #[error("the enclave did not sign the handshake: {0}")]
    Signer(String),
    /// A hub group's follower answered instead of a hub: where it says the leader's node
    /// port is, if it knows (a hint only — the handshake there still authenticates the hub).
    #[error("this hub replica follows; the leader is {}", .0.as_deref().unwrap_or("not known yet"))]
    Follower(Option<String>),
}

/// What a hub group's follower sends in place of its handshake key: this prefix, then the
/// leader's node port as text (empty if no leader is known). Never a valid public key.
pub const FOLLOWER_PREFIX: &[u8] = b"teepay/follower/v1:";

/// Answers a node that dialed a hub group's follower: where the leader is (see
/// [`LinkError::Follower`]), written as the first handshake frame, then the connection is
/// the caller's to close.
pub async fn send_follower_hint<W: AsyncWrite + Unpin>(
    writer: &mut W,
    leader: Option<&str>,
) -> Result<(), LinkError> {
    let hint = [FOLLOWER_PREFIX, leader.unwrap_or("").as_bytes()].concat();
    write_frame(writer, &hint).await
}

/// Bytes written to every link of this process (frames with their length prefix): what
/// benchmarks report as bytes on the wire.
pub static BYTES_SENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Appends one length-prefixed frame to `out`.
fn append_frame(out: &mut Vec<u8>, payload: &[u8]) -> Result<(), LinkError> {
    if payload.len() > MAX_FRAME {
        return Err(LinkError::FrameTooLarge(payload.len()));
    }
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, payload: &[u8]) -> Result<(), LinkError> {
    let mut buf = Vec::with_capacity(4 + payload.len());
    append_frame(&mut buf, payload)?;
    write_bytes(w, &buf).await
}

async fn write_bytes<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> Result<(), LinkError> {
    BYTES_SENT.fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
    w.write_all(bytes).await?;
    w.flush().await?;
    Ok(())
}

async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Vec<u8>, LinkError> {
    read_frame_within(r, MAX_FRAME).await
}

async fn read_frame_within<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> Result<Vec<u8>, LinkError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(LinkError::FrameTooLarge(len));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    Ok(buf)
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::from(n)
}

/// The sending half of an established link.
pub struct LinkWriter<W> {
    w: W,
    cipher: ChaCha20Poly1305,
    counter: u64,
}

impl<W> std::fmt::Debug for LinkWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkWriter").field("sent", &self.counter).finish()
    }
}

impl<W: AsyncWrite + Unpin> LinkWriter<W> {
    pub async fn send(&mut self, plaintext: &[u8]) -> Result<(), LinkError> {
        self.send_all(std::iter::once(plaintext)).await
    }

    /// Sends several messages, in order, with one write: under load a busy link then costs
    /// one system call per burst instead of one per message (each is still its own frame,
    /// sealed under its own nonce).
    pub async fn send_all<'a>(
        &mut self,
        plaintexts: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<(), LinkError> {
        let mut buf = Vec::new();
        for plaintext in plaintexts {
            // Checked before encrypting: a refused message must not use up a nonce (the
            // peer would then fail every later frame).
            if plaintext.len() + TAG_LEN > MAX_FRAME {
                return Err(LinkError::FrameTooLarge(plaintext.len() + TAG_LEN));
            }
            let ciphertext =
                self.cipher.encrypt(&nonce(self.counter), plaintext).map_err(|_| LinkError::Decrypt)?;
            self.counter += 1;
            append_frame(&mut buf, &ciphertext)?;
        }
        if buf.is_empty() {
            return Ok(());
        }
        write_bytes(&mut self.w, &buf).await
    }
}

/// The receiving half of an established link.
pub struct LinkReader<R> {
    /// Buffered: one read system call takes in every frame that has arrived, instead of two
    /// reads (length, body) per frame.
    r: BufReader<R>,
    cipher: ChaCha20Poly1305,
    counter: u64,
}

impl<R> std::fmt::Debug for LinkReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkReader").field("received", &self.counter).finish()
    }
}

impl<R: AsyncRead + Unpin> LinkReader<R> {
    pub async fn recv(&mut self) -> Result<Vec<u8>, LinkError> {
        let frame = read_frame(&mut self.r).await?;
        let plain =
            self.cipher.decrypt(&nonce(self.counter), frame.as_slice()).map_err(|_| LinkError::Decrypt)?;
        self.counter += 1;
        Ok(plain)
    }
}

/// A completed handshake: both halves and the peer's enclave address.
pub struct Link<R, W> {
    pub reader: LinkReader<R>,
    pub writer: LinkWriter<W>,
    pub peer: Address,
}

impl<R, W> std::fmt::Debug for Link<R, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").field("peer", &self.peer).finish()
    }
}

fn key(tag: &[u8], shared: &[u8], transcript: &Hash32) -> ChaCha20Poly1305 {
    ChaCha20Poly1305::new(Key::from_slice(&keccak256_parts(&[tag, shared, transcript])))
}

/// Runs the handshake on `reader`/`writer` (the two halves of one connection).
/// `entropy` seeds the ephemeral key (fresh per connection); `sign` hands the transcript to
/// this side's enclave, which signs `link_digest(transcript, role)` itself; `credentials`
/// go with the initiator's signature (ignored for a responder); `accept` decides whether the
/// authenticated peer, with the credentials it sent (empty from a responder), may talk. A
/// responder calls `accept` before `sign`.
pub async fn handshake<R, W, S, F>(
    mut reader: R,
    mut writer: W,
    role: LinkRole,
    entropy: [u8; 32],
    credentials: &[u8],
    sign: S,
    accept: impl FnOnce(Address, &[u8]) -> bool,
) -> Result<Link<R, W>, LinkError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    S: FnOnce(Hash32) -> F,
    F: std::future::Future<Output = Result<Signature, LinkError>>,
{
    let secret = SecretKey::from_secret_bytes(entropy).map_err(|_| LinkError::BadEntropy)?;
    let mine = PublicKey::from_secret_key(&secret).serialize();
    write_frame(&mut writer, &mine).await?;
    let theirs = read_frame_within(&mut reader, MAX_HANDSHAKE_FRAME).await?;
    if role == LinkRole::Initiator
        && let Some(hint) = theirs.strip_prefix(FOLLOWER_PREFIX)
    {
        let leader = std::str::from_utf8(hint).ok().filter(|h| !h.is_empty()).map(str::to_string);
        return Err(LinkError::Follower(leader));
    }
    let their_key =
        PublicKey::from_slice(&theirs).map_err(|_| LinkError::Handshake("invalid ephemeral key"))?;
    let (init, resp) = match role {
        LinkRole::Initiator => (mine.as_slice(), theirs.as_slice()),
        LinkRole::Responder => (theirs.as_slice(), mine.as_slice()),
    };
    let transcript = keccak256_parts(&[b"teepay/link-transcript/v1", init, resp]);
    let peer_role = match role {
        LinkRole::Initiator => LinkRole::Responder,
        LinkRole::Responder => LinkRole::Initiator,
    };
    // The peer's signature frame: 65 bytes, then (from an initiator) its credentials.
    let authenticate = |frame: &[u8]| -> Result<(Address, Vec<u8>), LinkError> {
        if frame.len() < 65 {
            return Err(LinkError::Handshake("signature must be 65 bytes"));
        }
        let (sig, creds) = frame.split_at(65);
        let sig: [u8; 65] = sig.try_into().expect("split at 65");
        let peer = recover_signer(&link_digest(&transcript, peer_role), &Signature(sig))
            .map_err(|_| LinkError::Handshake("unrecoverable signature"))?;
        Ok((peer, creds.to_vec()))
    };

    let peer = match role {
        LinkRole::Initiator => {
            let signature = sign(transcript).await?;
            write_frame(&mut writer, &[signature.0.as_slice(), credentials].concat()).await?;
            let (peer, _) = authenticate(&read_frame_within(&mut reader, MAX_HANDSHAKE_FRAME).await?)?;
            if !accept(peer, &[]) {
                return Err(LinkError::Rejected(peer));
            }
            peer
        }
        LinkRole::Responder => {
            let (peer, creds) = authenticate(&read_frame_within(&mut reader, MAX_HANDSHAKE_FRAME).await?)?;
            if !accept(peer, &creds) {
                return Err(LinkError::Rejected(peer));
            }
            let signature = sign(transcript).await?;
            write_frame(&mut writer, &signature.0).await?;
            peer
        }
    };

    let shared = SharedSecret::new(&their_key, &secret).to_secret_bytes();
    let i2r = key(b"teepay/link-key/i2r", &shared, &transcript);
    let r2i = key(b"teepay/link-key/r2i", &shared, &transcript);
    let (send, recv) = match role {
        LinkRole::Initiator => (i2r, r2i),
        LinkRole::Responder => (r2i, i2r),
    };
    Ok(Link {
        reader: LinkReader { r: BufReader::with_capacity(READ_BUFFER, reader), cipher: recv, counter: 0 },
        writer: LinkWriter { w: writer, cipher: send, counter: 0 },
        peer,
    })
}

/// 32 bytes from the OS for an ephemeral key (hosts only; enclaves get entropy passed in).
pub fn os_entropy() -> std::io::Result<[u8; 32]> {
    use std::io::Read;
    let mut buf = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf)
}
