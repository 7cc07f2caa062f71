//! Tests of the resumption analysis against what the reference computes.

use super::*;

fn line(json: &str) -> String {
    format!("{json}\n")
}

fn sample_log() -> String {
    [
        r#"{"event_type": "job_start", "timestamp": 1.0}"#,
        r#"{"event_type": "partition_start", "timestamp": 2.0, "partition_id": 0}"#,
        r#"{"event_type": "partition_start", "timestamp": 2.5, "partition_id": 1}"#,
        r#"{"event_type": "op_start", "timestamp": 3.0, "partition_id": 0, "operation_name": "a", "operation_idx": 0}"#,
        r#"{"event_type": "op_complete", "timestamp": 4.0, "partition_id": 0}"#,
        r#"{"event_type": "partition_complete", "timestamp": 5.0, "partition_id": 0, "metadata": {"success": true, "duration_seconds": 3.0, "output_path": "/o/0"}}"#,
        r#"{"event_type": "partition_failed", "timestamp": 5.5, "partition_id": 1}"#,
        r#"{"event_type": "partition_complete", "timestamp": 6.0, "partition_id": 1, "metadata": {"success": false, "error": "boom"}}"#,
        r#"{"event_type": "checkpoint_save", "timestamp": 7.0, "partition_id": 1, "metadata": {"checkpoint_path": "/c/1"}}"#,
        r#"{"event_type": "partition_start", "timestamp": 8.0, "partition_id": 0}"#,
    ]
    .iter()
    .map(|l| line(l))
    .collect()
}

#[test]
fn folds_partitions_like_the_reference() {
    let analysis = analyze_bytes(sample_log().as_bytes());
    assert_eq!(analysis.total_events, 10);
    assert_eq!(analysis.job_status(), "completed_with_failures");
    assert_eq!(analysis.first_job_start, Some(Some("1.0".to_string())));
    assert_eq!(
        analysis.latest_checkpoint(),
        Some(&Some("\"/c/1\"".to_string()))
    );
    let partitions = analysis.partitions();
    assert_eq!(
        partitions.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        ["0", "1"]
    );
    let first = partitions[0];
    assert_eq!(first.status(), "completed");
    assert_eq!(first.start_time().as_deref(), Some("8.0"));
    assert!(first.last_op_completed());
    assert_eq!(
        first.last_op_start().unwrap().name.as_deref(),
        Some("\"a\"")
    );
    let second = partitions[1];
    assert_eq!(second.status(), "failed");
    assert_eq!(second.failure_count, 1);
    assert_eq!(
        second.latest_complete().unwrap().error.as_deref(),
        Some("\"boom\"")
    );
}

#[test]
fn chunked_folding_equals_one_pass() {
    let log = sample_log().repeat(50);
    let whole = analyze_chunk(0, log.as_bytes());
    for parts in 2..6 {
        let chunks = split_at_lines(log.as_bytes(), parts);
        assert_eq!(chunks.concat(), log.as_bytes());
        let mut merged = analyze_chunk(0, chunks[0]);
        for (i, chunk) in chunks.iter().enumerate().skip(1) {
            merged.merge_later(analyze_chunk(i, chunk));
        }
        assert_eq!(merged.total_events, whole.total_events);
        let ids = |a: &Analysis| {
            a.partitions()
                .iter()
                .map(|p| (p.id.clone(), p.start_time()))
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&merged), ids(&whole));
    }
}

#[test]
fn ties_keep_the_first_maximum() {
    let log = [
        r#"{"event_type": "partition_start", "timestamp": 1, "partition_id": 3}"#,
        r#"{"event_type": "op_start", "timestamp": 2, "partition_id": 3, "operation_name": "first"}"#,
        r#"{"event_type": "op_start", "timestamp": 2, "partition_id": 3.0, "operation_name": "second"}"#,
    ]
    .map(line)
    .concat();
    let analysis = analyze_bytes(log.as_bytes());
    let op = analysis.partitions()[0]
        .last_op_start()
        .unwrap()
        .name
        .clone();
    assert_eq!(op.as_deref(), Some("\"first\""));
}

