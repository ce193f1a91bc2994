//! The write-ahead log that backs the Raft log (`member/wal/`).
//!
//! Segment files are named by the index of their first record; a record is
//! `len u32 LE | crc32 u32 LE | payload`. Appends are written at once (so they
//! are readable) and made durable by one `sync_data` per group on a dedicated
//! thread ([`Syncer`]). A segment is synced before the next one starts, so a
//! crash can only leave a partial tail in the last segment: on open that tail
//! is cut, and damage anywhere else refuses to open.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};

const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
pub(crate) const HEADER_BYTES: usize = 8;
const SEGMENT_SUFFIX: &str = ".wal";

#[derive(Debug, Clone, Copy)]
struct Location {
    segment: u64,
    offset: u64,
    len: u32,
}

struct Segment {
    file: Arc<File>,
    len: u64,
}

/// An append-only sequence of payloads addressed by contiguous indexes.
pub struct Wal {
    dir: PathBuf,
    /// Segments by the index of their first record.
    segments: BTreeMap<u64, Segment>,
    /// Where each live record is: `locations[i]` holds index `first_index + i`.
    locations: VecDeque<Location>,
    first_index: u64,
}

fn segment_path(dir: &Path, first_index: u64) -> PathBuf {
    dir.join(format!("{first_index:016x}{SEGMENT_SUFFIX}"))
}

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

pub(crate) fn frame(payload: &[u8]) -> Vec<u8> {
    let mut record = Vec::with_capacity(HEADER_BYTES + payload.len());
    record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    record.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    record.extend_from_slice(payload);
    record
}

/// The valid records at the start of a segment's bytes.
struct Scan {
    /// Offset and length of each record's payload.
    records: Vec<(u64, u32)>,
    /// Where the valid records end.
    valid_len: u64,
    /// Why the scan stopped before the end of the data, if it did.
    damage: Option<&'static str>,
}

/// Reads records from the start of `data` up to the first torn or corrupt
/// one. A record is never empty, so zeros (len 0, crc 0) end the records.
fn scan(data: &[u8]) -> Scan {
    let mut records = Vec::new();
    let mut pos = 0usize;
    let damage = loop {
        if pos == data.len() {
            break None;
        }
        if pos + HEADER_BYTES > data.len() {
            break Some("a torn record header");
        }
        let len = u32::from_le_bytes(data[pos..pos + 4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(data[pos + 4..pos + 8].try_into().expect("4 bytes"));
        if len == 0 {
            break Some("an empty record (zeros)");
        }
        let start = pos + HEADER_BYTES;
        let Some(end) = start
            .checked_add(len as usize)
            .filter(|end| *end <= data.len())
        else {
            break Some("a record longer than the file");
        };
        if crc32fast::hash(&data[start..end]) != crc {
            break Some("a record whose checksum does not match");
        }
        records.push((start as u64, len));
        pos = end;
    };
    Scan {
        records,
        valid_len: pos as u64,
        damage,
    }
}

fn damaged(path: &Path, offset: u64, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "write-ahead log damaged: {} at offset {offset}: {what}; a member that forgot \
             acknowledged entries could elect a log without committed data, so it does not \
             start (restore the member from a snapshot or remove and re-add it)",
            path.display()
        ),
    )
}

