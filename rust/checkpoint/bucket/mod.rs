//! Checkpoints in an S3-compatible bucket (`ckpt_dir = "s3://bucket/prefix"`),
//! with the guarantees of the directory commit ([`super::commit`]) but no
//! rename: a save publishes a new immutable manifest instead.
//!
//! * [`location`] tells a bucket from a directory and builds the client;
//!   [`profile`] reads the keys of an AWS profile (`~/.aws`) for it;
//! * [`runtime`] is the async runtime the client runs on, and its errors;
//! * [`upload`] is the writer's target: shards streamed as multipart uploads;
//! * [`publish`] is the commit: versions, the create-only PUT, old versions removed;
//! * [`load`] reads the newest version with every check of a directory load;
//!   [`readers`] pins the version a lazy (Ray) load reads later.

pub mod load;
pub mod location;
pub mod profile;
pub mod publish;
pub mod readers;
pub mod runtime;
pub mod upload;

pub use location::{Bucket, BucketUri, Location};
pub use publish::BucketStaging;

#[cfg(test)]
mod tests;
