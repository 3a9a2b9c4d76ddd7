//! Limits against abuse at the socket: one address may not hold more than
//! `CONNECTIONS_PER_PEER_MAX` connections to a server; the next is closed
//! as soon as it is accepted, and a slot frees when a connection closes.

use std::time::Duration;

use p2p_core::limits::CONNECTIONS_PER_PEER_MAX;
use p2p_core::tracker::TrackerConfig;
use p2p_net::meta::MemoryMeta;
use p2p_net::tracker::TrackerService;
use p2p_net::transport::{server_builder, tcp_incoming};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Whether the server closed `s` (end of stream) within a short wait.
async fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    loop {
        match tokio::time::timeout(Duration::from_millis(300), s.read(&mut b)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // HTTP/2 settings from the server: read on.
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn one_address_holds_at_most_its_share_of_connections() {
    let service = TrackerService::open(TrackerConfig::default(), MemoryMeta::default())
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        server_builder(&Default::default())
            .add_service(service.into_server())
            .serve_with_incoming(tcp_incoming(listener)),
    );
    let mut open = Vec::new();
    for _ in 0..CONNECTIONS_PER_PEER_MAX {
        open.push(TcpStream::connect(addr).await.unwrap());
    }
    let mut extra = TcpStream::connect(addr).await.unwrap();
    assert!(
        closed(&mut extra).await,
        "a connection past the cap is closed"
    );
    assert!(!closed(&mut open[0]).await, "those within it stay open");
    // One closes: its slot is free again.
    drop(open.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut again = TcpStream::connect(addr).await.unwrap();
    assert!(
        !closed(&mut again).await,
        "a freed slot takes a new connection"
    );
}
