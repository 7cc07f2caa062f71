//! Job-event core: lock-free queue, flush thread, JSON lines.
