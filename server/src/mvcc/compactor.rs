//! Physical compaction on a thread of its own, off the apply path.
//!
//! Applying a Compact request only compacts the in-memory key index and
//! records the compact revision; the rows it made unreachable are deleted
//! here afterwards, in small batches. Nothing reads them meanwhile: reads go
//! through the index, and watch catch-up never starts below the compact
//! revision. A snapshot pins the rows while it streams them
//! ([`Compactor::pin`]), and a snapshot install cancels the work planned
//! against the state it replaces.

use std::collections::HashSet;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crate::storage::db::{StateBatch, StateDb};
use crate::storage::revision::Revision;

/// The compact revision whose rows are all deleted (i64 BE): behind the
/// compact revision after a crash, so compaction is planned again on open.
pub const META_COMPACTED_REVISION: &str = "compacted_revision";
/// Rows examined per batch: the pin is released between batches.
const ROWS_PER_BATCH: usize = 1000;

/// Rows below `at` to delete unless their revision is in `keep`.
struct Job {
    at: i64,
    keep: HashSet<Revision>,
    epoch: u64,
}

#[derive(Default)]
struct Progress {
    next: Option<Job>,
    /// Bumped by a snapshot install: planned work from before it is void.
    epoch: u64,
    /// Every row made unreachable by a compaction at or below this is deleted.
    finished: i64,
    failed: bool,
    stopping: bool,
}

struct Shared {
    db: StateDb,
    /// Held while rows are deleted, and by whoever needs them not to be.
    pin: Mutex<()>,
    progress: Mutex<Progress>,
    changed: Condvar,
}

pub struct Compactor {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// While held, no row is deleted; see [`Compactor::pin`].
pub struct Pin<'a> {
    _guard: MutexGuard<'a, ()>,
}

impl Compactor {
    /// Starts the compactor with every compaction up to `finished` done.
    pub fn start(db: StateDb, finished: i64) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            db,
            pin: Mutex::new(()),
            progress: Mutex::new(Progress {
                finished,
                ..Default::default()
            }),
            changed: Condvar::new(),
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("compactor".into())
            .spawn(move || worker.run())?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Plans the deletion of the rows below `at` not in `keep`; a later plan
    /// replaces an earlier one that has not started, since it covers it.
    pub fn schedule(&self, at: i64, keep: HashSet<Revision>) {
        let mut progress = self.shared.lock_progress();
        let epoch = progress.epoch;
        progress.next = Some(Job { at, keep, epoch });
        self.shared.changed.notify_all();
    }

    /// Keeps every row in place until the pin is dropped.
    pub fn pin(&self) -> Pin<'_> {
        Pin {
            _guard: self.shared.pin.lock().expect("compactor pin poisoned"),
        }
    }

    /// Voids all planned and running work (the state was replaced); the
    /// caller holds `pin`, so no batch of the old plan runs after this.
    pub fn reset(&self, _pin: &Pin<'_>, finished: i64) {
        let mut progress = self.shared.lock_progress();
        progress.epoch += 1;
        progress.next = None;
        progress.finished = finished;
        progress.failed = false;
        self.shared.changed.notify_all();
    }

    /// Waits until the rows made unreachable by compactions up to `at` are
    /// deleted. Fails if the compactor hit a storage error.
    pub fn wait_finished(&self, at: i64) -> std::io::Result<()> {
        let mut progress = self.shared.lock_progress();
        while progress.finished < at && !progress.failed && !progress.stopping {
            progress = self
                .shared
                .changed
                .wait(progress)
                .expect("compactor progress poisoned");
        }
        if progress.finished >= at {
            Ok(())
        } else {
            Err(std::io::Error::other("physical compaction did not finish"))
        }
    }
}

impl Drop for Compactor {
    fn drop(&mut self) {
        self.shared.lock_progress().stopping = true;
        self.shared.changed.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Shared {
    fn lock_progress(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().expect("compactor progress poisoned")
    }

    fn run(&self) {
        loop {
            let job = {
                let mut progress = self.lock_progress();
                loop {
                    if progress.stopping {
                        return;
                    }
                    if let Some(job) = progress.next.take() {
                        break job;
                    }
                    progress = self
                        .changed
                        .wait(progress)
                        .expect("compactor progress poisoned");
                }
            };
            let at = job.at;
            match self.delete_unreachable(job) {
                Ok(true) => {
                    let mut progress = self.lock_progress();
                    progress.finished = progress.finished.max(at);
                    progress.failed = false;
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(error = %e, at, "physical compaction failed");
                    self.lock_progress().failed = true;
                }
            }
            self.changed.notify_all();
        }
    }

    /// Deletes the job's rows batch by batch; false if it was voided or the
    /// compactor is stopping.
    fn delete_unreachable(&self, job: Job) -> std::io::Result<bool> {
        let end = Revision::new(job.at, 0);
        let mut from = Revision::new(0, 0);
        loop {
            let _pin = self.pin.lock().expect("compactor pin poisoned");
            {
                let progress = self.lock_progress();
                if progress.epoch != job.epoch || progress.stopping {
                    return Ok(false);
                }
            }
            let revisions = self.db.row_revisions(from, end, ROWS_PER_BATCH)?;
            let done = revisions.len() < ROWS_PER_BATCH;
            let mut batch = StateBatch::default();
            for rev in revisions.iter().filter(|rev| !job.keep.contains(rev)) {
                batch.remove_row(*rev);
            }
            if done {
                batch.put_meta(META_COMPACTED_REVISION, &job.at.to_be_bytes());
            }
            self.db.apply(batch)?;
            if done {
                return Ok(true);
            }
            let last = revisions.last().expect("a full batch");
            from = Revision::new(last.main, last.sub + 1);
        }
    }
}
