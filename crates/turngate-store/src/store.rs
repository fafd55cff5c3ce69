//! The object store a node records into: a local directory (the embedded default) or
//! S3-compatible storage, behind the `object_store` crate.
//!
//! [`Store::open`] takes the operator's `record.store`: a path or `file://` URL (the
//! directory is made if missing; every put is fsynced with its directory before it
//! returns), or `s3://bucket[/prefix]` configured by the usual `AWS_*` variables
//! (`AWS_ENDPOINT` and `AWS_ALLOW_HTTP=true` for MinIO or another local server).

use std::sync::Arc;

use bytes::Bytes;
use futures_util::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::Error;

/// A store of turn records. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    /// Where it is, for logs: the location as configured (it holds no credentials:
    /// those come from the environment).
    location: String,
}

/// Whether a create-only put made the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Created {
    /// It did.
    Made,
    /// An object was there already; it is left as it was.
    Exists,
}

impl Store {
    /// Opens `location`: a directory path, `file:///abs/dir`, or `s3://bucket[/prefix]`.
    ///
    /// Errors: [`Error::Config`] for another scheme, a bucket missing, or a directory
    /// that cannot be made.
    pub fn open(location: &str) -> Result<Self, Error> {
        let inner: Arc<dyn ObjectStore> = if let Some(rest) = location.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(Error::Config(format!("no bucket in {location:?}")));
            }
            use object_store::ClientConfigKey::{ConnectTimeout, Timeout};
            use object_store::aws::AmazonS3ConfigKey::Client;
            // The recorder retries and spools by itself, within its own time bound
            // (`record.retry_ms`): object_store's default of 10 retries over up to 3
            // minutes would hold one write far past it. Two quick retries for a
            // transient error, and a connection that does not open within 5 s (an
            // endpoint that drops packets) fails rather than hangs.
            let retry = object_store::RetryConfig {
                max_retries: 2,
                retry_timeout: std::time::Duration::from_secs(5),
                backoff: object_store::BackoffConfig::default(),
            };
            let s3 = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_retry(retry)
                .with_config(Client(ConnectTimeout), "5 seconds")
                .with_config(Client(Timeout), "60 seconds")
                .build()
                .map_err(|e| Error::Config(format!("{location}: {e}")))?;
            let prefix = prefix.trim_matches('/');
            if prefix.is_empty() {
                Arc::new(s3)
            } else {
                Arc::new(object_store::prefix::PrefixStore::new(s3, prefix))
            }
        } else {
            let dir = match location.strip_prefix("file://") {
                Some(path) => url::Url::parse(location)
                    .ok()
                    .and_then(|u| u.to_file_path().ok())
                    .ok_or_else(|| Error::Config(format!("not a file URL: {path:?}")))?,
                None if location.contains("://") => {
                    return Err(Error::Config(format!(
                        "{location:?}: a store is a directory, file:// or s3:// URL"
                    )));
                }
                None => std::path::PathBuf::from(location),
            };
            std::fs::create_dir_all(&dir)
                .map_err(|e| Error::Config(format!("{}: {e}", dir.display())))?;
            let local = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                .map_err(|e| Error::Config(format!("{}: {e}", dir.display())))?
                .with_fsync(true)
                .with_automatic_cleanup(true);
            Arc::new(local)
        };
        Ok(Self {
            inner,
            location: location.to_owned(),
        })
    }

    /// A store over any `object_store` implementation (tests use the in-memory one).
    pub fn from_object_store(inner: Arc<dyn ObjectStore>, location: &str) -> Self {
        Self {
            inner,
            location: location.to_owned(),
        }
    }

    /// The location as configured.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Writes `bytes` at `key`, replacing what was there.
    pub async fn put(&self, key: &Path, bytes: Bytes) -> Result<(), Error> {
        self.inner.put(key, PutPayload::from(bytes)).await?;
        Ok(())
    }

    /// Writes `bytes` at `key` unless an object is there (`PutMode::Create`).
    pub async fn create(&self, key: &Path, bytes: Bytes) -> Result<Created, Error> {
        let options = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .inner
            .put_opts(key, PutPayload::from(bytes), options)
            .await
        {
            Ok(_) => Ok(Created::Made),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(Created::Exists),
            Err(e) => Err(e.into()),
        }
    }

    /// The object at `key`, or `None` if there is none.
    pub async fn get(&self, key: &Path) -> Result<Option<Bytes>, Error> {
        match self.inner.get(key).await {
            Ok(result) => Ok(Some(result.bytes().await?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Bytes `range` of the object at `key` (the range must lie within it), or `None`
    /// if there is no object.
    pub async fn get_range(
        &self,
        key: &Path,
        range: std::ops::Range<u64>,
    ) -> Result<Option<Bytes>, Error> {
        match self.inner.get_range(key, range).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The object at `key`'s size in bytes, or `None` if there is none.
    pub async fn size(&self, key: &Path) -> Result<Option<u64>, Error> {
        match self.inner.head(key).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Every object under `prefix`, in no particular order.
    pub async fn list(&self, prefix: &Path) -> Result<Vec<ObjectMeta>, Error> {
        Ok(self.inner.list(Some(prefix)).try_collect().await?)
    }

    /// The "directories" directly under `prefix` (its common prefixes, `/`-delimited),
    /// in no particular order: one level at a time, so a pass over the store need not
    /// hold every object's metadata at once.
    pub async fn children(&self, prefix: &Path) -> Result<Vec<Path>, Error> {
        Ok(self
            .inner
            .list_with_delimiter(Some(prefix))
            .await?
            .common_prefixes)
    }

    /// Deletes the object at `key`; deleting what is not there succeeds.
    pub async fn delete(&self, key: &Path) -> Result<(), Error> {
        match self.inner.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
