//! The bearer-token flow Harbor and Docker Hub use, against a stub that speaks only that part
//! of the distribution API: `/v2/` answers 401 with `WWW-Authenticate: Bearer realm=...,
//! service=...`, the realm hands out a token, and the manifest request must carry it. The stub
//! then answers 404, so the pull ends with exit 3 (not found) once authorised.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// One request as the stub saw it: request line and Authorization header.
#[derive(Debug, Clone)]
struct Seen {
    line: String,
    authorization: Option<String>,
}

fn start_stub() -> (u16, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let mut authorization = None;
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                    break;
                }
                if let Some((k, v)) = header.split_once(':') {
                    if k.eq_ignore_ascii_case("authorization") {
                        authorization = Some(v.trim().to_string());
                    }
                }
            }
            let line = line.trim().to_string();
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            log.lock().unwrap().push(Seen {
                line: line.clone(),
                authorization: authorization.clone(),
            });
            let bearer_ok = authorization.as_deref() == Some("Bearer tok-123");
            let (status, extra, body) = if path.starts_with("/token") {
                (
                    "200 OK",
                    String::new(),
                    r#"{"token":"tok-123"}"#.to_string(),
                )
            } else if !bearer_ok {
                (
                    "401 Unauthorized",
                    format!(
                        "WWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"stub-registry\"\r\n"
                    ),
                    r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#.to_string(),
                )
            } else if path == "/v2/" {
                ("200 OK", String::new(), "{}".to_string())
            } else {
                (
                    "404 Not Found",
                    String::new(),
                    r#"{"errors":[{"code":"MANIFEST_UNKNOWN"}]}"#.to_string(),
                )
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (port, seen)
}

#[test]
fn a_bearer_token_from_the_realm_authorises_the_request() {
    let (port, seen) = start_stub();
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("config.json");
    let host = format!("127.0.0.1:{port}");
    std::fs::write(&config, docker_config_json(&host, "robot", "s3cret")).unwrap();
    let reference = format!("{host}/models/private:v1");
    let config_arg = config.display().to_string();
    let run = pull(
        &reference,
        &work.path().join("dest"),
        None,
        &["--docker-config", &config_arg, "--retries", "1"],
    );
    run.assert_code(3, "a manifest the authorised request does not find");

    let seen = seen.lock().unwrap().clone();
    let token = seen
        .iter()
        .find(|s| s.line.starts_with("GET /token"))
        .unwrap_or_else(|| panic!("no token request: {seen:?}"));
    assert!(
        token
            .line
            .contains("scope=repository%3Amodels%2Fprivate%3Apull")
            && token.line.contains("service=stub-registry"),
        "{token:?}"
    );
    use base64::Engine as _;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("robot:s3cret")
    );
    assert_eq!(token.authorization.as_deref(), Some(basic.as_str()));
    let manifest = seen
        .iter()
        .find(|s| s.line.contains("/manifests/v1"))
        .unwrap_or_else(|| panic!("no manifest request: {seen:?}"));
    assert_eq!(
        manifest.authorization.as_deref(),
        Some("Bearer tok-123"),
        "{seen:?}"
    );
    // The credentials went to the realm only, never to the registry's own endpoints.
    assert!(seen
        .iter()
        .filter(|s| !s.line.starts_with("GET /token"))
        .all(|s| s.authorization.as_deref() != Some(basic.as_str())));
}
