//! Applies write requests to the store, one Raft batch at a time, with
//! etcd's semantics (etcd's kvstore_txn).

use super::*;

impl Store {
    /// Starts applying a batch of write requests; readers wait until it ends.
    pub fn applier(&self) -> Applier<'_> {
        Applier {
            committed_revision: &self.committed_revision,
            feed_revision: &self.feed_revision,
            compacted_revision: &self.compacted_revision,
            compactor: &self.compactor,
            planned_compaction: None,
            feed: &self.feed,
            lease_feed: &self.lease_feed,
            lease_changes: Vec::new(),
            events: Vec::new(),
            db: &self.db,
            state: self.state.write().expect("store lock poisoned"),
            batch: StateBatch::default(),
            pending: HashMap::new(),
            begin_revision: 0,
            changes: 0,
        }
    }
}

/// Applies write requests with etcd's semantics; see [`Store::applier`].
/// Each request either fails with nothing changed or takes one revision.
pub struct Applier<'a> {
    committed_revision: &'a AtomicI64,
    feed_revision: &'a AtomicI64,
    compacted_revision: &'a AtomicI64,
    compactor: &'a Compactor,
    /// A compaction in this batch: the revision and the rows to keep, handed
    /// to the compactor once the batch is stored.
    planned_compaction: Option<(i64, std::collections::HashSet<Revision>)>,
    feed: &'a broadcast::Sender<Changes>,
    lease_feed: &'a broadcast::Sender<LeaseChange>,
    /// The batch's lease grants and revokes, published once committed.
    lease_changes: Vec<LeaseChange>,
    /// The batch's changes, published once committed.
    events: Vec<Event>,
    db: &'a StateDb,
    state: RwLockWriteGuard<'a, State>,
    batch: StateBatch,
    /// Rows written by this batch, readable before the batch is committed.
    pending: HashMap<Revision, Row>,
    begin_revision: i64,
    changes: i64,
}

