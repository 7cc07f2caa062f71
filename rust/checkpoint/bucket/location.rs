//! Where a checkpoint lives: a local directory, or a prefix in a bucket
//! (`s3://bucket/prefix`), and the client that reaches the bucket.
//!
//! The client is configured the way AWS tools are: the `AWS_*` environment
//! variables (endpoint, credentials, region, `AWS_ALLOW_HTTP`), then the
//! caller's options (fsspec-style `storage_options`), which win. Nothing
//! here ever prints a credential: a URI with `user:secret@` is refused
//! without echoing it, and an option's value is never shown.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as Key;
use object_store::{ClientConfigKey, ObjectStore};

use crate::checkpoint::error::{CheckpointError, Result};

/// The schemes this build reaches (all through the S3 protocol).
const S3_SCHEMES: [&str; 2] = ["s3", "s3a"];

/// A checkpoint directory or bucket prefix, as the caller wrote it.
#[derive(Clone)]
pub enum Location {
    Dir(PathBuf),
    Bucket(Arc<Bucket>),
}

impl Location {
    /// A local path stays a path; `s3://` becomes a bucket; any other
    /// `scheme://` is refused (it must never become a local directory).
    pub fn parse(text: &str, options: &[(String, String)]) -> Result<Location> {
        match BucketUri::parse(text)? {
            None if options.is_empty() => Ok(Location::Dir(PathBuf::from(text))),
            None => Err(CheckpointError::Input(format!(
                "storage_options apply to a checkpoint in a bucket (s3://...), not to the local directory {text:?}"
            ))),
            Some(uri) => Ok(Location::Bucket(Arc::new(Bucket::open(uri, options)?))),
        }
    }

    /// [`Location::parse`] of a path; one that is not UTF-8 is no URI.
    pub fn from_path(path: &Path, options: &[(String, String)]) -> Result<Location> {
        match path.to_str() {
            Some(text) => Location::parse(text, options),
            None if options.is_empty() => Ok(Location::Dir(path.to_path_buf())),
            None => Location::parse(&path.to_string_lossy(), options),
        }
    }

    /// How errors and callers name it: the path, or `s3://bucket/prefix`.
    pub fn shown(&self) -> String {
        match self {
            Location::Dir(path) => path.display().to_string(),
            Location::Bucket(bucket) => bucket.uri.shown(),
        }
    }
}

/// `s3://bucket/prefix`, parsed and checked.
#[derive(Debug, Clone)]
pub struct BucketUri {
    pub bucket: String,
    /// The checkpoint's keys start with `prefix/` (the root when empty).
    pub prefix: Key,
}

impl BucketUri {
    /// `Ok(None)` when `text` is no URI (a local path).
    pub fn parse(text: &str) -> Result<Option<BucketUri>> {
        let Some((scheme, rest)) = split_scheme(text) else {
            return Ok(None);
        };
        if !S3_SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()) {
            return Err(CheckpointError::Input(format!(
                "checkpoint location {scheme}://... is not supported: this build keeps \
                 checkpoints in a local directory or an S3-compatible bucket (s3://bucket/prefix)"
            )));
        }
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.contains('@') {
            return Err(CheckpointError::Input(format!(
                "checkpoint location {scheme}://<credentials>@...: credentials written into the \
                 URI are refused (they would end up in logs); set AWS_ACCESS_KEY_ID and \
                 AWS_SECRET_ACCESS_KEY, or pass them in storage_options"
            )));
        }
        if authority.is_empty() {
            return Err(CheckpointError::Input(format!(
                "checkpoint location {text:?} names no bucket (expected s3://bucket/prefix)"
            )));
        }
        let prefix = Key::parse(path.trim_matches('/'))
            .map_err(|e| CheckpointError::Input(format!("checkpoint location {text:?}: {e}")))?;
        Ok(Some(BucketUri {
            bucket: authority.to_string(),
            prefix,
        }))
    }

    pub fn shown(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }
}

/// `scheme` and the rest of `scheme://rest`; `None` for anything else
/// (a Windows drive `C:\` or a relative `a:b` is a path).
fn split_scheme(text: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = text.split_once("://")?;
    let mut chars = scheme.chars();
    let first = chars.next()?;
    let valid = first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then_some((scheme, rest))
}