impl Wal {
    /// Opens (or creates) the log in `dir`. Segments holding only records
    /// below `keep_from` (purged ones) are deleted unchecked. Every other
    /// segment but the last must be whole and followed by the next index:
    /// they were synced before the next one was started, so damage there is
    /// not a torn write, and the log refuses to open, naming the file and
    /// offset. The last segment's torn or zero-filled tail is cut.
    pub fn open(dir: &Path, keep_from: u64) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let mut firsts: Vec<u64> = fs::read_dir(dir)?
            .filter_map(|entry| {
                let name = entry.ok()?.file_name().into_string().ok()?;
                u64::from_str_radix(name.strip_suffix(SEGMENT_SUFFIX)?, 16).ok()
            })
            .collect();
        firsts.sort_unstable();
        let purged = firsts
            .windows(2)
            .take_while(|pair| pair[1] <= keep_from)
            .count();
        for first in firsts.drain(..purged) {
            fs::remove_file(segment_path(dir, first))?;
        }
        let mut wal = Wal {
            dir: dir.to_path_buf(),
            segments: BTreeMap::new(),
            locations: VecDeque::new(),
            first_index: firsts.first().copied().unwrap_or(0),
        };
        for (i, &first) in firsts.iter().enumerate() {
            let path = segment_path(dir, first);
            let data = fs::read(&path)?;
            let scan = scan(&data);
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            match firsts.get(i + 1) {
                Some(&next) => {
                    if let Some(what) = scan.damage {
                        return Err(damaged(&path, scan.valid_len, what));
                    }
                    let count = scan.records.len() as u64;
                    if first + count != next {
                        return Err(damaged(
                            &path,
                            scan.valid_len,
                            format_args!(
                                "it ends at index {} but the next segment starts at {next}",
                                first + count
                            ),
                        ));
                    }
                }
                None if scan.damage.is_some() => {
                    tracing::warn!(
                        ?path,
                        valid_len = scan.valid_len,
                        "cutting torn write-ahead log tail"
                    );
                    file.set_len(scan.valid_len)?;
                    file.sync_all()?;
                }
                None => {}
            }
            wal.locations
                .extend(scan.records.into_iter().map(|(offset, len)| Location {
                    segment: first,
                    offset,
                    len,
                }));
            wal.segments.insert(
                first,
                Segment {
                    file: Arc::new(file),
                    len: scan.valid_len,
                },
            );
        }
        Ok(wal)
    }

    /// The index of the first live record (meaningful only if not empty).
    pub fn first_index(&self) -> u64 {
        self.first_index
    }

    /// The index the next appended record gets.
    pub fn next_index(&self) -> u64 {
        self.first_index + self.locations.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.locations.is_empty()
    }

    /// Whether the next append starts a segment, which syncs the previous
    /// one and the directory.
    pub fn starts_segment(&self) -> bool {
        self.locations.is_empty()
            || self
                .segments
                .last_key_value()
                .is_some_and(|(_, tail)| tail.len >= SEGMENT_BYTES)
    }

    /// Writes a record at `index`, which must be `next_index()` unless the log
    /// is empty (then it starts there). Returns the file to sync for durability.
    pub fn append(&mut self, index: u64, payload: &[u8]) -> io::Result<Arc<File>> {
        if self.locations.is_empty() {
            // Whatever segments remain hold only purged or truncated records.
            for first in std::mem::take(&mut self.segments).into_keys() {
                fs::remove_file(segment_path(&self.dir, first))?;
            }
            self.first_index = index;
            self.start_segment(index)?;
        } else if index != self.next_index() {
            return Err(io::Error::other(format!(
                "write-ahead log append at {index}, expected {}",
                self.next_index()
            )));
        } else if self
            .segments
            .last_key_value()
            .is_some_and(|(_, tail)| tail.len >= SEGMENT_BYTES)
        {
            self.start_segment(index)?;
        }
        let (&first, tail) = self
            .segments
            .last_key_value()
            .expect("a tail segment exists");
        let record = frame(payload);
        tail.file.write_all_at(&record, tail.len)?;
        let location = Location {
            segment: first,
            offset: tail.len + HEADER_BYTES as u64,
            len: payload.len() as u32,
        };
        let file = tail.file.clone();
        self.segments.get_mut(&first).expect("tail").len += record.len() as u64;
        self.locations.push_back(location);
        Ok(file)
    }

    fn start_segment(&mut self, first_index: u64) -> io::Result<()> {
        // Records in the previous segment become durable before the new one is used.
        if let Some((_, tail)) = self.segments.last_key_value() {
            tail.file.sync_data()?;
        }
        let path = segment_path(&self.dir, first_index);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        sync_dir(&self.dir)?;
        self.segments.insert(
            first_index,
            Segment {
                file: Arc::new(file),
                len: 0,
            },
        );
        Ok(())
    }

    pub fn read(&self, index: u64) -> io::Result<Option<Vec<u8>>> {
        let Some(location) = index
            .checked_sub(self.first_index)
            .and_then(|i| self.locations.get(i as usize))
        else {
            return Ok(None);
        };
        let segment = &self.segments[&location.segment];
        let mut payload = vec![0u8; location.len as usize];
        segment.file.read_exact_at(&mut payload, location.offset)?;
        Ok(Some(payload))
    }

    /// Removes every record at or after `index`, durably.
    pub fn truncate(&mut self, index: u64) -> io::Result<()> {
        let keep = index.saturating_sub(self.first_index) as usize;
        if keep >= self.locations.len() {
            return Ok(());
        }
        let cut = self.locations[keep];
        self.locations.truncate(keep);
        // Newest first: a crash part-way leaves no gap between segments.
        let doomed: Vec<u64> = self
            .segments
            .range(cut.segment + 1..)
            .rev()
            .map(|(first, _)| *first)
            .collect();
        for first in doomed {
            self.segments.remove(&first);
            fs::remove_file(segment_path(&self.dir, first))?;
        }
        let segment = self
            .segments
            .get_mut(&cut.segment)
            .expect("segment of a live record");
        segment.len = cut.offset - HEADER_BYTES as u64;
        segment.file.set_len(segment.len)?;
        segment.file.sync_all()?;
        sync_dir(&self.dir)
    }

    /// Forgets every record up to and including `index`; deletes the
    /// segments that hold nothing newer.
    pub fn purge(&mut self, index: u64) -> io::Result<()> {
        while !self.locations.is_empty() && self.first_index <= index {
            self.locations.pop_front();
            self.first_index += 1;
        }
        let Some(live) = self.locations.front().map(|l| l.segment) else {
            self.first_index = self.first_index.max(index + 1);
            return Ok(());
        };
        let doomed: Vec<u64> = self
            .segments
            .range(..live)
            .map(|(first, _)| *first)
            .collect();
        for first in doomed {
            self.segments.remove(&first);
            fs::remove_file(segment_path(&self.dir, first))?;
        }
        Ok(())
    }
}

