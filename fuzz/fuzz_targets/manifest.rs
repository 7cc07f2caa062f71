//! The manifest parser must turn any bytes into a manifest or an error, and
//! never accept a file name that leaves the checkpoint directory.
#![no_main]

use _native::checkpoint::manifest::{is_safe_file_name, Manifest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(manifest) = Manifest::parse(data) {
        for entry in manifest.shards.iter().chain(&manifest.files) {
            assert!(is_safe_file_name(&entry.file), "accepted {:?}", entry.file);
        }
        let rows: u64 = manifest.shards.iter().filter_map(|s| s.rows).sum();
        assert_eq!(rows, manifest.num_rows);
    }
});