impl Applier<'_> {
    pub fn execute(&mut self, req: &WriteRequest) -> Result<WriteResponse, EtcdError> {
        self.begin();
        let result = match req {
            WriteRequest::Put(put) => self.put_request(put).map(WriteResponse::Put),
            WriteRequest::DeleteRange(del) => {
                Ok(WriteResponse::DeleteRange(self.delete_range(del)))
            }
            WriteRequest::Txn(txn) => self.txn(txn).map(WriteResponse::Txn),
            WriteRequest::Compact(compact) => self.compact(compact).map(WriteResponse::Compact),
            WriteRequest::LeaseGrant(grant) => {
                self.lease_grant(grant).map(WriteResponse::LeaseGrant)
            }
            WriteRequest::LeaseRevoke(revoke) => {
                self.lease_revoke(revoke).map(WriteResponse::LeaseRevoke)
            }
            WriteRequest::LeaseCheckpoint(checkpoint) => Ok(WriteResponse::LeaseCheckpoint(
                self.lease_checkpoint(checkpoint),
            )),
        };
        if self.changes > 0 {
            self.state.revision += 1;
        }
        result
    }

    /// Stores metadata (applied log id, membership) in the same atomic batch.
    pub fn put_meta(&mut self, name: &str, value: &[u8]) {
        self.batch.put_meta(name, value);
    }

    /// Writes the batch to the state database as one atomic batch, then
    /// publishes its changes (still under the lock, so in revision order).
    pub fn commit(mut self) -> std::io::Result<()> {
        let revision = self.state.revision.to_be_bytes();
        self.batch.put_meta(META_REVISION, &revision);
        self.db.apply(std::mem::take(&mut self.batch))?;
        if let Some((at, keep)) = self.planned_compaction.take() {
            self.compacted_revision.store(at, Ordering::Release);
            self.compactor.schedule(at, keep);
        }
        // One message per revision, so that the feed's capacity bounds how
        // many revisions a slow subscriber may fall behind before it lags.
        let events = std::mem::take(&mut self.events);
        for changes in events.chunk_by(|a, b| event_revision(a) == event_revision(b)) {
            // Before the send: the broadcast's lock orders it before any
            // later subscription, which then reads this revision or a newer one.
            self.feed_revision
                .store(event_revision(&changes[0]), Ordering::Release);
            // No subscriber is not an error: nobody watches.
            let _ = self.feed.send(Arc::new(changes.to_vec()));
        }
        self.feed_revision
            .store(self.state.revision, Ordering::Release);
        for change in std::mem::take(&mut self.lease_changes) {
            let _ = self.lease_feed.send(change);
        }
        self.committed_revision
            .store(self.state.revision, Ordering::Release);
        Ok(())
    }

    fn begin(&mut self) {
        self.begin_revision = self.state.revision;
        self.changes = 0;
    }

    /// The revision reads inside the current request see: the new one once
    /// the request has changed something.
    fn view(&self) -> StateView<'_> {
        StateView {
            state: &self.state,
            db: self.db,
            pending: Some(&self.pending),
            revision: self.begin_revision + i64::from(self.changes > 0),
        }
    }

    fn current(&self, key: &[u8]) -> Option<KeyValue> {
        let result = range_keys(&self.view(), KeyRange::new(key, &[]), 0, 0, false)
            .expect("reading the current revision cannot fail");
        result.kvs.into_iter().next()
    }

    fn put_request(&mut self, put: &PutRequest) -> Result<PutResponse, EtcdError> {
        // A top-level Put checks its lease before the key, a Put inside a txn after.
        check_lease(&self.state.leases, put)?;
        check_put(&self.view(), put)?;
        Ok(self.put(put))
    }

    fn put(&mut self, put: &PutRequest) -> PutResponse {
        let needs_current = put.ignore_value || put.ignore_lease || put.prev_kv;
        let current = if needs_current {
            self.current(&put.key)
        } else {
            None
        };
        let (value, lease) = match &current {
            Some(kv) if put.ignore_value || put.ignore_lease => (
                if put.ignore_value {
                    kv.value.clone()
                } else {
                    put.value.clone()
                },
                if put.ignore_lease {
                    kv.lease
                } else {
                    put.lease
                },
            ),
            _ => (put.value.clone(), put.lease),
        };
        let rev = self.next_revision();
        let (create_revision, version) = match self.state.index.get(&put.key, rev.main) {
            Some(at) => (at.created.main, at.version + 1),
            None => (rev.main, 1),
        };
        let kv = KeyValue {
            key: put.key.clone(),
            create_revision,
            mod_revision: rev.main,
            version,
            value,
            lease,
        };
        self.state.index.put(&put.key, rev);
        self.state.leases.attach(lease, put.key.clone());
        self.write_row(Row {
            rev,
            tombstone: false,
            kv,
        });
        PutResponse {
            header: header(rev.main),
            prev_kv: if put.prev_kv { current } else { None },
        }
    }

    fn delete_range(&mut self, del: &DeleteRangeRequest) -> DeleteRangeResponse {
        let range = KeyRange::new(&del.key, &del.range_end);
        let prev_kvs = if del.prev_kv {
            range_keys(&self.view(), range, 0, 0, false)
                .expect("reading the current revision cannot fail")
                .kvs
        } else {
            Vec::new()
        };
        let keys: Vec<Bytes> = self
            .state
            .index
            .range(range, self.view().revision())
            .into_iter()
            .map(|(key, _)| key)
            .collect();
        for key in &keys {
            let rev = self.next_revision();
            self.state.index.tombstone(key, rev);
            self.state.leases.detach(key);
            let kv = KeyValue {
                key: key.clone(),
                mod_revision: rev.main,
                ..Default::default()
            };
            self.write_row(Row {
                rev,
                tombstone: true,
                kv,
            });
        }
        DeleteRangeResponse {
            header: header(self.begin_revision + i64::from(self.changes > 0)),
            deleted: keys.len() as i64,
            prev_kvs,
        }
    }

    fn txn(&mut self, txn: &TxnRequest) -> Result<TxnResponse, EtcdError> {
        let view = self.view();
        let path = compare_path(&view, txn);
        if !is_read_only(txn) {
            check_path(txn, &path, &mut 0, &mut |op| match &op.request {
                Some(Request::RequestPut(put)) => check_put(&view, put),
                _ => Ok(()),
            })?;
        }
        check_path(txn, &path, &mut 0, &mut |op| check_range(&view, op))?;
        let mut response = self.apply_txn(txn, &path, &mut 0);
        response.header = header(self.begin_revision + i64::from(self.changes > 0));
        Ok(response)
    }

    fn apply_txn(&mut self, txn: &TxnRequest, path: &[bool], pos: &mut usize) -> TxnResponse {
        let succeeded = path[*pos];
        *pos += 1;
        let mut responses = Vec::new();
        for op in branch(txn, succeeded) {
            let response = match &op.request {
                Some(Request::RequestRange(req)) => Response::ResponseRange(
                    range(&self.view(), req).expect("txn ranges are checked before apply"),
                ),
                Some(Request::RequestPut(req)) => Response::ResponsePut(self.put(req)),
                Some(Request::RequestDeleteRange(req)) => {
                    Response::ResponseDeleteRange(self.delete_range(req))
                }
                Some(Request::RequestTxn(req)) => {
                    Response::ResponseTxn(self.apply_txn(req, path, pos))
                }
                None => continue,
            };
            responses.push(ResponseOp {
                response: Some(response),
            });
        }
        // etcd gives nested txn responses an empty header; the outer one is filled in by the caller.
        TxnResponse {
            header: Some(ResponseHeader::default()),
            succeeded,
            responses,
        }
    }

    fn compact(&mut self, req: &CompactionRequest) -> Result<CompactionResponse, EtcdError> {
        let at = req.revision;
        if at <= self.state.compact_revision {
            return Err(EtcdError::Compacted);
        }
        if at > self.state.revision {
            return Err(EtcdError::FutureRevision);
        }
        // The index forgets the unreachable revisions now; the compactor
        // deletes their rows after this batch is stored. Rows at `at` itself
        // stay, tombstones included: a watch that starts at the compacted
        // revision still sees its delete events.
        let keep = self.state.index.compact(at).into_iter().collect();
        self.planned_compaction = Some((at, keep));
        self.state.compact_revision = at;
        self.batch
            .put_meta(META_COMPACT_REVISION, &at.to_be_bytes());
        Ok(CompactionResponse {
            header: header(self.state.revision),
        })
    }

    fn lease_grant(&mut self, grant: &LeaseGrantRequest) -> Result<LeaseGrantResponse, EtcdError> {
        if grant.ttl > MAX_LEASE_TTL {
            return Err(EtcdError::LeaseTtlTooLarge);
        }
        if grant.id == 0 {
            return Err(EtcdError::LeaseNotFound);
        }
        if self.state.leases.contains(grant.id) {
            return Err(EtcdError::LeaseExists);
        }
        self.state.leases.grant(grant.id, grant.ttl);
        self.batch.put_lease(&LeaseRow {
            id: grant.id,
            ttl: grant.ttl,
            remaining_ttl: 0,
        });
        self.lease_changes.push(LeaseChange::Granted {
            id: grant.id,
            ttl: grant.ttl,
        });
        Ok(LeaseGrantResponse {
            header: header(self.state.revision),
            id: grant.id,
            ttl: grant.ttl,
            error: String::new(),
        })
    }

    /// Deletes every key of the lease in one revision, in key order, and the lease.
    fn lease_revoke(
        &mut self,
        revoke: &LeaseRevokeRequest,
    ) -> Result<LeaseRevokeResponse, EtcdError> {
        let keys = self
            .state
            .leases
            .revoke(revoke.id)
            .ok_or(EtcdError::LeaseNotFound)?;
        for key in keys {
            self.delete_range(&DeleteRangeRequest {
                key,
                ..Default::default()
            });
        }
        self.batch.remove_lease(revoke.id);
        self.lease_changes
            .push(LeaseChange::Revoked { id: revoke.id });
        Ok(LeaseRevokeResponse {
            header: header(self.begin_revision + i64::from(self.changes > 0)),
        })
    }

    /// Records the remaining TTLs the leader measured; leases gone since are skipped.
    fn lease_checkpoint(&mut self, request: &LeaseCheckpointRequest) -> LeaseCheckpointResponse {
        for checkpoint in &request.checkpoints {
            if let Some(lease) = self
                .state
                .leases
                .checkpoint(checkpoint.id, checkpoint.remaining_ttl)
            {
                let row = LeaseRow {
                    id: checkpoint.id,
                    ttl: lease.ttl,
                    remaining_ttl: lease.remaining_ttl,
                };
                self.batch.put_lease(&row);
            }
        }
        LeaseCheckpointResponse {
            header: header(self.state.revision),
        }
    }

    fn next_revision(&mut self) -> Revision {
        let rev = Revision::new(self.begin_revision + 1, self.changes);
        self.changes += 1;
        rev
    }

    fn write_row(&mut self, row: Row) {
        self.batch.put_row(&row);
        self.events.push(row_event(row.clone()));
        self.pending.insert(row.rev, row);
    }
}

/// etcd's checks of a Put against the state before it: ignore_value and
/// ignore_lease need an existing key, and a lease must exist.
fn check_put(view: &StateView<'_>, put: &PutRequest) -> Result<(), EtcdError> {
    if put.ignore_value || put.ignore_lease {
        let existing = range_keys(view, KeyRange::new(&put.key, &[]), 0, 0, true)?;
        if existing.count == 0 {
            return Err(EtcdError::KeyNotFound);
        }
    }
    check_lease(&view.state.leases, put)
}

fn check_lease(leases: &LeaseTable, put: &PutRequest) -> Result<(), EtcdError> {
    if put.lease != 0 && !leases.contains(put.lease) {
        return Err(EtcdError::LeaseNotFound);
    }
    Ok(())
}
