//! Thread ids and generated event ids, as the reference makes them.

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::events::writer::current_pid;

/// `threading.get_ident()`: CPython returns `pthread_self()` on POSIX.
pub(super) fn current_thread_ident() -> u64 {
    // SAFETY: pthread_self has no preconditions.
    unsafe { libc::pthread_self() as u64 }
}

/// `f"{event_type.value}_{int(time.time())}_{uuid4().hex[:8]}"`, as the
/// reference names events logged without an id.
pub(super) fn generated_event_id(type_name: &str, now: f64) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut seconds = itoa::Buffer::new();
    let seconds = seconds.format(now as i64);
    let mut id = String::with_capacity(type_name.len() + seconds.len() + 10);
    id.push_str(type_name);
    id.push('_');
    id.push_str(seconds);
    id.push('_');
    let random = random_u32();
    for shift in (0..8).rev() {
        id.push(char::from(HEX[((random >> (shift * 4)) & 0xf) as usize]));
    }
    id
}

/// Eight hex digits for generated event ids (the reference uses
/// `uuid4().hex[:8]`); a per-thread xorshift seeded from time, pid and the
/// thread, enough for ids that only need to differ. A forked child's copy
/// of the state is reseeded (its pid differs from the seeding one), or
/// parent and child would generate the same ids.
fn random_u32() -> u32 {
    thread_local! {
        /// The xorshift state and the pid that seeded it.
        static STATE: Cell<(u64, u32)> = const { Cell::new((0, 0)) };
    }
    STATE.with(|state| {
        let (mut x, seeded_by) = state.get();
        let pid = current_pid();
        if x == 0 || seeded_by != pid {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            x = nanos ^ (u64::from(pid) << 32) ^ current_thread_ident() | 1;
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set((x, pid));
        (x >> 16) as u32
    })
}
