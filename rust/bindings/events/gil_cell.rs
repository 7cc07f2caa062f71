//! `GilCell`: a value shared between threads that only the thread holding
//! the GIL reads or changes, so that it needs no lock of its own. Its
//! accessors take a `Python<'_>` token: the type system proves the GIL is
//! held. This module is built for GIL-enabled CPython only (abi3, which
//! the free-threaded build cannot load), where a token means the GIL.

use std::cell::{Cell, UnsafeCell};

use pyo3::Python;

/// A value guarded by the GIL. A borrow is a closure that must not run
/// Python code (which could release the GIL and let another thread in);
/// a borrow attempted while one is active (re-entry from a garbage
/// collection, say) gets `None` instead of a second reference.
pub(super) struct GilCell<T> {
    value: UnsafeCell<T>,
    /// Set while a closure holds the value. Not atomic: only the thread
    /// holding the GIL reads or writes it.
    borrowed: Cell<bool>,
}

// SAFETY: every access to `value` and `borrowed` happens with the GIL held:
// `with` requires a `Python<'_>` token, and `with_in_gc`'s caller promises
// a garbage collection, which CPython runs with the GIL held. The GIL
// admits one thread at a time and its release and acquisition order each
// thread's accesses after the previous holder's, so the cell is never
// touched by two threads at once. A borrow runs no Python code, so the
// GIL is not released mid-borrow and a fork (which the forking thread
// makes holding the GIL) never finds the cell borrowed in the child.
// `T: Send` because the value is handed from thread to thread.
unsafe impl<T: Send> Sync for GilCell<T> {}

impl<T> GilCell<T> {
    pub(super) fn new(value: T) -> Self {
        GilCell {
            value: UnsafeCell::new(value),
            borrowed: Cell::new(false),
        }
    }

    /// Runs `f` on the value, or returns `None` if it is borrowed already.
    /// `f` must not run Python code (drop Python objects after it returns).
    pub(super) fn with<R>(&self, _py: Python<'_>, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        // SAFETY: the token proves this thread holds the GIL.
        unsafe { self.borrow_with(|value| f(value)) }
    }

    /// [`with`](Self::with) for a garbage collector's `tp_traverse`, which
    /// pyo3 gives no token (safe access to the interpreter is forbidden
    /// there) and which only reads.
    ///
    /// # Safety
    ///
    /// The caller runs inside a garbage collection, which CPython runs in
    /// the thread holding the GIL.
    pub(super) unsafe fn with_in_gc<R>(&self, f: impl FnOnce(&T) -> R) -> Option<R> {
        // SAFETY: the caller's promise: the GIL is held by this thread.
        unsafe { self.borrow_with(|value| f(value)) }
    }

    /// # Safety
    ///
    /// The calling thread holds the GIL.
    unsafe fn borrow_with<R>(&self, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        if self.borrowed.replace(true) {
            return None;
        }
        let _release = Release(&self.borrowed);
        // SAFETY: the GIL excludes other threads and `borrowed` excludes
        // re-entry in this one, so this is the only reference.
        Some(f(unsafe { &mut *self.value.get() }))
    }
}

/// Clears the borrowed flag when a borrow ends, even by a panic.
struct Release<'a>(&'a Cell<bool>);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

#[cfg(test)]
mod tests {
    use std::panic::{catch_unwind, AssertUnwindSafe};

    use pyo3::Python;

    use super::GilCell;

    #[test]
    fn a_borrow_within_a_borrow_gets_none_and_the_value_stays_whole() {
        Python::initialize();
        Python::attach(|py| {
            let cell = GilCell::new(vec![1]);
            let inner = cell.with(py, |outer| {
                outer.push(2);
                cell.with(py, |again| again.push(3))
            });
            assert_eq!(inner, Some(None));
            // SAFETY: the GIL is held (attached above).
            let seen = unsafe { cell.with_in_gc(|value| value.clone()) };
            assert_eq!(seen, Some(vec![1, 2]));
        });
    }

    #[test]
    fn a_panic_inside_a_borrow_ends_the_borrow() {
        Python::initialize();
        Python::attach(|py| {
            let cell = GilCell::new(0);
            let panicked = catch_unwind(AssertUnwindSafe(|| {
                cell.with(py, |_| panic!("inside the borrow"));
            }));
            assert!(panicked.is_err());
            assert_eq!(cell.with(py, |value| *value + 1), Some(1));
        });
    }
}
