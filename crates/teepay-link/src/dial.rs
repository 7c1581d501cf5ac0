//! Dialing a peer over TCP without ever connecting to ourselves.
//!
//! When nothing listens on a loopback port in the ephemeral range, Linux may give the dialing
//! socket that very port as its own and connect it to itself (a TCP simultaneous open). The
//! socket then holds the port the peer is about to listen on again: a restarting hub, replica
//! or node finds its address in use, and the dialer waits on a handshake with its own echo.
//! A connection whose two ends are the same address is dropped at once instead.

use std::io;
use tokio::net::{TcpStream, ToSocketAddrs};

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
}
