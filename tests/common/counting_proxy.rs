//! A TCP forwarder on a free loopback port that counts what a client costs a registry: the
//! connections it opens, the HTTP/1.1 requests it sends on them (method and path, read from the
//! request lines), and how many of those carry credentials or ask for a token. Unlike
//! fault_proxy.rs it keeps connections open as the client wants, so connection reuse shows.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request line seen on the way to the registry.
#[derive(Clone, Debug)]
pub struct Request {
    pub connection: usize,
    pub method: String,
    pub path: String,
}

#[derive(Default)]
struct Counts {
    connections: AtomicUsize,
    requests: Mutex<Vec<Request>>,
}

pub struct CountingProxy {
    addr: SocketAddr,
    counts: Arc<Counts>,
}

impl CountingProxy {
    /// Forwards every connection to `upstream` (`127.0.0.1:PORT`).
    pub fn start(upstream: &str) -> CountingProxy {
        let upstream: SocketAddr = upstream.parse().expect("upstream is host:port");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the counting proxy");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let counts = Arc::new(Counts::default());
        let accept_counts = counts.clone();
        // Its own thread and runtime, so it works from sync and async tests alike; it ends
        // with the test process.
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = TcpListener::from_std(listener).unwrap();
                while let Ok((client, _)) = listener.accept().await {
                    let id = accept_counts.connections.fetch_add(1, Ordering::SeqCst);
                    let counts = accept_counts.clone();
                    tokio::spawn(async move {
                        if let Ok(server) = TcpStream::connect(upstream).await {
                            forward(client, server, id, counts).await;
                        }
                    });
                }
            });
        });
        CountingProxy { addr, counts }
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.counts.connections.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<Request> {
        self.counts.requests.lock().unwrap().clone()
    }

    /// Authentication round trips: the `/v2/` challenge probe and token endpoint requests.
    pub fn auth_requests(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.path == "/v2/" || r.path.contains("/token"))
            .count()
    }
}

async fn forward(mut client: TcpStream, mut server: TcpStream, id: usize, counts: Arc<Counts>) {
    let (mut client_read, mut client_write) = client.split();
    let (mut server_read, mut server_write) = server.split();
    let upstream = async {
        let mut buffer = vec![0u8; 64 * 1024];
        let mut pending = String::new();
        loop {
            let n = match client_read.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            pending.push_str(&String::from_utf8_lossy(&buffer[..n]));
            while let Some(end) = pending.find("\r\n") {
                let line: String = pending.drain(..end + 2).collect();
                let mut words = line.split_whitespace();
                if let (Some(method), Some(path), Some(version)) =
                    (words.next(), words.next(), words.next())
                {
                    if version.starts_with("HTTP/1.")
                        && method.chars().all(|c| c.is_ascii_uppercase())
                    {
                        counts.requests.lock().unwrap().push(Request {
                            connection: id,
                            method: method.to_string(),
                            path: path.to_string(),
                        });
                    }
                }
            }
            if server_write.write_all(&buffer[..n]).await.is_err() {
                break;
            }
        }
        let _ = server_write.shutdown().await;
    };
    let downstream = async {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    };
    tokio::join!(upstream, downstream);
}
