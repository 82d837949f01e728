//! Retries with exponential backoff for transient store failures; permanent answers
//! (not found, already exists, denied) are returned at once.

use std::future::Future;
use std::time::Duration;

/// How often and how patiently to retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all (1 = no retry).
    pub attempts: u32,
    /// Wait before the first retry; doubles each time.
    pub base: Duration,
    /// Longest single wait.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 6,
            base: Duration::from_millis(10),
            max: Duration::from_millis(500),
        }
    }
}

/// Whether a store error may go away by itself: not a full disk, an exceeded quota or a
/// read-only filesystem, whether reported as an I/O error (a local directory, the
/// simulator) or as an S3 server's HTTP 507 "Insufficient Storage".
pub fn is_transient(e: &object_store::Error) -> bool {
    match e {
        object_store::Error::Generic { .. } => out_of_space(e).is_none(),
        object_store::Error::JoinError { .. } => true,
        _ => false,
    }
}

/// How an HTTP 507 answer's status shows in object_store's errors (before the body, which
/// is the server's and may say anything).
const INSUFFICIENT_STORAGE: &str = "status code: 507 Insufficient Storage";

/// What the store said, if `e` is, or wraps, an I/O error or an HTTP answer that says it has
/// no room left.
pub fn out_of_space(e: &object_store::Error) -> Option<String> {
    match e {
        object_store::Error::Generic { source, .. } => no_room(source.as_ref()),
        _ => None,
    }
}

fn no_room(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    // object_store keeps an HTTP answer's status in a type it does not export; what it
    // shows of it is "... non-2xx status code: 507 Insufficient Storage: <body>".
    if e.to_string().contains(INSUFFICIENT_STORAGE) {
        return Some("the server answered HTTP 507 Insufficient Storage".into());
    }
    if let Some(io) = e.downcast_ref::<std::io::Error>() {
        use std::io::ErrorKind::{QuotaExceeded, ReadOnlyFilesystem, StorageFull};
        // An io::Error made from another error hides it from `source()`.
        if let Some(inner) = io.get_ref()
            && let Some(said) = no_room(inner)
        {
            return Some(said);
        }
        if matches!(io.kind(), StorageFull | QuotaExceeded | ReadOnlyFilesystem) {
            return Some(io.to_string());
        }
    }
    e.source().and_then(no_room)
}

/// Runs `op` until it succeeds, fails permanently, or the attempts are used up.
pub async fn retry<T, F, Fut>(policy: RetryPolicy, mut op: F) -> object_store::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = object_store::Result<T>>,
{
    let mut wait = policy.base;
    let mut attempt = 1;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt < policy.attempts && is_transient(&e) => {
                tracing::debug!(attempt, error = %e, "retrying store call");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(policy.max);
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn transient() -> object_store::Error {
        object_store::Error::Generic {
            store: "t",
            source: "flaky".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_errors_then_gives_up() {
        let calls = AtomicU32::new(0);
        let r: object_store::Result<()> = retry(RetryPolicy::default(), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(transient())
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 6);

        calls.store(0, Ordering::SeqCst);
        let r = retry(RetryPolicy::default(), || async {
            if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(transient())
            } else {
                Ok(7)
            }
        })
        .await;
        assert_eq!(r.unwrap(), 7);
    }

    #[tokio::test]
    async fn not_found_is_not_retried() {
        let calls = AtomicU32::new(0);
        let r: object_store::Result<()> = retry(RetryPolicy::default(), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(object_store::Error::NotFound {
                path: "x".into(),
                source: "gone".into(),
            })
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_full_disk_is_not_retried_wherever_its_error_is_wrapped() {
        use std::io::{Error, ErrorKind};
        let full = || Error::new(ErrorKind::StorageFull, "no space left on device");
        let answers: Vec<Box<dyn std::error::Error + Send + Sync>> = vec![
            Box::new(full()),
            Box::new(Error::other(full())),
            Box::new(Error::new(ErrorKind::QuotaExceeded, "quota")),
            Box::new(Error::new(ErrorKind::ReadOnlyFilesystem, "ro")),
            // How object_store shows an S3 server's answer (its error type is private).
            Box::new(Error::other(
                "Error performing PUT http://127.0.0.1:9/b/k in 2ms - Server returned \
                 non-2xx status code: 507 Insufficient Storage: ",
            )),
        ];
        // Another status whose body mentions 507 is still transient.
        assert!(is_transient(&object_store::Error::Generic {
            store: "t",
            source: Box::new(Error::other(
                "Server returned non-2xx status code: 503 Service Unavailable: \
                 upstream said 507 Insufficient Storage",
            )),
        }));
        for answer in answers {
            let shown = answer.to_string();
            let mut answer = Some(answer);
            let calls = AtomicU32::new(0);
            let r: object_store::Result<()> = retry(RetryPolicy::default(), || {
                calls.fetch_add(1, Ordering::SeqCst);
                let source = answer
                    .take()
                    .unwrap_or_else(|| Box::new(Error::other("asked twice")));
                async move { Err(object_store::Error::Generic { store: "t", source }) }
            })
            .await;
            assert!(r.is_err());
            assert_eq!(calls.load(Ordering::SeqCst), 1, "{shown} was retried");
        }
        // Other I/O errors still are.
        assert!(is_transient(&object_store::Error::Generic {
            store: "t",
            source: Box::new(Error::new(ErrorKind::ConnectionReset, "reset")),
        }));
    }
}
