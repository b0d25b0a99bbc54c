//! Test harness: a real CNCF distribution registry (`docker-registry`) on loopback,
//! parsing of its access log, and helpers to push artifacts with the real CLI, with
//! oras-py, or by speaking the OCI distribution API directly (for hostile manifests).
//!
//! Nothing here is mocked: every test talks to a registry process it started itself.
#![allow(dead_code)]

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;

/// Media type of the OCI empty descriptor (`{}`), used as config of raw artifacts.
pub const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// Digest of the two bytes `{}`.
pub const EMPTY_DIGEST: &str =
    "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const ARTIFACT_TYPE: &str = "application/vnd.example.model";
pub const TITLE_ANNOTATION: &str = "org.opencontainers.image.title";

const MIB: usize = 1024 * 1024;

// ---------------------------------------------------------------------------------------
// Registry process
// ---------------------------------------------------------------------------------------

/// A `docker-registry serve` process with its own storage, config and log in a tempdir.
pub struct Registry {
    dir: TempDir,
    port: u16,
    child: Option<Child>,
    credentials: Option<(String, String)>,
    /// The token server of a registry started with [`Registry::start_with_token`].
    token_server: Option<Child>,
    /// The CA that signed the registry's TLS certificate ([`Registry::start_tls`]).
    tls_ca: Option<PathBuf>,
}

/// One `GET /v2/<repo>/blobs/<digest>` as recorded in the registry log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobGet {
    pub digest: String,
    pub status: u16,
    pub bytes_written: u64,
}

/// One "response completed" line of the registry log (any method, any path).
#[derive(Debug, Clone)]
pub struct LoggedRequest {
    pub method: String,
    pub uri: String,
    pub status: u16,
    pub bytes_written: u64,
}

impl Registry {
    /// Start an anonymous registry on a free loopback port.
    pub fn start() -> Registry {
        Self::start_inner(None, None)
    }

    /// Start a registry that requires HTTP basic auth (htpasswd, bcrypt) for everything.
    pub fn start_with_htpasswd(user: &str, pass: &str) -> Registry {
        Self::start_inner(Some((user.to_string(), pass.to_string())), None)
    }

    /// Start a registry that requires bearer tokens (the flow Harbor and Docker Hub use) from
    /// a token server (tests/common/token_server.py) that grants `user`/`pass` pull and push.
    pub fn start_with_token(user: &str, pass: &str) -> Registry {
        Self::start_with_token_lifetime(user, pass, 300)
    }

    /// [`Self::start_with_token`] whose token server announces `expires_in` seconds.
    pub fn start_with_token_lifetime(user: &str, pass: &str, expires_in: u64) -> Registry {
        Self::start_inner(Some((user.to_string(), pass.to_string())), Some(expires_in))
    }

    /// Token requests the token server has answered (0 without one).
    pub fn token_requests(&self) -> usize {
        fs::read_to_string(self.dir.path().join("token.log"))
            .map(|log| log.lines().count())
            .unwrap_or(0)
    }