#[test]
fn broken_and_partial_lines_are_skipped() {
    let log = format!(
        "{}\n\nnot json\n{}\n{{\"event_type\": \"job_comp",
        r#"{"event_type": "job_start", "timestamp": NaN, "metadata": {"x": -Infinity, "s": "NaN"}}"#,
        r#"{"event_type": "op_start"}"#
    );
    let analysis = analyze_bytes(log.as_bytes());
    assert!(
        analysis.needs_reference_reading(),
        "NaN is Python's to read"
    );
    let log = log.replace("NaN", "1.5").replace("-Infinity", "2");
    let analysis = analyze_bytes(log.as_bytes());
    assert!(!analysis.needs_reference_reading());
    assert_eq!(analysis.total_events, 2);
    assert_eq!(analysis.first_job_start, Some(Some("1.5".to_string())));
    assert!(!analysis.has_job_complete);
    assert_eq!(analysis.job_status(), "not_started");
}

#[test]
fn truthiness_follows_python() {
    for falsy in ["null", "false", "0", "0.0", "\"\"", "[]", "{ }", "-0"] {
        assert!(!raw_truthy(falsy), "{falsy}");
    }
    for truthy in ["true", "1", "0.5", "\"x\"", "[0]", "{\"a\": 1}"] {
        assert!(raw_truthy(truthy), "{truthy}");
    }
}

#[test]
fn event_type_lookup_reads_as_check_job_completion() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let has = |text: &str| {
        std::fs::write(&path, text).unwrap();
        file_has_event_type(&path, "job_complete").unwrap()
    };
    assert_eq!(
        file_has_event_type(&path, "job_complete").unwrap(),
        Some(false)
    );
    assert_eq!(
        has("{\"event_type\": \"job_start\"}\n{\"event_type\": \"job_complete\""),
        Some(false)
    );
    assert_eq!(
        has("\n  \n{\"event_type\": \"job_complete\"}\n"),
        Some(true)
    );
    // Lines every reader skips do not end the reading.
    assert_eq!(
        has("oops\n[1]\n5\n{\"event_type\": \"job_complete\"}\n"),
        Some(true)
    );
    // The last of duplicate keys wins, escaped keys are keys.
    let dup = r#"{"event_type": "job_start", "event_type": "job_complete"}"#;
    assert_eq!(has(&format!("{dup}\n")), Some(true));
    let dup = r#"{"event_type": "job_complete", "event_type": "job_start"}"#;
    assert_eq!(has(&format!("{dup}\n")), Some(false));
    assert_eq!(
        has("{\"event\\u005ftype\": \"job_complete\"}\n"),
        Some(true)
    );
    // Skipped lines do not hide a later event.
    assert_eq!(has("[1]\n{\"event_type\": \"job_complete\"}\n"), Some(true));
    let deep = format!("{}{}\n", "[".repeat(1000), "]".repeat(1000));
    assert_eq!(has(&deep), Some(false));
    assert_eq!(
        has("{\"a\": 1}\r{\"event_type\": \"job_complete\"}\n"),
        Some(true)
    );
    // Only Python reads NaN as the reference does.
    assert_eq!(has("{\"x\": NaN}\n"), None);
    assert_eq!(
        has("{\"x\": NaN}\n{\"event_type\": \"job_complete\"}\n"),
        Some(true)
    );
}

#[test]
fn duplicate_keys_keep_the_last_value() {
    let log = [
        r#"{"event_type": "job_start", "event_type": "partition_start", "partition_id": 7, "timestamp": 1}"#,
        r#"{"event_type": "partition_complete", "partition_id": 7, "timestamp": 2, "metadata": {"success": false, "success": true}, "metadata": {"success": true, "success": 1}}"#,
    ]
    .map(line)
    .concat();
    let analysis = analyze_bytes(log.as_bytes());
    assert!(!analysis.needs_reference_reading());
    assert_eq!(analysis.first_job_start, None);
    let partitions = analysis.partitions();
    assert_eq!(partitions.len(), 1);
    assert_eq!(partitions[0].status(), "completed");
    assert_eq!(
        partitions[0].latest_complete().unwrap().success.as_deref(),
        Some("1")
    );
}

