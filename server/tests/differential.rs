//! Differential test: the same seeded random KV workload against a real etcd
//! 3.4 and against Ballast, through the raw tonic clients of ballast-proto;
//! every response must be equal after zeroing the header ids and raft term
//! (recursively inside Txn sub-responses), and every error must have the same
//! gRPC code and message.
//!
//! The mix includes leases (granted with fixed ids, attached, revoked),
//! extreme `limit` and revision values, and values near `--max-request-bytes`.
//! The single-member run also restarts both servers with kill -9 half way
//! and compares the reopened state, and ends with a burst of concurrent puts
//! (several requests per Raft entry) and a lease that expires.
//!
//! Environment:
//! - `BALLAST_DIFF_SEED`: the seed (default: random, printed);
//! - `BALLAST_DIFF_OPS`: number of operations (default 2500).
//!
//! The key space is kept at ten keys on purpose: etcd sorts with Go's
//! `sort.Sort`, which is an insertion sort (stable) for up to 12 elements, so
//! sorted ranges with ties are deterministic.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use ballast_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use ballast_proto::etcdserverpb::kv_client::KvClient;
use ballast_proto::etcdserverpb::lease_client::LeaseClient;
use ballast_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use ballast_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, Compare, DeleteRangeRequest, DeleteRangeResponse,
    LeaseGrantRequest, LeaseGrantResponse, LeaseLeasesRequest, LeaseRevokeRequest,
    LeaseRevokeResponse, LeaseTimeToLiveRequest, PutRequest, PutResponse, RangeRequest,
    RangeResponse, RequestOp, ResponseHeader, TxnRequest, TxnResponse, request_op, response_op,
};
use ballast_proto::mvccpb::KeyValue;
use bytes::Bytes;
use common::cluster::Cluster;
use common::{Ballast, Etcd, RPC_TIMEOUT, prefix_end};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;

/// Keys that get written. Shares prefixes ("a" < "ab" < "abc"), has 0xff
/// bytes ("b\xff", and "\xff" whose prefix end is "\0").
const KEYS: &[&[u8]] = &[
    b"a",
    b"ab",
    b"abc",
    b"abd",
    b"b",
    b"b\xff",
    b"ba",
    b"c",
    b"\xff",
    b"\xff\xff",
];
/// Keys only ever read or compared (never written), between and around the real ones.
const PROBES: &[&[u8]] = &[
    b"\x00",
    b"\x01",
    b"aa",
    b"abcd",
    b"b\x00",
    b"bb",
    b"z",
    b"\xff\x00",
];
/// Values; few and short so that sorting by value has ties.
const VALUES: &[&[u8]] = &[b"", b"v0", b"v1", b"v2", b"v3", b"x"];
/// A lease id that is never granted.
const BOGUS_LEASE: i64 = 0x1234_5678;
/// Lease ids granted (and revoked, and granted again) by the workload, the
/// same on both sides; long-lived, so that none expires during the run.
const LEASE_IDS: &[i64] = &[0x101, 0x202, 0x303];
const LEASE_TTL: i64 = 3600;
/// `--max-request-bytes` of both servers (the default).
const MAX_REQUEST_BYTES: usize = 1536 * 1024;
/// Responses with values near the request limit can pass tonic's 4 MiB default.
const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;

#[derive(Debug, Clone)]
enum Op {
    Range(RangeRequest),
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact(CompactionRequest),
    LeaseGrant(LeaseGrantRequest),
    LeaseRevoke(LeaseRevokeRequest),
}

impl Op {
    fn kind(&self) -> &'static str {
        match self {
            Op::Range(_) => "range",
            Op::Put(_) => "put",
            Op::DeleteRange(_) => "delete",
            Op::Txn(_) => "txn",
            Op::Compact(_) => "compact",
            Op::LeaseGrant(_) => "grant",
            Op::LeaseRevoke(_) => "revoke",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Range(RangeResponse),
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compact(CompactionResponse),
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
    Error { code: tonic::Code, message: String },
}

impl Outcome {
    fn header_revision(&self) -> Option<i64> {
        let h = match self {
            Outcome::Range(r) => r.header.as_ref(),
            Outcome::Put(r) => r.header.as_ref(),
            Outcome::DeleteRange(r) => r.header.as_ref(),
            Outcome::Txn(r) => r.header.as_ref(),
            Outcome::Compact(r) => r.header.as_ref(),
            Outcome::LeaseGrant(r) => r.header.as_ref(),
            Outcome::LeaseRevoke(r) => r.header.as_ref(),
            Outcome::Error { .. } => None,
        };
        h.map(|h| h.revision)
    }

