//! Regions on S3-compatible object storage (OpenStack Swift's S3 API, Ceph RGW, MinIO,
//! AWS S3): an `s3://BUCKET[/PREFIX]` URL plus the region's `[region.options]` table,
//! checked once at start-up and built into object_store's `AmazonS3`.
//!
//! Two rules shape this module:
//! - **credentials come from the configuration only**: the client never looks at the
//!   environment's `AWS_*` variables or a cloud's instance-metadata service; a region
//!   without `access_key_id` and a secret is a configuration error naming the region;
//! - **every wait is bounded**: connect and request timeouts and the client's own retries
//!   are small and configurable, so that an unreachable endpoint fails in seconds even
//!   though [`crate::retry`] retries transient failures on top.
//!
//! geosnap never uses conditional puts (`PutMode::Create`/`Update`): Swift answers 501 to
//! `If-None-Match`/`If-Match`. `conditional_put` defaults to `disabled`; see
//! `docs/deploy.md` for what the write order and markers do instead.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AwsAuthorizer, AwsCredential, S3ConditionalPut};
use object_store::client::{HttpConnector, HttpErrorKind, ReqwestConnector};
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, RetryConfig};
use url::Url;

use crate::{Error, Result};

/// Option keys a region's `[region.options]` table may hold for an `s3://` URL.
pub const OPTION_KEYS: [&str; 11] = [
    "endpoint",
    "region",
    "access_key_id",
    "secret_access_key",
    "secret_access_key_env",
    "virtual_hosted_style",
    "conditional_put",
    "connect_timeout_ms",
    "request_timeout_ms",
    "max_retries",
    "unsigned_payload",
];

/// Default time allowed to open a connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);
/// Default time allowed for one whole request (a chunk is at most 16 MiB).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Default retries of one request inside the client (geosnap's own retry comes on top).
pub const DEFAULT_MAX_RETRIES: usize = 1;

/// Where an S3 store lives, for messages: endpoint and bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Location {
    /// Endpoint URL as configured (AWS's regional endpoint when none is).
    pub endpoint: String,
    /// Bucket name.
    pub bucket: String,
}

impl fmt::Display for S3Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}, bucket {}", self.endpoint, self.bucket)
    }
}

/// Whether the store may be asked for conditional puts (geosnap itself never does).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionalPut {
    /// `If-Match`/`If-None-Match` (AWS S3, MinIO, Ceph RGW).
    Etag,
    /// None: OpenStack Swift's S3 API answers them with 501.
    Disabled,
}

/// One S3 store's settings, parsed and checked from a region's URL and options.
#[derive(Clone)]
pub struct S3Config {
    /// The geosnap region the store belongs to (for messages).
    pub region: String,
    /// Bucket name.
    pub bucket: String,
    /// Key prefix inside the bucket (empty for the whole bucket).
    pub prefix: String,
    /// Endpoint URL without the bucket; `None` means AWS S3 in `signing_region`.
    pub endpoint: Option<Url>,
    /// SigV4 signing region (must equal Swift s3api's `location`).
    pub signing_region: String,
    /// Access key id (`account:user` for Swift's tempauth).
    pub access_key_id: String,
    secret_access_key: String,
    /// Bucket in the host name (`BUCKET.host`) rather than in the path.
    pub virtual_hosted_style: bool,
    /// Conditional put support of the store.
    pub conditional_put: ConditionalPut,
    /// Time allowed to open a connection.
    pub connect_timeout: Duration,
    /// Time allowed for one whole request.
    pub request_timeout: Duration,
    /// Retries of one request inside the client.
    pub max_retries: usize,
    /// Send `UNSIGNED-PAYLOAD` instead of each body's SHA-256 (chunks carry their own).
    pub unsigned_payload: bool,
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("region", &self.region)
            .field("location", &self.location().to_string())
            .field("prefix", &self.prefix)
            .field("signing_region", &self.signing_region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("virtual_hosted_style", &self.virtual_hosted_style)
            .field("conditional_put", &self.conditional_put)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("max_retries", &self.max_retries)
            .field("unsigned_payload", &self.unsigned_payload)
            .finish()
    }
}