/// Lines whose reading in the reference only Python reproduces (an
/// exception, Python's equalities, deep nesting) are flagged, not
/// guessed; ordinary oddities are read here.
#[test]
fn lines_only_python_reads_alike_are_flagged() {
    let flagged = |json: &str| analyze_bytes(line(json).as_bytes()).needs_reference_reading();
    for irregular in [
        r#"{"event_type": "partition_start", "partition_id": [1]}"#,
        r#"{"event_type": "partition_start", "partition_id": true}"#,
        r#"{"event_type": "op_start", "partition_id": 1.0}"#,
        r#"{"event_type": "op_start", "partition_id": 1, "timestamp": "soon"}"#,
        r#"{"event_type": "partition_complete", "metadata": null}"#,
        r#"{"event_type": "partition_complete", "metadata": {"duration_seconds": 12345678901234567890}}"#,
        r#"{"event_type": "checkpoint_save", "metadata": [1]}"#,
        r#"{"event_type": "job_start", "timestamp": NaN}"#,
    ] {
        assert!(flagged(irregular), "{irregular}");
    }
    // Deeper than is converted here, not deeper than every reader reads.
    let nested = |depth| format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
    let deep = format!(
        r#"{{"event_type": "partition_complete", "partition_id": 1, "metadata": {{"output_path": {}}}}}"#,
        nested(200)
    );
    assert!(flagged(&deep));
    assert!(!flagged(&format!(
        r#"{{"event_type": "job_start", "x": {}}}"#,
        nested(200)
    )));
    for regular in [
        r#"{"event_type": "op_start", "partition_id": [1]}"#,
        r#"{"event_type": ["job_complete"]}"#,
        r#"{"event_type": "partition_start", "partition_id": "p", "timestamp": 1e3}"#,
        r#"{"event_type": "partition_complete", "partition_id": 1, "metadata": {"success": "yes"}}"#,
    ] {
        assert!(!flagged(regular), "{regular}");
    }
}

/// Lines no reader reads are skipped, the rest read as without them.
#[test]
fn unreadable_lines_are_skipped_as_if_removed() {
    let clean = sample_log();
    // Deeper than every reader reads, though serde alone would read it.
    let deep = format!(
        "{{\"event_type\": \"job_complete\", \"a\": {}1{}}}",
        "[".repeat(300),
        "]".repeat(300)
    );
    let big = format!(
        "{{\"event_type\": \"job_complete\", \"n\": {}}}",
        "7".repeat(5000)
    );
    let cut = "{\"event_type\": \"job_complete\", \"message\": \"\u{4e2d}\"}";
    let cut = &cut.as_bytes()[..cut.len() - 4];
    let hostile: [&[u8]; 9] = [
        b"\xff\xfe\x00garbage",
        b"{\"event_type\": \"job_complete\", \"m\": \"\xe4\xb8\"}",
        b"[1, 2]",
        b"\"text\"",
        b"null",
        b"not json",
        deep.as_bytes(),
        big.as_bytes(),
        cut,
    ];
    let expected = analyze_bytes(clean.as_bytes());
    let lines: Vec<&str> = clean.lines().collect();
    for (i, bad) in hostile.iter().enumerate() {
        let mut log = Vec::new();
        for (j, line) in lines.iter().enumerate() {
            if j == i % lines.len() {
                log.extend_from_slice(bad);
                log.push(b'\n');
            }
            log.extend_from_slice(line.as_bytes());
            log.push(b'\n');
        }
        log.extend_from_slice(bad); // and as a last line without a newline
        let got = analyze_bytes(&log);
        assert!(!got.needs_reference_reading(), "{i}");
        assert_eq!(got.total_events, expected.total_events, "{i}");
        assert_eq!(got.job_status(), expected.job_status(), "{i}");
        let ids = |a: &Analysis| {
            a.partitions()
                .iter()
                .map(|p| (p.id.clone(), p.status(), p.start_time()))
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&got), ids(&expected), "{i}");
    }
}

#[test]
fn partition_ids_are_keyed_as_python_keys_them() {
    let log = [
        r#"{"event_type": "partition_start", "timestamp": 1, "partition_id": "a"}"#,
        r#"{"event_type": "partition_failed", "timestamp": 2, "partition_id": "\u0061"}"#,
        r#"{"event_type": "partition_start", "timestamp": 1, "partition_id": 0}"#,
        r#"{"event_type": "partition_failed", "timestamp": 2, "partition_id": -0}"#,
    ]
    .map(line)
    .concat();
    let analysis = analyze_bytes(log.as_bytes());
    assert!(!analysis.needs_reference_reading());
    let counts: Vec<u64> = analysis
        .partitions()
        .iter()
        .map(|p| p.failure_count)
        .collect();
    assert_eq!(counts, [1, 1]);
}