    fn summary(&self) -> String {
        match self {
            Outcome::Error { code, message } => format!("error {code:?}: {message}"),
            Outcome::Txn(t) => format!("ok ({})", if t.succeeded { "succeeded" } else { "failed" }),
            _ => "ok".to_string(),
        }
    }
}

fn zero_ids(h: &mut Option<ResponseHeader>) {
    if let Some(h) = h {
        h.cluster_id = 0;
        h.member_id = 0;
        h.raft_term = 0;
    }
}

fn normalize_txn(t: &mut TxnResponse) {
    zero_ids(&mut t.header);
    for r in &mut t.responses {
        match &mut r.response {
            Some(response_op::Response::ResponseRange(x)) => zero_ids(&mut x.header),
            Some(response_op::Response::ResponsePut(x)) => zero_ids(&mut x.header),
            Some(response_op::Response::ResponseDeleteRange(x)) => zero_ids(&mut x.header),
            Some(response_op::Response::ResponseTxn(x)) => normalize_txn(x),
            None => {}
        }
    }
}

fn normalize(mut o: Outcome) -> Outcome {
    match &mut o {
        Outcome::Range(r) => zero_ids(&mut r.header),
        Outcome::Put(r) => zero_ids(&mut r.header),
        Outcome::DeleteRange(r) => zero_ids(&mut r.header),
        Outcome::Txn(t) => normalize_txn(t),
        Outcome::Compact(r) => zero_ids(&mut r.header),
        Outcome::LeaseGrant(r) => zero_ids(&mut r.header),
        Outcome::LeaseRevoke(r) => zero_ids(&mut r.header),
        Outcome::Error { .. } => {}
    }
    o
}

fn outcome<T>(
    r: Result<tonic::Response<T>, tonic::Status>,
    ok: impl FnOnce(T) -> Outcome,
) -> Outcome {
    match r {
        Ok(resp) => ok(resp.into_inner()),
        Err(s) => Outcome::Error {
            code: s.code(),
            message: s.message().to_string(),
        },
    }
}

/// One server's clients.
struct Side {
    kv: KvClient<Channel>,
    lease: LeaseClient<Channel>,
}

impl Side {
    async fn of(server: &common::ServerProcess) -> Self {
        Self::on(server.channel().await)
    }

    fn on(channel: Channel) -> Self {
        Side {
            kv: KvClient::new(channel.clone()).max_decoding_message_size(MAX_RESPONSE_BYTES),
            lease: LeaseClient::new(channel),
        }
    }
}

async fn execute(label: &str, side: &mut Side, op: &Op) -> Outcome {
    let kv = &mut side.kv;
    let lease = &mut side.lease;
    let call = async {
        match op.clone() {
            Op::Range(r) => outcome(kv.range(r).await, Outcome::Range),
            Op::Put(r) => outcome(kv.put(r).await, Outcome::Put),
            Op::DeleteRange(r) => outcome(kv.delete_range(r).await, Outcome::DeleteRange),
            Op::Txn(r) => outcome(kv.txn(r).await, Outcome::Txn),
            Op::Compact(r) => outcome(kv.compact(r).await, Outcome::Compact),
            Op::LeaseGrant(r) => outcome(lease.lease_grant(r).await, Outcome::LeaseGrant),
            Op::LeaseRevoke(r) => outcome(lease.lease_revoke(r).await, Outcome::LeaseRevoke),
        }
    };
    match tokio::time::timeout(RPC_TIMEOUT, call).await {
        Ok(o) => normalize(o),
        Err(_) => panic!("{label} did not answer within {RPC_TIMEOUT:?}: {op:?}"),
    }
}

// ---------------------------------------------------------------------------
// Generator
// ---------------------------------------------------------------------------

struct Gen {
    rng: StdRng,
    /// Current store revision, as last reported by etcd.
    rev: i64,
    /// Last successful compaction revision (0 = none yet).
    compact_rev: i64,
    /// What we last saw of each key (hints for compares that can succeed).
    seen: HashMap<Vec<u8>, KeyValue>,
}

/// Constraints while generating one Txn.
#[derive(Clone, Copy)]
struct TxnCtx {
    /// Puts may use ignore_value/ignore_lease. Never together with deletes
    /// whose range end is "\0": etcd 3.4 does not see such a delete as
    /// overlapping a put (checkIntervals), and an ignore_value put of a key
    /// deleted earlier in the same txn makes etcd panic.
    allow_ignore: bool,
    depth: u32,
}

impl Gen {
    fn new(seed: u64) -> Self {
        Gen {
            rng: StdRng::seed_from_u64(seed),
            rev: 1,
            compact_rev: 0,
            seen: HashMap::new(),
        }
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.rng.random_range(0..xs.len())]
    }

    fn range(&mut self, lo: i64, hi_inclusive: i64) -> i64 {
        if hi_inclusive <= lo {
            lo
        } else {
            self.rng.random_range(lo..=hi_inclusive)
        }
    }

    fn write_key(&mut self) -> Vec<u8> {
        self.pick(KEYS).to_vec()
    }

    fn read_key(&mut self) -> Vec<u8> {
        if self.chance(0.8) {
            self.pick(KEYS).to_vec()
        } else {
            self.pick(PROBES).to_vec()
        }
    }

    fn value(&mut self) -> Vec<u8> {
        self.pick(VALUES).to_vec()
    }

