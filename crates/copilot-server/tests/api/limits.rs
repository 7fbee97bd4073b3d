//! Slow and greedy clients cannot hold the server (DESIGN.md 6.1): header, body and idle
//! timeouts, the connection cap, and a shutdown that drains for a bounded time.

use std::time::{Duration, Instant};

use copilot_server::server::ServerLimits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{TENANT, TestServer, Who};

async fn server(limits: ServerLimits) -> TestServer {
    let first = TestServer::start().await;
    let store = first.store.clone();
    first.stop().await;
    TestServer::start_limited(
        store,
        TestServer::default_settings(false),
        TestServer::default_cache(),
        limits,
    )
    .await
}

fn short() -> ServerLimits {
    ServerLimits {
        header_timeout: Duration::from_millis(300),
        body_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(500),
        max_connections: 100,
        drain: Duration::from_millis(500),
    }
}

async fn connect(server: &TestServer) -> TcpStream {
    TcpStream::connect(server.base.trim_start_matches("http://"))
        .await
        .expect("connect")
}

/// Reads until the server closes the connection; returns what it sent. Panics after 10 s.
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return String::from_utf8_lossy(&out).into_owned(),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "the server kept the connection open; it sent: {}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
}

#[tokio::test]
async fn headers_that_never_finish_are_cut_after_the_header_timeout() {
    let s = server(short()).await;
    let mut slow = connect(&s).await;
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    read_until_closed(&mut slow).await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let s = server(ServerLimits {
        header_timeout: Duration::from_secs(30),
        ..short()
    })
    .await;
    let mut idle = connect(&s).await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answered = read_until_closed(&mut idle).await;
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
}

#[tokio::test]
async fn a_connection_that_keeps_moving_bytes_is_not_idle() {
    let s = server(ServerLimits {
        header_timeout: Duration::from_secs(30),
        ..short()
    })
    .await;
    let mut busy = connect(&s).await;
    // Six requests 200 ms apart span 1.2 s, more than twice the 500 ms idle timeout; each one
    // moves bytes, so the connection stays open and answers all of them.
    let mut buf = [0u8; 4096];
    for _ in 0..6 {
        busy.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), busy.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Then it goes quiet and is closed.
    assert_eq!(read_until_closed(&mut busy).await, "");
}
#[tokio::test]
async fn a_body_that_does_not_arrive_is_408_request_timeout() {
    let s = server(short()).await;
    let token = Who::Owner.token().unwrap();
    let mut slow = connect(&s).await;
    slow.write_all(
        format!(
            "POST /v1/tenants/{TENANT}/conversations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n{{\"tit"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let answer = read_until_closed(&mut slow).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"request_timeout\""), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
}

#[tokio::test]
async fn connections_past_the_cap_are_closed_and_a_freed_slot_serves_again() {
    let s = server(ServerLimits {
        max_connections: 2,
        header_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(30),
        ..short()
    })
    .await;
    let first = connect(&s).await;
    let _second = connect(&s).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = connect(&s).await;
    let _ = third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let answer = read_until_closed(&mut third).await;
    assert!(answer.is_empty(), "over the cap, yet answered: {answer}");
    drop(first);
    // The slot is free again once the server saw the first one close.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut again = connect(&s).await;
        let _ = again
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await;
        if read_until_closed(&mut again)
            .await
            .starts_with("HTTP/1.1 200")
        {
            break;
        }
        assert!(Instant::now() < deadline, "the freed slot never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A half-sent request does not hold shutdown: it drains for at most the drain limit.
#[tokio::test]
async fn shutdown_with_a_half_sent_request_returns_within_the_drain_limit() {
    let s = server(ServerLimits {
        header_timeout: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(60),
        drain: Duration::from_millis(500),
        ..short()
    })
    .await;
    let mut half = connect(&s).await;
    half.write_all(b"GET /healthz HTTP/1.1\r\nHo")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    tokio::time::timeout(Duration::from_secs(10), s.stop())
        .await
        .expect("shutdown waited on a half-sent request");
}