    /// Starts the token server; returns the registry config's `auth:` section.
    fn start_token_server(&mut self, user: &str, pass: &str, expires_in: u64) -> String {
        let dir = self.dir.path();
        let (key, cert) = (dir.join("token-key.pem"), dir.join("token-cert.pem"));
        let out = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=tugboat-test-token-issuer", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("run openssl");
        assert!(out.status.success(), "openssl: {out:?}");
        let port = free_port();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/common/token_server.py");
        let child = Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .arg(&key)
            .arg(&cert)
            .args(["tugboat-test-registry", user, pass])
            .arg(dir.join("token.log"))
            .arg(expires_in.to_string())
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn the token server (python3)");
        self.token_server = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the token server did not start");
            thread::sleep(Duration::from_millis(50));
        }
        fs::remove_file(dir.join("token.log")).ok();
        format!(
            "auth:\n  token:\n    realm: http://127.0.0.1:{port}/token\n    service: tugboat-test-registry\n    issuer: tugboat-test-issuer\n    rootcertbundle: {}\n",
            cert.display()
        )
    }

    /// Start an anonymous registry serving HTTPS on a free loopback port, with a certificate
    /// for 127.0.0.1 signed by a fresh CA ([`Registry::tls_ca`]; `openssl` makes both).
    #[allow(dead_code)]
    pub fn start_tls() -> Registry {
        Self::start_with(None, None, true)
    }

    /// The PEM file of the CA that signed this registry's certificate (TLS registries only).
    #[allow(dead_code)]
    pub fn tls_ca(&self) -> &Path {
        self.tls_ca.as_deref().expect("not a TLS registry")
    }

    fn start_inner(credentials: Option<(String, String)>, token: Option<u64>) -> Registry {
        Self::start_with(credentials, token, false)
    }

    fn start_with(
        credentials: Option<(String, String)>,
        token: Option<u64>,
        tls: bool,
    ) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("tugboat-registry-")
            .tempdir()
            .expect("create registry tempdir");
        let port = free_port();
        let root = dir.path().join("storage");
        fs::create_dir_all(&root).unwrap();

        let mut registry = Registry {
            dir,
            port,
            child: None,
            credentials: credentials.clone(),
            token_server: None,
            tls_ca: None,
        };
        let dir = &registry.dir;
        let mut auth = String::new();
        if let (Some(expires_in), Some((user, pass))) = (token, &credentials) {
            auth = registry.start_token_server(user, pass, expires_in);
        } else if let Some((user, pass)) = &credentials {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, pass])
                .output()
                .expect("run htpasswd (apt-get install apache2-utils)");
            assert!(out.status.success(), "htpasswd failed: {out:?}");
            let htpasswd = dir.path().join("htpasswd");
            fs::write(&htpasswd, &out.stdout).unwrap();
            auth = format!(
                "auth:\n  htpasswd:\n    realm: tugboat-test\n    path: {}\n",
                htpasswd.display()
            );
        }
        let mut tls_config = String::new();
        if tls {
            let (ca, cert, key) = make_tls_certificate(registry.dir.path());
            tls_config = format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            );
            registry.tls_ca = Some(ca);
        }
        // No `storage.cache` section: the registry stats the blob file on every request,
        // so tests that corrupt or truncate stored blobs see their change served.
        let config = format!(
            "version: 0.1\n\
             log:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: tugboat-test-secret\n\
             {tls_config}{auth}",
            root = root.display(),
        );
        fs::write(registry.dir.path().join("config.yml"), config).unwrap();
        registry.spawn();
        registry
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "registry already running");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn docker-registry (apt-get install docker-registry)");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let agent = agent(Duration::from_secs(1));
        let url = format!("http://{}/v2/", self.host());
        loop {
            match agent.get(&url).call() {
                Ok(_) | Err(ureq::Error::Status(401, _)) => return,
                // plain HTTP to a TLS listener: it answers 400, so it is up
                Err(ureq::Error::Status(400, _)) if self.tls_ca.is_some() => return,
                Err(_) => {}
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "docker-registry exited with {status} during startup; log:\n{}",
                        self.log()
                    );
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "docker-registry did not answer {url} within 10 s; log:\n{}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT/<repo_and_tag>`
    pub fn reference(&self, repo_and_tag: &str) -> String {
        format!("{}/{}", self.host(), repo_and_tag)
    }

    /// The (user, password) this registry was started with, if any.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// Kill the registry process (storage and log are kept).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn stop_token_server(&mut self) {
        if let Some(mut child) = self.token_server.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start again on the same port with the same storage; the log is appended to.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn storage_root(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Where the registry keeps the bytes of a blob; tests corrupt or truncate this file.
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.storage_root()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Every "response completed" (or "response completed with error") line, in order.
    /// The registry logs a request just after answering it, so a client can finish before
    /// its last line is written: wait for the log to stop growing first.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.settle_log();
        parse_requests(&self.log())
    }

    /// Wait until the log has not grown for 200 ms (at most 5 s).
    fn settle_log(&self) {
        let len = || fs::metadata(self.log_path()).map(|m| m.len()).unwrap_or(0);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut last = len();
        let mut quiet_since = Instant::now();
        while Instant::now() < deadline {
            thread::sleep(Duration::from_millis(25));
            let now = len();
            if now != last {
                last = now;
                quiet_since = Instant::now();
            } else if quiet_since.elapsed() >= Duration::from_millis(200) {
                return;
            }
        }
    }

    /// Number of requests the registry has answered so far.
    pub fn request_count(&self) -> usize {
        self.requests().len()
    }

    /// A position in the request log; pass it to the `*_since` helpers.
    pub fn mark(&self) -> usize {
        self.request_count()
    }

    pub fn requests_since(&self, mark: usize) -> Vec<LoggedRequest> {
        self.requests().into_iter().skip(mark).collect()
    }

    /// Every blob GET the registry answered (any status).
    pub fn blob_gets(&self) -> Vec<BlobGet> {
        self.blob_gets_since(0)
    }

    pub fn blob_gets_since(&self, mark: usize) -> Vec<BlobGet> {
        self.requests_since(mark)
            .iter()
            .filter_map(as_blob_get)
            .collect()
    }

    /// Blob GETs that actually served content (200 or 206).
    pub fn blob_downloads_since(&self, mark: usize, digest: &str) -> Vec<BlobGet> {
        self.blob_gets_since(mark)
            .into_iter()
            .filter(|g| g.digest == digest && (g.status == 200 || g.status == 206))
            .collect()
    }

    /// Number of GETs of `digest` that served content (200/206).
    pub fn blob_get_count(&self, digest: &str) -> usize {
        self.blob_downloads_since(0, digest).len()
    }

    /// Total body bytes the registry wrote for `digest` (200/206 responses).
    pub fn blob_bytes_written(&self, digest: &str) -> u64 {
        self.blob_bytes_written_since(0, digest)
    }

    pub fn blob_bytes_written_since(&self, mark: usize, digest: &str) -> u64 {
        self.blob_downloads_since(mark, digest)
            .iter()
            .map(|g| g.bytes_written)
            .sum()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
        self.stop_token_server();
    }
}