/// Region options for the S3 endpoint named by the `GEOSNAP_S3_ENDPOINT`, `_REGION`,
/// `_ACCESS_KEY_ID` and `_SECRET_ACCESS_KEY` environment variables (what
/// `scripts/swift-aio.sh env DIR` prints), for tests and benchmarks; `None` when
/// `GEOSNAP_S3_ENDPOINT` is not set.
pub fn options_from_env() -> Option<BTreeMap<String, String>> {
    let endpoint = std::env::var("GEOSNAP_S3_ENDPOINT").ok()?;
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    Some(
        [
            ("endpoint", endpoint),
            ("region", var("GEOSNAP_S3_REGION")),
            ("access_key_id", var("GEOSNAP_S3_ACCESS_KEY_ID")),
            ("secret_access_key", var("GEOSNAP_S3_SECRET_ACCESS_KEY")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
    )
}

impl S3Config {
    /// Reads an `s3://BUCKET[/PREFIX]` URL and region `region`'s options; every mistake is
    /// a configuration error naming the region.
    pub fn parse(region: &str, url: &str, options: &BTreeMap<String, String>) -> Result<S3Config> {
        let bad = |reason: String| Error::Config {
            region: region.to_string(),
            reason,
        };
        let url = Url::parse(url).map_err(|e| bad(format!("'{url}' is not a URL ({e})")))?;
        if url.scheme() != "s3" {
            return Err(bad(format!("'{url}' is not an s3:// URL")));
        }
        if let Some(key) = options.keys().find(|k| !OPTION_KEYS.contains(&k.as_str())) {
            return Err(bad(format!(
                "unknown S3 option '{key}'; known options: {}",
                OPTION_KEYS.join(", ")
            )));
        }
        let bucket = url.host_str().unwrap_or_default().to_string();
        if !valid_bucket(&bucket) {
            return Err(bad(format!(
                "'{url}' does not name a bucket (3 to 63 lowercase letters, digits, '-' or '.')"
            )));
        }
        let prefix = url.path().trim_matches('/').to_string();
        let opt = |k: &str| options.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
        let flag = |k: &str| -> Result<bool> {
            match opt(k) {
                None => Ok(false),
                Some("true") => Ok(true),
                Some("false") => Ok(false),
                Some(v) => Err(bad(format!("{k} = '{v}': use true or false"))),
            }
        };
        let number = |k: &str| -> Result<Option<u64>> {
            opt(k)
                .map(|v| {
                    v.parse::<u64>()
                        .map_err(|_| bad(format!("{k} = '{v}' is not a whole number")))
                })
                .transpose()
        };
        let endpoint = opt("endpoint")
            .map(|e| {
                let u = Url::parse(e).map_err(|err| bad(format!("endpoint '{e}': {err}")))?;
                if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
                    return Err(bad(format!(
                        "endpoint '{e}' must be an http:// or https:// URL"
                    )));
                }
                Ok(u)
            })
            .transpose()?;
        let conditional_put = match opt("conditional_put") {
            None | Some("disabled") => ConditionalPut::Disabled,
            Some("etag") => ConditionalPut::Etag,
            Some(v) => {
                return Err(bad(format!(
                    "conditional_put = '{v}': use etag or disabled"
                )));
            }
        };
        let access_key_id = opt("access_key_id");
        let secret = match (opt("secret_access_key"), opt("secret_access_key_env")) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    "set secret_access_key or secret_access_key_env, not both".into(),
                ));
            }
            (Some(s), None) => Some(s.to_string()),
            (None, Some(var)) => match std::env::var(var) {
                Ok(s) if !s.is_empty() => Some(s),
                _ => {
                    return Err(bad(format!(
                        "secret_access_key_env names {var}, which is not set"
                    )));
                }
            },
            (None, None) => None,
        };
        let (Some(access_key_id), Some(secret_access_key)) = (access_key_id, secret) else {
            return Err(bad("no credentials configured; set access_key_id and \
                 secret_access_key (or secret_access_key_env)"
                .into()));
        };
        let ms = |k: &str, default: Duration| -> Result<Duration> {
            Ok(number(k)?.map_or(default, Duration::from_millis))
        };
        let connect_timeout = ms("connect_timeout_ms", DEFAULT_CONNECT_TIMEOUT)?;
        let request_timeout = ms("request_timeout_ms", DEFAULT_REQUEST_TIMEOUT)?;
        if connect_timeout.is_zero() || request_timeout.is_zero() {
            return Err(bad("timeouts must be at least 1 ms".into()));
        }
        Ok(S3Config {
            region: region.to_string(),
            bucket,
            prefix,
            endpoint,
            signing_region: opt("region").unwrap_or("us-east-1").to_string(),
            access_key_id: access_key_id.to_string(),
            secret_access_key,
            virtual_hosted_style: flag("virtual_hosted_style")?,
            conditional_put,
            connect_timeout,
            request_timeout,
            max_retries: number("max_retries")?
                .map_or(DEFAULT_MAX_RETRIES, |n| n.min(100) as usize),
            unsigned_payload: flag("unsigned_payload")?,
        })
    }

    /// Endpoint and bucket, for messages.
    pub fn location(&self) -> S3Location {
        S3Location {
            endpoint: match &self.endpoint {
                Some(u) => u.as_str().trim_end_matches('/').to_string(),
                None => format!("https://s3.{}.amazonaws.com", self.signing_region),
            },
            bucket: self.bucket.clone(),
        }
    }

    /// The URL of the bucket itself, as the client addresses it.
    fn bucket_url(&self) -> Result<Url> {
        let text = match (&self.endpoint, self.virtual_hosted_style) {
            (Some(e), false) => format!("{}/{}", e.as_str().trim_end_matches('/'), self.bucket),
            (Some(e), true) => with_bucket_host(e, &self.bucket),
            (None, false) => format!(
                "https://s3.{}.amazonaws.com/{}",
                self.signing_region, self.bucket
            ),
            (None, true) => format!(
                "https://{}.s3.{}.amazonaws.com",
                self.bucket, self.signing_region
            ),
        };
        Url::parse(&text).map_err(|e| Error::Config {
            region: self.region.clone(),
            reason: format!("bucket URL '{text}': {e}"),
        })
    }

    fn client_options(&self) -> ClientOptions {
        let http = self.endpoint.as_ref().is_some_and(|e| e.scheme() == "http");
        ClientOptions::new()
            .with_allow_http(http)
            .with_connect_timeout(self.connect_timeout)
            .with_timeout(self.request_timeout)
    }

    /// object_store's builder with these settings and nothing from the environment.
    pub fn builder(&self) -> Result<AmazonS3Builder> {
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(1),
                base: 2.0,
            },
            max_retries: self.max_retries,
            retry_timeout: self.request_timeout,
        };
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&self.bucket)
            .with_region(&self.signing_region)
            .with_access_key_id(&self.access_key_id)
            .with_secret_access_key(&self.secret_access_key)
            .with_virtual_hosted_style_request(self.virtual_hosted_style)
            .with_conditional_put(match self.conditional_put {
                ConditionalPut::Etag => S3ConditionalPut::ETagMatch,
                ConditionalPut::Disabled => S3ConditionalPut::Disabled,
            })
            .with_unsigned_payload(self.unsigned_payload)
            .with_client_options(self.client_options())
            .with_retry(retry);
        if self.endpoint.is_some() {
            // With virtual-hosted style, object_store expects the bucket in the endpoint.
            let url = self.bucket_url()?;
            let endpoint = if self.virtual_hosted_style {
                url.as_str().trim_end_matches('/').to_string()
            } else {
                let e = self.location().endpoint;
                e.trim_end_matches('/').to_string()
            };
            b = b.with_endpoint(endpoint);
        }
        Ok(b)
    }

    /// The store, under its prefix if the URL has one.
    pub fn open(&self) -> Result<Arc<dyn ObjectStore>> {
        let store = self.builder()?.build().map_err(|e| Error::Config {
            region: self.region.clone(),
            reason: format!("cannot use bucket {}: {e}", self.bucket),
        })?;
        Ok(if self.prefix.is_empty() {
            Arc::new(store)
        } else {
            Arc::new(PrefixStore::new(store, Path::from(self.prefix.as_str())))
        })
    }

    /// Creates the bucket (S3 CreateBucket, which object_store does not offer); a bucket
    /// that already exists and is ours is fine. For set-up scripts and tests.
    pub async fn create_bucket(&self) -> Result<()> {
        let body = if self.signing_region == "us-east-1" {
            String::new()
        } else {
            format!(
                "<CreateBucketConfiguration><LocationConstraint>{}</LocationConstraint>\
                 </CreateBucketConfiguration>",
                self.signing_region
            )
        };
        let (status, text) = self.bucket_request(http::Method::PUT, body).await?;
        if status.is_success() || text.contains("BucketAlreadyOwnedByYou") {
            return Ok(());
        }
        Err(self.bucket_error("create", status, &text))
    }

    /// Deletes the bucket, which must be empty; a missing bucket is fine. For tests.
    pub async fn delete_bucket(&self) -> Result<()> {
        let (status, text) = self
            .bucket_request(http::Method::DELETE, String::new())
            .await?;
        if status.is_success() || status == http::StatusCode::NOT_FOUND {
            return Ok(());
        }
        Err(self.bucket_error("delete", status, &text))
    }

    /// Deletes every object in the bucket (not only under the prefix), then the bucket. For
    /// tests that leave the server as they found it.
    pub async fn destroy_bucket(&self) -> Result<()> {
        let store = S3Config {
            prefix: String::new(),
            ..self.clone()
        }
        .open()?;
        let fail = |e: object_store::Error| Error::Config {
            region: self.region.clone(),
            reason: format!("cannot empty bucket {}: {e}", self.bucket),
        };
        let keys: Vec<Path> = store
            .list(None)
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(fail)?;
        for key in keys {
            match store.delete(&key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(fail(e)),
            }
        }
        self.delete_bucket().await
    }

    fn bucket_error(&self, verb: &str, status: http::StatusCode, text: &str) -> Error {
        Error::Config {
            region: self.region.clone(),
            reason: format!(
                "cannot {verb} bucket {} at {}: HTTP {status}{}",
                self.bucket,
                self.location().endpoint,
                s3_error_code(text)
                    .map(|c| format!(" {c}"))
                    .unwrap_or_default()
            ),
        }
    }

    /// One SigV4-signed request on the bucket itself, through object_store's own client.
    async fn bucket_request(
        &self,
        method: http::Method,
        body: String,
    ) -> Result<(http::StatusCode, String)> {
        let unreachable = |reason: String| Error::RegionUnavailable {
            region: format!("{} ({})", self.region, self.location()),
            reason,
        };
        let client = ReqwestConnector::default()
            .connect(&self.client_options())
            .map_err(|e| unreachable(e.to_string()))?;
        let mut request = http::Request::builder()
            .method(method)
            .uri(self.bucket_url()?.as_str())
            .body(object_store::client::HttpRequestBody::from(body))
            .map_err(|e| unreachable(e.to_string()))?;
        let credential = AwsCredential {
            key_id: self.access_key_id.clone(),
            secret_key: self.secret_access_key.clone(),
            token: None,
        };
        AwsAuthorizer::new(&credential, "s3", &self.signing_region)
            .try_authorize(&mut request, None)
            .map_err(|e| unreachable(e.to_string()))?;
        let response = client.execute(request).await.map_err(|e| {
            let what = match e.kind() {
                HttpErrorKind::Connect => "unreachable",
                _ => "failed",
            };
            unreachable(format!("{what}: {}", root_cause(&e)))
        })?;
        let status = response.status();
        let text = response
            .into_body()
            .bytes()
            .await
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        Ok((status, text))
    }
}

