//! TCP for daemons that restart on fixed ports: dialing a peer without ever connecting to
//! ourselves, and listening on a port something else holds for a moment.
//!
//! When nothing listens on a loopback port in the ephemeral range, Linux may give the dialing
//! socket that very port as its own and connect it to itself (a TCP simultaneous open). The
//! socket then holds the port the peer is about to listen on again: a restarting hub, replica
//! or node finds its address in use, and the dialer waits on a handshake with its own echo.
//! A connection whose two ends are the same address is dropped at once instead.

//!
//! A port a daemon restarts on can also be held for a moment by an outgoing connection that
//! was given it as its local port while nobody listened there (any process's, on a loopback
//! port in the ephemeral range): [`listen`] retries such a bind for a while instead of
//! failing the restart at once.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};

/// Connects to `addr`; a connection to itself is refused as `ConnectionRefused` (nobody
/// listens there).
pub async fn connect(addr: impl ToSocketAddrs) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    if is_self_connected(&stream) {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            "connected to itself: nobody listens there",
        ));
    }
    Ok(stream)
}

/// Binds `addr`, retrying for up to `patience` while the address is in use.
pub async fn listen(addr: SocketAddr, patience: Duration) -> io::Result<TcpListener> {
    let started = Instant::now();
    loop {
        match TcpListener::bind(addr).await {
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && started.elapsed() < patience => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

fn is_self_connected(stream: &TcpStream) -> bool {
    matches!((stream.local_addr(), stream.peer_addr()), (Ok(local), Ok(peer)) if local == peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_listening_peer_is_reached_and_a_socket_connected_to_itself_is_recognised() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let dialed = connect(addr).await.unwrap();
        assert!(!is_self_connected(&dialed));
        // A socket bound to a port and connected to that same port: the self-connection the
        // kernel can make by chance, made here on purpose.
        drop(listener);
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(addr).unwrap();
        // (Linux connects a socket to its own address: a simultaneous open with itself.)
        let itself = socket.connect(addr).await.expect("a socket connects to its own address");
        assert!(is_self_connected(&itself), "two ends, one address");
    }

    #[tokio::test]
    async fn a_port_held_for_a_moment_is_listened_on_once_free_and_a_held_one_is_refused() {
        let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = holder.local_addr().unwrap();
        let err = listen(addr, Duration::from_millis(100)).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "held for longer than the patience");
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            drop(holder);
        });
        let listener = listen(addr, Duration::from_secs(5)).await.expect("bound once released");
        assert_eq!(listener.local_addr().unwrap(), addr);
        release.await.unwrap();
    }
}