/// Says that a test cannot run here and why. Where `CI` is set (as `.ci/run` sets it) a test
/// that cannot run fails instead: CI must never report a skipped test as passed.
pub fn skip(reason: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("cannot run with CI set: {reason}");
    }
    eprintln!("SKIP: {reason}");
}

/// Bind 127.0.0.1:0, note the port, release it.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().unwrap().port()
}

fn as_blob_get(r: &LoggedRequest) -> Option<BlobGet> {
    if r.method != "GET" {
        return None;
    }
    let path = r.uri.split('?').next().unwrap_or("");
    let (_, digest) = path.strip_prefix("/v2/")?.rsplit_once("/blobs/")?;
    if !digest.starts_with("sha256:") {
        return None;
    }
    Some(BlobGet {
        digest: digest.to_string(),
        status: r.status,
        bytes_written: r.bytes_written,
    })
}

/// Parse distribution's logrus text lines, e.g.
/// `time=".." level=info msg="response completed" http.request.method=GET
///  http.request.uri="/v2/m/blobs/sha256:.." http.response.status=200 http.response.written=6`
pub fn parse_requests(log: &str) -> Vec<LoggedRequest> {
    log.lines()
        .filter(|l| l.contains("msg=\"response completed"))
        .filter_map(|line| {
            let fields = parse_logfmt(line);
            let get = |k: &str| {
                fields
                    .iter()
                    .find(|(key, _)| key == k)
                    .map(|(_, v)| v.clone())
            };
            Some(LoggedRequest {
                method: get("http.request.method")?,
                uri: get("http.request.uri")?,
                status: get("http.response.status")?.parse().ok()?,
                bytes_written: get("http.response.written")
                    .and_then(|w| w.parse().ok())
                    .unwrap_or(0),
            })
        })
        .collect()
}

