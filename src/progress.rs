//! Progress bars (indicatif) on a terminal; nothing otherwise.

use std::io::IsTerminal;
use std::sync::Arc;

use geosnap_engine::Progress;
use geosnap_ops::Ui;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The command line's [`Ui`].
#[derive(Debug, Clone, Copy)]
pub struct Terminal {
    bars: bool,
    notes: bool,
}

impl Terminal {
    /// Bars only on a terminal and never in JSON or quiet mode.
    pub fn new(json: bool, quiet: bool) -> Terminal {
        Terminal {
            bars: !json && !quiet && std::io::stderr().is_terminal(),
            notes: !json && !quiet,
        }
    }
}

struct Bar(ProgressBar);

impl Progress for Bar {
    fn start(&self, total: u64) {
        self.0.set_length(total);
        self.0.reset();
    }

    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }

    fn message(&self, msg: &str) {
        self.0.set_message(msg.to_string());
    }

    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

impl Ui for Terminal {
    fn progress(&self, label: &str) -> Arc<dyn Progress + Send + Sync> {
        if !self.bars {
            return Arc::new(geosnap_engine::NoProgress);
        }
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{prefix} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(label.to_string());
        Arc::new(Bar(bar))
    }

    fn note(&self, msg: &str) {
        if self.notes {
            eprintln!("{msg}");
        }
    }
}

impl geosnap_ops::demo::Story for Terminal {
    fn step(&self, n: usize, title: &str) {
        if self.notes {
            println!("\n[{n}/8] {title}");
        }
    }

    fn line(&self, text: &str) {
        if self.notes {
            println!("      {text}");
        }
    }
}
