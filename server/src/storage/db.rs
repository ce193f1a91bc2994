//! The state machine's sled database (`member/db`) and its encodings.
//!
//! One tree with one-byte prefixes, so that an applied Raft batch (MVCC rows,
//! applied log id, membership) is a single atomic `sled::Batch`:
//! `k` + revision -> kind byte + `mvccpb.KeyValue`; `l` + lease id -> the
//! lease's TTLs; `m` + name -> replicated metadata; `o` + name -> this
//! member's own metadata (its identity), which a snapshot neither carries
//! nor replaces.

use std::fs::File;
use std::path::{Path, PathBuf};

use ballast_proto::mvccpb::KeyValue;
use prost::Message;

use super::revision::{REVISION_BYTES, Revision};
use super::snapshot::Pair;

const KV_PREFIX: u8 = b'k';
const META_PREFIX: u8 = b'm';
const LEASE_PREFIX: u8 = b'l';
const OWN_PREFIX: u8 = b'o';
/// The prefixes of replicated state, in a snapshot's order.
const REPLICATED_PREFIXES: [u8; 3] = [KV_PREFIX, LEASE_PREFIX, META_PREFIX];
/// Pairs removed per batch when a snapshot replaces the state.
const CLEAR_BATCH: usize = 10_000;
const PUT: u8 = 0;
const TOMBSTONE: u8 = 1;

/// One stored MVCC row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub rev: Revision,
    pub tombstone: bool,
    pub kv: KeyValue,
}

/// One stored lease: granted TTL and the remaining TTL last checkpointed
/// (0: none), in seconds. Attached keys are not stored here: each key's
/// latest version names its lease, as in etcd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRow {
    pub id: i64,
    pub ttl: i64,
    pub remaining_ttl: i64,
}

fn lease_key(id: i64) -> [u8; 9] {
    let mut key = [LEASE_PREFIX; 9];
    key[1..].copy_from_slice(&id.to_be_bytes());
    key
}

fn decode_lease(key: &[u8], value: &[u8]) -> std::io::Result<LeaseRow> {
    let field = |bytes: Option<&[u8]>| {
        bytes
            .and_then(|b| b.try_into().ok())
            .map(i64::from_be_bytes)
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "bad lease row"))
    };
    Ok(LeaseRow {
        id: field(key.get(1..9))?,
        ttl: field(value.get(0..8))?,
        remaining_ttl: field(value.get(8..16))?,
    })
}

#[derive(Clone)]
pub struct StateDb {
    db: sled::Db,
    path: PathBuf,
}

fn kv_key(rev: Revision) -> [u8; 1 + REVISION_BYTES] {
    let mut key = [KV_PREFIX; 1 + REVISION_BYTES];
    key[1..].copy_from_slice(&rev.to_bytes());
    key
}

fn named_key(prefix: u8, name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + name.len());
    key.push(prefix);
    key.extend_from_slice(name.as_bytes());
    key
}

/// The stored key of replicated metadata `name` (also a snapshot pair's key).
pub fn meta_key(name: &str) -> Vec<u8> {
    named_key(META_PREFIX, name)
}

fn decode_row(key: &[u8], value: &[u8]) -> std::io::Result<Row> {
    let invalid =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let rev = Revision::from_bytes(&key[1..]).ok_or_else(|| invalid("bad revision key"))?;
    let (&kind, body) = value.split_first().ok_or_else(|| invalid("empty row"))?;
    let kv = KeyValue::decode(body).map_err(|e| invalid(&e.to_string()))?;
    Ok(Row {
        rev,
        tombstone: kind == TOMBSTONE,
        kv,
    })
}