/// A bucket prefix and the client that reaches it.
pub struct Bucket {
    pub uri: BucketUri,
    pub store: Arc<dyn ObjectStore>,
}

impl Bucket {
    pub fn open(uri: BucketUri, options: &[(String, String)]) -> Result<Bucket> {
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(&uri.bucket);
        builder = with_profile_if_no_key(builder, options);
        for (name, value) in options {
            let key = AmazonS3ConfigKey::from_str(&name.to_ascii_lowercase()).map_err(|_| {
                CheckpointError::Input(format!(
                    "storage_options key {name:?} is not an S3 option (for example \
                     endpoint_url, aws_access_key_id, aws_secret_access_key, region, allow_http)"
                ))
            })?;
            builder = builder.with_config(key, value);
        }
        refuse_plain_http_unless_allowed(&builder, &uri)?;
        super::runtime::install_tls_provider(); // the client's TLS needs it when built
        let store = builder
            .build()
            .map_err(|e| CheckpointError::Input(format!("cannot reach {}: {e}", uri.shown())))?;
        Ok(Bucket {
            uri,
            store: Arc::new(store),
        })
    }

    /// The key of `relative` (`a/b`) under the checkpoint's prefix.
    pub fn key(&self, relative: &str) -> Key {
        let mut key = self.uri.prefix.clone();
        for part in relative.split('/') {
            key = key.join(part);
        }
        key
    }

    /// `s3://bucket/key`: how errors name an object.
    pub fn shown(&self, key: &Key) -> PathBuf {
        PathBuf::from(format!("s3://{}/{key}", self.uri.bucket))
    }
}

/// Keys and region from an AWS profile when neither the environment nor the
/// options give a key (see [`super::profile`]).
fn with_profile_if_no_key(
    mut builder: AmazonS3Builder,
    options: &[(String, String)],
) -> AmazonS3Builder {
    let key_in_options = options.iter().any(|(name, _)| {
        matches!(
            AmazonS3ConfigKey::from_str(&name.to_ascii_lowercase()),
            Ok(AmazonS3ConfigKey::AccessKeyId)
        )
    });
    if key_in_options
        || builder
            .get_config_value(&AmazonS3ConfigKey::AccessKeyId)
            .is_some()
    {
        return builder;
    }
    let region_set = builder
        .get_config_value(&AmazonS3ConfigKey::Region)
        .is_some();
    for (name, value) in super::profile::profile_settings() {
        if name == "aws_region" && region_set {
            continue;
        }
        if let Ok(key) = AmazonS3ConfigKey::from_str(name) {
            builder = builder.with_config(key, value);
        }
    }
    builder
}

/// The client refuses a plain-http endpoint at the first request, with a
/// message that does not say how to allow it; say it before any work.
fn refuse_plain_http_unless_allowed(builder: &AmazonS3Builder, uri: &BucketUri) -> Result<()> {
    let endpoint = builder
        .get_config_value(&AmazonS3ConfigKey::Endpoint)
        .unwrap_or_default();
    let allowed = builder
        .get_config_value(&AmazonS3ConfigKey::Client(ClientConfigKey::AllowHttp))
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if endpoint.to_ascii_lowercase().starts_with("http://") && !allowed {
        return Err(CheckpointError::Input(format!(
            "the endpoint of {} is plain http ({endpoint}); set AWS_ALLOW_HTTP=true (or \
             storage_options allow_http) to use it",
            uri.shown()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_paths_and_uris_are_parsed_or_refused() {
        assert!(BucketUri::parse("/tmp/x").unwrap().is_none());
        assert!(BucketUri::parse("C:\\x").unwrap().is_none());
        let uri = BucketUri::parse("s3://bkt/a/b/").unwrap().unwrap();
        assert_eq!((uri.bucket.as_str(), uri.prefix.as_ref()), ("bkt", "a/b"));
        assert_eq!(uri.shown(), "s3://bkt/a/b");
        for bad in [
            "gs://b/p",
            "hdfs://n/p",
            "file:///tmp",
            "s3:///p",
            "s3://b/a/../c",
        ] {
            assert!(BucketUri::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn credentials_in_a_uri_are_refused_and_never_shown() {
        let err = BucketUri::parse("s3://AKIAX:hush@bkt/p")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hush") && !err.contains("AKIAX"), "{err}");
    }
}
