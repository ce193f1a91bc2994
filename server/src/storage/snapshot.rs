//! Snapshot files (`member/snap/`): the state database as a stream of
//! crc-framed records, written and read without holding it in memory.
//!
//! Records use the write-ahead log's framing (`len u32 LE | crc32 u32 LE |
//! payload`); each payload is one postcard [`Record`]: a header first, then
//! batches of (key, value) pairs as stored in the state database, then an end
//! record that counts them, so a torn or truncated file is refused.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::wal::{HEADER_BYTES, frame, sync_dir};

/// Bytes of pairs per record, so that writing and installing need little memory.
const RECORD_BYTES: usize = 1024 * 1024;
const FORMAT_VERSION: u32 = 1;
/// Written bytes between syncs. Syncing a large snapshot only at the end
/// queues hundreds of megabytes ahead of the write-ahead log's next
/// fdatasync, long enough for followers to call an election.
const SYNC_BYTES: usize = 8 * 1024 * 1024;

pub type Pair = (Vec<u8>, Vec<u8>);

#[derive(Serialize, Deserialize)]
enum Record {
    Header { version: u32, meta: Vec<u8> },
    Pairs(Vec<Pair>),
    End { pairs: u64 },
}

fn invalid(path: &Path, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("snapshot {}: {what}", path.display()),
    )
}

/// Writes a snapshot to a temporary file; [`SnapshotWriter::finish`] makes it
/// durable and moves it into place.
pub struct SnapshotWriter {
    out: BufWriter<File>,
    tmp: PathBuf,
    batch: Vec<Pair>,
    batch_bytes: usize,
    pairs: u64,
    unsynced_bytes: usize,
}

impl SnapshotWriter {
    /// Starts `<path>.tmp` with `meta`, the caller's description of the state.
    pub fn create(path: &Path, meta: &[u8]) -> io::Result<Self> {
        let tmp = path.with_extension("tmp");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        let mut writer = Self {
            out: BufWriter::with_capacity(1 << 20, file),
            tmp,
            batch: Vec::new(),
            batch_bytes: 0,
            pairs: 0,
            unsynced_bytes: 0,
        };
        writer.record(&Record::Header {
            version: FORMAT_VERSION,
            meta: meta.to_vec(),
        })?;
        Ok(writer)
    }

    pub fn push(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        self.batch_bytes += key.len() + value.len();
        self.batch.push((key.to_vec(), value.to_vec()));
        self.pairs += 1;
        if self.batch_bytes >= RECORD_BYTES {
            self.flush_batch()?;
        }
        Ok(())
    }

    /// Ends the snapshot, syncs it and renames it to `path` (replacing any
    /// earlier one there). Returns the file, open for reading, so that it
    /// stays this snapshot even if another replaces it at `path`.
    pub fn finish(mut self, path: &Path) -> io::Result<File> {
        self.flush_batch()?;
        self.record(&Record::End { pairs: self.pairs })?;
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&self.tmp, path)?;
        sync_dir(path.parent().unwrap_or(Path::new(".")))?;
        Ok(file)
    }

    fn flush_batch(&mut self) -> io::Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        self.record(&Record::Pairs(batch))
    }

    fn record(&mut self, record: &Record) -> io::Result<()> {
        let payload = postcard::to_stdvec(record).map_err(io::Error::other)?;
        let framed = frame(&payload);
        self.out.write_all(&framed)?;
        self.unsynced_bytes += framed.len();
        if self.unsynced_bytes >= SYNC_BYTES {
            self.out.flush()?;
            self.out.get_ref().sync_data()?;
            self.unsynced_bytes = 0;
        }
        Ok(())
    }
}

/// Reads a snapshot written by [`SnapshotWriter`], checking every record.
pub struct SnapshotReader {
    input: BufReader<File>,
    path: PathBuf,
    meta: Vec<u8>,
    pairs: u64,
    ended: bool,
}

