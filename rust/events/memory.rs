//! `EventMemory`: the events a logger keeps between two reads of its
//! `events` deque: the newest `maxlen`, oldest first.
//!
//! A producer (every logging call) appends to `fresh`, a small bounded
//! lock-free ring (crossbeam's `ArrayQueue`: one compare-and-swap and one
//! store), and takes no lock. When the ring is full, the producer that
//! found it full moves it, oldest first, behind `held` (a deque behind a
//! mutex) and drops what is past `maxlen` there: one lock per
//! [`FRESH_CAPACITY`] events. Readers (`take`, a failed read's `put_back`,
//! the garbage collector's `visit`, which must see every entry and cannot
//! iterate the ring) take the same mutex and move the ring behind `held`
//! the same way. Everything in `held` is older than everything in `fresh`,
//! so the order of logging is kept; a read returns the newest `maxlen`.
//! Between spills up to `FRESH_CAPACITY` entries past `maxlen` stay alive.
//!
//! Entries are dropped with no lock held: dropping a Python object may run
//! Python code, which may log again.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};

use crossbeam_queue::ArrayQueue;

/// Entries a producer appends before one of them takes the lock to move
/// them behind `held`.
pub const FRESH_CAPACITY: usize = 256;

/// The newest `maxlen` entries appended, oldest first.
pub struct EventMemory<T> {
    /// Appended to by producers, lock-free.
    fresh: ArrayQueue<T>,
    /// Entries moved out of `fresh`, older than every entry still there.
    held: Mutex<VecDeque<T>>,
    /// How many entries are kept (`usize::MAX`: all).
    maxlen: AtomicUsize,
}

impl<T> EventMemory<T> {
    pub fn new(maxlen: usize) -> Self {
        Self::with_fresh_capacity(maxlen, FRESH_CAPACITY)
    }

    fn with_fresh_capacity(maxlen: usize, fresh_capacity: usize) -> Self {
        EventMemory {
            fresh: ArrayQueue::new(fresh_capacity),
            held: Mutex::new(VecDeque::new()),
            maxlen: AtomicUsize::new(maxlen),
        }
    }

    /// Keeps the newest `maxlen` from now on (`usize::MAX`: all).
    pub fn set_maxlen(&self, maxlen: usize) {
        self.maxlen.store(maxlen, Ordering::Relaxed);
    }

    /// Appends `entry`: lock-free unless the ring is full, then moves the
    /// ring behind `held` under its lock and drops what is past `maxlen`.
    pub fn push(&self, entry: T) {
        let Err(entry) = self.fresh.push(entry) else {
            return;
        };
        let evicted = {
            let mut held = self.lock_held();
            self.move_fresh_into(&mut held);
            held.push_back(entry);
            self.surplus_of(&mut held)
        };
        drop(evicted);
    }

    /// Takes every entry kept, oldest first, the newest `maxlen` of them.
    pub fn take(&self) -> VecDeque<T> {
        let mut taken = self.take_all();
        drop(self.surplus_of(&mut taken));
        taken
    }

    /// Puts back what [`take`](Self::take) returned (a read that failed),
    /// before anything appended since, keeping the newest `maxlen`.
    pub fn put_back(&self, mut taken: VecDeque<T>) {
        let evicted = {
            let mut held = self.lock_held();
            taken.append(&mut held);
            *held = taken;
            self.surplus_of(&mut held)
        };
        drop(evicted);
    }

    /// Takes every entry, `maxlen` ignored (for clearing).
    pub fn take_all(&self) -> VecDeque<T> {
        let mut held = self.lock_held();
        self.move_fresh_into(&mut held);
        std::mem::take(&mut *held)
    }

    /// Calls `visit` on every entry kept, oldest first; on none when
    /// another thread holds the lock now. Moves `fresh` behind `held` to
    /// see it, dropping and making nothing (the garbage collector calls
    /// this, and no Python code may run then).
    pub fn visit<E>(&self, visit: impl FnMut(&T) -> Result<(), E>) -> Result<(), E> {
        let mut held = match self.held.try_lock() {
            Ok(held) => held,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return Ok(()),
        };
        self.move_fresh_into(&mut held);
        held.iter().try_for_each(visit)
    }

    /// Moves the entries in `fresh` now (not those appended meanwhile, so
    /// that busy producers cannot keep the lock holder here) behind `into`.
    fn move_fresh_into(&self, into: &mut VecDeque<T>) {
        for _ in 0..self.fresh.len() {
            match self.fresh.pop() {
                Some(entry) => into.push_back(entry),
                None => break,
            }
        }
    }

    /// Removes the oldest entries past `maxlen` from `entries`, for the
    /// caller to drop once it holds no lock.
    fn surplus_of(&self, entries: &mut VecDeque<T>) -> Vec<T> {
        let surplus = entries
            .len()
            .saturating_sub(self.maxlen.load(Ordering::Relaxed));
        entries.drain(..surplus).collect()
    }

    fn lock_held(&self) -> MutexGuard<'_, VecDeque<T>> {
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// An entry that counts the live ones, to see what the memory keeps.
    struct Entry {
        value: u64,
        live: Arc<AtomicUsize>,
    }

    impl Entry {
        fn new(value: u64, live: &Arc<AtomicUsize>) -> Self {
            live.fetch_add(1, Ordering::Relaxed);
            Entry {
                value,
                live: Arc::clone(live),
            }
        }
    }

