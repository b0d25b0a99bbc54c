//! A fault-injecting HTTP/1.1 proxy on a free loopback port, run by the test process in front
//! of the real registry. Each test scripts it with rules ("the first 2 GETs whose path contains
//! `/blobs/sha256:ab..` get a 503 with Retry-After: 1") and reads back what it saw: every
//! request (method, path, Range, Authorization) and the body bytes it sent.
//!
//! One request per connection (`Connection: close` both ways), so a dropped connection drops
//! exactly one response. Without an upstream it is a recording server that answers 404 to
//! anything no rule matches (used as "another host" a redirect points to).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What to do to one response.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Send the headers and the first N body bytes, then close the connection.
    DropAfter(u64),
    /// Wait this long, then answer normally.
    Stall(Duration),
    /// Hold the request until the test calls [`FaultProxy::release`], then answer normally.
    Hold,
    /// Flip the lowest bit of the body byte at this offset.
    Corrupt(u64),
    /// Answer with this status (and `Retry-After: <seconds>`) without asking upstream.
    Status { code: u16, retry_after: Option<u64> },
    /// Announce a Content-Length off by `delta` from the real one; send what fits
    /// (all real bytes when it claims more, the announced count when it claims fewer).
    ContentLengthDelta(i64),
    /// Answer 200 with these bytes (another blob's bytes, a hostile manifest).
    Body {
        bytes: Arc<Vec<u8>>,
        content_type: Option<String>,
    },
    /// Send the body `chunk` bytes at a time with `pause` between chunks.
    Trickle { chunk: usize, pause: Duration },
    /// Answer `307 Temporary Redirect` to this absolute URL.
    Redirect(String),
}

impl Fault {
    pub fn status(code: u16) -> Fault {
        Fault::Status {
            code,
            retry_after: None,
        }
    }

    pub fn body(bytes: Vec<u8>, content_type: Option<&str>) -> Fault {
        Fault::Body {
            bytes: Arc::new(bytes),
            content_type: content_type.map(str::to_string),
        }
    }
}

/// Applies `fault` to requests whose method matches (None: any) and whose path contains
/// `path_contains`; the first `skip` matches pass untouched, the next `times` get the fault.
#[derive(Clone, Debug)]
pub struct Rule {
    pub method: Option<String>,
    pub path_contains: String,
    pub skip: usize,
    pub times: usize,
    pub fault: Fault,
}

impl Rule {
    /// Every matching request, forever.
    pub fn new(method: Option<&str>, path_contains: &str, fault: Fault) -> Rule {
        Rule {
            method: method.map(str::to_string),
            path_contains: path_contains.to_string(),
            skip: 0,
            times: usize::MAX,
            fault,
        }
    }

    pub fn times(mut self, n: usize) -> Rule {
        self.times = n;
        self
    }

    pub fn skip(mut self, n: usize) -> Rule {
        self.skip = n;
        self
    }

    fn matches(&self, method: &str, path: &str) -> bool {
        self.method.as_deref().is_none_or(|m| m == method) && path.contains(&self.path_contains)
    }
}

/// One request as the proxy saw it, with what it answered.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
    /// The fault applied, if any (Debug text).
    pub fault: Option<String>,
    /// Status line code sent (0 if the connection died before).
    pub status: u16,
    /// Body bytes written to the client.
    pub body_bytes: u64,
}

struct State {
    upstream: Option<SocketAddr>,
    rules: Mutex<Vec<Rule>>,
    seen: Mutex<Vec<Seen>>,
    body_bytes: AtomicU64,
    released: AtomicBool,
    /// SIGKILL this pid once `body_bytes` reaches `kill_at` (see `kill_when`).
    kill_pid: AtomicI32,
    kill_at: AtomicU64,
    killed: AtomicBool,
}

pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<State>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FaultProxy {
    /// A proxy forwarding to `upstream` (`127.0.0.1:PORT`).
    pub fn start(upstream: &str) -> FaultProxy {
        Self::start_inner(Some(upstream.parse().expect("upstream is host:port")))
    }

    /// A recording server with no upstream: rules answer, anything else gets 404.
    pub fn recorder() -> FaultProxy {
        Self::start_inner(None)
    }

    fn start_inner(upstream: Option<SocketAddr>) -> FaultProxy {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind the fault proxy");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            upstream,
            rules: Mutex::new(Vec::new()),
            seen: Mutex::new(Vec::new()),
            body_bytes: AtomicU64::new(0),
            released: AtomicBool::new(false),
            kill_pid: AtomicI32::new(0),
            kill_at: AtomicU64::new(u64::MAX),
            killed: AtomicBool::new(false),
        });
        let accept_state = state.clone();
        runtime.spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let state = accept_state.clone();
                tokio::spawn(async move {
                    let _ = serve(client, state).await;
                });
            }
        });
        FaultProxy {
            addr,
            state,
            runtime: Some(runtime),
        }
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `127.0.0.1:PORT/<repo_and_tag>`
    pub fn reference(&self, repo_and_tag: &str) -> String {
        format!("{}/{}", self.host(), repo_and_tag)
    }

    pub fn add(&self, rule: Rule) {
        self.state.rules.lock().unwrap().push(rule);
    }

    /// Forget every rule (requests pass untouched again).
    pub fn clear(&self) {
        self.state.rules.lock().unwrap().clear();
    }

    /// Let requests held by [`Fault::Hold`] go on (and later ones pass at once).
    pub fn release(&self) {
        self.state.released.store(true, Ordering::SeqCst);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Requests seen whose path contains `needle`.
    pub fn seen_matching(&self, needle: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.path.contains(needle))
            .collect()
    }

    /// Body bytes sent to clients so far (every path).
    pub fn body_bytes(&self) -> u64 {
        self.state.body_bytes.load(Ordering::SeqCst)
    }

    /// Reset the request log and the byte counter.
    pub fn reset_counters(&self) {
        self.state.seen.lock().unwrap().clear();
        self.state.body_bytes.store(0, Ordering::SeqCst);
    }

    /// Arm a kill: once the byte counter reaches `threshold`, SIGKILL `pid` before sending
    /// anything more. Call [`Self::reset_counters`] first.
    pub fn kill_when(&self, threshold: u64, pid: i32) {
        self.state.killed.store(false, Ordering::SeqCst);
        self.state.kill_at.store(threshold, Ordering::SeqCst);
        self.state.kill_pid.store(pid, Ordering::SeqCst);
    }

    /// Whether the armed kill fired; disarms it.
    pub fn disarm_kill(&self) -> bool {
        self.state.kill_at.store(u64::MAX, Ordering::SeqCst);
        self.state.kill_pid.store(0, Ordering::SeqCst);
        self.state.killed.swap(false, Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.release();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl State {
    fn pick_fault(&self, method: &str, path: &str) -> Option<Fault> {
        let mut rules = self.rules.lock().unwrap();
        for rule in rules.iter_mut() {
            if !rule.matches(method, path) {
                continue;
            }
            if rule.skip > 0 {
                rule.skip -= 1;
                continue;
            }
            if rule.times == 0 {
                continue;
            }
            if rule.times != usize::MAX {
                rule.times -= 1;
            }
            return Some(rule.fault.clone());
        }
        None
    }

    /// Counts `n` body bytes about to be sent; fires an armed kill at the threshold.
    fn count(&self, n: u64) {
        let total = self.body_bytes.fetch_add(n, Ordering::SeqCst) + n;
        let pid = self.kill_pid.load(Ordering::SeqCst);
        if pid > 0 && total >= self.kill_at.load(Ordering::SeqCst) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            self.killed.store(true, Ordering::SeqCst);
            self.kill_pid.store(0, Ordering::SeqCst);
        }
    }

    /// Bytes that may be sent before the armed kill must fire (u64::MAX when unarmed).
    fn until_kill(&self) -> u64 {
        if self.kill_pid.load(Ordering::SeqCst) <= 0 {
            return u64::MAX;
        }
        self.kill_at
            .load(Ordering::SeqCst)
            .saturating_sub(self.body_bytes.load(Ordering::SeqCst))
    }
}

struct Head {
    first_line: String,
    headers: Vec<(String, String)>,
    /// Bytes read past the blank line.
    rest: Vec<u8>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

async fn read_head(stream: &mut (impl AsyncRead + Unpin)) -> std::io::Result<Option<Head>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&buf[..end]).into_owned();
            let mut lines = text.split("\r\n");
            let first_line = lines.next().unwrap_or_default().to_string();
            let headers = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .collect();
            return Ok(Some(Head {
                first_line,
                headers,
                rest: buf[end + 4..].to_vec(),
            }));
        }
        if buf.len() > 256 * 1024 {
            return Err(std::io::Error::other("header too large"));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        206 => "Partial Content",
        307 => "Temporary Redirect",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

async fn serve(mut client: TcpStream, state: Arc<State>) -> std::io::Result<()> {
    let Some(request) = read_head(&mut client).await? else {
        return Ok(());
    };
    let mut parts = request.first_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let fault = state.pick_fault(&method, &path);
    let index = {
        let mut seen = state.seen.lock().unwrap();
        seen.push(Seen {
            method: method.clone(),
            path: path.clone(),
            range: request.header("range").map(str::to_string),
            authorization: request.header("authorization").map(str::to_string),
            fault: fault.as_ref().map(|f| match f {
                Fault::Body { bytes, .. } => format!("Body({} bytes)", bytes.len()),
                other => format!("{other:?}"),
            }),
            ..Default::default()
        });
        seen.len() - 1
    };
    let record = |status: u16, bytes: u64| {
        let mut seen = state.seen.lock().unwrap();
        if let Some(entry) = seen.get_mut(index) {
            if status != 0 {
                entry.status = status;
            }
            entry.body_bytes += bytes;
        }
    };
    // Request body (uploads): Content-Length only.
    let body_len: usize = request
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = request.rest.clone();
    while body.len() < body_len {
        let mut chunk = vec![0u8; (body_len - body.len()).min(1 << 20)];
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }

    match &fault {
        Some(Fault::Stall(d)) => tokio::time::sleep(*d).await,
        Some(Fault::Hold) => {
            while !state.released.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Some(Fault::Status { code, retry_after }) => {
            let msg =
                format!("{{\"errors\":[{{\"code\":\"FAULT\",\"message\":\"injected {code}\"}}]}}");
            let mut head = format!(
                "HTTP/1.1 {code} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
                reason(*code),
                msg.len()
            );
            if let Some(s) = retry_after {
                head.push_str(&format!("Retry-After: {s}\r\n"));
            }
            head.push_str("\r\n");
            client.write_all(head.as_bytes()).await?;
            client.write_all(msg.as_bytes()).await?;
            record(*code, 0);
            return client.shutdown().await;
        }
        Some(Fault::Redirect(url)) => {
            let head = format!(
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: {url}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            client.write_all(head.as_bytes()).await?;
            record(307, 0);
            return client.shutdown().await;
        }
        Some(Fault::Body {
            bytes,
            content_type,
        }) => {
            let mut head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n",
                bytes.len()
            );
            if let Some(ct) = content_type {
                head.push_str(&format!("Content-Type: {ct}\r\n"));
            }
            head.push_str("\r\n");
            client.write_all(head.as_bytes()).await?;
            record(200, 0);
            if method != "HEAD" {
                send_faulty(&mut client, &state, &bytes[..], &None, &record).await?;
            }
            return client.shutdown().await;
        }
        _ => {}
    }

    let Some(upstream_addr) = state.upstream else {
        let head = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        client.write_all(head.as_bytes()).await?;
        record(404, 0);
        return client.shutdown().await;
    };
    let mut upstream = TcpStream::connect(upstream_addr).await?;
    let mut out = format!("{}\r\n", request.first_line);
    for (k, v) in &request.headers {
        let lower = k.to_ascii_lowercase();
        if lower == "connection" || lower == "keep-alive" || lower == "proxy-connection" {
            continue;
        }
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("Connection: close\r\n\r\n");
    upstream.write_all(out.as_bytes()).await?;
    upstream.write_all(&body).await?;

    let Some(response) = read_head(&mut upstream).await? else {
        return Ok(());
    };
    let status: u16 = response
        .first_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(502);
    let no_body =
        method == "HEAD" || status == 204 || status == 304 || (100..200).contains(&status);
    let chunked = response
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    // The body, read in full when chunked (small error bodies), else streamed.
    let mut full: Option<Vec<u8>> = None;
    let declared: Option<u64> = response
        .header("content-length")
        .and_then(|v| v.parse().ok());
    if !no_body && (chunked || declared.is_none()) {
        let mut raw = response.rest.clone();
        upstream.read_to_end(&mut raw).await?;
        full = Some(if chunked { dechunk(&raw) } else { raw });
    }
    let real_len = match (&full, declared) {
        (Some(b), _) => b.len() as u64,
        (None, Some(n)) => n,
        (None, None) => 0,
    };
    let announced = match &fault {
        Some(Fault::ContentLengthDelta(d)) => (real_len as i64 + d).max(0) as u64,
        _ => real_len,
    };
    let mut head = format!("{}\r\n", response.first_line);
    for (k, v) in &response.headers {
        let lower = k.to_ascii_lowercase();
        if [
            "connection",
            "keep-alive",
            "transfer-encoding",
            "content-length",
        ]
        .contains(&lower.as_str())
        {
            continue;
        }
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {announced}\r\nConnection: close\r\n\r\n"
    ));
    client.write_all(head.as_bytes()).await?;
    record(status, 0);
    if no_body {
        return client.shutdown().await;
    }
    let limit = match &fault {
        Some(Fault::DropAfter(n)) => Some(*n),
        Some(Fault::ContentLengthDelta(_)) => Some(announced.min(real_len)),
        _ => None,
    };
    match full {
        Some(bytes) => {
            let bytes = match limit {
                Some(n) => &bytes[..(n as usize).min(bytes.len())],
                None => &bytes[..],
            };
            send_faulty(&mut client, &state, bytes, &fault, &record).await?;
        }
        None => {
            let mut remaining = real_len.min(limit.unwrap_or(u64::MAX));
            let mut pending = response.rest;
            let mut offset = 0u64;
            let mut buf = vec![0u8; 256 * 1024];
            while remaining > 0 {
                let mut chunk = if pending.is_empty() {
                    let n = upstream.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    buf[..n].to_vec()
                } else {
                    std::mem::take(&mut pending)
                };
                chunk.truncate(remaining.min(chunk.len() as u64) as usize);
                let len = chunk.len() as u64;
                remaining -= len;
                send_chunk(&mut client, &state, chunk, offset, &fault, &record).await?;
                offset += len;
            }
        }
    }
    client.shutdown().await
}

async fn send_faulty(
    client: &mut TcpStream,
    state: &State,
    bytes: &[u8],
    fault: &Option<Fault>,
    record: &impl Fn(u16, u64),
) -> std::io::Result<()> {
    let mut offset = 0u64;
    for piece in bytes.chunks(256 * 1024) {
        send_chunk(client, state, piece.to_vec(), offset, fault, record).await?;
        offset += piece.len() as u64;
    }
    Ok(())
}

/// Writes one piece of body that starts at `offset`, applying Corrupt and Trickle, counting
/// bytes and firing an armed kill exactly at its threshold.
async fn send_chunk(
    client: &mut TcpStream,
    state: &State,
    mut chunk: Vec<u8>,
    offset: u64,
    fault: &Option<Fault>,
    record: &impl Fn(u16, u64),
) -> std::io::Result<()> {
    if let Some(Fault::Corrupt(at)) = fault {
        if *at >= offset && *at < offset + chunk.len() as u64 {
            chunk[(*at - offset) as usize] ^= 0x01;
        }
    }
    let piece = match fault {
        Some(Fault::Trickle { chunk, .. }) => (*chunk).max(1),
        _ => chunk.len().max(1),
    };
    for part in chunk.chunks(piece) {
        let mut part = part;
        while !part.is_empty() {
            let allowed = state.until_kill();
            if allowed == 0 {
                state.count(0);
                // The client is gone (or about to be); stop feeding it.
                return Err(std::io::Error::other("client killed"));
            }
            let n = (part.len() as u64).min(allowed) as usize;
            client.write_all(&part[..n]).await?;
            record(0, n as u64);
            state.count(n as u64);
            part = &part[n..];
        }
        if let Some(Fault::Trickle { pause, .. }) = fault {
            tokio::time::sleep(*pause).await;
        }
    }
    Ok(())
}

fn dechunk(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = raw;
    while let Some(end) = rest.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&rest[..end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("0").trim(), 16)
            .unwrap_or(0);
        rest = &rest[end + 2..];
        if size == 0 || rest.len() < size {
            break;
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[(size + 2).min(rest.len())..];
    }
    out
}

// ---------------------------------------------------------------------------------------
// Checks shared by the fault suites: nothing wrong in blobs/, --dest, or ingest/
// ---------------------------------------------------------------------------------------

/// Every file in `CACHE/blobs/sha256/` hashes to its name, and every `ingest/*.partial` is a
/// prefix of the blob it is named after (when `known` has that blob's bytes).
pub fn assert_cache_sound(cache: &std::path::Path, known: &[Vec<u8>]) {
    let blobs = cache.join("blobs/sha256");
    for entry in std::fs::read_dir(&blobs).into_iter().flatten() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let actual = super::sha256_file(&path);
        assert_eq!(
            actual,
            format!("sha256:{name}"),
            "{} does not hash to its name",
            path.display()
        );
    }
    for entry in std::fs::read_dir(cache.join("ingest"))
        .into_iter()
        .flatten()
    {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let Some(hex) = name.strip_suffix(".partial") else {
            continue;
        };
        let Some(blob) = known
            .iter()
            .find(|b| super::sha256_bytes(b) == format!("sha256:{hex}"))
        else {
            continue;
        };
        let partial = std::fs::read(&path).unwrap();
        assert!(
            partial.len() <= blob.len() && blob[..partial.len()] == partial[..],
            "{} ({} bytes) is not a prefix of its blob",
            path.display(),
            partial.len()
        );
    }
}

/// `dest` holds exactly the model files with the right bytes, or none of them.
pub fn assert_dest_all_or_nothing(dest: &std::path::Path, files: &[(String, Vec<u8>)]) -> bool {
    let present: Vec<&(String, Vec<u8>)> = files
        .iter()
        .filter(|(n, _)| dest.join(n).exists())
        .collect();
    if present.is_empty() {
        assert!(
            super::list_dir(dest).is_empty(),
            "dest holds unexpected entries: {:?}",
            super::walk(dest)
        );
        return false;
    }
    for (name, bytes) in files {
        let got = std::fs::read(dest.join(name))
            .unwrap_or_else(|e| panic!("{name} missing from a partially filled dest: {e}"));
        assert!(got == *bytes, "{name}: wrong bytes in dest");
    }
    true
}
