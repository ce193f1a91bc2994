//! Ballast's Jepsen-style harness: runs real clusters of Ballast or etcd in
//! network namespaces, injects faults, records histories and checks them.
//! The checkers need no privileges and are tested anywhere; the runner needs
//! root and network namespaces.

pub mod check;
pub mod checker;
pub mod client;
pub mod db;
pub mod history;
pub mod nemesis;
pub mod report;
pub mod results;
pub mod runner;
pub mod sandbox;
pub mod watcher;
pub mod workload;