    impl Drop for Entry {
        fn drop(&mut self) {
            self.live.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn values(entries: VecDeque<Entry>) -> Vec<u64> {
        entries.iter().map(|entry| entry.value).collect()
    }

    /// A memory whose ring holds two entries, so that tests spill it.
    fn small(maxlen: usize) -> (EventMemory<Entry>, Arc<AtomicUsize>) {
        let live = Arc::new(AtomicUsize::new(0));
        (EventMemory::with_fresh_capacity(maxlen, 2), live)
    }

    #[test]
    fn keeps_the_newest_maxlen_in_order_and_drops_the_rest() {
        let (memory, live) = small(3);
        (0..10).for_each(|i| memory.push(Entry::new(i, &live)));
        assert!(live.load(Ordering::Relaxed) <= 3 + 2);
        assert_eq!(values(memory.take()), [7, 8, 9]);
        assert_eq!(live.load(Ordering::Relaxed), 0);
        assert!(memory.take().is_empty());
    }

    #[test]
    fn a_failed_read_is_put_back_before_what_came_since() {
        let (memory, live) = small(4);
        (0..3).for_each(|i| memory.push(Entry::new(i, &live)));
        let first = memory.take();
        (3..5).for_each(|i| memory.push(Entry::new(i, &live)));
        memory.put_back(first);
        assert_eq!(values(memory.take()), [1, 2, 3, 4]);
    }

    #[test]
    fn visiting_sees_everything_and_changes_nothing_read() {
        let (memory, live) = small(3);
        (0..3).for_each(|i| memory.push(Entry::new(i, &live)));
        let mut seen = Vec::new();
        let visited = memory.visit(|entry| {
            seen.push(entry.value);
            Ok::<_, ()>(())
        });
        assert_eq!((visited, seen), (Ok(()), vec![0, 1, 2]));
        (3..5).for_each(|i| memory.push(Entry::new(i, &live)));
        assert_eq!(values(memory.take()), [2, 3, 4]);
    }

    #[test]
    fn a_changed_maxlen_applies_from_the_next_read() {
        let (memory, live) = small(usize::MAX);
        (0..100).for_each(|i| memory.push(Entry::new(i, &live)));
        assert_eq!(live.load(Ordering::Relaxed), 100);
        memory.set_maxlen(2);
        assert_eq!(values(memory.take()), [98, 99]);
    }

    /// Producers in several threads, spilling the ring all the time, and a
    /// reader taking and visiting meanwhile: nothing is lost, and each
    /// producer's entries are read in the order it appended them.
    #[test]
    fn concurrent_producers_keep_their_order_and_lose_nothing() {
        const THREADS: u64 = 4;
        const PER_THREAD: u64 = 20_000;
        let (memory, live) = small(usize::MAX);
        let memory = Arc::new(memory);
        let producers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (memory, live) = (Arc::clone(&memory), Arc::clone(&live));
                std::thread::spawn(move || {
                    (0..PER_THREAD).for_each(|i| memory.push(Entry::new(t << 32 | i, &live)))
                })
            })
            .collect();
        let mut read = Vec::new();
        while producers.iter().any(|p| !p.is_finished()) {
            read.extend(values(memory.take()));
            let _ = memory.visit(|_| Ok::<_, ()>(()));
        }
        producers.into_iter().for_each(|p| p.join().unwrap());
        read.extend(values(memory.take()));
        assert_eq!(read.len() as u64, THREADS * PER_THREAD);
        for t in 0..THREADS {
            let own: Vec<u64> = read
                .iter()
                .filter(|&&value| value >> 32 == t)
                .map(|&value| value & 0xffff_ffff)
                .collect();
            assert_eq!(own, (0..PER_THREAD).collect::<Vec<_>>(), "thread {t}");
        }
    }

    /// With `maxlen`, concurrent producers keep memory bounded, and a read
    /// returns the newest `maxlen`: each thread's newest, contiguous.
    #[test]
    fn concurrent_producers_stay_within_maxlen() {
        const THREADS: u64 = 4;
        const PER_THREAD: u64 = 20_000;
        const MAXLEN: usize = 1_000;
        let (memory, live) = small(MAXLEN);
        let memory = Arc::new(memory);
        let producers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (memory, live) = (Arc::clone(&memory), Arc::clone(&live));
                std::thread::spawn(move || {
                    for i in 0..PER_THREAD {
                        memory.push(Entry::new(t << 32 | i, &live));
                        // The ring, one entry in each producer's hands, and
                        // what a spill has not dropped yet.
                        assert!(
                            live.load(Ordering::Relaxed) <= 2 * MAXLEN + 2 + 2 * THREADS as usize
                        );
                    }
                })
            })
            .collect();
        producers.into_iter().for_each(|p| p.join().unwrap());
        let kept = values(memory.take());
        assert_eq!(kept.len(), MAXLEN);
        assert_eq!(live.load(Ordering::Relaxed), 0);
        for t in 0..THREADS {
            let own: Vec<u64> = kept
                .iter()
                .filter(|&&value| value >> 32 == t)
                .map(|&value| value & 0xffff_ffff)
                .collect();
            assert!(own.windows(2).all(|w| w[1] == w[0] + 1), "thread {t}");
        }
    }
}
