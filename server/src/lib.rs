//! Ballast's server: a Raft-replicated key-value store that speaks the etcd
//! v3 gRPC API. Layers call downward only:
//! `api` -> `raft`/`lease`/`watch` -> `mvcc` -> `storage` (the lessor
//! proposes its revokes through `raft`).

pub mod api;
mod authority;
pub mod config;
pub mod errors;
pub mod lease;
pub mod mvcc;
pub mod raft;
pub mod server;
pub mod storage;
pub mod watch;