    /// A range end for `key`: single key, prefix, "\0" (>= key), another key
    /// (possibly <= key, i.e. an empty range) or something past everything.
    fn range_end(&mut self, key: &[u8]) -> Vec<u8> {
        match self.rng.random_range(0..100) {
            0..40 => vec![],
            40..60 => prefix_end(key),
            60..75 => vec![0],
            75..92 => self.read_key(),
            _ => self.pick(&[&b"z"[..], b"\xff\xff\xff", b"abz"]).to_vec(),
        }
    }

    /// A revision for a historical read: mostly current (0), sometimes in
    /// the past (including compacted ones), sometimes in the future.
    fn read_revision(&mut self) -> i64 {
        match self.rng.random_range(0..100) {
            0..62 => 0,
            62..72 => self.rev,
            72..90 => {
                let lo = (self.compact_rev - 3).max(1);
                self.range(lo, self.rev)
            }
            90..94 => self.range(1, self.rev),
            94..98 => self.rev + self.range(1, 3),
            _ => self.pick(&[-1, i64::MIN, i64::MAX]),
        }
    }

    fn gen_range(&mut self) -> RangeRequest {
        let (key, range_end) = match self.rng.random_range(0..100) {
            // Every key.
            0..5 => (vec![0], vec![0]),
            // The single key "\0" (never present).
            5..7 => (vec![0], vec![]),
            _ => {
                let k = self.read_key();
                let e = self.range_end(&k);
                (k, e)
            }
        };
        let limit = match self.rng.random_range(0..100) {
            0..50 => 0,
            50..92 => self.range(1, 4),
            92..96 => 100,
            _ => self.pick(&[-1, i64::MIN, i64::MAX]),
        };
        let (sort_order, sort_target) = if self.chance(0.45) {
            (SortOrder::None, SortTarget::Key)
        } else {
            let order = self.pick(&[SortOrder::None, SortOrder::Ascend, SortOrder::Descend]);
            let target = self.pick(&[
                SortTarget::Key,
                SortTarget::Version,
                SortTarget::Create,
                SortTarget::Mod,
                SortTarget::Value,
            ]);
            (order, target)
        };
        let filter = |g: &mut Gen| {
            if g.chance(0.08) {
                g.range(0, g.rev + 1)
            } else {
                0
            }
        };
        RangeRequest {
            key: key.into(),
            range_end: range_end.into(),
            limit,
            revision: self.read_revision(),
            sort_order: sort_order as i32,
            sort_target: sort_target as i32,
            serializable: self.chance(0.2),
            keys_only: self.chance(0.15),
            count_only: self.chance(0.1),
            min_mod_revision: filter(self),
            max_mod_revision: filter(self),
            min_create_revision: filter(self),
            max_create_revision: filter(self),
        }
    }

    fn gen_put(&mut self, key: Vec<u8>, allow_ignore: bool) -> PutRequest {
        let mut p = PutRequest {
            key: key.into(),
            value: self.value().into(),
            lease: 0,
            prev_kv: self.chance(0.4),
            ignore_value: false,
            ignore_lease: false,
        };
        if allow_ignore && self.chance(0.08) {
            p.ignore_value = true;
            // Mostly valid (no value); else "etcdserver: value is provided".
            if self.chance(0.7) {
                p.value = Bytes::new();
            } else if p.value.is_empty() {
                p.value = Bytes::from_static(b"v9");
            }
        }
        if allow_ignore && self.chance(0.08) {
            p.ignore_lease = true;
            // Sometimes "etcdserver: lease is provided".
            if self.chance(0.2) {
                p.lease = BOGUS_LEASE;
            }
        }
        if !p.ignore_lease && self.chance(0.01) {
            // "etcdserver: requested lease not found".
            p.lease = BOGUS_LEASE;
        } else if !p.ignore_lease && self.chance(0.1) {
            // Granted or not, whichever the workload did last.
            p.lease = self.pick(LEASE_IDS);
        }
        p
    }

    fn gen_delete(&mut self, allow_gte: bool) -> DeleteRangeRequest {
        let key = self.read_key();
        let mut range_end = match self.rng.random_range(0..100) {
            0..55 => vec![],
            55..72 => prefix_end(&key),
            72..85 => vec![0],
            _ => self.read_key(),
        };
        // prefix_end of "\xff.." is "\0" too.
        if !allow_gte && range_end == [0] {
            range_end = vec![];
        }
        DeleteRangeRequest {
            key: key.into(),
            range_end: range_end.into(),
            prev_kv: self.chance(0.5),
        }
    }

