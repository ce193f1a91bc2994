//! Response printers for the output formats, following etcdctl 3.4's
//! `printer_simple.go`, `printer_json.go` and `printer_table.go`.

use ballast_proto::etcdserverpb::response_op::Response;
use ballast_proto::etcdserverpb::{
    DeleteRangeResponse, MemberListResponse, PutResponse, RangeResponse, StatusResponse,
    TxnResponse,
};
use ballast_proto::mvccpb::KeyValue;

use super::{CtlError, EXIT_BAD_FEATURE, go, json, table};

/// Output formats (`-w/--write-out`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Simple,
    Json,
    /// Only for `endpoint status` and `member list`.
    Table,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Simple => "simple",
            Format::Json => "json",
            Format::Table => "table",
        }
    }
}

pub struct Printer {
    pub format: Format,
    /// Print keys and values as `\xNN` escapes (simple format only).
    pub hex: bool,
    /// Print values without their keys (simple format only).
    pub value_only: bool,
}

impl Printer {
    pub fn get(&self, out: &mut Vec<u8>, r: &RangeResponse) -> Result<(), CtlError> {
        match self.format {
            Format::Simple => self.simple_get(out, r),
            Format::Json => json_line(out, json::range(r)),
            Format::Table => return Err(unsupported(self.format)),
        }
        Ok(())
    }

    pub fn put(&self, out: &mut Vec<u8>, r: &PutResponse) -> Result<(), CtlError> {
        match self.format {
            Format::Simple => self.simple_put(out, r),
            Format::Json => json_line(out, json::put(r)),
            Format::Table => return Err(unsupported(self.format)),
        }
        Ok(())
    }

    pub fn del(&self, out: &mut Vec<u8>, r: &DeleteRangeResponse) -> Result<(), CtlError> {
        match self.format {
            Format::Simple => self.simple_del(out, r),
            Format::Json => json_line(out, json::delete(r)),
            Format::Table => return Err(unsupported(self.format)),
        }
        Ok(())
    }

    pub fn txn(&self, out: &mut Vec<u8>, r: &TxnResponse) -> Result<(), CtlError> {
        match self.format {
            Format::Simple => self.simple_txn(out, r),
            Format::Json => json_line(out, json::txn(r)),
            Format::Table => return Err(unsupported(self.format)),
        }
        Ok(())
    }

    pub fn member_list(&self, out: &mut Vec<u8>, r: &MemberListResponse) {
        const HEADERS: [&str; 6] = [
            "ID",
            "Status",
            "Name",
            "Peer Addrs",
            "Client Addrs",
            "Is Learner",
        ];
        let rows: Vec<Vec<String>> = r
            .members
            .iter()
            .map(|m| {
                // A member that has not started yet has not published its name.
                let status = if m.name.is_empty() {
                    "unstarted"
                } else {
                    "started"
                };
                vec![
                    format!("{:x}", m.id),
                    status.to_string(),
                    m.name.clone(),
                    m.peer_ur_ls.join(","),
                    m.client_ur_ls.join(","),
                    m.is_learner.to_string(),
                ]
            })
            .collect();
        match self.format {
            Format::Simple => simple_rows(out, &rows),
            Format::Json => json_line(out, json::member_list(r)),
            Format::Table => out.extend_from_slice(table::render(&HEADERS, &rows).as_bytes()),
        }
    }

    /// `statuses` pairs each endpoint, as given, with its status.
    pub fn endpoint_status(&self, out: &mut Vec<u8>, statuses: &[(String, StatusResponse)]) {
        const HEADERS: [&str; 10] = [
            "endpoint",
            "ID",
            "version",
            "db size",
            "is leader",
            "is learner",
            "raft term",
            "raft index",
            "raft applied index",
            "errors",
        ];
        let rows: Vec<Vec<String>> = statuses
            .iter()
            .map(|(endpoint, s)| {
                let member_id = s.header.as_ref().map_or(0, |h| h.member_id);
                vec![
                    endpoint.clone(),
                    format!("{member_id:x}"),
                    s.version.clone(),
                    // etcdctl converts the signed size with uint64().
                    go::humanize_bytes(s.db_size as u64),
                    (s.leader == member_id).to_string(),
                    s.is_learner.to_string(),
                    s.raft_term.to_string(),
                    s.raft_index.to_string(),
                    s.raft_applied_index.to_string(),
                    s.errors.join(", "),
                ]
            })
            .collect();
        match self.format {
            Format::Simple => simple_rows(out, &rows),
            Format::Json => json_line(out, json::endpoint_statuses(statuses)),
            Format::Table => out.extend_from_slice(table::render(&HEADERS, &rows).as_bytes()),
        }
    }

    fn simple_get(&self, out: &mut Vec<u8>, r: &RangeResponse) {
        for kv in &r.kvs {
            self.simple_kv(out, kv);
        }
    }

    fn simple_put(&self, out: &mut Vec<u8>, r: &PutResponse) {
        out.extend_from_slice(b"OK\n");
        if let Some(kv) = &r.prev_kv {
            self.simple_kv(out, kv);
        }
    }

    fn simple_del(&self, out: &mut Vec<u8>, r: &DeleteRangeResponse) {
        out.extend_from_slice(format!("{}\n", r.deleted).as_bytes());
        for kv in &r.prev_kvs {
            self.simple_kv(out, kv);
        }
    }

    fn simple_txn(&self, out: &mut Vec<u8>, r: &TxnResponse) {
        out.extend_from_slice(if r.succeeded {
            b"SUCCESS\n"
        } else {
            b"FAILURE\n"
        });
        for op in &r.responses {
            out.push(b'\n');
            match &op.response {
                Some(Response::ResponseRange(r)) => self.simple_get(out, r),
                Some(Response::ResponsePut(r)) => self.simple_put(out, r),
                Some(Response::ResponseDeleteRange(r)) => self.simple_del(out, r),
                // etcdctl never sends nested transactions, so it has no
                // format for their results either.
                other => {
                    out.extend_from_slice(format!("unexpected response {other:?}\n").as_bytes())
                }
            }
        }
    }

    fn simple_kv(&self, out: &mut Vec<u8>, kv: &KeyValue) {
        if !self.value_only {
            self.simple_bytes(out, &kv.key);
        }
        self.simple_bytes(out, &kv.value);
    }

    fn simple_bytes(&self, out: &mut Vec<u8>, bytes: &[u8]) {
        if self.hex {
            for b in bytes {
                out.extend_from_slice(format!("\\x{b:02x}").as_bytes());
            }
        } else {
            out.extend_from_slice(bytes);
        }
        out.push(b'\n');
    }
}

fn simple_rows(out: &mut Vec<u8>, rows: &[Vec<String>]) {
    for row in rows {
        out.extend_from_slice(row.join(", ").as_bytes());
        out.push(b'\n');
    }
}

fn json_line(out: &mut Vec<u8>, value: json::Json) {
    out.extend_from_slice(value.encode().as_bytes());
    out.push(b'\n');
}

fn unsupported(format: Format) -> CtlError {
    CtlError::new(
        EXIT_BAD_FEATURE,
        format!("{} not supported as output format", format.name()),
    )
}
