//! A caching mirror as a platform team runs one: Debian's nginx, started in the foreground on a
//! free loopback port with `proxy_cache` and its cache lock in front of an origin registry, its
//! config, cache and logs in a tempdir, killed on drop. The cache key ignores the request's
//! Authorization (as a shared pull-through cache's does), so whatever one client fetched with
//! credentials, the next client gets without any: the leak tugboat's origin check closes.
//! The access log records, per request, the Authorization and X-Dragonfly-Registry it carried.
//!
//! With [`Nginx::redirecting`], blob requests are answered with a 307 to a second server in the
//! same nginx (an object store's presigned URL, in effect) that holds its own credentials for
//! the origin and logs what it was sent.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// One request as nginx logged it.
#[derive(Debug, Clone)]
pub struct MirrorRequest {
    pub method: String,
    pub uri: String,
    pub status: u16,
    /// `-` when the request carried none.
    pub authorization: String,
    pub dragonfly_registry: String,
    /// HIT, MISS, ... (`-` when the request was not cached, e.g. a redirect).
    pub cache: String,
}

/// A running nginx.
pub struct Nginx {
    dir: TempDir,
    child: Option<Child>,
    port: u16,
    storage_port: Option<u16>,
}

impl Nginx {
    /// A caching mirror of `origin` (`http://127.0.0.1:5000` or `https://...`).
    pub fn caching(origin: &str) -> Nginx {
        Self::start(origin, None)
    }

    /// A mirror of `origin` whose blob requests are redirected (307) to a storage server that
    /// sends the origin `storage_authorization` itself.
    pub fn redirecting(origin: &str, storage_authorization: &str) -> Nginx {
        Self::start(origin, Some(storage_authorization))
    }

    /// A plain (not caching) front of `origin` that wants HTTP Basic `user:pass` for the
    /// repositories under `/v2/{prefix}/` only, its `/v2/` open: an origin whose API root does
    /// not say which repositories are private.
    #[allow(dead_code)]
    pub fn guarding(origin: &str, user: &str, pass: &str, prefix: &str) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        for sub in ["tmp", "logs"] {
            fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        fs::write(
            dir.path().join("htpasswd"),
            format!("{user}:{{PLAIN}}{pass}\n"),
        )
        .unwrap();
        let port = super::free_port();
        let pass_to = format!("proxy_pass {origin};\nproxy_http_version 1.1;\n");
        let config = format!(
            "{preamble}\
             log_format mirror '$request_method \"$request_uri\" $status \"$http_authorization\" \"$http_x_dragonfly_registry\" -';\n\
             server {{\n\
             listen 127.0.0.1:{port};\n\
             access_log {d}/logs/access.log mirror;\n\
             client_max_body_size 0;\n\
             location /v2/{prefix}/ {{\n\
             auth_basic \"origin\";\n\
             auth_basic_user_file {d}/htpasswd;\n\
             {pass_to}}}\n\
             location /v2/ {{\n{pass_to}}}\n\
             }}\n\
             }}\n",
            preamble = preamble(&d)
        );
        Self::launch(dir, config, port, None)
    }