    fn gen_compare(&mut self) -> Compare {
        let key = if self.chance(0.85) {
            self.pick(KEYS).to_vec()
        } else {
            self.pick(PROBES).to_vec()
        };
        let range_end = match self.rng.random_range(0..100) {
            0..80 => vec![],
            80..90 => prefix_end(&key),
            _ => vec![0],
        };
        let target = self.pick(&[
            CompareTarget::Version,
            CompareTarget::Create,
            CompareTarget::Mod,
            CompareTarget::Value,
            CompareTarget::Lease,
        ]);
        let result = self.pick(&[
            CompareResult::Equal,
            CompareResult::Greater,
            CompareResult::Less,
            CompareResult::NotEqual,
        ]);
        let seen = self.seen.get(&key).cloned();
        let union = match target {
            CompareTarget::Version => {
                let v = match (&seen, self.rng.random_range(0..10)) {
                    (Some(kv), 0..5) => kv.version,
                    (_, 5..7) => 0,
                    _ => self.range(0, 4),
                };
                TargetUnion::Version(v)
            }
            CompareTarget::Create => {
                let v = match (&seen, self.rng.random_range(0..10)) {
                    (Some(kv), 0..5) => kv.create_revision,
                    (_, 5..7) => 0,
                    _ => self.range(0, self.rev + 1),
                };
                TargetUnion::CreateRevision(v)
            }
            CompareTarget::Mod => {
                let v = match (&seen, self.rng.random_range(0..10)) {
                    (Some(kv), 0..5) => kv.mod_revision,
                    (_, 5..7) => 0,
                    _ => self.range(0, self.rev + 1),
                };
                TargetUnion::ModRevision(v)
            }
            CompareTarget::Value => {
                // Values near the request limit are not quoted: a txn of 128
                // compares would reach many megabytes, past the limits that
                // txn_size_limit_applies_to_writing_txns_only covers.
                let v = match (&seen, self.rng.random_range(0..10)) {
                    (Some(kv), 0..5) if kv.value.len() <= 64 => kv.value.to_vec(),
                    _ => self.value(),
                };
                TargetUnion::Value(v.into())
            }
            CompareTarget::Lease => TargetUnion::Lease(if self.chance(0.8) { 0 } else { 1 }),
        };
        Compare {
            result: result as i32,
            target: target as i32,
            key: key.into(),
            range_end: range_end.into(),
            target_union: Some(union),
        }
    }

    /// One branch (success or failure) of a txn.
    fn gen_branch(&mut self, ctx: TxnCtx) -> Vec<RequestOp> {
        let n = match self.rng.random_range(0..100) {
            0..10 => 0,
            10..40 => 1,
            40..70 => 2,
            70..90 => 3,
            _ => self.range(4, 6) as usize,
        };
        let mut ops = Vec::with_capacity(n);
        let mut put_keys: Vec<Vec<u8>> = Vec::new();
        for _ in 0..n {
            let roll = self.rng.random_range(0..100);
            let request = match roll {
                0..35 => {
                    let mut r = self.gen_range();
                    // Inside txns keep most ranges at the current revision.
                    if self.chance(0.6) {
                        r.revision = 0;
                    }
                    Some(request_op::Request::RequestRange(r))
                }
                35..72 => {
                    // Mostly distinct keys per branch; sometimes a duplicate.
                    let mut key = self.write_key();
                    if put_keys.contains(&key) && self.chance(0.8) {
                        key = self.write_key();
                    }
                    put_keys.push(key.clone());
                    Some(request_op::Request::RequestPut(
                        self.gen_put(key, ctx.allow_ignore),
                    ))
                }
                72..90 => {
                    let mut d = self.gen_delete(!ctx.allow_ignore);
                    // Mostly keep deletes away from the puts of this branch.
                    if self.chance(0.7) {
                        d.range_end = Bytes::new();
                        if put_keys.iter().any(|k| k[..] == d.key[..]) {
                            d.key = Bytes::from_static(b"zz-never");
                        }
                    }
                    Some(request_op::Request::RequestDeleteRange(d))
                }
                90..99 if ctx.depth < 2 => {
                    let inner = self.gen_txn(TxnCtx {
                        depth: ctx.depth + 1,
                        ..ctx
                    });
                    Some(request_op::Request::RequestTxn(inner))
                }
                90..99 => Some(request_op::Request::RequestRange(self.gen_range())),
                // An empty RequestOp: "etcdserver: key not found".
                _ => {
                    if self.chance(0.3) {
                        None
                    } else {
                        Some(request_op::Request::RequestRange(RangeRequest {
                            key: self.read_key().into(),
                            ..Default::default()
                        }))
                    }
                }
            };
            ops.push(RequestOp { request });
        }
        ops
    }

    fn gen_txn(&mut self, ctx: TxnCtx) -> TxnRequest {
        let nc = match self.rng.random_range(0..100) {
            0..10 => 0,
            10..60 => 1,
            60..85 => 2,
            _ => 3,
        };
        let compare = (0..nc).map(|_| self.gen_compare()).collect();
        let success = self.gen_branch(ctx);
        let failure = self.gen_branch(ctx);
        TxnRequest {
            compare,
            success,
            failure,
        }
    }