/// A flush callback: told once the records it covers are durable (or not).
pub type Flushed = Box<dyn FnOnce(io::Result<()>) + Send>;

/// The thread that fdatasyncs the log: it takes every request queued while
/// the previous sync ran and completes them, in order, after one sync.
/// Stops when the last [`Syncer`] handle is dropped.
#[derive(Clone)]
pub struct Syncer {
    tx: mpsc::Sender<(Arc<File>, Flushed)>,
}

impl Syncer {
    pub fn start() -> io::Result<Self> {
        let (tx, rx) = mpsc::channel::<(Arc<File>, Flushed)>();
        std::thread::Builder::new()
            .name("wal-sync".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut group = vec![first];
                    group.extend(rx.try_iter());
                    let mut result = Ok(());
                    let mut synced: Vec<*const File> = Vec::new();
                    for (file, _) in group.iter().rev() {
                        if !synced.contains(&Arc::as_ptr(file)) {
                            synced.push(Arc::as_ptr(file));
                            if let Err(e) = file.sync_data() {
                                result = Err(e);
                            }
                        }
                    }
                    for (_, done) in group {
                        done(match &result {
                            Ok(()) => Ok(()),
                            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                        });
                    }
                }
            })?;
        Ok(Self { tx })
    }

    /// Calls `done` once `file` has been synced after this call.
    pub fn sync(&self, file: Arc<File>, done: Flushed) {
        if let Err(mpsc::SendError((_, done))) = self.tx.send((file, done)) {
            done(Err(io::Error::other("write-ahead log sync thread stopped")));
        }
    }
}

/// A small file replaced atomically (write temp, fsync, rename, fsync dir),
/// with a crc32 so that a damaged one is detected rather than trusted.
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    pub fn load(&self) -> io::Result<Option<Vec<u8>>> {
        let data = match fs::read(&self.path) {
            Ok(data) => data,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        match scan(&data).records.first() {
            Some(&(offset, len)) => Ok(Some(data[offset as usize..][..len as usize].to_vec())),
            None => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is damaged", self.path.display()),
            )),
        }
    }

    pub fn store(&self, payload: &[u8]) -> io::Result<()> {
        let tmp = self.path.with_extension("tmp");
        let mut file = File::create(&tmp)?;
        file.write_all(&frame(payload))?;
        file.sync_all()?;
        fs::rename(&tmp, &self.path)?;
        sync_dir(self.path.parent().unwrap_or(Path::new(".")))
    }
}

/// A tiny record rewritten in place on every update, without fsync: for
/// values where a stale copy after a power loss is safe (the committed index
/// only shortens re-apply on start), but a kill -9 must not lose the latest.
pub struct HintFile {
    file: File,
}