/// Split a logfmt line into key/value pairs; values may be double-quoted with `\` escapes.
fn parse_logfmt(line: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ' ' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() && chars.peek().is_none() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'=') {
            chars.next();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some(n) = chars.next() {
                                value.push(n);
                            }
                        }
                        '"' => break,
                        c => value.push(c),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ' ' {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
            }
        }
        out.push((key, value));
    }
    out
}

// ---------------------------------------------------------------------------------------
// Running the CLI
// ---------------------------------------------------------------------------------------

/// `tugboat` binary under test, with an environment that cannot leak the host's config.
pub fn tugboat() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tugboat"));
    for var in [
        "DOCKER_CONFIG",
        "REGISTRY_AUTH_FILE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        // KitOps' init-container contract (`tugboat` without arguments reads them)
        "MODELKIT_REF",
        "UNPACK_PATH",
        "UNPACK_FILTER",
        "EXTRA_FLAGS",
        "COSIGN_KEY",
        "COSIGN_CERT_IDENTITY",
        "COSIGN_CERT_OIDC_ISSUER",
        // node labels: a test run inside a pod must not label the node it runs on
        "NODE_NAME",
        "KUBERNETES_SERVICE_HOST",
        "KUBERNETES_SERVICE_PORT",
    ] {
        cmd.env_remove(var);
    }
    // Every flag also reads a TUGBOAT_* variable: none may leak in from the test's caller.
    for (var, _) in std::env::vars_os() {
        if var.to_string_lossy().starts_with("TUGBOAT_") {
            cmd.env_remove(var);
        }
    }
    cmd.env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    cmd
}

/// Finished process: exit code and captured output.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Panic with the full output unless the command exited 0.
    pub fn assert_ok(&self, what: &str) -> &Run {
        assert!(
            self.status.success(),
            "{what}: expected success, got {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    /// Panic with the full output unless the command exited with `code`.
    pub fn assert_code(&self, code: i32, what: &str) -> &Run {
        assert_eq!(
            self.status.code(),
            Some(code),
            "{what}: expected exit code {code}, got {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "stdout is not one JSON object ({e}):\n--- stdout\n{}\n--- stderr\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

/// Run to completion with a deadline; on timeout the process is killed and the test fails.
pub fn run(cmd: &mut Command, timeout: Duration) -> Run {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {desc}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let err_t = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stdout = out_t.join().unwrap();
            let stderr = err_t.join().unwrap();
            panic!(
                "timed out after {timeout:?}: {desc}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
            );
        }
        thread::sleep(Duration::from_millis(20));
    };
    Run {
        status,
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    }
}

/// Default deadline for one CLI invocation.
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// `tugboat pull REF --dest DEST [--cache CACHE] --plain-http EXTRA...`
pub fn pull_cmd(reference: &str, dest: &Path, cache: Option<&Path>, extra: &[&str]) -> Command {
    let mut cmd = tugboat();
    cmd.arg("pull").arg(reference).arg("--dest").arg(dest);
    if let Some(cache) = cache {
        cmd.arg("--cache").arg(cache);
    }
    cmd.arg("--plain-http").args(extra);
    cmd
}

pub fn pull(reference: &str, dest: &Path, cache: Option<&Path>, extra: &[&str]) -> Run {
    run(&mut pull_cmd(reference, dest, cache, extra), TIMEOUT)
}

/// Runs `cmd` (output discarded) and SIGKILLs it as soon as `ready` yields, polling every
/// 2 ms for up to 120 s. Returns what `ready` yielded, or `None` when the command finished
/// (successfully) before that; `waiting_for` and `cache` explain a timeout.
#[allow(dead_code)]
pub fn kill_when<T>(
    cmd: &mut Command,
    waiting_for: &str,
    cache: &Path,
    mut ready: impl FnMut() -> Option<T>,
) -> Option<T> {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn tugboat");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(value) = ready() {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            )
            .expect("SIGKILL tugboat");
            child.wait().unwrap();
            return Some(value);
        }
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "the command failed on its own: {status}");
            return None;
        }
        assert!(
            Instant::now() < deadline,
            "no {waiting_for} in 120 s; ingest has {:?}",
            walk(&cache.join("ingest"))
        );
        thread::sleep(Duration::from_millis(2));
    }
}