    /// Txns around the op-count limit, including etcd's rule that a nested
    /// txn may only have `128 - max(len(compare), len(success), len(failure))`
    /// ops of its parent.
    fn gen_big_txn(&mut self) -> TxnRequest {
        let range_op = |g: &mut Gen| RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest {
                key: g.read_key().into(),
                ..Default::default()
            })),
        };
        match self.rng.random_range(0..4) {
            0 => {
                let n = self.pick(&[127usize, 128, 129, 200]);
                let success = (0..n).map(|_| range_op(self)).collect();
                TxnRequest {
                    compare: vec![],
                    success,
                    failure: vec![],
                }
            }
            1 => {
                let n = self.pick(&[128usize, 129]);
                let compare = (0..n).map(|_| self.gen_compare()).collect();
                TxnRequest {
                    compare,
                    success: vec![range_op(self)],
                    failure: vec![range_op(self)],
                }
            }
            2 => {
                // Distinct puts: 128 are allowed, 129 are not. They sit in the
                // branch that is not taken (a version is never < 0), so the
                // key space stays small; the limit applies to both branches.
                let n = self.pick(&[120usize, 128, 129]);
                let success = (0..n)
                    .map(|i| RequestOp {
                        request: Some(request_op::Request::RequestPut(PutRequest {
                            key: format!("big/{i:03}").into_bytes().into(),
                            value: Bytes::from_static(b"v"),
                            ..Default::default()
                        })),
                    })
                    .collect();
                let never = Compare {
                    result: CompareResult::Less as i32,
                    target: CompareTarget::Version as i32,
                    key: Bytes::from_static(b"a"),
                    range_end: Bytes::new(),
                    target_union: Some(TargetUnion::Version(0)),
                };
                TxnRequest {
                    compare: vec![never],
                    success,
                    failure: vec![range_op(self)],
                }
            }
            _ => {
                let outer = 100usize;
                let inner = self.pick(&[26usize, 27, 28, 30]);
                let inner_txn = TxnRequest {
                    compare: vec![],
                    success: (0..inner).map(|_| range_op(self)).collect(),
                    failure: vec![],
                };
                let mut success: Vec<RequestOp> = (0..outer).map(|_| range_op(self)).collect();
                success.push(RequestOp {
                    request: Some(request_op::Request::RequestTxn(inner_txn)),
                });
                TxnRequest {
                    compare: vec![],
                    success,
                    failure: vec![],
                }
            }
        }
    }

    fn gen_compact(&mut self) -> CompactionRequest {
        let revision = match self.rng.random_range(0..100) {
            0..65 => self.range(self.compact_rev + 1, self.rev),
            65..75 => self.rev,
            75..87 => self.range((self.compact_rev - 2).max(0), self.compact_rev),
            87..97 => self.rev + self.range(1, 3),
            _ => 0,
        };
        CompactionRequest {
            revision,
            physical: self.chance(0.75),
        }
    }

    fn gen_op(&mut self) -> Op {
        if self.chance(0.05) {
            return self.gen_lease_op();
        }
        if self.chance(0.003) {
            return self.gen_large_put();
        }
        match self.rng.random_range(0..1000) {
            0..340 => Op::Range(self.gen_range()),
            340..640 => {
                let key = self.write_key();
                let allow_ignore = true;
                Op::Put(self.gen_put(key, allow_ignore))
            }
            640..750 => Op::DeleteRange(self.gen_delete(true)),
            750..950 => {
                let allow_ignore = self.chance(0.5);
                Op::Txn(self.gen_txn(TxnCtx {
                    allow_ignore,
                    depth: 0,
                }))
            }
            950..962 => Op::Txn(self.gen_big_txn()),
            962..990 => Op::Compact(self.gen_compact()),
            // Empty keys: "etcdserver: key is not provided".
            990..993 => Op::Range(RangeRequest {
                key: Bytes::new(),
                range_end: Bytes::from_static(b"z"),
                ..Default::default()
            }),
            993..996 => Op::Put(PutRequest {
                key: Bytes::new(),
                value: Bytes::from_static(b"v"),
                ..Default::default()
            }),
            996..998 => Op::DeleteRange(DeleteRangeRequest {
                key: Bytes::new(),
                ..Default::default()
            }),
            _ => {
                let mut t = self.gen_txn(TxnCtx {
                    allow_ignore: false,
                    depth: 0,
                });
                let mut c = self.gen_compare();
                c.key = Bytes::new();
                t.compare.push(c);
                Op::Txn(t)
            }
        }
    }

    /// Grants (with a fixed id: "lease already exists" when it is) or
    /// revokes (the keys attached go in one revision; "requested lease not
    /// found" when there is none).
    fn gen_lease_op(&mut self) -> Op {
        let id = self.pick(LEASE_IDS);
        if self.chance(0.55) {
            Op::LeaseGrant(LeaseGrantRequest { ttl: LEASE_TTL, id })
        } else {
            Op::LeaseRevoke(LeaseRevokeRequest { id })
        }
    }

    /// A put just under the request limit (taken) or just over it
    /// ("etcdserver: request is too large").
    fn gen_large_put(&mut self) -> Op {
        let len = if self.chance(0.5) {
            MAX_REQUEST_BYTES - 1024
        } else {
            MAX_REQUEST_BYTES + 1
        };
        Op::Put(PutRequest {
            key: self.write_key().into(),
            value: vec![b'L'; len].into(),
            ..Default::default()
        })
    }

    /// Learns the store revision, the compaction revision and key hints
    /// from etcd's (normalised) answer.
    fn observe(&mut self, op: &Op, out: &Outcome) {
        if let Some(rev) = out.header_revision() {
            self.rev = self.rev.max(rev);
        }
        match (op, out) {
            (Op::Compact(c), Outcome::Compact(_)) => self.compact_rev = c.revision,
            (Op::Range(r), Outcome::Range(resp)) if r.revision == 0 && !r.keys_only => {
                for kv in &resp.kvs {
                    self.seen.insert(kv.key.to_vec(), kv.clone());
                }
            }
            (Op::Put(p), Outcome::Put(resp)) => {
                let rev = resp.header.as_ref().map(|h| h.revision).unwrap_or(0);
                let e = self.seen.entry(p.key.to_vec()).or_default();
                e.mod_revision = rev;
                e.version += 1;
                if e.create_revision == 0 {
                    e.create_revision = rev;
                }
                if !p.ignore_value {
                    e.value = p.value.clone();
                }
            }
            (Op::DeleteRange(_), Outcome::DeleteRange(resp)) => {
                for kv in &resp.prev_kvs {
                    self.seen.remove(&kv.key.to_vec());
                }
            }
            _ => {}
        }
    }
}

