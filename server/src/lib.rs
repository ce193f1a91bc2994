//! Ballast's server: a Raft-replicated key-value store that speaks the etcd
//! v3 gRPC API. Layers call downward only:
//! `api` -> `raft`/`watch` -> `mvcc` -> `storage`.

pub mod api;
mod authority;
pub mod config;
pub mod errors;
pub mod mvcc;
pub mod raft;
pub mod server;
pub mod storage;
pub mod watch;
