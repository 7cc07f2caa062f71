//! The `pthread_atfork` handlers of the process, all registered here.
//!
//! They run for every `fork()`, Python's `os.fork` or a C library's, in a
//! child that has only the forking thread. A child handler may make only
//! async-signal-safe calls (another thread may have held any lock at the
//! fork); each one below stores atomics or makes plain system calls.
//!
//! * [`exit_gate::reset_in_forked_child`]: the child holds only the
//!   forking thread's native calls in flight, and none of its parent's exit
//!   duty (the gate open again, no loss recorded).
//! * [`refresh_pid_after_fork`]: the cached pid that stamps events and
//!   tells a writer's owner becomes the child's.
//! * [`lock_fork_guard`] / [`unlock_fork_guard`] /
//!   [`release_locks_in_child`]: a fork waits while a checkpoint lock is
//!   being taken, and the child's copies of held lock descriptors point at
//!   /dev/null, so a child never keeps its parent's `flock`.
//!
//! [`refresh_pid_after_fork`]: crate::events::writer::refresh_pid_after_fork
//! [`lock_fork_guard`]: crate::checkpoint::commit::lock_fork_guard
//! [`unlock_fork_guard`]: crate::checkpoint::commit::unlock_fork_guard
//! [`release_locks_in_child`]: crate::checkpoint::commit::release_locks_in_child

use std::sync::Once;

use super::exit_gate;
use crate::checkpoint::commit::{lock_fork_guard, release_locks_in_child, unlock_fork_guard};
use crate::events::writer::refresh_pid_after_fork;

/// Registers the handlers, once per process. Child handlers run in the
/// order registered; none depends on another.
pub(super) fn register_handlers() {
    static REGISTERED: Once = Once::new();
    REGISTERED.call_once(|| {
        // SAFETY: plain functions without captured state, which make only
        // async-signal-safe calls (see the module doc).
        unsafe {
            libc::pthread_atfork(None, None, Some(exit_gate::reset_in_forked_child));
            libc::pthread_atfork(None, None, Some(refresh_pid_after_fork));
            libc::pthread_atfork(
                Some(lock_fork_guard),
                Some(unlock_fork_guard),
                Some(release_locks_in_child),
            );
        }
    });
}

#[cfg(test)]
mod tests {
    use std::ffi::c_int;

    use super::register_handlers;
    use crate::checkpoint::{CheckpointError, Staging};
    use crate::events::writer::current_pid;

    /// Forks a child that runs `child` (async-signal-safe work only: the
    /// test harness has other threads) and exits with its status.
    fn fork_with(child: impl FnOnce() -> c_int) -> libc::pid_t {
        // SAFETY: the child runs only `child` and `_exit`.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let status = child();
            // SAFETY: ends the child without running the parent's exit hooks.
            unsafe { libc::_exit(status) };
        }
        pid
    }

    /// The exit status of the child `pid`.
    fn wait_for(pid: libc::pid_t) -> c_int {
        let mut status = 0;
        // SAFETY: `pid` is our child; `status` is a valid out pointer.
        let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(waited, pid);
        assert!(libc::WIFEXITED(status), "child did not exit: {status}");
        libc::WEXITSTATUS(status)
    }

    #[test]
    fn a_forked_child_stamps_events_with_its_own_pid() {
        register_handlers();
        let parent = current_pid();
        let pid = fork_with(|| {
            // SAFETY: getpid has no preconditions.
            let own = unsafe { libc::getpid() } as u32;
            c_int::from(current_pid() != own)
        });
        assert_eq!(wait_for(pid), 0, "the child kept its parent's pid");
        assert_eq!(current_pid(), parent);
    }

    #[test]
    fn a_child_forked_during_a_save_does_not_keep_the_checkpoint_lock() {
        register_handlers();
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::create(dir.path()).unwrap();
        let mut go = [0 as c_int; 2];
        // SAFETY: `go` has room for the two descriptors.
        assert_eq!(unsafe { libc::pipe(go.as_mut_ptr()) }, 0);
        let pid = fork_with(|| {
            let mut byte = 0u8;
            // SAFETY: waits, holding its copies of the descriptors, until
            // the parent has taken the lock again (or closed the pipe).
            unsafe { libc::read(go[0], (&mut byte as *mut u8).cast(), 1) };
            0
        });
        drop(staging);
        let again = Staging::create(dir.path());
        // SAFETY: lets the child end; the descriptors are ours.
        unsafe {
            libc::write(go[1], b"x".as_ptr().cast(), 1);
            libc::close(go[0]);
            libc::close(go[1]);
        }
        assert_eq!(wait_for(pid), 0);
        assert!(
            !matches!(again, Err(CheckpointError::Locked { .. })),
            "the child kept the lock: {:?}",
            again.err()
        );
        again.unwrap();
    }
}