fn seed_from_env() -> u64 {
    match std::env::var("BALLAST_DIFF_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("BALLAST_DIFF_SEED={s:?}: {e}")),
        Err(_) => rand::random(),
    }
}

fn ops_from_env() -> usize {
    match std::env::var("BALLAST_DIFF_OPS") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("BALLAST_DIFF_OPS={s:?}: {e}")),
        Err(_) => 2500,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differential_against_etcd() {
    let seed = seed_from_env();
    let n_ops = ops_from_env();
    println!("differential: seed {seed} (set BALLAST_DIFF_SEED={seed} to reproduce), {n_ops} ops");

    let (mut etcd, mut ballast) = tokio::join!(Etcd::start(), Ballast::start());
    let (etcd_side, ballast_side) = (Side::of(&etcd).await, Side::of(&ballast).await);
    run(
        seed,
        n_ops,
        etcd_side,
        ballast_side,
        false,
        Some((&mut etcd, &mut ballast)),
    )
    .await;
}

/// A txn that writes nothing is served without Raft, so etcd does not hold
/// it to `--max-request-bytes` (only to gRPC's limit, 512 KiB above it);
/// one that may write is refused. Found by the random mix: a compare that
/// quoted a value of almost 1.5 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_size_limit_applies_to_writing_txns_only() {
    let (etcd, ballast) = tokio::join!(Etcd::start(), Ballast::start());
    let (mut etcd, mut ballast) = (Side::of(&etcd).await, Side::of(&ballast).await);
    let quoted = Bytes::from(vec![b'q'; MAX_REQUEST_BYTES + 1024]);
    let compare = Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Value as i32,
        key: Bytes::from_static(b"k"),
        target_union: Some(TargetUnion::Value(quoted)),
        ..Default::default()
    };
    let read = RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: Bytes::from_static(b"k"),
            ..Default::default()
        })),
    };
    let write = RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v"),
            ..Default::default()
        })),
    };
    // Past gRPC's own limit (--max-request-bytes + 512 KiB), grpc-go refuses
    // the message before etcd sees it.
    let mut beyond_grpc = compare.clone();
    beyond_grpc.target_union = Some(TargetUnion::Value(Bytes::from(vec![
        b'q';
        MAX_REQUEST_BYTES * 2
    ])));
    for (what, compare, failure) in [
        ("read-only", compare.clone(), read.clone()),
        ("writing", compare, write),
        ("past gRPC's limit", beyond_grpc, read),
    ] {
        let op = Op::Txn(TxnRequest {
            compare: vec![compare],
            success: vec![],
            failure: vec![failure],
        });
        let (e, b) = tokio::join!(
            execute("etcd", &mut etcd, &op),
            execute("ballast", &mut ballast, &op)
        );
        assert_eq!(e, b, "{what} txn over --max-request-bytes");
    }
}

