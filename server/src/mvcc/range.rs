//! Range evaluation (etcd's rangeKeys plus the applier's sort, filter and limit).

use ballast_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use ballast_proto::etcdserverpb::{RangeRequest, RangeResponse, ResponseHeader};
use ballast_proto::mvccpb::KeyValue;

use super::index::{KeyRange, TreeIndex};
use crate::errors::EtcdError;
use crate::storage::revision::Revision;

/// A consistent view of the store at one revision.
pub(super) trait ReadView {
    /// The store revision this view sees.
    fn revision(&self) -> i64;
    fn compact_revision(&self) -> i64;
    fn index(&self) -> &TreeIndex;
    fn load(&self, rev: Revision) -> KeyValue;
}

pub(super) struct RangeResult {
    pub kvs: Vec<KeyValue>,
    pub count: i64,
    pub rev: i64,
}

/// Keys in `[key, end)` at revision `at` (<= 0: the view's revision).
/// `limit` 0 means all; `count` is the size of the whole range regardless.
pub(super) fn range_keys(
    view: &impl ReadView,
    range: KeyRange<'_>,
    limit: i64,
    at: i64,
    count_only: bool,
) -> Result<RangeResult, EtcdError> {
    let current = view.revision();
    if at > current {
        return Err(EtcdError::FutureRevision);
    }
    let rev = if at <= 0 { current } else { at };
    if rev < view.compact_revision() {
        return Err(EtcdError::Compacted);
    }
    let keys = view.index().range(range, rev);
    let count = keys.len() as i64;
    let kvs = if count_only {
        Vec::new()
    } else {
        let take = if limit <= 0 {
            keys.len()
        } else {
            keys.len().min(limit as usize)
        };
        keys[..take]
            .iter()
            .map(|(_, at)| view.load(at.modified))
            .collect()
    };
    Ok(RangeResult {
        kvs,
        count,
        rev: current,
    })
}

/// A full Range request as etcd's applier serves it.
pub(super) fn range(view: &impl ReadView, req: &RangeRequest) -> Result<RangeResponse, EtcdError> {
    let filtered = req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    // Sorting and filtering need every key before the limit applies; otherwise
    // one extra key tells whether there is more.
    let fetch_limit = if req.sort_order != SortOrder::None as i32 || filtered {
        0
    } else if req.limit > 0 {
        req.limit.saturating_add(1)
    } else {
        0
    };
    let result = range_keys(
        view,
        KeyRange::new(&req.key, &req.range_end),
        fetch_limit,
        req.revision,
        req.count_only,
    )?;
    let mut kvs = result.kvs;
    kvs.retain(|kv| {
        (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
            && (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
            && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
            && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
    });
    sort(&mut kvs, req.sort_order(), req.sort_target());
    let more = req.limit > 0 && kvs.len() > req.limit as usize;
    if more {
        kvs.truncate(req.limit as usize);
    }
    if req.keys_only {
        for kv in &mut kvs {
            kv.value = Default::default();
        }
    }
    Ok(RangeResponse {
        header: Some(ResponseHeader {
            revision: result.rev,
            ..Default::default()
        }),
        kvs,
        more,
        count: result.count,
    })
}

/// Stable sort, as etcd's results come out for the small ranges where Go's
/// sort is stable: ties keep ascending key order in both directions.
fn sort(kvs: &mut [KeyValue], order: SortOrder, target: SortTarget) {
    let order = match (order, target) {
        (SortOrder::None, SortTarget::Key) => return,
        (SortOrder::None, _) => SortOrder::Ascend,
        (order, _) => order,
    };
    let compare = |a: &KeyValue, b: &KeyValue| match target {
        SortTarget::Key => a.key.cmp(&b.key),
        SortTarget::Version => a.version.cmp(&b.version),
        SortTarget::Create => a.create_revision.cmp(&b.create_revision),
        SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
        SortTarget::Value => a.value.cmp(&b.value),
    };
    match order {
        SortOrder::Descend => kvs.sort_by(|a, b| compare(b, a)),
        _ => kvs.sort_by(compare),
    }
}
