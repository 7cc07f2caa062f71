//! The manifest: what a committed checkpoint holds, with a checksum per file.
//!
//! It is the last file written into a staging directory, so a directory
//! without one was never committed by this package (it may be a checkpoint of
//! the original Data-Juicer, which the Python layer loads through `datasets`).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::dirfd::{read_bounded, CheckpointDir};
use super::error::{CheckpointError, IoContext, Result};

pub const MANIFEST_FILE: &str = "accel_manifest.json";
pub const FORMAT_NAME: &str = "data-juicer-accel/checkpoint";
pub const FORMAT_VERSION: u32 = 1;
/// A manifest is a few KB per thousand shards; anything bigger is not ours.
const MAX_MANIFEST_BYTES: u64 = 64 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// A bare file name inside the checkpoint directory.
    pub file: String,
    /// Size on disk.
    pub bytes: u64,
    /// xxh3-64 of the whole file, 16 lower-case hex digits.
    pub xxh3_64: String,
    /// Rows held (shards only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// Arrow bytes before compression (shards only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    /// "zstd" or "none": Arrow IPC body compression of the shards.
    pub codec: String,
    pub level: Option<i32>,
    /// What the caller saved ("nested", "hf", "arrow", ...); chosen by Python.
    pub kind: String,
    pub num_rows: u64,
    pub shards: Vec<FileEntry>,
    /// Other files of the checkpoint (state.json, dataset_info.json, ...).
    pub files: Vec<FileEntry>,
    pub created_by: String,
    /// In a bucket only: the key prefix (under the checkpoint's) of the
    /// generation whose objects the entries name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<String>,
}

pub fn checksum_hex(hash: u64) -> String {
    format!("{hash:016x}")
}

/// A name is safe when it is one plain path component: no separator, no `..`,
/// not hidden. Names come from a file that an attacker may have written.
pub fn is_safe_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
        && Path::new(name).components().count() == 1
}

impl Manifest {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a manifest always serialises")
    }

    /// Reads and validates `dir/accel_manifest.json`; `Ok(None)` when absent.
    pub fn read(dir: &Path) -> Result<Option<Manifest>> {
        match CheckpointDir::open(dir)? {
            Some(handle) => Self::read_in(&handle),
            None => Ok(None),
        }
    }

    /// Reads and validates the manifest of an open checkpoint directory; it
    /// must be a regular file of at most 64 MiB.
    pub fn read_in(dir: &CheckpointDir) -> Result<Option<Manifest>> {
        let path = dir.path().join(MANIFEST_FILE);
        let Some((file, _)) = dir.open_regular(MANIFEST_FILE)? else {
            return Ok(None);
        };
        let text = read_bounded(file, MAX_MANIFEST_BYTES + 1, None).at(&path)?;
        if text.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(CheckpointError::corrupt(
                &path,
                "manifest larger than 64 MiB",
            ));
        }
        Self::parse(&text)
            .map(Some)
            .map_err(|detail| CheckpointError::corrupt(&path, detail))
    }

    /// Parses and validates manifest text; the error says what is wrong.
    pub fn parse(text: &[u8]) -> std::result::Result<Manifest, String> {
        let manifest: Manifest =
            serde_json::from_slice(text).map_err(|e| format!("not a valid manifest: {e}"))?;
        manifest.validate()?;
        Ok(manifest)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.format != FORMAT_NAME {
            return Err(format!(
                "format is {:?}, expected {FORMAT_NAME:?}",
                self.format
            ));
        }
        if self.format_version == 0 || self.format_version > FORMAT_VERSION {
            return Err(format!(
                "format version {} is not supported (this build reads up to {FORMAT_VERSION})",
                self.format_version
            ));
        }
        if self.codec != "zstd" && self.codec != "none" {
            return Err(format!("unknown codec {:?}", self.codec));
        }
        if self.shards.is_empty() {
            return Err("no shards listed".into());
        }
        let mut seen = std::collections::HashSet::new();
        for entry in self.shards.iter().chain(&self.files) {
            if !is_safe_file_name(&entry.file) || entry.file == MANIFEST_FILE {
                return Err(format!("file name {:?} is not allowed", entry.file));
            }
            if !seen.insert(entry.file.as_str()) {
                return Err(format!("file {:?} is listed twice", entry.file));
            }
            if entry.xxh3_64.len() != 16 || u64::from_str_radix(&entry.xxh3_64, 16).is_err() {
                return Err(format!("checksum of {:?} is not 16 hex digits", entry.file));
            }
        }
        let mut total: u64 = 0;
        for shard in &self.shards {
            let rows = shard
                .rows
                .ok_or_else(|| format!("shard {:?} has no row count", shard.file))?;
            total = total
                .checked_add(rows)
                .ok_or_else(|| "row counts overflow".to_string())?;
        }
        if total != self.num_rows {
            return Err(format!(
                "shards hold {total} rows in all, manifest says {}",
                self.num_rows
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            format: FORMAT_NAME.into(),
            format_version: FORMAT_VERSION,
            codec: "zstd".into(),
            level: Some(1),
            kind: "arrow".into(),
            num_rows: 3,
            shards: vec![FileEntry {
                file: "data-00000-of-00001.arrow".into(),
                bytes: 10,
                xxh3_64: checksum_hex(7),
                rows: Some(3),
                raw_bytes: Some(30),
            }],
            files: vec![],
            created_by: "test".into(),
            generation: None,
        }
    }

    #[test]
    fn round_trips_through_json() {
        let m = sample();
        assert_eq!(Manifest::parse(m.to_json().as_bytes()).unwrap(), m);
    }

    #[test]
    fn refuses_names_outside_the_directory() {
        for bad in ["../x", "/etc/passwd", "a/b", ".hidden", "", "..", "a\\b"] {
            let mut m = sample();
            m.shards[0].file = bad.into();
            let err = Manifest::parse(m.to_json().as_bytes()).unwrap_err();
            assert!(err.contains("not allowed"), "{bad}: {err}");
        }
    }

    #[test]
    fn refuses_inconsistent_row_counts_and_versions() {
        let mut m = sample();
        m.num_rows = 4;
        assert!(Manifest::parse(m.to_json().as_bytes())
            .unwrap_err()
            .contains("3 rows"));
        let mut m = sample();
        m.format_version = FORMAT_VERSION + 1;
        assert!(Manifest::parse(m.to_json().as_bytes())
            .unwrap_err()
            .contains("not supported"));
        assert!(Manifest::parse(b"{not json")
            .unwrap_err()
            .contains("not a valid manifest"));
    }
}