impl SnapshotReader {
    pub fn open(path: &Path) -> io::Result<Self> {
        Self::from_file(File::open(path)?, path)
    }

    /// Reads the snapshot in `file` (from its current offset), which was
    /// opened at `path`.
    pub fn from_file(file: File, path: &Path) -> io::Result<Self> {
        let mut reader = Self {
            input: BufReader::with_capacity(1 << 20, file),
            path: path.to_path_buf(),
            meta: Vec::new(),
            pairs: 0,
            ended: false,
        };
        match reader.record()? {
            Record::Header { version, meta } if version == FORMAT_VERSION => reader.meta = meta,
            Record::Header { version, .. } => {
                return Err(invalid(path, &format!("unknown format {version}")));
            }
            _ => return Err(invalid(path, "no header")),
        }
        Ok(reader)
    }

    /// What the writer described the state with.
    pub fn meta(&self) -> &[u8] {
        &self.meta
    }

    /// The next batch of pairs, or `None` after the last one. Fails on a
    /// damaged or truncated file.
    pub fn next_batch(&mut self) -> io::Result<Option<Vec<Pair>>> {
        if self.ended {
            return Ok(None);
        }
        match self.record()? {
            Record::Pairs(pairs) => {
                self.pairs += pairs.len() as u64;
                Ok(Some(pairs))
            }
            Record::End { pairs } if pairs == self.pairs => {
                self.ended = true;
                Ok(None)
            }
            Record::End { .. } => Err(invalid(&self.path, "pair count does not match")),
            Record::Header { .. } => Err(invalid(&self.path, "second header")),
        }
    }

    /// Reads to the end, checking every record, without keeping the pairs.
    pub fn verify(path: &Path) -> io::Result<()> {
        let mut reader = Self::open(path)?;
        while reader.next_batch()?.is_some() {}
        Ok(())
    }

    fn record(&mut self) -> io::Result<Record> {
        let mut header = [0u8; HEADER_BYTES];
        self.input
            .read_exact(&mut header)
            .map_err(|_| invalid(&self.path, "truncated"))?;
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        let mut payload = vec![0u8; len];
        self.input
            .read_exact(&mut payload)
            .map_err(|_| invalid(&self.path, "truncated"))?;
        if crc32fast::hash(&payload) != crc {
            return Err(invalid(&self.path, "checksum mismatch"));
        }
        postcard::from_bytes(&payload).map_err(|e| invalid(&self.path, &e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, pairs: usize) {
        let mut writer = SnapshotWriter::create(path, b"meta").unwrap();
        for i in 0..pairs {
            writer
                .push(format!("k{i:08}").as_bytes(), &vec![7u8; 4096])
                .unwrap();
        }
        writer.finish(path).unwrap();
    }

    #[test]
    fn pairs_come_back_in_order_across_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("current.snap");
        write(&path, 1000);
        let mut reader = SnapshotReader::open(&path).unwrap();
        assert_eq!(reader.meta(), b"meta");
        let mut keys = Vec::new();
        let mut records = 0;
        while let Some(batch) = reader.next_batch().unwrap() {
            records += 1;
            keys.extend(batch.into_iter().map(|(k, _)| k));
        }
        assert!(records > 1, "4 MB of pairs span several records");
        let expected: Vec<Vec<u8>> = (0..1000).map(|i| format!("k{i:08}").into_bytes()).collect();
        assert_eq!(keys, expected);
        assert!(!path.with_extension("tmp").exists());
    }

    #[test]
    fn damaged_or_truncated_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("current.snap");
        write(&path, 300);
        let data = std::fs::read(&path).unwrap();
        std::fs::write(&path, &data[..data.len() - 20]).unwrap();
        assert!(SnapshotReader::verify(&path).is_err());
        let mut flipped = data.clone();
        flipped[data.len() / 2] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert!(SnapshotReader::verify(&path).is_err());
        std::fs::write(&path, &data).unwrap();
        SnapshotReader::verify(&path).unwrap();
    }
}
