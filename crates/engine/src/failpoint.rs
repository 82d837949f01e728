//! Crash points for the crash-fault tests. Built only with the `failpoints` feature (the
//! test build turns it on); then, with `GEOSNAP_FAILPOINT=<name>` in the environment, the
//! process aborts (as `kill -9` would end it) the first time it reaches that point.
//! Without the feature, `hit` compiles to nothing.

/// Aborts the process if the failpoint `name` is armed.
#[inline]
pub fn hit(name: &str) {
    #[cfg(feature = "failpoints")]
    {
        use std::sync::OnceLock;
        static ARMED: OnceLock<Option<String>> = OnceLock::new();
        let armed = ARMED.get_or_init(|| std::env::var("GEOSNAP_FAILPOINT").ok());
        if armed.as_deref() == Some(name) {
            eprintln!("geosnap: failpoint {name} reached, aborting");
            std::process::abort();
        }
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}
