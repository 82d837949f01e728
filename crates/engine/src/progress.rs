//! Progress reporting: the engine calls it, the command line draws it.

/// Receives progress of a snapshot or restore. Implementations must be cheap: `advance`
/// is called once per chunk from worker threads.
pub trait Progress: Sync {
    /// Work of `total` bytes starts.
    fn start(&self, _total: u64) {}
    /// `bytes` more of the image are done.
    fn advance(&self, _bytes: u64) {}
    /// A free-form status line (e.g. each region's state).
    fn message(&self, _msg: &str) {}
    /// The work is over (successfully or not).
    fn finish(&self) {}
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {}
