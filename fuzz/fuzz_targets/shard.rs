//! The shard reader must turn any bytes into record batches or an error:
//! no panic escaping it, no out-of-bounds read, no allocation beyond the
//! declared limit. arrow-rs asserts on some malformed input; the reader
//! catches that and reports a corrupt file, so the hook libfuzzer-sys
//! installs (abort on any panic, even a caught one) is replaced by a quiet
//! one: a panic that escapes still aborts through libfuzzer-sys's own check.
#![no_main]

use std::path::Path;

use _native::checkpoint::reader::decode_shard_bytes;
use libfuzzer_sys::fuzz_target;

/// Far below the fuzzer's 2 GB RSS limit: a decompression bomb must be refused.
const MAX_DECODED_BYTES: u64 = 256 << 20;

fuzz_target!(init: std::panic::set_hook(Box::new(|_| {})), |data: &[u8]| {
    let _ = decode_shard_bytes(Path::new("fuzz.arrow"), data.to_vec(), MAX_DECODED_BYTES);
});
