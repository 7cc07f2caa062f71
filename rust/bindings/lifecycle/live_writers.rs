//! The writers of this process's sinks, flushed once more by a C `atexit`
//! handler ([`flush_all_at_exit`], registered by [`super`] at import),
//! which runs after the interpreter is gone: a daemon thread may
//! have logged after Python's own exit hooks flushed, and its lines must
//! not stay in memory. The flush thread holds no Python object, so it can
//! still write then. Lines that cannot be written then (a full disk) are
//! lost: that is said on stderr, and the process exits non-zero.

use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Mutex, MutexGuard};

use super::exit_gate;
use crate::events::writer::{EventWriter, WriteError};

/// Addresses of writers that are alive (leaked ones, replaced in a
/// forked child, stay valid and are skipped as not this process's).
static LIVE: Mutex<Vec<usize>> = Mutex::new(Vec::new());

fn live() -> MutexGuard<'static, Vec<usize>> {
    LIVE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Lists `writer` for the flush at exit; [`remove`] it before freeing it.
pub(crate) fn add(writer: *mut EventWriter) {
    live().push(writer as usize);
}

/// Forgets `writer`; called before it is freed.
pub(crate) fn remove(writer: *mut EventWriter) {
    live().retain(|&address| address != writer as usize);
}

/// Flushes every listed writer this process owns (a forked child's copies
/// of its parent's writers are not its own): a C `atexit` handler.
pub(super) extern "C" fn flush_all_at_exit() {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        let writers = live();
        for &address in writers.iter() {
            // SAFETY: listed writers are alive: `remove` runs (under
            // this lock) before a writer is freed.
            let writer = unsafe { &*(address as *const EventWriter) };
            if writer.owned_by_current_process() {
                if let Err(error) = writer.flush(false) {
                    report_lost(writer, &error);
                }
            }
        }
    }));
}

/// Says on stderr that the lines `writer` could not write (`error`) are
/// lost, and makes the process exit non-zero: the writer is going away
/// (process exit, or its logger freed) with them still in memory.
pub(crate) fn report_lost(writer: &EventWriter, error: &WriteError) {
    let lines = writer.unwritten_lines();
    if lines == 0 {
        return;
    }
    let events = match lines {
        1 => "1 event was".to_string(),
        n => format!("{n} events were"),
    };
    let _ = writeln!(
        std::io::stderr(),
        "data_juicer_accel: {events} lost: they could not be written to {}: {}",
        writer.path().display(),
        error.message
    );
    exit_gate::fail_exit(false);
}
