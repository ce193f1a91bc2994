//! etcdctl's `-w json` output: Go's `encoding/json` applied to etcd 3.4's
//! gogoproto structs. Field names come from their `json` tags (or the Go
//! field name where there is none, as for `Response` in a txn), zero values
//! are omitted (`omitempty`), 64-bit integers are plain numbers, byte
//! strings are base64 and strings are escaped the way Go escapes them.

use ballast_proto::etcdserverpb::response_op::Response;
use ballast_proto::etcdserverpb::{
    DeleteRangeResponse, Member, MemberListResponse, PutResponse, RangeResponse, ResponseHeader,
    ResponseOp, StatusResponse, TxnResponse,
};
use ballast_proto::mvccpb::KeyValue;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

/// A JSON value whose objects keep their fields in Go struct order.
pub enum Json {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Str(String),
    Bytes(Vec<u8>),
    Array(Vec<Json>),
    Object(Vec<(&'static str, Json)>),
}

impl Json {
    /// The compact encoding, as `json.Marshal` produces it.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut String) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Int(n) => out.push_str(&n.to_string()),
            Json::Uint(n) => out.push_str(&n.to_string()),
            Json::Str(s) => write_string(s, out),
            Json::Bytes(b) => {
                out.push('"');
                out.push_str(&BASE64.encode(b));
                out.push('"');
            }
            Json::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write(out);
                }
                out.push(']');
            }
            Json::Object(fields) => {
                out.push('{');
                for (i, (name, value)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_string(name, out);
                    out.push(':');
                    value.write(out);
                }
                out.push('}');
            }
        }
    }
}

