//! The shard reader must turn any bytes into record batches or an error:
//! no panic, no out-of-bounds read, no allocation beyond the declared limit.
#![no_main]

use std::path::Path;

use _native::checkpoint::reader::decode_shard_bytes;
use libfuzzer_sys::fuzz_target;

/// Far below the fuzzer's 2 GB RSS limit: a decompression bomb must be refused.
const MAX_DECODED_BYTES: u64 = 256 << 20;

fuzz_target!(|data: &[u8]| {
    let _ = decode_shard_bytes(Path::new("fuzz.arrow"), data.to_vec(), MAX_DECODED_BYTES);
});
