//! Where the table lives: a local directory (`file://<dir>`) or an S3 prefix
//! (`s3://bucket/prefix`). Both go through object_store underneath delta-rs;
//! S3 uses object_store's own client, registered with delta-rs here, so
//! commits are conditional writes (`If-None-Match: *`) and no locking
//! service is involved (ADR 0007).

use crate::{Error, Result};
use deltalake::logstore::{
    LogStore, LogStoreFactory, ObjectStoreFactory, ObjectStoreRef, StorageConfig, default_logstore,
    logstore_factories, object_store_factories,
};
use deltalake::{DeltaResult, DeltaTableError};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut};
use object_store::path::Path;
use object_store::{BackoffConfig, RetryConfig};
use std::path::PathBuf;
use std::sync::{Arc, Once};
use std::time::Duration;
use url::Url;

/// A parsed lake URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A directory on this machine.
    Local(PathBuf),
    /// A bucket and a key prefix (no leading or trailing `/`; may be empty).
    S3 { bucket: String, prefix: String },
}

impl Location {
    /// Parses `file://<dir>` or `s3://bucket/prefix` without touching
    /// anything. Credentials in the URL are refused: they would end up in
    /// logs; S3 credentials come from the usual `AWS_*` environment.
    pub fn parse(url: &str) -> Result<Self> {
        if let Some(path) = url.strip_prefix("file://") {
            if path.is_empty() {
                return Err(Error::UnsupportedUrl(url.to_string()));
            }
            return Ok(Self::Local(PathBuf::from(path)));
        }
        if !url.starts_with("s3://") {
            return Err(Error::UnsupportedUrl(redact(url)));
        }
        // Checked on the text: parsing resolves `..` away.
        if url.split(['/', '?', '#']).any(|s| s == "." || s == "..") {
            return Err(Error::UnsupportedUrl(redact(url)));
        }
        let parsed = Url::parse(url).map_err(|source| Error::InvalidUrl {
            url: redact(url),
            source,
        })?;
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(Error::CredentialsInUrl(redact(url)));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() || parsed.port().is_some() {
            return Err(Error::UnsupportedUrl(redact(url)));
        }
        let bucket = parsed.host_str().unwrap_or_default().to_string();
        if bucket.is_empty() {
            return Err(Error::UnsupportedUrl(redact(url)));
        }
        let prefix = parsed.path().trim_matches('/').to_string();
        if prefix.contains("//") {
            return Err(Error::UnsupportedUrl(redact(url)));
        }
        Ok(Self::S3 { bucket, prefix })
    }

    /// The table's root URL as delta-rs wants it (a directory URL), creating
    /// a local directory.
    pub(crate) fn table_url(&self) -> Result<Url> {
        match self {
            Self::Local(path) => {
                std::fs::create_dir_all(path)?;
                let abs = std::fs::canonicalize(path)?;
                Url::from_directory_path(&abs)
                    .map_err(|()| Error::UnsupportedUrl(abs.display().to_string()))
            }
            Self::S3 { bucket, prefix } => {
                register_s3();
                let url = if prefix.is_empty() {
                    format!("s3://{bucket}/")
                } else {
                    format!("s3://{bucket}/{prefix}/")
                };
                Url::parse(&url).map_err(|source| Error::InvalidUrl { url, source })
            }
        }
    }

    /// Whether this is a local directory without a table in it yet.
    pub(crate) fn is_fresh_local(&self) -> bool {
        matches!(self, Self::Local(path) if !path.join("_delta_log").exists())
    }
}

/// `url` as it may be printed: user info (an access key, a secret)
/// replaced by `***`, query and fragment (options, perhaps keys) dropped.
pub fn redact(url: &str) -> String {
    let url = url.split(['?', '#']).next().unwrap_or_default();
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***{}", &url[..scheme_end], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// Makes delta-rs open `s3://` tables with [`S3Stores`] (once per process).
fn register_s3() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let scheme = Url::parse("s3://").expect("a valid scheme URL");
        object_store_factories().insert(scheme.clone(), Arc::new(S3Stores));
        logstore_factories().insert(scheme, Arc::new(S3Stores));
    });
}

/// Builds object_store's S3 client from the `AWS_*` environment (endpoint,
/// region, keys, session token, web identity, container or instance
/// credentials, `AWS_ALLOW_HTTP`, `AWS_VIRTUAL_HOSTED_STYLE_REQUEST`),
/// then the table's own storage options on top, with conditional put
/// always on: the commit protocol depends on it.
struct S3Stores;

/// Object-store retries: a store that is away for a while (a restart, a
/// network blip) is waited for before an error reaches the processors,
/// which then retry the whole check-and-write.
fn retry_config() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            base: 2.0,
        },
        max_retries: 10,
        retry_timeout: Duration::from_secs(60),
    }
}

