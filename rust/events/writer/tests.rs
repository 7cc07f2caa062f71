//! Tests of the event writer: ordering, bounds, failures, flips under load.

use super::*;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// A writer of `name` (a path relative to a fresh temporary directory,
/// which the caller keeps alive) and that file's path.
fn open_in_tempdir(name: &str, config: WriterConfig) -> (tempfile::TempDir, PathBuf, EventWriter) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    let writer = EventWriter::open(&path, config).unwrap();
    (dir, path, writer)
}

#[test]
fn file_is_created_lazily_and_flush_writes_everything() {
    let (_dir, path, writer) = open_in_tempdir("events.jsonl", WriterConfig::default());
    assert!(!path.exists());
    for i in 0..100 {
        writer
            .try_push(format!("{{\"i\": {i}}}\n").into_bytes())
            .unwrap();
    }
    writer.flush(true).unwrap();
    let lines = lines_of(&path);
    assert_eq!(lines.len(), 100);
    assert_eq!(lines[99], "{\"i\": 99}");
    assert!(writer.batches_written() <= 100);
}

#[test]
fn lines_are_written_after_the_interval_without_flush() {
    let config = WriterConfig {
        flush_interval: Duration::from_millis(10),
        ..WriterConfig::default()
    };
    let (_dir, path, writer) = open_in_tempdir("events.jsonl", config);
    writer.try_push(b"{}\n".to_vec()).unwrap();
    // Poll instead of asserting a duration: the tick must come eventually.
    let start = Instant::now();
    while lines_of(&path).is_empty() && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(lines_of(&path), vec!["{}"]);
    drop(writer);
}

