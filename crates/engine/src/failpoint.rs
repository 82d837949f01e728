//! Crash and fault points for the crash-fault tests. Built only with the `failpoints`
//! feature (the test build turns it on); then, with `GEOSNAP_FAILPOINT=<name>` in the
//! environment, the process aborts (as `kill -9` would end it) the first time it reaches
//! that [`hit`] point, and an [`armed`] point fails its operation as the disk would.
//! Without the feature, both compile to nothing.

/// Aborts the process if the failpoint `name` is armed.
#[inline]
pub fn hit(name: &str) {
    if armed(name) {
        eprintln!("geosnap: failpoint {name} reached, aborting");
        std::process::abort();
    }
}

/// Whether the failpoint `name` is armed (never, without the `failpoints` feature).
#[inline]
pub fn armed(name: &str) -> bool {
    #[cfg(feature = "failpoints")]
    {
        use std::sync::OnceLock;
        static ARMED: OnceLock<Option<String>> = OnceLock::new();
        let armed = ARMED.get_or_init(|| std::env::var("GEOSNAP_FAILPOINT").ok());
        armed.as_deref() == Some(name)
    }
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = name;
        false
    }
}