impl ObjectStoreFactory for S3Stores {
    fn parse_url_opts(
        &self,
        url: &Url,
        config: &StorageConfig,
    ) -> DeltaResult<(ObjectStoreRef, Path)> {
        let mut builder = AmazonS3Builder::from_env().with_url(url.as_str());
        for (key, value) in &config.raw {
            let key: AmazonS3ConfigKey = key
                .to_ascii_lowercase()
                .parse()
                .map_err(|_| DeltaTableError::Generic(format!("unknown S3 lake option `{key}`")))?;
            builder = builder.with_config(key, value);
        }
        let store: ObjectStoreRef = Arc::new(
            builder
                .with_conditional_put(S3ConditionalPut::ETagMatch)
                .with_retry(retry_config())
                .build()?,
        );
        let path = Path::parse(url.path())?;
        if failpoint::active() {
            return Ok((Arc::new(failpoint::AbortBeforeCommit::new(store)), path));
        }
        Ok((store, path))
    }
}

impl LogStoreFactory for S3Stores {
    fn with_options(
        &self,
        prefixed_store: ObjectStoreRef,
        root_store: ObjectStoreRef,
        location: &Url,
        options: &StorageConfig,
    ) -> DeltaResult<Arc<dyn LogStore>> {
        // delta-rs's default log store commits with `PutMode::Create`:
        // a conditional write, safe for concurrent writers.
        Ok(default_logstore(
            prefixed_store,
            root_store,
            location,
            options,
        ))
    }
}

/// Test hook: `SPENDSTREAM_FAILPOINT=before_lake_commit` aborts the process
/// when it is about to write a commit file after uploading data files: the
/// crash between a writer's upload and its commit. Crash tests use it;
/// nothing else should (the store is only wrapped when it is set).
mod failpoint {
    use async_trait::async_trait;
    use futures::stream::BoxStream;
    use object_store::path::Path;
    use object_store::{
        CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
        PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
    };
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    pub(super) fn active() -> bool {
        std::env::var("SPENDSTREAM_FAILPOINT").as_deref() == Ok("before_lake_commit")
    }

    #[derive(Debug)]
    pub(super) struct AbortBeforeCommit {
        inner: Arc<dyn ObjectStore>,
        uploaded: AtomicBool,
    }

    impl AbortBeforeCommit {
        pub(super) fn new(inner: Arc<dyn ObjectStore>) -> Self {
            Self {
                inner,
                uploaded: AtomicBool::new(false),
            }
        }

        fn note(&self, location: &Path) {
            let path = location.as_ref();
            if path.ends_with(".parquet") && !path.contains("_delta_log") {
                self.uploaded.store(true, Ordering::SeqCst);
            }
        }
    }

    impl std::fmt::Display for AbortBeforeCommit {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "AbortBeforeCommit({})", self.inner)
        }
    }

    #[async_trait]
    impl ObjectStore for AbortBeforeCommit {
        async fn put_opts(
            &self,
            location: &Path,
            payload: PutPayload,
            opts: PutOptions,
        ) -> Result<PutResult> {
            let path = location.as_ref();
            if matches!(opts.mode, PutMode::Create)
                && path.contains("_delta_log/")
                && path.ends_with(".json")
                && self.uploaded.load(Ordering::SeqCst)
            {
                eprintln!("Failpoint before_lake_commit reached: aborting.");
                std::process::abort();
            }
            self.note(location);
            self.inner.put_opts(location, payload, opts).await
        }

        async fn put_multipart_opts(
            &self,
            location: &Path,
            opts: PutMultipartOptions,
        ) -> Result<Box<dyn MultipartUpload>> {
            self.note(location);
            self.inner.put_multipart_opts(location, opts).await
        }

        async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
            self.inner.get_opts(location, options).await
        }

        fn delete_stream(
            &self,
            locations: BoxStream<'static, Result<Path>>,
        ) -> BoxStream<'static, Result<Path>> {
            self.inner.delete_stream(locations)
        }

        fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
            self.inner.list(prefix)
        }

        async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }

        async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
            self.inner.copy_opts(from, to, options).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_local_and_s3_urls() {
        assert_eq!(
            Location::parse("file://./data/lake").unwrap(),
            Location::Local(PathBuf::from("./data/lake"))
        );
        assert_eq!(
            Location::parse("s3://bucket/a/b/").unwrap(),
            Location::S3 {
                bucket: "bucket".into(),
                prefix: "a/b".into()
            }
        );
        assert_eq!(
            Location::parse("s3://bucket").unwrap(),
            Location::S3 {
                bucket: "bucket".into(),
                prefix: String::new()
            }
        );
    }

    #[test]
    fn refuses_what_it_cannot_serve_without_echoing_secrets() {
        for bad in [
            "file://",
            "s3://",
            "s3:///prefix",
            "s3://b/p?x=1",
            "s3://b/../p",
            "gs://b/p",
            "/data/lake",
        ] {
            assert!(Location::parse(bad).is_err(), "{bad} was accepted");
        }
        let err = Location::parse("s3://AKIAKEY:s3cr3t@bucket/p").unwrap_err();
        assert!(matches!(err, Error::CredentialsInUrl(_)), "{err:?}");
        let text = format!("{err} {err:?}");
        assert!(
            !text.contains("s3cr3t") && !text.contains("AKIAKEY"),
            "{text}"
        );
        for url in [
            "gs://user:s3cr3t@bucket/p",
            "s3://bucket/p?aws_secret_access_key=s3cr3t",
            "s3://bucket/p#s3cr3t",
        ] {
            let err = Location::parse(url).unwrap_err();
            assert!(!format!("{err} {err:?}").contains("s3cr3t"), "{url}");
        }
    }
}