/// `tugboat push DIR REF --plain-http EXTRA...`
pub fn push(dir: &Path, reference: &str, extra: &[&str]) -> Run {
    let mut cmd = tugboat();
    cmd.arg("push")
        .arg(dir)
        .arg(reference)
        .arg("--plain-http")
        .args(extra);
    run(&mut cmd, Duration::from_secs(300))
}

// ---------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------

/// `sha256:<hex>` of a file, streamed.
pub fn sha256_file(path: &Path) -> String {
    let mut file =
        File::open(path).unwrap_or_else(|e| panic!("open {} for hashing: {e}", path.display()));
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; MIB];
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

pub fn sha256_bytes(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Deterministic pseudo-random bytes (xorshift64*), for small in-memory blobs.
pub fn random_bytes(size: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(size + 8);
    while out.len() < size {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(size);
    out
}

/// Write `size` deterministic pseudo-random bytes. Fast even in a debug build: a random
/// pool is generated once, and each 1 MiB chunk is a different window of it, stamped with
/// the chunk number and seed, so no two chunks are equal and any misplaced range shows.
pub fn write_random_file(path: &Path, size: u64, seed: u64) {
    const WINDOWS: usize = 4096;
    let pool = random_bytes(MIB + WINDOWS * 16, seed);
    let mut file = File::create(path).unwrap();
    let mut chunk = vec![0u8; MIB];
    let mut written = 0u64;
    let mut index = 0u64;
    while written < size {
        let start = ((index.wrapping_mul(2_654_435_761)) as usize % WINDOWS) * 16;
        chunk.copy_from_slice(&pool[start..start + MIB]);
        chunk[..8].copy_from_slice(&index.to_le_bytes());
        chunk[8..16].copy_from_slice(&seed.to_le_bytes());
        let n = (size - written).min(MIB as u64) as usize;
        file.write_all(&chunk[..n]).unwrap();
        written += n as u64;
        index += 1;
    }
    file.sync_all().unwrap();
}

/// Names of the entries directly in `dir`, sorted, ignoring tugboat's hidden `.tugboat/`.
/// A missing directory lists as empty.
pub fn list_dir(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != ".tugboat")
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

/// Every path below `dir` (files, dirs, links), relative, sorted.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    fn rec(base: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for entry in rd {
            let entry = entry.unwrap();
            let path = entry.path();
            out.push(path.strip_prefix(base).unwrap().to_path_buf());
            if entry.file_type().unwrap().is_dir() {
                rec(base, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    rec(dir, dir, &mut out);
    out.sort();
    out
}

/// Assert every `(name, original)` exists as `dest/name` with identical bytes.
pub fn assert_same_files(dest: &Path, originals: &[(&str, &Path)]) {
    for (name, original) in originals {
        let pulled = dest.join(name);
        assert!(
            pulled.is_file(),
            "{} missing after pull; dest has {:?}",
            pulled.display(),
            walk(dest)
        );
        assert_eq!(
            fs::metadata(&pulled).unwrap().len(),
            fs::metadata(original).unwrap().len(),
            "size of {name}"
        );
        assert_eq!(
            sha256_file(&pulled),
            sha256_file(original),
            "content of {name} differs from what was pushed"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Pushing without the CLI under test
// ---------------------------------------------------------------------------------------

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(2))
        .timeout(timeout)
        .build()
}

fn basic_auth(credentials: Option<(&str, &str)>) -> Option<String> {
    credentials.map(|(u, p)| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        )
    })
}

fn with_auth(req: ureq::Request, auth: &Option<String>) -> ureq::Request {
    match auth {
        Some(a) => req.set("Authorization", a),
        None => req,
    }
}

fn describe(e: ureq::Error) -> String {
    match e {
        ureq::Error::Status(code, resp) => {
            format!("HTTP {code}: {}", resp.into_string().unwrap_or_default())
        }
        other => other.to_string(),
    }
}

/// Monolithic upload: POST /v2/<repo>/blobs/uploads/ then PUT <Location>&digest=..
fn upload_blob(
    host: &str,
    repo: &str,
    auth: &Option<String>,
    digest: &str,
    size: u64,
    body: impl Read,
) {
    let agent = agent(Duration::from_secs(600));
    let post = format!("http://{host}/v2/{repo}/blobs/uploads/");
    let resp = with_auth(agent.post(&post), auth)
        .call()
        .unwrap_or_else(|e| panic!("POST {post}: {}", describe(e)));
    let location = resp
        .header("Location")
        .expect("upload response has a Location")
        .to_string();
    let mut url = if location.starts_with('/') {
        format!("http://{host}{location}")
    } else {
        location
    };
    url.push(if url.contains('?') { '&' } else { '?' });
    url.push_str("digest=");
    url.push_str(&digest.replace(':', "%3A"));
    with_auth(agent.put(&url), auth)
        .set("Content-Type", "application/octet-stream")
        .set("Content-Length", &size.to_string())
        .send(body)
        .unwrap_or_else(|e| panic!("PUT blob {digest}: {}", describe(e)));
}

fn put_manifest(host: &str, repo: &str, tag: &str, auth: &Option<String>, manifest: &[u8]) {
    let url = format!("http://{host}/v2/{repo}/manifests/{tag}");
    with_auth(agent(Duration::from_secs(60)).put(&url), auth)
        .set("Content-Type", MANIFEST_MEDIA_TYPE)
        .send_bytes(manifest)
        .unwrap_or_else(|e| panic!("PUT {url}: {}", describe(e)));
}

fn manifest_json(
    layers: &[(Option<&str>, String, u64)],
    manifest_annotations: &[(&str, &str)],
) -> Vec<u8> {
    let layers: Vec<serde_json::Value> = layers
        .iter()
        .map(|(title, digest, size)| {
            let mut layer = serde_json::json!({
                "mediaType": "application/octet-stream",
                "digest": digest,
                "size": size,
            });
            if let Some(title) = title {
                layer["annotations"] = serde_json::json!({ TITLE_ANNOTATION: title });
            }
            layer
        })
        .collect();
    let mut manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "artifactType": ARTIFACT_TYPE,
        "config": {
            "mediaType": EMPTY_MEDIA_TYPE,
            "digest": EMPTY_DIGEST,
            "size": 2,
            "data": "e30=",
        },
        "layers": layers,
    });
    if !manifest_annotations.is_empty() {
        let map: serde_json::Map<String, serde_json::Value> = manifest_annotations
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
            .collect();
        manifest["annotations"] = serde_json::Value::Object(map);
    }
    serde_json::to_vec_pretty(&manifest).unwrap()
}