impl HintFile {
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        Ok(Self { file })
    }

    pub fn load(&self) -> io::Result<Option<Vec<u8>>> {
        let mut data = vec![0u8; self.file.metadata()?.len() as usize];
        self.file.read_exact_at(&mut data, 0)?;
        Ok(scan(&data)
            .records
            .first()
            .map(|&(offset, len)| data[offset as usize..][..len as usize].to_vec()))
    }

    pub fn store(&self, payload: &[u8]) -> io::Result<()> {
        self.file.write_all_at(&frame(payload), 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(i: u64) -> Vec<u8> {
        format!("entry-{i}").into_bytes()
    }

    #[test]
    fn reopen_reads_what_was_appended() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), 0).unwrap();
        for i in 1..=10 {
            wal.append(i, &payload(i)).unwrap();
        }
        drop(wal);
        let wal = Wal::open(dir.path(), 0).unwrap();
        assert_eq!((wal.first_index(), wal.next_index()), (1, 11));
        for i in 1..=10 {
            assert_eq!(wal.read(i).unwrap(), Some(payload(i)));
        }
        assert_eq!(wal.read(11).unwrap(), None);
    }

    #[test]
    fn a_torn_tail_is_cut_at_the_last_whole_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), 0).unwrap();
        for i in 1..=3 {
            wal.append(i, &payload(i)).unwrap();
        }
        drop(wal);
        let path = segment_path(dir.path(), 1);
        let mut data = fs::read(&path).unwrap();
        let last = data.len() - 1;
        data[last] ^= 0xff;
        fs::write(&path, &data).unwrap();

        let mut wal = Wal::open(dir.path(), 0).unwrap();
        assert_eq!(wal.next_index(), 3);
        wal.append(3, b"again").unwrap();
        drop(wal);
        let wal = Wal::open(dir.path(), 0).unwrap();
        assert_eq!(wal.read(3).unwrap(), Some(b"again".to_vec()));
    }

    /// Three segments of three records each.
    fn three_segments(dir: &Path) {
        let mut wal = Wal::open(dir, 0).unwrap();
        for i in 1..=9 {
            if i > 1 && (i - 1) % 3 == 0 {
                wal.start_segment(i).unwrap();
            }
            wal.append(i, &payload(i)).unwrap();
        }
        assert_eq!(wal.segments.len(), 3);
    }

    /// A damaged record in a segment that is not the last cannot be a torn
    /// write: the member must refuse to start rather than forget entries it
    /// acknowledged. The error names the file and the offset.
    #[test]
    fn damage_in_a_middle_segment_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        three_segments(dir.path());
        let path = segment_path(dir.path(), 4);
        let mut data = fs::read(&path).unwrap();
        let second_record = HEADER_BYTES + payload(4).len();
        data[second_record + HEADER_BYTES] ^= 0x01;
        fs::write(&path, &data).unwrap();

        let error = Wal::open(dir.path(), 0)
            .err()
            .expect("a damaged log must not open");
        let message = error.to_string();
        assert!(
            message.contains(&path.display().to_string())
                && message.contains(&format!("offset {second_record}")),
            "{message}"
        );
        assert_eq!(fs::read(&path).unwrap(), data, "nothing is cut");
        assert!(segment_path(dir.path(), 7).exists(), "nothing is deleted");
    }

    /// A segment missing from the middle of the log is damage too.
    #[test]
    fn a_missing_middle_segment_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        three_segments(dir.path());
        fs::remove_file(segment_path(dir.path(), 4)).unwrap();
        let message = Wal::open(dir.path(), 0).err().expect("a gap").to_string();
        assert!(
            message.contains(&segment_path(dir.path(), 1).display().to_string()),
            "{message}"
        );
    }

    /// A power loss can leave the unsynced end of the last segment as
    /// zeros (the file grew, its data never reached the disk). Zeros are not
    /// records: they are cut, and appends go on from there.
    #[test]
    fn a_zero_filled_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        three_segments(dir.path());
        let path = segment_path(dir.path(), 7);
        let whole = fs::read(&path).unwrap().len();
        let file = OpenOptions::new().append(true).open(&path).unwrap();
        file.set_len(whole as u64 + 4096).unwrap();
        drop(file);

        let mut wal = Wal::open(dir.path(), 0).unwrap();
        assert_eq!(wal.next_index(), 10);
        assert_eq!(fs::read(&path).unwrap().len(), whole);
        wal.append(10, b"after").unwrap();
        drop(wal);
        let wal = Wal::open(dir.path(), 0).unwrap();
        assert_eq!(wal.read(9).unwrap(), Some(payload(9)));
        assert_eq!(wal.read(10).unwrap(), Some(b"after".to_vec()));
    }

    #[test]
    fn truncate_and_purge() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), 0).unwrap();
        for i in 5..=20 {
            wal.append(i, &payload(i)).unwrap();
        }
        wal.truncate(15).unwrap();
        assert_eq!(wal.next_index(), 15);
        wal.purge(9).unwrap();
        assert_eq!(wal.first_index(), 10);
        assert_eq!(wal.read(9).unwrap(), None);
        drop(wal);
        let wal = Wal::open(dir.path(), 0).unwrap();
        // Purged records in a live segment are still on disk; the owner skips
        // them by its durable last-purged index.
        assert_eq!(wal.next_index(), 15);
        assert_eq!(wal.read(14).unwrap(), Some(payload(14)));
    }

    #[test]
    fn hint_file_keeps_the_latest_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hint");
        let hint = HintFile::open(&path).unwrap();
        assert_eq!(hint.load().unwrap(), None);
        hint.store(b"longer value").unwrap();
        hint.store(b"short").unwrap();
        drop(hint);
        assert_eq!(
            HintFile::open(&path).unwrap().load().unwrap(),
            Some(b"short".to_vec())
        );
    }

    #[test]
    fn state_file_round_trips_and_detects_damage() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path().join("state"));
        assert_eq!(file.load().unwrap(), None);
        file.store(b"vote").unwrap();
        assert_eq!(file.load().unwrap(), Some(b"vote".to_vec()));
        fs::write(dir.path().join("state"), b"garbage!!").unwrap();
        assert!(file.load().is_err());
    }
}