    fn start(origin: &str, storage_authorization: Option<&str>) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        for sub in ["cache", "tmp", "logs"] {
            fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        let port = super::free_port();
        let storage_port = storage_authorization.map(|_| super::free_port());
        let proxy = format!(
            "proxy_pass {origin};\n\
             proxy_ssl_verify off;\n\
             proxy_http_version 1.1;\n\
             proxy_cache models;\n\
             proxy_cache_lock on;\n\
             proxy_cache_lock_timeout 60s;\n\
             proxy_cache_valid 200 1h;\n\
             proxy_cache_key $uri;\n\
             proxy_cache_methods GET HEAD;\n\
             proxy_ignore_headers Cache-Control Expires Set-Cookie Vary X-Accel-Expires;\n\
             proxy_read_timeout 120s;\n"
        );
        let mirror_locations = match storage_port {
            None => format!("location /v2/ {{\n{proxy}}}\n"),
            Some(storage) => format!(
                "location ~ ^/v2/.+/blobs/sha256: {{\n\
                 return 307 http://127.0.0.1:{storage}$request_uri;\n}}\n\
                 location /v2/ {{\n{proxy}}}\n"
            ),
        };
        let storage_server = match (storage_port, storage_authorization) {
            (Some(storage), Some(authorization)) => format!(
                "server {{\n\
                 listen 127.0.0.1:{storage};\n\
                 access_log {d}/logs/storage.log mirror;\n\
                 location /v2/ {{\n\
                 proxy_set_header Authorization \"{authorization}\";\n{proxy}}}\n}}\n"
            ),
            _ => String::new(),
        };
        let config = format!(
            "{preamble}\
             log_format mirror '$request_method \"$request_uri\" $status \"$http_authorization\" \"$http_x_dragonfly_registry\" $upstream_cache_status';\n\
             proxy_cache_path {d}/cache levels=1:2 keys_zone=models:10m max_size=2g inactive=1h use_temp_path=off;\n\
             server {{\n\
             listen 127.0.0.1:{port};\n\
             access_log {d}/logs/access.log mirror;\n\
             {mirror_locations}\
             }}\n\
             {storage_server}\
             }}\n",
            preamble = preamble(&d)
        );
        Self::launch(dir, config, port, storage_port)
    }

    fn launch(dir: TempDir, config: String, port: u16, storage_port: Option<u16>) -> Nginx {
        let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("nginx is not installed (apt-get install nginx-light; .ci/run does)");
        fs::write(dir.path().join("nginx.conf"), config).unwrap();
        let child = Command::new(nginx)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.path().join("logs/stderr.log")).unwrap())
            .spawn()
            .expect("spawn nginx");
        let mut nginx = Nginx {
            dir,
            child: Some(child),
            port,
            storage_port,
        };
        nginx.wait_listening();
        nginx
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let ports: Vec<u16> = std::iter::once(self.port)
            .chain(self.storage_port)
            .collect();
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("nginx exited with {status}: {}", self.errors());
            }
            if ports
                .iter()
                .all(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok())
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not listen: {}",
                self.errors()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn errors(&self) -> String {
        let read = |name: &str| fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!("{}{}", read("logs/stderr.log"), read("logs/error.log"))
    }

    /// `127.0.0.1:PORT`, the mirror's address.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// What the mirror was asked, in order.
    pub fn requests(&self) -> Vec<MirrorRequest> {
        parse(&self.dir.path().join("logs/access.log"))
    }

    /// What the redirect target (the storage server) was asked.
    pub fn storage_requests(&self) -> Vec<MirrorRequest> {
        parse(&self.dir.path().join("logs/storage.log"))
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.dir.path().join("cache")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The top of every config here, up to the opening of `http {` and its temp paths, all under
/// the server's folder `d`. As root, nginx's workers would run as nobody, who cannot enter the
/// tempdir, so they run as root.
fn preamble(d: &str) -> String {
    let user = if nix::unistd::geteuid().is_root() {
        "user root;\n"
    } else {
        ""
    };
    format!(
        "{user}worker_processes 1;\n\
         error_log {d}/logs/error.log warn;\n\
         pid {d}/nginx.pid;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n\
         client_body_temp_path {d}/tmp/body;\n\
         proxy_temp_path {d}/tmp/proxy;\n\
         fastcgi_temp_path {d}/tmp/fastcgi;\n\
         uwsgi_temp_path {d}/tmp/uwsgi;\n\
         scgi_temp_path {d}/tmp/scgi;\n"
    )
}

/// `METHOD "URI" STATUS "AUTH" "DFREG" CACHE` lines.
fn parse(path: &Path) -> Vec<MirrorRequest> {
    let text = fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (method, rest) = line.split_once(" \"")?;
            let (uri, rest) = rest.split_once("\" ")?;
            let (status, rest) = rest.split_once(" \"")?;
            let (authorization, rest) = rest.split_once("\" \"")?;
            let (dragonfly_registry, cache) = rest.split_once("\" ")?;
            Some(MirrorRequest {
                method: method.to_string(),
                uri: uri.to_string(),
                status: status.parse().ok()?,
                authorization: authorization.to_string(),
                dragonfly_registry: dragonfly_registry.to_string(),
                cache: cache.trim().to_string(),
            })
        })
        .collect()
}
