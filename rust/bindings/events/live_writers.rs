//! The writers of this process's sinks, flushed once more by a C `atexit`
//! handler, which runs after the interpreter is gone: a daemon thread may
//! have logged after Python's own exit hooks flushed, and its lines must
//! not stay in memory. The flush thread holds no Python object, so it can
//! still write then.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Mutex, MutexGuard, Once};

use crate::events::writer::EventWriter;

/// Addresses of writers that are alive (leaked ones, replaced in a
/// forked child, stay valid and are skipped as not this process's).
static LIVE: Mutex<Vec<usize>> = Mutex::new(Vec::new());
static FLUSH_AT_EXIT: Once = Once::new();

fn live() -> MutexGuard<'static, Vec<usize>> {
    LIVE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(super) fn add(writer: *mut EventWriter) {
    FLUSH_AT_EXIT.call_once(|| {
        // SAFETY: registers a plain function without captured state.
        unsafe { libc::atexit(flush_all_at_exit) };
    });
    live().push(writer as usize);
}

/// Forgets `writer`; called before it is freed.
pub(super) fn remove(writer: *mut EventWriter) {
    live().retain(|&address| address != writer as usize);
}

extern "C" fn flush_all_at_exit() {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        let writers = live();
        for &address in writers.iter() {
            // SAFETY: listed writers are alive: `remove` runs (under
            // this lock) before a writer is freed.
            let writer = unsafe { &*(address as *const EventWriter) };
            if writer.owned_by_current_process() {
                let _ = writer.flush(false);
            }
        }
    }));
}
