//! The write path's only fsync: appending a group of Raft entries to the
//! write-ahead log and waiting for the [`Syncer`] thread's `sync_data`, as
//! the log store does before it tells openraft the entries are durable.
//!
//! The log lives in a temporary directory (set TMPDIR to put it on the disk
//! a server would use): on most machines the sync dominates.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ballast_server::storage::wal::{Syncer, Wal};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tokio::sync::oneshot;

/// (entries per group, bytes per entry): one small entry (a lone put), one
/// proposer batch of about 100 puts, and a burst of small entries.
const GROUPS: [(u64, usize); 3] = [(1, 256), (1, 32 * 1024), (64, 512)];

fn append_sync(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let syncer = Syncer::start().expect("start syncer");
    let mut group = c.benchmark_group("wal/append_sync");
    // Each sample waits for the disk; fewer, longer samples keep the run short.
    group.sample_size(20);
    for (entries, bytes) in GROUPS {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = Arc::new(Mutex::new(Wal::open(dir.path(), 0).expect("open wal")));
        let payload = vec![0x5a; bytes];
        group.throughput(Throughput::Bytes(entries * bytes as u64));
        let id = BenchmarkId::from_parameter(format!("{entries}x{bytes}B"));
        group.bench_function(id, |b| {
            b.to_async(&runtime).iter_custom(|iters| {
                let (wal, syncer, payload) = (wal.clone(), syncer.clone(), payload.clone());
                async move {
                    let mut measured = Duration::ZERO;
                    for _ in 0..iters {
                        let start = Instant::now();
                        let file = {
                            let mut wal = wal.lock().expect("wal lock");
                            let mut file = None;
                            for _ in 0..entries {
                                let index = wal.next_index().max(1);
                                file = Some(wal.append(index, &payload).expect("append"));
                            }
                            file.expect("at least one entry")
                        };
                        let (done, flushed) = oneshot::channel();
                        syncer.sync(
                            file,
                            Box::new(move |result| {
                                let _ = done.send(result);
                            }),
                        );
                        flushed.await.expect("syncer answers").expect("sync_data");
                        measured += start.elapsed();
                        // Untimed: forget all but the last entry, so that full
                        // segments are deleted and disk use stays bounded. The
                        // log never becomes empty, which would start a new
                        // segment file on the next append.
                        let mut wal = wal.lock().expect("wal lock");
                        let keep = wal.next_index() - 1;
                        wal.purge(keep - 1).expect("purge");
                    }
                    measured
                }
            });
        });
    }
    group.finish();
}

criterion_group!(benches, append_sync);
criterion_main!(benches);
