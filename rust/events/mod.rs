//! Job-event core: double buffer filled with atomics, flush thread, JSON lines.
//!
//! * [`json`]: the byte-level pieces of `json.dumps` output (string escaping
//!   with `ensure_ascii`, Python's float `repr`), so lines match the
//!   reference's byte for byte.
//! * [`writer`]: two preallocated buffers that producers fill without locks
//!   (an atomic add reserves room for a line), written by one background
//!   thread into the JSONL file, one `write()` per batch of whole lines.
//! * [`analysis`]: a linear-time resumption analysis over a JSONL event log.
//!
//! Nothing here touches Python; the PyO3 layer lives in `bindings::events`.

pub mod analysis;
pub mod json;
pub mod lines;
pub mod writer;