/// Puts whose encoded size is a few bytes either side of
/// `--max-request-bytes`. etcd measures the Raft entry it would propose: the
/// request as one field of an `InternalRaftRequest` after a header holding
/// a request id, whose varint length comes from the member id's low 16 bits
/// (`idutil.Generator`: those bits above 48 bits of clock and counter). The
/// two servers have different member ids, so each must refuse from the size
/// its own id gives: 4 header bytes plus the id's varint, then the field's
/// tag and length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_size_limit_is_etcds_to_the_byte() {
    use ballast_proto::etcdserverpb::StatusRequest;
    use prost::Message;

    async fn first_refused(server: &common::ServerProcess) -> (usize, usize) {
        let member_id = server
            .maintenance_client()
            .await
            .status(StatusRequest {})
            .await
            .expect("status")
            .into_inner()
            .header
            .expect("header")
            .member_id;
        let request_id = ((member_id & 0xffff) << 48) | (1 << 47);
        let header = 4 + prost::encoding::encoded_len_varint(request_id);
        let mut side = Side::of(server).await;
        let put = |len| PutRequest {
            key: Bytes::from_static(b"k"),
            value: vec![b's'; len].into(),
            ..Default::default()
        };
        let overhead = put(MAX_REQUEST_BYTES).encoded_len() - MAX_REQUEST_BYTES;
        for under in (0..40).rev() {
            let request = put(MAX_REQUEST_BYTES - overhead - under);
            let field = 1 + prost::length_delimiter_len(request.encoded_len());
            let expected_refused = header + field > under;
            match execute("server", &mut side, &Op::Put(request)).await {
                Outcome::Error { message, .. } => {
                    assert_eq!(message, "etcdserver: request is too large");
                    assert!(expected_refused, "refused {under} bytes under the limit");
                    return (under, header + field);
                }
                _ => assert!(
                    !expected_refused,
                    "took a put {under} bytes under the limit"
                ),
            }
        }
        panic!("no put near the limit was refused");
    }

    let (etcd, ballast) = tokio::join!(Etcd::start(), Ballast::start());
    let (etcd_at, etcd_entry_overhead) = first_refused(&etcd).await;
    let (ballast_at, ballast_entry_overhead) = first_refused(&ballast).await;
    println!(
        "etcd refuses from {etcd_at} bytes under the limit (entry overhead {etcd_entry_overhead}), \
         Ballast from {ballast_at} (overhead {ballast_entry_overhead})"
    );
}

/// The same operations through a follower of a three-member cluster: the
/// follower forwards writes and linearizable reads to the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn differential_against_etcd_through_a_follower() {
    let seed = seed_from_env();
    let n_ops = ops_from_env();
    println!("differential through a follower: seed {seed}, {n_ops} ops");
    let (etcd, cluster) = tokio::join!(Etcd::start(), Cluster::start(3));
    let follower = (cluster.leader().await + 1) % 3;
    let channel = tonic::transport::Endpoint::from_shared(cluster.members[follower].endpoint())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect to the follower");
    run(
        seed,
        n_ops,
        Side::of(&etcd).await,
        Side::on(channel),
        true,
        None,
    )
    .await;
}

/// Everything both hold now: every key, and every lease with its granted
/// TTL and keys (the remaining TTL depends on timing).
async fn compare_state(etcd: &mut Side, ballast: &mut Side, seed: u64, when: &str) {
    let all = Op::Range(RangeRequest {
        key: vec![0].into(),
        range_end: vec![0].into(),
        ..Default::default()
    });
    let (e, b) = tokio::join!(
        execute("etcd", etcd, &all),
        execute("ballast", ballast, &all)
    );
    assert_eq!(e, b, "full range differs {when} (seed {seed})");
    let (e, b) = (leases_of(etcd).await, leases_of(ballast).await);
    assert_eq!(e, b, "leases differ {when} (seed {seed})");
}

/// Lease id -> (granted TTL, attached keys), sorted.
async fn leases_of(side: &mut Side) -> Vec<(i64, i64, Vec<Bytes>)> {
    let mut ids: Vec<i64> = side
        .lease
        .lease_leases(LeaseLeasesRequest {})
        .await
        .expect("lease list")
        .into_inner()
        .leases
        .iter()
        .map(|lease| lease.id)
        .collect();
    ids.sort_unstable();
    let mut leases = Vec::new();
    for id in ids {
        let ttl = side
            .lease
            .lease_time_to_live(LeaseTimeToLiveRequest { id, keys: true })
            .await
            .expect("lease time to live")
            .into_inner();
        let mut keys = ttl.keys.clone();
        keys.sort();
        leases.push((id, ttl.granted_ttl, keys));
    }
    leases
}

/// 64 puts of distinct keys sent at once, so that Ballast packs several
/// into one Raft entry. Their order is up to each server, so the answer is
/// the set of revisions they took and each key's value and version.
async fn concurrent_puts(side: &Side) -> (Vec<i64>, Vec<(Bytes, Bytes, i64)>) {
    let mut puts = tokio::task::JoinSet::new();
    for i in 0..64 {
        let mut kv = side.kv.clone();
        puts.spawn(async move {
            kv.put(PutRequest {
                key: format!("burst/{i:02}").into_bytes().into(),
                value: format!("b{i}").into_bytes().into(),
                ..Default::default()
            })
            .await
            .expect("concurrent put")
            .into_inner()
            .header
            .expect("header")
            .revision
        });
    }
    let mut revisions = puts.join_all().await;
    revisions.sort_unstable();
    let mut kv = side.kv.clone();
    let burst = kv
        .range(RangeRequest {
            key: Bytes::from_static(b"burst/"),
            range_end: prefix_end(b"burst/").into(),
            ..Default::default()
        })
        .await
        .expect("read the burst")
        .into_inner();
    let keys = burst
        .kvs
        .into_iter()
        .map(|kv| (kv.key, kv.value, kv.version))
        .collect();
    (revisions, keys)
}