impl StateDb {
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        let db = sled::Config::new()
            .path(dir)
            // Durability comes from the Raft log; our own flushes mark the
            // points where sled must be on disk (before a log purge).
            .flush_every_ms(Some(1000))
            .open()
            .map_err(std::io::Error::other)?;
        Ok(Self {
            db,
            path: dir.to_path_buf(),
        })
    }

    pub fn get_row(&self, rev: Revision) -> std::io::Result<Option<Row>> {
        let key = kv_key(rev);
        match self.db.get(key).map_err(std::io::Error::other)? {
            Some(value) => decode_row(&key, &value).map(Some),
            None => Ok(None),
        }
    }

    /// Rows in revision order from `from` (inclusive) to `to` (exclusive).
    pub fn rows(
        &self,
        from: Revision,
        to: Revision,
    ) -> impl Iterator<Item = std::io::Result<Row>> + '_ {
        self.db.range(kv_key(from)..kv_key(to)).map(|item| {
            let (key, value) = item.map_err(std::io::Error::other)?;
            decode_row(&key, &value)
        })
    }

    /// crc32 of every stored row below `to`, keys and values as stored.
    pub fn hash_rows(&self, to: Revision) -> std::io::Result<u32> {
        let mut hasher = crc32fast::Hasher::new();
        for item in self.db.range(kv_key(Revision::new(0, 0))..kv_key(to)) {
            let (key, value) = item.map_err(std::io::Error::other)?;
            hasher.update(&key);
            hasher.update(&value);
        }
        Ok(hasher.finalize())
    }

    pub fn all_rows(&self) -> impl Iterator<Item = std::io::Result<Row>> + '_ {
        self.db.scan_prefix([KV_PREFIX]).map(|item| {
            let (key, value) = item.map_err(std::io::Error::other)?;
            decode_row(&key, &value)
        })
    }

    pub fn leases(&self) -> impl Iterator<Item = std::io::Result<LeaseRow>> + '_ {
        self.db.scan_prefix([LEASE_PREFIX]).map(|item| {
            let (key, value) = item.map_err(std::io::Error::other)?;
            decode_lease(&key, &value)
        })
    }

    pub fn meta(&self, name: &str) -> std::io::Result<Option<sled::IVec>> {
        self.db.get(meta_key(name)).map_err(std::io::Error::other)
    }

    pub fn apply(&self, batch: StateBatch) -> std::io::Result<()> {
        self.db
            .apply_batch(batch.batch)
            .map_err(std::io::Error::other)
    }

    /// Makes everything applied so far survive power loss. sled's own flush
    /// uses sync_file_range, which promises nothing across a power loss, and
    /// syncs neither its blob files (values over about 128 KiB), its config
    /// nor its page-table snapshots: every file and directory of the
    /// database is synced here, blobs last written first.
    pub fn flush_durable(&self) -> std::io::Result<()> {
        self.db.flush().map_err(std::io::Error::other)?;
        sync_tree(&self.path)
    }

    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// This member's own metadata `name`, which snapshots leave alone.
    pub fn own_meta(&self, name: &str) -> std::io::Result<Option<sled::IVec>> {
        self.db
            .get(named_key(OWN_PREFIX, name))
            .map_err(std::io::Error::other)
    }

    /// The stored revisions in `from..to`, at most `limit` of them.
    pub fn row_revisions(
        &self,
        from: Revision,
        to: Revision,
        limit: usize,
    ) -> std::io::Result<Vec<Revision>> {
        self.db
            .range(kv_key(from)..kv_key(to))
            .keys()
            .take(limit)
            .map(|key| {
                let key = key.map_err(std::io::Error::other)?;
                Revision::from_bytes(&key[1..]).ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::InvalidData, "bad revision key")
                })
            })
            .collect()
    }

    /// The replicated pairs other than rows (lease and metadata rows): small,
    /// read under the store's lock when a snapshot starts.
    pub fn small_pairs(&self) -> std::io::Result<Vec<Pair>> {
        [LEASE_PREFIX, META_PREFIX]
            .into_iter()
            .flat_map(|prefix| self.db.scan_prefix([prefix]))
            .map(|item| {
                let (k, v) = item.map_err(std::io::Error::other)?;
                Ok((k.to_vec(), v.to_vec()))
            })
            .collect()
    }

    /// The stored rows below `to` as raw pairs, in revision order.
    pub fn row_pairs(&self, to: Revision) -> impl Iterator<Item = std::io::Result<Pair>> + '_ {
        self.db
            .range(kv_key(Revision::new(0, 0))..kv_key(to))
            .map(|item| {
                let (k, v) = item.map_err(std::io::Error::other)?;
                Ok((k.to_vec(), v.to_vec()))
            })
    }

    /// Removes every replicated pair, in bounded batches.
    pub fn clear_replicated(&self) -> std::io::Result<()> {
        for prefix in REPLICATED_PREFIXES {
            loop {
                let keys = self
                    .db
                    .scan_prefix([prefix])
                    .keys()
                    .take(CLEAR_BATCH)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(std::io::Error::other)?;
                if keys.is_empty() {
                    break;
                }
                let mut batch = sled::Batch::default();
                for key in keys {
                    batch.remove(key);
                }
                self.db.apply_batch(batch).map_err(std::io::Error::other)?;
            }
        }
        Ok(())
    }

    /// Stores replicated pairs read from a snapshot; refuses any other kind.
    pub fn insert_pairs(&self, pairs: Vec<Pair>) -> std::io::Result<()> {
        let mut batch = sled::Batch::default();
        for (key, value) in pairs {
            if !key
                .first()
                .is_some_and(|prefix| REPLICATED_PREFIXES.contains(prefix))
            {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "snapshot holds a pair that is not replicated state",
                ));
            }
            batch.insert(key, value);
        }
        self.db.apply_batch(batch).map_err(std::io::Error::other)
    }
}