/// Push an artifact by speaking the distribution API directly: one
/// `application/octet-stream` layer per `(title, bytes)`, the empty config, artifactType
/// `application/vnd.example.model`. Titles are used verbatim (hostile ones included).
/// Returns the manifest digest.
pub fn push_raw_artifact(
    host: &str,
    repo: &str,
    tag: &str,
    layers: &[(Option<&str>, Vec<u8>)],
    manifest_annotations: &[(&str, &str)],
) -> String {
    push_raw_artifact_auth(host, None, repo, tag, layers, manifest_annotations)
}

pub fn push_raw_artifact_auth(
    host: &str,
    credentials: Option<(&str, &str)>,
    repo: &str,
    tag: &str,
    layers: &[(Option<&str>, Vec<u8>)],
    manifest_annotations: &[(&str, &str)],
) -> String {
    let auth = basic_auth(credentials);
    upload_blob(host, repo, &auth, EMPTY_DIGEST, 2, &b"{}"[..]);
    let mut descriptors = Vec::new();
    for (title, bytes) in layers {
        let digest = sha256_bytes(bytes);
        upload_blob(host, repo, &auth, &digest, bytes.len() as u64, &bytes[..]);
        descriptors.push((*title, digest, bytes.len() as u64));
    }
    let manifest = manifest_json(&descriptors, manifest_annotations);
    put_manifest(host, repo, tag, &auth, &manifest);
    sha256_bytes(&manifest)
}

