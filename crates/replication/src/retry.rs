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
/// read-only filesystem, whichever store reports it.
pub fn is_transient(e: &object_store::Error) -> bool {
    match e {
        object_store::Error::Generic { source, .. } => !is_out_of_space(source.as_ref()),
        object_store::Error::JoinError { .. } => true,
        _ => false,
    }
}

/// Whether `e`, or an error it wraps, is an I/O error that no retry can fix soon.
fn is_out_of_space(e: &(dyn std::error::Error + 'static)) -> bool {
    if let Some(io) = e.downcast_ref::<std::io::Error>() {
        use std::io::ErrorKind::{QuotaExceeded, ReadOnlyFilesystem, StorageFull};
        if matches!(io.kind(), StorageFull | QuotaExceeded | ReadOnlyFilesystem) {
            return true;
        }
        // An io::Error made from another error hides it from `source()`.
        if let Some(inner) = io.get_ref()
            && is_out_of_space(inner)
        {
            return true;
        }
    }
    e.source().is_some_and(is_out_of_space)
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
        ];
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
