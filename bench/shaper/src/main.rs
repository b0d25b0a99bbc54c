//! A TCP proxy that makes a registry look far away: every byte is held for a one-way delay in
//! each direction (so a request/response round trip costs the RTT), and each connection is
//! paced to a throughput bound in each direction (what one long-RTT TCP stream or a
//! per-connection-limited backend gives). Used by bench/shaped.sh inside the registry's
//! network namespace; the total bandwidth cap is the veth link's `tbf` qdisc.
//!
//!   shaper LISTEN UPSTREAM DELAY_MS MBYTES_PER_S_PER_CONNECTION

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

const PIECE: usize = 64 << 10;
/// Pieces queued per direction: bounds the proxy's buffer (and the emulated in-flight data).
const QUEUE: usize = 64;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: shaper LISTEN UPSTREAM DELAY_MS MBYTES_PER_S_PER_CONNECTION");
        std::process::exit(2);
    }
    let listen = args[1].clone();
    let upstream = args[2].clone();
    let delay = Duration::from_micros((args[3].parse::<f64>().expect("DELAY_MS") * 1000.0) as u64);
    let rate = args[4].parse::<f64>().expect("MBYTES_PER_S") * 1e6;
    let listener = TcpListener::bind(&listen).await.expect("bind");
    eprintln!("shaper {listen} -> {upstream}: {delay:?} each way, {:.0} MB/s per connection", rate / 1e6);
    loop {
        let (client, _) = listener.accept().await.expect("accept");
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(&upstream).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::join!(pump(cr, sw, delay, rate), pump(sr, cw, delay, rate));
        });
    }
}

/// Copies one direction: each piece is released `delay` after it arrived, and no faster
/// than `rate` bytes per second.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
    rate: f64,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(QUEUE);
    let reader = async move {
        loop {
            let mut piece = vec![0u8; PIECE];
            match from.read(&mut piece).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    piece.truncate(n);
                    if tx.send((Instant::now(), piece)).await.is_err() {
                        break;
                    }
                }
            }
        }
    };
    let writer = async move {
        let mut free_at = Instant::now();
        while let Some((arrived, piece)) = rx.recv().await {
            let release = (arrived + delay).max(free_at);
            tokio::time::sleep_until(release).await;
            if to.write_all(&piece).await.is_err() {
                break;
            }
            free_at = release + Duration::from_secs_f64(piece.len() as f64 / rate);
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}
