//! Pause points for tests that must interleave with a pull at an exact moment (a collection
//! between the snapshot's commit and its install). Inert unless `TUGBOAT_PAUSE_AT` names the
//! point: then the process creates `$TUGBOAT_PAUSE_DIR/<point>.reached` and waits (at most a
//! minute) until `$TUGBOAT_PAUSE_DIR/<point>.release` exists.

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Waits here if the environment asks to pause at `point`.
pub async fn point(point: &str) {
    let Some(dir) = armed(point) else {
        return;
    };
    let reached = dir.join(format!("{point}.reached"));
    let release = dir.join(format!("{point}.release"));
    if let Err(e) = std::fs::write(&reached, std::process::id().to_string()) {
        tracing::warn!(path = %reached.display(), error = %e, "cannot mark the pause point; not pausing");
        return;
    }
    tracing::info!(point, "paused until {} exists", release.display());
    let deadline = Instant::now() + Duration::from_secs(60);
    while !release.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn armed(point: &str) -> Option<PathBuf> {
    let at = std::env::var_os("TUGBOAT_PAUSE_AT")?;
    if at.to_str()? != point {
        return None;
    }
    std::env::var_os("TUGBOAT_PAUSE_DIR").map(PathBuf::from)
}
