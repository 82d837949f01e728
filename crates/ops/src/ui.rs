//! How long operations talk to the person running them; the command line implements it
//! (progress bars on a terminal, nothing in `--json` mode).

use std::sync::Arc;

use geosnap_engine::{NoProgress, Progress};

/// Progress and notes from long operations.
pub trait Ui: Send + Sync {
    /// A progress reporter for one phase (e.g. "snapshot web-1/nightly").
    fn progress(&self, _label: &str) -> Arc<dyn Progress + Send + Sync> {
        Arc::new(NoProgress)
    }

    /// A line worth telling (a region dropped out, a job started).
    fn note(&self, _msg: &str) {}
}

/// Says nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Ui for Silent {}