/// Like [`push_raw_artifact`] for files on disk (streamed, so any size works); each
/// file's basename is its title. Returns the manifest digest.
pub fn push_raw_files(host: &str, repo: &str, tag: &str, files: &[&Path]) -> String {
    let auth = None;
    upload_blob(host, repo, &auth, EMPTY_DIGEST, 2, &b"{}"[..]);
    let mut descriptors = Vec::new();
    for path in files {
        let digest = sha256_file(path);
        let size = fs::metadata(path).unwrap().len();
        upload_blob(host, repo, &auth, &digest, size, File::open(path).unwrap());
        let title = path.file_name().unwrap().to_str().unwrap();
        descriptors.push((Some(title), digest, size));
    }
    let manifest = manifest_json(&descriptors, &[]);
    put_manifest(host, repo, tag, &auth, &manifest);
    sha256_bytes(&manifest)
}

/// GET a manifest as raw JSON (for checking what `tugboat push` wrote).
pub fn get_manifest(
    host: &str,
    credentials: Option<(&str, &str)>,
    repo: &str,
    reference: &str,
) -> (String, serde_json::Value) {
    let url = format!("http://{host}/v2/{repo}/manifests/{reference}");
    let resp = with_auth(
        agent(Duration::from_secs(30)).get(&url),
        &basic_auth(credentials),
    )
    .set(
        "Accept",
        "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json",
    )
    .call()
    .unwrap_or_else(|e| panic!("GET {url}: {}", describe(e)));
    let mut body = Vec::new();
    resp.into_reader().read_to_end(&mut body).unwrap();
    (
        sha256_bytes(&body),
        serde_json::from_slice(&body).expect("manifest is JSON"),
    )
}

