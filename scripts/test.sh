#!/usr/bin/env bash
# Runs Ballast's whole test suite on a fresh machine: installs what the tests
# need when it is missing (the real etcd 3.4 and etcdctl as the oracle, protoc
# for the etcd-client crate's build), then checks formatting and lints, builds
# every target once and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-packages.sh etcd=etcd-server etcdctl=etcd-client protoc=protobuf-compiler nft=nftables

export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

cargo fmt --all -- --check
cargo build --workspace --all-targets
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --no-fail-fast