/// Go's string escaping, including its HTML-safe escapes of `<`, `>` and
/// `&` and (as of the Go 1.19 that built etcdctl 3.4.23) `\u` forms for
/// backspace and form feed.
fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c < ' ' || matches!(c, '<' | '>' | '&' | '\u{2028}' | '\u{2029}') => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Builds an object field by field, leaving out `omitempty` zero values.
struct Object(Vec<(&'static str, Json)>);

impl Object {
    fn new() -> Self {
        Object(Vec::new())
    }

    fn always(mut self, name: &'static str, value: Json) -> Self {
        self.0.push((name, value));
        self
    }

    fn int(self, name: &'static str, n: i64) -> Self {
        if n == 0 {
            self
        } else {
            self.always(name, Json::Int(n))
        }
    }

    fn uint(self, name: &'static str, n: u64) -> Self {
        if n == 0 {
            self
        } else {
            self.always(name, Json::Uint(n))
        }
    }

    fn bool(self, name: &'static str, b: bool) -> Self {
        if b {
            self.always(name, Json::Bool(true))
        } else {
            self
        }
    }

    fn str(self, name: &'static str, s: &str) -> Self {
        if s.is_empty() {
            self
        } else {
            self.always(name, Json::Str(s.to_string()))
        }
    }

    fn bytes(self, name: &'static str, b: &[u8]) -> Self {
        if b.is_empty() {
            self
        } else {
            self.always(name, Json::Bytes(b.to_vec()))
        }
    }

    fn array(self, name: &'static str, items: Vec<Json>) -> Self {
        if items.is_empty() {
            self
        } else {
            self.always(name, Json::Array(items))
        }
    }

    fn some(self, name: &'static str, value: Option<Json>) -> Self {
        match value {
            Some(value) => self.always(name, value),
            None => self,
        }
    }

    fn build(self) -> Json {
        Json::Object(self.0)
    }
}

fn strings(items: &[String]) -> Vec<Json> {
    items.iter().map(|s| Json::Str(s.clone())).collect()
}

fn header(h: &Option<ResponseHeader>) -> Option<Json> {
    h.as_ref().map(|h| {
        Object::new()
            .uint("cluster_id", h.cluster_id)
            .uint("member_id", h.member_id)
            .int("revision", h.revision)
            .uint("raft_term", h.raft_term)
            .build()
    })
}

fn key_value(kv: &KeyValue) -> Json {
    Object::new()
        .bytes("key", &kv.key)
        .int("create_revision", kv.create_revision)
        .int("mod_revision", kv.mod_revision)
        .int("version", kv.version)
        .bytes("value", &kv.value)
        .int("lease", kv.lease)
        .build()
}

pub fn range(r: &RangeResponse) -> Json {
    Object::new()
        .some("header", header(&r.header))
        .array("kvs", r.kvs.iter().map(key_value).collect())
        .bool("more", r.more)
        .int("count", r.count)
        .build()
}

pub fn put(r: &PutResponse) -> Json {
    Object::new()
        .some("header", header(&r.header))
        .some("prev_kv", r.prev_kv.as_ref().map(key_value))
        .build()
}

pub fn delete(r: &DeleteRangeResponse) -> Json {
    Object::new()
        .some("header", header(&r.header))
        .int("deleted", r.deleted)
        .array("prev_kvs", r.prev_kvs.iter().map(key_value).collect())
        .build()
}

pub fn txn(r: &TxnResponse) -> Json {
    Object::new()
        .some("header", header(&r.header))
        .bool("succeeded", r.succeeded)
        .array("responses", r.responses.iter().map(response_op).collect())
        .build()
}

/// A oneof is an interface field without a json tag in Go, and its wrapper
/// struct's field has none either, hence the Go field names.
fn response_op(op: &ResponseOp) -> Json {
    let response = match &op.response {
        None => Json::Null,
        Some(Response::ResponseRange(r)) => Object::new().always("ResponseRange", range(r)).build(),
        Some(Response::ResponsePut(r)) => Object::new().always("ResponsePut", put(r)).build(),
        Some(Response::ResponseDeleteRange(r)) => Object::new()
            .always("ResponseDeleteRange", delete(r))
            .build(),
        Some(Response::ResponseTxn(r)) => Object::new().always("ResponseTxn", txn(r)).build(),
    };
    Object::new().always("Response", response).build()
}

fn member(m: &Member) -> Json {
    Object::new()
        .uint("ID", m.id)
        .str("name", &m.name)
        .array("peerURLs", strings(&m.peer_ur_ls))
        .array("clientURLs", strings(&m.client_ur_ls))
        .bool("isLearner", m.is_learner)
        .build()
}

pub fn member_list(r: &MemberListResponse) -> Json {
    Object::new()
        .some("header", header(&r.header))
        .array("members", r.members.iter().map(member).collect())
        .build()
}

/// The fields etcd 3.4's StatusResponse has; later additions (storage
/// version, quota, downgrade info) are left out as etcdctl 3.4 leaves them.
fn status(s: &StatusResponse) -> Json {
    Object::new()
        .some("header", header(&s.header))
        .str("version", &s.version)
        .int("dbSize", s.db_size)
        .uint("leader", s.leader)
        .uint("raftIndex", s.raft_index)
        .uint("raftTerm", s.raft_term)
        .uint("raftAppliedIndex", s.raft_applied_index)
        .array("errors", strings(&s.errors))
        .int("dbSizeInUse", s.db_size_in_use)
        .bool("isLearner", s.is_learner)
        .build()
}

/// `endpoint status`: a list of `{"Endpoint": ..., "Status": ...}`.
pub fn endpoint_statuses(statuses: &[(String, StatusResponse)]) -> Json {
    Json::Array(
        statuses
            .iter()
            .map(|(endpoint, s)| {
                Object::new()
                    .always("Endpoint", Json::Str(endpoint.clone()))
                    .always("Status", status(s))
                    .build()
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_like_go() {
        let mut out = String::new();
        write_string("a\"b\\<>&\n\x08\x0c\x01\u{2028}é", &mut out);
        assert_eq!(
            out,
            r#""a\"b\\\u003c\u003e\u0026\n\u0008\u000c\u0001\u2028é""#
        );
    }

    #[test]
    fn range_response_omits_zero_fields() {
        let r = RangeResponse {
            header: Some(ResponseHeader {
                cluster_id: u64::MAX,
                revision: 3,
                ..Default::default()
            }),
            kvs: vec![KeyValue {
                key: "foo".into(),
                create_revision: 2,
                mod_revision: 2,
                version: 1,
                value: "bar".into(),
                lease: 0,
            }],
            more: false,
            count: 1,
        };
        assert_eq!(
            range(&r).encode(),
            r#"{"header":{"cluster_id":18446744073709551615,"revision":3},"kvs":[{"key":"Zm9v","create_revision":2,"mod_revision":2,"version":1,"value":"YmFy"}],"count":1}"#
        );
    }

    #[test]
    fn txn_responses_use_go_field_names() {
        let r = TxnResponse {
            header: None,
            succeeded: true,
            responses: vec![
                ResponseOp {
                    response: Some(Response::ResponsePut(PutResponse::default())),
                },
                ResponseOp { response: None },
            ],
        };
        assert_eq!(
            txn(&r).encode(),
            r#"{"succeeded":true,"responses":[{"Response":{"ResponsePut":{}}},{"Response":null}]}"#
        );
    }
}