#[test]
fn many_producers_keep_their_order_and_lose_nothing() {
    let config = WriterConfig {
        queue_capacity: 16,
        max_batch_bytes: 512,
        ..WriterConfig::default()
    };
    let (_dir, path, writer) = open_in_tempdir("events.jsonl", config);
    let writer = Arc::new(writer);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let writer = Arc::clone(&writer);
            std::thread::spawn(move || {
                for i in 0..2000 {
                    let line = format!("{t} {i}\n").into_bytes();
                    match writer.try_push(line) {
                        Ok(()) => {}
                        Err(PushError::Full(line)) => writer.push_blocking(line).unwrap(),
                        Err(other) => panic!("{other:?}"),
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    writer.close().unwrap();
    let mut next = [0usize; 4];
    for line in lines_of(&path) {
        let (t, i) = line.split_once(' ').unwrap();
        let (t, i): (usize, usize) = (t.parse().unwrap(), i.parse().unwrap());
        assert_eq!(next[t], i, "thread {t} out of order");
        next[t] += 1;
    }
    assert_eq!(next, [2000; 4]);
}

#[test]
fn a_failed_write_is_reported_and_kept_for_retry() {
    let dir = tempfile::tempdir().unwrap();
    let missing_dir = dir.path().join("gone");
    let path = missing_dir.join("events.jsonl");
    let writer = EventWriter::open(&path, WriterConfig::default()).unwrap();
    writer.try_push(b"{\"kept\": true}\n".to_vec()).unwrap();
    let error = writer.flush(false).unwrap_err();
    assert!(error.to_string().contains("events.jsonl"), "{error}");
    assert_eq!(error.errno, Some(libc::ENOENT));
    assert!(matches!(
        writer.try_push(b"x\n".to_vec()),
        Err(PushError::Failed(_))
    ));
    std::fs::create_dir(&missing_dir).unwrap();
    writer.flush(false).unwrap();
    assert_eq!(lines_of(&path), vec!["{\"kept\": true}"]);
    assert!(writer.error().is_none());
    writer.try_push(b"{}\n".to_vec()).unwrap();
}

#[test]
fn written_line_buffers_come_back_for_reuse() {
    let (_dir, _path, writer) = open_in_tempdir("e.jsonl", WriterConfig::default());
    let mut line = writer.line_buffer();
    line.extend_from_slice(b"{}\n");
    let address = line.as_ptr();
    writer.try_push(line).unwrap();
    writer.flush(false).unwrap();
    let reused = writer.line_buffer();
    assert!(reused.is_empty() && reused.capacity() >= 3);
    assert_eq!(
        reused.as_ptr(),
        address,
        "the written buffer is handed out again"
    );
}

/// Pushes `lines` lines of thread `t` ("t i" plus padding), waiting for
/// room when the buffers are full.
fn push_numbered(writer: &EventWriter, t: usize, lines: usize, padding: impl Fn(usize) -> usize) {
    for i in 0..lines {
        let mut line = format!("{t} {i} ").into_bytes();
        line.resize(line.len() + padding(i), b'x');
        line.push(b'\n');
        match writer.try_push(line) {
            Ok(()) => {}
            Err(PushError::Full(line)) => writer.push_blocking(line).unwrap(),
            Err(other) => panic!("{other:?}"),
        }
    }
}

/// Every thread's lines are in the file, whole, once each, in its order.
fn assert_all_in_order(path: &Path, threads: usize, lines: usize) {
    let mut next = vec![0usize; threads];
    for line in lines_of(path) {
        let mut parts = line.split(' ');
        let t: usize = parts.next().unwrap().parse().unwrap();
        let i: usize = parts.next().unwrap().parse().unwrap();
        assert!(
            parts.next().unwrap().bytes().all(|b| b == b'x'),
            "torn line {line:?}"
        );
        assert_eq!(next[t], i, "thread {t} out of order");
        next[t] += 1;
    }
    assert_eq!(next, vec![lines; threads]);
}

/// Small buffers and many threads: producers keep meeting full buffers,
/// flips and lines longer than a buffer, and nothing is lost, torn or
/// reordered within a thread.
#[test]
fn many_threads_through_small_buffers_lose_nothing() {
    for (buffer_bytes, queue_capacity) in [(64, 1000), (256, 3), (4096, 1000)] {
        let config = WriterConfig {
            buffer_bytes,
            queue_capacity,
            max_batch_bytes: buffer_bytes / 2,
            flush_interval: Duration::from_millis(1),
        };
        let (_dir, path, writer) = open_in_tempdir("events.jsonl", config);
        let writer = Arc::new(writer);
        let (threads, lines) = (8, 1500);
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let writer = Arc::clone(&writer);
                // Some lines longer than a buffer, most shorter.
                std::thread::spawn(move || {
                    push_numbered(
                        &writer,
                        t,
                        lines,
                        |i| if i % 97 == 0 { 300 } else { i % 13 },
                    )
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        writer.close().unwrap();
        assert_all_in_order(&path, threads, lines);
    }
}

/// Concurrent flushes and a close racing the producers: every line a
/// push accepted is in the file; pushes after the close are refused.
#[test]
fn flushes_and_close_racing_producers_keep_every_accepted_line() {
    let config = WriterConfig {
        buffer_bytes: 512,
        max_batch_bytes: 256,
        ..WriterConfig::default()
    };
    let (_dir, path, writer) = open_in_tempdir("events.jsonl", config);
    let writer = Arc::new(writer);
    let accepted = Arc::new(AtomicU64::new(0));
    let producers: Vec<_> = (0..4)
        .map(|t| {
            let (writer, accepted) = (Arc::clone(&writer), Arc::clone(&accepted));
            std::thread::spawn(move || {
                for i in 0.. {
                    let line = format!("{t} {i} \n").into_bytes();
                    let pushed = match writer.try_push(line) {
                        Err(PushError::Full(line)) => writer.push_blocking(line),
                        other => other,
                    };
                    match pushed {
                        Ok(()) => accepted.fetch_add(1, Ordering::Relaxed),
                        Err(PushError::Closed) => return,
                        Err(other) => panic!("{other:?}"),
                    };
                }
            })
        })
        .collect();
    for _ in 0..50 {
        writer.flush(false).unwrap();
    }
    writer.flush(true).unwrap();
    writer.close().unwrap();
    for producer in producers {
        producer.join().unwrap();
    }
    let lines = lines_of(&path);
    assert_eq!(lines.len() as u64, accepted.load(Ordering::Relaxed));
    let mut next = [0usize; 4];
    for line in lines {
        let (t, rest) = line.split_once(' ').unwrap();
        let t: usize = t.parse().unwrap();
        assert_eq!(rest.trim_end().parse::<usize>().unwrap(), next[t]);
        next[t] += 1;
    }
}

#[test]
fn a_line_longer_than_the_buffer_is_written_after_the_ones_before() {
    let config = WriterConfig {
        buffer_bytes: 16,
        flush_interval: Duration::from_secs(3600),
        ..WriterConfig::default()
    };
    let (_dir, path, writer) = open_in_tempdir("events.jsonl", config);
    writer.try_push(b"short\n".to_vec()).unwrap();
    let long = format!("{}\n", "y".repeat(100)).into_bytes();
    let Err(PushError::Full(long)) = writer.try_push(long) else {
        panic!("a line longer than the buffer fits it");
    };
    writer.push_blocking(long).unwrap();
    writer.try_push(b"after\n".to_vec()).unwrap();
    writer.flush(false).unwrap();
    assert_eq!(
        lines_of(&path),
        vec!["short".to_string(), "y".repeat(100), "after".to_string()]
    );
}

#[test]
fn a_full_queue_gets_room_back_once_its_lines_are_written() {
    let config = WriterConfig {
        queue_capacity: 2,
        flush_interval: Duration::from_secs(3600),
        ..WriterConfig::default()
    };
    let (_dir, path, writer) = open_in_tempdir("events.jsonl", config);
    writer.try_push(b"1\n".to_vec()).unwrap();
    writer.try_push(b"2\n".to_vec()).unwrap();
    let Err(PushError::Full(line)) = writer.try_push(b"3\n".to_vec()) else {
        panic!("a third line fits a queue of two");
    };
    // The waiting producer wakes the flush thread, which writes the
    // two lines long before the hour-long interval.
    writer.push_blocking(line).unwrap();
    writer.flush(false).unwrap();
    assert_eq!(lines_of(&path), vec!["1", "2", "3"]);
}

#[test]
fn a_producer_waiting_for_room_gets_the_write_error() {
    let config = WriterConfig {
        queue_capacity: 1,
        ..WriterConfig::default()
    };
    let (dir, path, writer) = open_in_tempdir("gone/events.jsonl", config);
    writer.try_push(b"{\"kept\": true}\n".to_vec()).unwrap();
    // Rather than waiting forever for room that a failing write never
    // frees, the producer is told why.
    match writer.push_blocking(b"{}\n".to_vec()) {
        Err(PushError::Failed(error)) => assert_eq!(error.errno, Some(libc::ENOENT)),
        other => panic!("{other:?}"),
    }
    std::fs::create_dir(dir.path().join("gone")).unwrap();
    writer.flush(false).unwrap();
    assert_eq!(lines_of(&path), vec!["{\"kept\": true}"]);
}

#[test]
fn close_is_idempotent_and_refuses_later_lines() {
    let (_dir, path, writer) = open_in_tempdir("events.jsonl", WriterConfig::default());
    writer.try_push(b"{}\n".to_vec()).unwrap();
    writer.close().unwrap();
    writer.close().unwrap();
    assert!(matches!(
        writer.try_push(b"{}\n".to_vec()),
        Err(PushError::Closed)
    ));
    writer.flush(true).unwrap();
    assert_eq!(lines_of(&path).len(), 1);
}

#[test]
fn a_failed_write_counts_the_lines_it_left_unwritten() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing-dir").join("events.jsonl");
    let writer = EventWriter::open(&path, WriterConfig::default()).unwrap();
    for i in 0..3 {
        writer
            .try_push(format!("{{\"i\": {i}}}\n").into_bytes())
            .unwrap();
    }
    assert!(writer.flush(false).is_err());
    assert_eq!(writer.unwritten_lines(), 3);
    assert!(writer.close().is_err());
    assert!(
        writer.close().is_err(),
        "a second close still reports the loss"
    );
    assert_eq!(writer.unwritten_lines(), 3);
}
