//! Durable state: the Raft write-ahead log and the state machine's sled
//! database, with their on-disk encodings.

pub mod db;
pub mod revision;
pub mod snapshot;
pub mod wal;