/// The `(title, digest, size)` of each layer of a manifest.
pub fn manifest_layers(manifest: &serde_json::Value) -> Vec<(String, String, u64)> {
    manifest["layers"]
        .as_array()
        .expect("manifest has layers")
        .iter()
        .map(|l| {
            (
                l["annotations"][TITLE_ANNOTATION]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                l["digest"].as_str().unwrap().to_string(),
                l["size"].as_u64().unwrap(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// oras-py (pip install oras): an independent client, for interoperability
// ---------------------------------------------------------------------------------------

const ORAS_PUSH: &str = r#"
import sys, oras.client
client = oras.client.OrasClient(insecure=True)
resp = client.push(files=sys.argv[2:], target=sys.argv[1])
resp.raise_for_status()
"#;

const ORAS_PULL: &str = r#"
import sys, oras.client
client = oras.client.OrasClient(insecure=True)
print(client.pull(target=sys.argv[1], outdir=sys.argv[2]))
"#;

/// Push files with oras-py over plain http. All files must share one directory: oras-py
/// runs there with relative names, so each layer's title is the file's basename.
pub fn oras_push(host: &str, repo_tag: &str, files: &[PathBuf]) {
    let dir = files[0].parent().unwrap();
    let mut cmd = Command::new("python3");
    cmd.arg("-c")
        .arg(ORAS_PUSH)
        .arg(format!("{host}/{repo_tag}"))
        .current_dir(dir);
    for f in files {
        assert_eq!(
            f.parent().unwrap(),
            dir,
            "oras_push: files must share a dir"
        );
        cmd.arg(f.file_name().unwrap());
    }
    let out = run(&mut cmd, Duration::from_secs(300));
    assert!(
        out.status.success(),
        "oras-py push failed (pip install oras):\n{}\n{}",
        out.stdout,
        out.stderr
    );
}

/// Pull with oras-py into `outdir`.
pub fn oras_pull(host: &str, repo_tag: &str, outdir: &Path) {
    let mut cmd = Command::new("python3");
    cmd.arg("-c")
        .arg(ORAS_PULL)
        .arg(format!("{host}/{repo_tag}"))
        .arg(outdir);
    let out = run(&mut cmd, Duration::from_secs(300));
    assert!(
        out.status.success(),
        "oras-py pull failed:\n{}\n{}",
        out.stdout,
        out.stderr
    );
}

/// Push with the real modelpack-client CLI (pip install modelpack-client) over plain http:
/// `layers` are `(path, media type)`; a folder given a tar media type becomes one tar layer
/// whose entries sit under the folder's name. Returns the manifest digest.
#[allow(dead_code)]
pub fn modelpack_push(
    host: &str,
    repo_tag: &str,
    config: &Path,
    layers: &[(&Path, &str)],
) -> String {
    let mut cmd = Command::new("modelpack");
    cmd.arg("--insecure")
        .arg("push")
        .arg(format!("{host}/{repo_tag}"))
        .arg("--config")
        .arg(config);
    for (path, media_type) in layers {
        cmd.arg("--layer")
            .arg(format!("{}:{media_type}", path.display()));
    }
    let out = run(&mut cmd, Duration::from_secs(600));
    assert!(
        out.status.success(),
        "modelpack push failed (pip install modelpack-client):\n{}\n{}",
        out.stdout,
        out.stderr
    );
    let report: serde_json::Value =
        serde_json::from_str(out.stdout.trim()).expect("modelpack push prints JSON");
    report["digest"].as_str().unwrap().to_string()
}

/// A docker config.json with `auths.<host>.auth = base64(user:pass)`.
pub fn docker_config_json(host: &str, user: &str, pass: &str) -> String {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    serde_json::json!({ "auths": { host: { "auth": auth } } }).to_string()
}

/// GET a blob directly (optionally `Range: bytes=START-`); used to check the harness itself.
pub fn get_blob(host: &str, repo: &str, digest: &str, range_start: Option<u64>) -> Vec<u8> {
    let url = format!("http://{host}/v2/{repo}/blobs/{digest}");
    let mut req = agent(Duration::from_secs(60)).get(&url);
    if let Some(start) = range_start {
        req = req.set("Range", &format!("bytes={start}-"));
    }
    let resp = req
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {}", describe(e)));
    let mut body = Vec::new();
    resp.into_reader().read_to_end(&mut body).unwrap();
    body
}

/// A CA and a server certificate for 127.0.0.1 it signed, made with `openssl` in `dir`:
/// returns (CA PEM, certificate PEM, key PEM).
fn make_tls_certificate(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl (apt-get install openssl)");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=tugboat test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.pem",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

/// The error line of a failed command, checked: each clause once.
#[allow(dead_code)]
pub fn error_line(run: &Run, what: &str) -> String {
    assert!(!run.status.success(), "{what} should fail:\n{}", run.stderr);
    assert_ne!(
        run.code(),
        Some(101),
        "{what}: tugboat panicked:\n{}",
        run.stderr
    );
    let line = run
        .stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("{what}: no error line in\n{}", run.stderr))
        .to_string();
    let clauses: Vec<&str> = line.split(": ").collect();
    for (i, clause) in clauses.iter().enumerate() {
        assert!(
            !clauses[..i].contains(clause),
            "{what}: the clause {clause:?} is said twice in {line:?}"
        );
    }
    line
}