/// `https://host:port/path` with `bucket.` in front of the host.
fn with_bucket_host(endpoint: &Url, bucket: &str) -> String {
    let mut u = endpoint.clone();
    if let Some(host) = endpoint.host_str()
        && !host.starts_with(&format!("{bucket}."))
    {
        // A host that cannot take the prefix is reported when the bucket URL is parsed.
        let _ = u.set_host(Some(&format!("{bucket}.{host}")));
    }
    u.as_str().trim_end_matches('/').to_string()
}

/// S3's bucket naming rules (the subset every S3-compatible store accepts).
fn valid_bucket(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric()
}

/// The `<Code>` and `<Message>` of an S3 error body, e.g.
/// `SignatureDoesNotMatch: The request signature we calculated does not match ...`.
pub fn s3_error_code(body: &str) -> Option<String> {
    let tag = |t: &str| {
        let start = body.find(&format!("<{t}>"))? + t.len() + 2;
        let end = body[start..].find(&format!("</{t}>"))? + start;
        Some(body[start..end].trim().to_string())
    };
    let code = tag("Code")?;
    Some(match tag("Message") {
        Some(m) if !m.is_empty() => format!("{code}: {m}"),
        _ => code,
    })
}

/// The innermost cause of an error, e.g. `Connection refused (os error 111)`.
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn creds() -> Vec<(&'static str, &'static str)> {
        vec![
            ("endpoint", "http://127.0.0.1:8080"),
            ("access_key_id", "test:tester"),
            ("secret_access_key", "testing"),
        ]
    }

    fn parse(url: &str, o: &[(&str, &str)]) -> Result<S3Config> {
        S3Config::parse("de-1", url, &opts(o))
    }

    #[test]
    fn a_region_without_credentials_is_a_configuration_error_naming_it() {
        let err = parse(
            "s3://geosnap-de-1",
            &[("endpoint", "http://127.0.0.1:8080")],
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "region de-1: no credentials configured; set access_key_id and secret_access_key \
             (or secret_access_key_env)"
        );
        let err = parse("s3://b-1", &[("access_key_id", "k")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("no credentials configured"), "{err}");
        let err = parse(
            "s3://b-1",
            &[
                ("access_key_id", "k"),
                ("secret_access_key_env", "GEOSNAP_TEST_SURELY_UNSET_VAR"),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("GEOSNAP_TEST_SURELY_UNSET_VAR, which is not set"),
            "{err}"
        );
    }

    #[test]
    fn options_are_checked_and_defaults_are_bounded() {
        let c = parse("s3://geosnap-de-1/some/prefix/", &creds()).unwrap();
        assert_eq!(c.bucket, "geosnap-de-1");
        assert_eq!(c.prefix, "some/prefix");
        assert_eq!(c.signing_region, "us-east-1");
        assert_eq!(c.conditional_put, ConditionalPut::Disabled);
        assert_eq!(c.max_retries, DEFAULT_MAX_RETRIES);
        assert_eq!(
            c.location().to_string(),
            "http://127.0.0.1:8080, bucket geosnap-de-1"
        );
        assert!(!format!("{c:?}").contains("testing"), "secret in {c:?}");
        c.open().unwrap();

        for (bad, want) in [
            (("conditional_put", "yes"), "use etag or disabled"),
            (("virtual_hosted_style", "1"), "use true or false"),
            (("max_retries", "-1"), "not a whole number"),
            (("endpoint", "ftp://x"), "http:// or https://"),
            (("colour", "blue"), "unknown S3 option 'colour'"),
        ] {
            let mut o = creds();
            o.push(bad);
            let err = parse("s3://geosnap-de-1", &o).unwrap_err().to_string();
            assert!(
                err.starts_with("region de-1: ") && err.contains(want),
                "{err}"
            );
        }
        for url in ["s3://UPPER", "s3://a", "s3:///x"] {
            let err = parse(url, &creds()).unwrap_err().to_string();
            assert!(err.contains("does not name a bucket"), "{url}: {err}");
        }
    }

    #[test]
    fn virtual_hosted_style_puts_the_bucket_in_the_host() {
        let mut o = creds();
        o[0] = ("endpoint", "https://s3.example.org:8443");
        o.push(("virtual_hosted_style", "true"));
        let c = parse("s3://vols", &o).unwrap();
        assert_eq!(
            c.bucket_url().unwrap().as_str(),
            "https://vols.s3.example.org:8443/"
        );
        let c = parse("s3://vols", &creds()).unwrap();
        assert_eq!(
            c.bucket_url().unwrap().as_str(),
            "http://127.0.0.1:8080/vols"
        );
    }

    #[test]
    fn s3_error_bodies_are_summarised() {
        let body = "<?xml version='1.0'?><Error><Code>NoSuchBucket</Code>\
                    <Message>The specified bucket does not exist.</Message></Error>";
        assert_eq!(
            s3_error_code(body).unwrap(),
            "NoSuchBucket: The specified bucket does not exist."
        );
        assert_eq!(s3_error_code("not xml"), None);
    }
}
