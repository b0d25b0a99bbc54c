//! What a person watching a pull sees: one bar per blob (bytes, rate, ETA) on a terminal;
//! structured log lines otherwise.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::Instant;

/// Creates bars when stderr is a terminal and bars are wanted.
#[derive(Clone)]
pub struct Progress {
    multi: Option<MultiProgress>,
}

impl Progress {
    /// Bars on a terminal unless `quiet` (e.g. `--json`).
    pub fn for_terminal(quiet: bool) -> Self {
        let multi = (!quiet && std::io::stderr().is_terminal())
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(8)));
        Progress { multi }
    }

    /// No bars at all (daemon, tests).
    pub fn hidden() -> Self {
        Progress { multi: None }
    }

    /// A bar for one blob download that starts at `already` bytes (a resumed partial).
    pub fn blob(&self, label: &str, size: u64, already: u64) -> BlobProgress {
        let bar = self.multi.as_ref().map(|multi| {
            let bar = multi.add(ProgressBar::new(size));
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg:>24!} [{bar:30}] {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec:>12} eta {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_message(label.to_string());
            bar.set_position(already);
            bar
        });
        tracing::info!(blob = label, size, resumed_from = already, "downloading");
        BlobProgress {
            bar,
            label: label.to_string(),
            started: Instant::now(),
            bytes: 0,
        }
    }
}

pub struct BlobProgress {
    bar: Option<ProgressBar>,
    label: String,
    started: Instant,
    bytes: u64,
}

impl BlobProgress {
    pub fn advance(&mut self, bytes: u64) {
        self.bytes += bytes;
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        }
    }

    /// The download restarted from byte 0 (registry ignored Range).
    pub fn reset(&self) {
        if let Some(bar) = &self.bar {
            bar.set_position(0);
        }
    }

    pub fn finish(self) {
        let seconds = self.started.elapsed().as_secs_f64();
        if let Some(bar) = &self.bar {
            bar.finish();
        }
        tracing::info!(
            blob = %self.label,
            bytes = self.bytes,
            seconds = format!("{seconds:.2}"),
            mib_per_s = format!("{:.1}", self.bytes as f64 / 1048576.0 / seconds.max(1e-6)),
            "downloaded"
        );
    }
}