/// Both still hold a key on a 2-second lease, until each expires it.
async fn wait_until_expired(side: &mut Side, key: &'static [u8]) {
    let gone = async {
        loop {
            let count = side
                .kv
                .range(RangeRequest {
                    key: Bytes::from_static(key),
                    count_only: true,
                    ..Default::default()
                })
                .await
                .expect("range")
                .into_inner()
                .count;
            if count == 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(60), gone)
        .await
        .expect("the lease never expired");
}

/// Runs the seeded operations against both. `follower`: Ballast is reached
/// through a follower, whose serializable reads may lag the leader by design;
/// a linearizable read first makes it catch up, so that the comparison stays
/// exact. `restart`: both servers are killed and restarted half way.
async fn run(
    seed: u64,
    n_ops: usize,
    mut etcd: Side,
    mut ballast: Side,
    follower: bool,
    mut restart: Option<(&mut Etcd, &mut Ballast)>,
) {
    let mut g = Gen::new(seed);
    // (op kind, outcome summary) -> count, to show what the run covered.
    let mut stats: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut recent: Vec<String> = Vec::new();

    for i in 0..n_ops {
        if i == n_ops / 2
            && let Some((etcd_server, ballast_server)) = restart.as_mut()
        {
            etcd_server.kill9();
            ballast_server.kill9();
            tokio::join!(etcd_server.restart(), ballast_server.restart());
            etcd = Side::of(etcd_server).await;
            ballast = Side::of(ballast_server).await;
            compare_state(&mut etcd, &mut ballast, seed, "after kill -9 and restart").await;
            recent.push(format!("#{i} kill -9 and restart of both"));
        }
        let op = g.gen_op();
        if follower && matches!(&op, Op::Range(r) if r.serializable) {
            let barrier = RangeRequest {
                key: Bytes::from_static(b"\0"),
                limit: 1,
                ..Default::default()
            };
            ballast
                .kv
                .range(barrier)
                .await
                .expect("linearizable barrier read");
        }
        let (e, b) = tokio::join!(
            execute("etcd", &mut etcd, &op),
            execute("ballast", &mut ballast, &op)
        );
        if e != b {
            let mut history = String::new();
            for line in &recent {
                let _ = writeln!(history, "  {line}");
            }
            panic!(
                "differential mismatch at op #{i} (seed {seed}; reproduce with BALLAST_DIFF_SEED={seed} BALLAST_DIFF_OPS={n})\n\
                 previous ops:\n{history}\
                 op: {op:#?}\n\
                 etcd:    {e:#?}\n\
                 ballast: {b:#?}\n",
                n = i + 1
            );
        }
        *stats
            .entry((op.kind().to_string(), e.summary()))
            .or_default() += 1;
        recent.push(format!("#{i} {} -> {}", op.kind(), e.summary()));
        if recent.len() > 8 {
            recent.remove(0);
        }
        g.observe(&op, &e);
    }

    // Both must also agree on the final state, read in full.
    compare_state(&mut etcd, &mut ballast, seed, "at the end").await;

    let (e, b) = tokio::join!(concurrent_puts(&etcd), concurrent_puts(&ballast));
    assert_eq!(e, b, "concurrent puts differ (seed {seed})");
    let clear = Op::DeleteRange(DeleteRangeRequest {
        key: Bytes::from_static(b"burst/"),
        range_end: prefix_end(b"burst/").into(),
        prev_kv: false,
    });
    let (e, b) = tokio::join!(
        execute("etcd", &mut etcd, &clear),
        execute("ballast", &mut ballast, &clear)
    );
    assert_eq!(e, b, "deleting the burst differs (seed {seed})");

    let expiring = [
        Op::LeaseGrant(LeaseGrantRequest { ttl: 2, id: 0x999 }),
        Op::Put(PutRequest {
            key: Bytes::from_static(b"expiring"),
            value: Bytes::from_static(b"soon gone"),
            lease: 0x999,
            ..Default::default()
        }),
    ];
    for op in &expiring {
        let (e, b) = tokio::join!(
            execute("etcd", &mut etcd, op),
            execute("ballast", &mut ballast, op)
        );
        assert_eq!(e, b, "{} differs (seed {seed})", op.kind());
    }
    tokio::join!(
        wait_until_expired(&mut etcd, b"expiring"),
        wait_until_expired(&mut ballast, b"expiring")
    );
    compare_state(&mut etcd, &mut ballast, seed, "after a lease expired").await;

    println!("differential coverage (op, outcome -> count):");
    for ((kind, summary), count) in &stats {
        println!("  {kind:8} {summary:70} {count}");
    }
    println!(
        "differential: final revision {}, compacted at {}",
        g.rev, g.compact_rev
    );
    println!("differential: {n_ops} ops, 0 mismatches, seed {seed}");
}