/// Writes that become visible together in [`StateDb::apply`].
#[derive(Default)]
pub struct StateBatch {
    batch: sled::Batch,
}

impl StateBatch {
    pub fn put_row(&mut self, row: &Row) {
        let mut value = Vec::with_capacity(1 + row.kv.encoded_len());
        value.push(if row.tombstone { TOMBSTONE } else { PUT });
        row.kv.encode(&mut value).expect("vec has capacity");
        self.batch.insert(&kv_key(row.rev)[..], value);
    }

    pub fn remove_row(&mut self, rev: Revision) {
        self.batch.remove(&kv_key(rev)[..]);
    }

    pub fn put_lease(&mut self, lease: &LeaseRow) {
        let mut value = [0u8; 16];
        value[..8].copy_from_slice(&lease.ttl.to_be_bytes());
        value[8..].copy_from_slice(&lease.remaining_ttl.to_be_bytes());
        self.batch.insert(&lease_key(lease.id)[..], &value[..]);
    }

    pub fn remove_lease(&mut self, id: i64) {
        self.batch.remove(&lease_key(id)[..]);
    }

    pub fn put_meta(&mut self, name: &str, value: &[u8]) {
        self.batch.insert(meta_key(name), value);
    }

    pub fn remove_meta(&mut self, name: &str) {
        self.batch.remove(meta_key(name));
    }

    pub fn put_own_meta(&mut self, name: &str, value: &[u8]) {
        self.batch.insert(named_key(OWN_PREFIX, name), value);
    }

    pub fn remove_own_meta(&mut self, name: &str) {
        self.batch.remove(named_key(OWN_PREFIX, name));
    }
}

/// Syncs every file below `dir`, then each directory after its entries.
fn sync_tree(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        match entry.file_type()? {
            kind if kind.is_dir() => sync_tree(&path)?,
            kind if kind.is_file() => match File::open(&path) {
                Ok(file) => file.sync_all()?,
                // sled removed it meanwhile (a collected blob or an old snapshot).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            },
            _ => {}
        }
    }
    File::open(dir)?.sync_all()
}
