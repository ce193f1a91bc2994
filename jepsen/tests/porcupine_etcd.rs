//! Golden test: the linearizability checker against Porcupine's verdicts on
//! its 103 Jepsen etcd logs (`tests/data/porcupine-etcd`, MIT). Porcupine's
//! `porcupine_test.go` expects the 23 logs below to be linearizable and the
//! other 79 not; `etcd_095.log` is empty (etcd failed to start in that run)
//! and Porcupine does not check it, so here it must be valid with no ops.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ballast_jepsen::checker::Verdict;
use ballast_jepsen::checker::linear::{check_register, parse_porcupine_etcd};

const LINEARIZABLE: [u32; 23] = [
    2, 5, 7, 18, 25, 31, 38, 45, 48, 49, 51, 53, 56, 67, 75, 76, 80, 87, 92, 98, 100, 101, 102,
];
const EMPTY_LOG: u32 = 95;

#[test]
fn every_porcupine_etcd_log_gets_porcupines_verdict() {
    let directory = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/porcupine-etcd");
    let started = Instant::now();
    let mut wrong = Vec::new();
    let (mut valid, mut invalid) = (0, 0);
    for number in 0..=102u32 {
        let path = directory.join(format!("etcd_{number:03}.log"));
        let text = std::fs::read_to_string(&path).unwrap();
        let history = parse_porcupine_etcd(&text).unwrap();
        let result = check_register(&history, Duration::from_secs(60));
        let expected = if number == EMPTY_LOG {
            assert!(history.is_empty(), "etcd_095.log should be empty");
            Verdict::Valid
        } else if LINEARIZABLE.contains(&number) {
            Verdict::Valid
        } else {
            Verdict::Invalid
        };
        if result.verdict != expected {
            wrong.push((number, result.verdict));
        }
        match result.verdict {
            Verdict::Valid => valid += 1,
            Verdict::Invalid => {
                invalid += 1;
                let anomaly = &result.anomalies[0];
                assert_eq!(anomaly.kind, "nonlinearizable");
                assert!(!anomaly.ops.is_empty(), "etcd_{number:03}: no ops named");
            }
            Verdict::Unknown => {}
        }
    }
    eprintln!(
        "porcupine etcd logs: {valid} valid, {invalid} invalid, in {:?}",
        started.elapsed()
    );
    assert!(
        wrong.is_empty(),
        "verdicts differing from Porcupine's: {wrong:?}"
    );
    assert_eq!((valid, invalid), (24, 79));
}
