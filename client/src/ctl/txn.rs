//! etcdctl's `txn` input language, read from standard input:
//!
//! ```text
//! mod("key1") > "0"
//! value("key2") = "v"
//!
//! put key1 "new value"
//! get key2 --prefix
//!
//! del key1
//!
//! ```
//!
//! Compares, a blank line, the success operations, a blank line, the failure
//! operations and a final blank line. Operations take the same arguments as
//! the `put`, `get` and `del` commands.

use std::ffi::OsString;
use std::io::{BufRead, Write};

use ballast_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use ballast_proto::etcdserverpb::request_op::Request;
use ballast_proto::etcdserverpb::{Compare, RequestOp, TxnRequest};
use clap::{Parser, Subcommand};

use super::args::{DelArgs, GetArgs, PutArgs};
use super::{CtlError, EXIT_INVALID_INPUT, go};

/// Reads a whole transaction from `input`. With `interactive`, a prompt is
/// written to `prompt` before each section.
pub fn read(
    input: &mut impl BufRead,
    interactive: bool,
    prompt: &mut impl Write,
) -> Result<TxnRequest, CtlError> {
    let mut section = |title: &str| -> Result<Vec<String>, CtlError> {
        if interactive {
            // A closed stdout only loses the prompt; reading goes on.
            let _ = writeln!(prompt, "{title}").and_then(|()| prompt.flush());
        }
        read_section(input)
    };
    let compares = section("compares:")?;
    let success = section("success requests (get, put, del):")?;
    let failure = section("failure requests (get, put, del):")?;
    Ok(TxnRequest {
        compare: compares
            .iter()
            .map(|l| parse_compare(l))
            .collect::<Result<_, _>>()?,
        success: success
            .iter()
            .map(|l| parse_op(l))
            .collect::<Result<_, _>>()?,
        failure: failure
            .iter()
            .map(|l| parse_op(l))
            .collect::<Result<_, _>>()?,
    })
}

/// Trimmed lines up to the next blank one. Input that ends before that
/// blank line is an error, even right after a complete line, as in etcdctl.
fn read_section(input: &mut impl BufRead) -> Result<Vec<String>, CtlError> {
    let mut lines = Vec::new();
    loop {
        let mut raw = Vec::new();
        input
            .read_until(b'\n', &mut raw)
            .map_err(|e| CtlError::new(EXIT_INVALID_INPUT, e.to_string()))?;
        if raw.last() != Some(&b'\n') {
            return Err(CtlError::new(EXIT_INVALID_INPUT, "EOF"));
        }
        let line = String::from_utf8_lossy(&raw).trim().to_string();
        if line.is_empty() {
            return Ok(lines);
        }
        lines.push(line);
    }
}

/// One compare: `TARGET("key") OP "value"`, with TARGET one of ver/version,
/// c/create, m/mod, val/value or lease, and OP one of `=`, `!=`, `>`, `<`.
/// Keys and values are Go quoted strings.
pub fn parse_compare(line: &str) -> Result<Compare, CtlError> {
    let malformed = |detail: String| {
        CtlError::new(
            EXIT_INVALID_INPUT,
            format!("malformed comparison: {line}{detail}"),
        )
    };
    let Some((target, rest)) = line.split_once('(') else {
        return Err(malformed(String::new()));
    };
    let scan = scan_compare(rest);
    let (Some(key), Some(op), Some(value)) = (&scan.key, &scan.op, &scan.value) else {
        // Report what was read before the scan stopped, as etcdctl does.
        let quoted = |v: &Option<Vec<u8>>| go::quote(v.as_deref().unwrap_or_default());
        return Err(malformed(format!(
            "; got {target}({}) {} {}",
            quoted(&scan.key),
            scan.op.unwrap_or_default(),
            quoted(&scan.value)
        )));
    };
    let int = || {
        let value = String::from_utf8_lossy(value);
        go::parse_int(&value, 10).map_err(|_| invalid_compare(line))
    };
    let (target, union) = match target {
        "ver" | "version" => (CompareTarget::Version, TargetUnion::Version(int()?)),
        "c" | "create" => (CompareTarget::Create, TargetUnion::CreateRevision(int()?)),
        "m" | "mod" => (CompareTarget::Mod, TargetUnion::ModRevision(int()?)),
        "val" | "value" => (
            CompareTarget::Value,
            TargetUnion::Value(value.clone().into()),
        ),
        // etcdctl 3.4 panics on lease compares; this follows the later fix,
        // which compares the key's lease with a hexadecimal lease ID.
        "lease" => {
            let id = go::parse_int(&String::from_utf8_lossy(value), 16)
                .map_err(|_| invalid_compare(line))?;
            (CompareTarget::Lease, TargetUnion::Lease(id))
        }
        _ => return Err(malformed(format!(" (unknown target {target})"))),
    };
    let result = match op.as_str() {
        "=" => CompareResult::Equal,
        "!=" => CompareResult::NotEqual,
        ">" => CompareResult::Greater,
        "<" => CompareResult::Less,
        // etcdctl panics here; an error message serves better.
        _ => return Err(malformed(format!(" (unknown result op {op})"))),
    };
    Ok(Compare {
        result: result.into(),
        target: target.into(),
        key: key.clone().into(),
        target_union: Some(union),
        range_end: Default::default(),
    })
}

fn invalid_compare(line: &str) -> CtlError {
    CtlError::new(
        EXIT_INVALID_INPUT,
        format!("invalid txn compare request: {line}"),
    )
}

/// What `fmt.Sscanf(rest, "%q) %s %q", &key, &op, &value)` fills in before
/// it stops.
#[derive(Default)]
struct CompareScan {
    key: Option<Vec<u8>>,
    op: Option<String>,
    value: Option<Vec<u8>>,
}

fn scan_compare(input: &str) -> CompareScan {
    let mut scan = CompareScan::default();
    let Some((key, rest)) = go::scan_quoted(skip_spaces(input)) else {
        return scan;
    };
    scan.key = Some(key);
    let Some(rest) = rest.strip_prefix(')').and_then(format_space) else {
        return scan;
    };
    let op_len = rest.find(is_go_space).unwrap_or(rest.len());
    if op_len == 0 {
        return scan;
    }
    scan.op = Some(rest[..op_len].to_string());
    let Some(rest) = format_space(&rest[op_len..]) else {
        return scan;
    };
    scan.value = go::scan_quoted(rest).map(|(v, _)| v);
    scan
}

fn skip_spaces(s: &str) -> &str {
    s.trim_start_matches(is_go_space)
}

/// A space in a Go scan format needs at least one space in the input,
/// unless the input is exhausted.
fn format_space(s: &str) -> Option<&str> {
    (s.is_empty() || s.starts_with(is_go_space)).then(|| skip_spaces(s))
}

/// Spaces as Go's fmt scanner sees them (newlines cannot occur in a line).
fn is_go_space(c: char) -> bool {
    c.is_whitespace()
}

/// A transaction operation: the `put`, `get` or `del` command line, split
/// into words the way etcdctl splits it.
#[derive(Parser, Debug)]
#[command(
    no_binary_name = true,
    infer_subcommands = true,
    disable_help_subcommand = true
)]
struct OpLine {
    #[command(subcommand)]
    op: Op,
}

#[derive(Subcommand, Debug)]
enum Op {
    Put(PutArgs),
    Get(GetArgs),
    Del(DelArgs),
}

pub fn parse_op(line: &str) -> Result<RequestOp, CtlError> {
    let words = argify(line)?;
    // etcdctl's message, though the line is an operation.
    if words.len() < 2 {
        return Err(CtlError::new(
            EXIT_INVALID_INPUT,
            format!("invalid txn compare request: {line}"),
        ));
    }
    let parsed = OpLine::try_parse_from(words.into_iter().map(os_string))
        .map_err(|_| CtlError::new(EXIT_INVALID_INPUT, format!("invalid txn request: {line}")))?;
    let request = match parsed.op {
        // Standard input holds the transaction itself, so it cannot also
        // supply a value.
        Op::Put(args) => {
            let (key, value, options) = args.request(|| None)?;
            Request::RequestPut(options.into_request(key, value))
        }
        Op::Get(args) => {
            let (key, options) = args.request()?;
            Request::RequestRange(options.into_request(key))
        }
        Op::Del(args) => {
            let (key, options) = args.request()?;
            Request::RequestDeleteRange(options.into_request(key))
        }
    };
    Ok(RequestOp {
        request: Some(request),
    })
}

/// etcdctl's `argify`: words are double-quoted Go strings, single-quoted
/// strings or runs of non-space characters starting with neither quote.
/// (etcdctl 3.4 cuts single-quoted words to a length that depends on the
/// number of words; here the quotes are simply removed.)
pub fn argify(line: &str) -> Result<Vec<Vec<u8>>, CtlError> {
    let mut words = Vec::new();
    let mut rest = line;
    while let Some(c) = rest.chars().next() {
        let (word, len) = match c {
            '"' => match double_quoted_len(rest) {
                Some(len) => {
                    let word = go::scan_quoted(&rest[..len])
                        .map(|(w, _)| w)
                        .ok_or_else(|| CtlError::new(EXIT_INVALID_INPUT, "invalid syntax"))?;
                    (Some(word), len)
                }
                None => (None, 1),
            },
            '\'' => match rest[1..].find('\'') {
                Some(end) => (Some(rest.as_bytes()[1..=end].to_vec()), end + 2),
                None => (None, 1),
            },
            c if is_re2_space(c) => (None, 1),
            _ => {
                let len = rest.find(is_re2_space).unwrap_or(rest.len());
                (Some(rest.as_bytes()[..len].to_vec()), len)
            }
        };
        words.extend(word);
        rest = &rest[len..];
    }
    Ok(words)
}

/// `\s` in Go's regular expressions, which etcdctl splits words with.
fn is_re2_space(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\x0c' | '\r' | ' ')
}

/// Length of the `"(?:[^"\\]|\\.)*"` match at the start of `s`, if any.
fn double_quoted_len(s: &str) -> Option<usize> {
    let mut chars = s.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some(i + 1),
            '\\' => {
                chars.next()?;
            }
            _ => {}
        }
    }
    None
}

#[cfg(unix)]
fn os_string(bytes: Vec<u8>) -> OsString {
    use std::os::unix::ffi::OsStringExt;
    OsString::from_vec(bytes)
}

#[cfg(not(unix))]
fn os_string(bytes: Vec<u8>) -> OsString {
    String::from_utf8_lossy(&bytes).into_owned().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctl::EXIT_BAD_ARGS;
    use ballast_proto::etcdserverpb::{PutRequest, RangeRequest};

    fn words(line: &str) -> Vec<String> {
        argify(line)
            .unwrap()
            .into_iter()
            .map(|w| String::from_utf8(w).unwrap())
            .collect()
    }

    #[test]
    fn argify_splits_like_etcdctl() {
        assert_eq!(words("put k v"), ["put", "k", "v"]);
        assert_eq!(words(r#"put "a b" 'c d'  e"#), ["put", "a b", "c d", "e"]);
        assert_eq!(words(r#"put k "x\"y\n""#), ["put", "k", "x\"y\n"]);
        assert_eq!(words(r#"put k x"y"#), ["put", "k", "x\"y"]);
        assert_eq!(
            words(r#"put k "unterminated"#),
            ["put", "k", "unterminated"]
        );
        assert_eq!(argify(r#"put k "\x00\xff""#).unwrap()[2], b"\x00\xff");
        assert!(argify(r#"put k "\q""#).is_err());
    }

    #[test]
    fn compares_parse_targets_and_ops() {
        let c = parse_compare(r#"mod("k") > "5""#).unwrap();
        assert_eq!(c.target(), CompareTarget::Mod);
        assert_eq!(c.result(), CompareResult::Greater);
        assert_eq!(c.key, "k");
        assert_eq!(c.target_union, Some(TargetUnion::ModRevision(5)));

        let c = parse_compare(r#"value("k") != "a b""#).unwrap();
        assert_eq!(c.result(), CompareResult::NotEqual);
        assert_eq!(c.target_union, Some(TargetUnion::Value("a b".into())));

        let c = parse_compare(r#"lease("k") = "1a""#).unwrap();
        assert_eq!(c.target_union, Some(TargetUnion::Lease(0x1a)));

        for (line, target) in [
            ("ver", CompareTarget::Version),
            ("c", CompareTarget::Create),
        ] {
            let c = parse_compare(&format!(r#"{line}("k") < "1""#)).unwrap();
            assert_eq!(c.target(), target);
        }
    }

    #[test]
    fn malformed_compares_report_like_etcdctl() {
        let err = parse_compare(r#"mod("foo")>"0""#).unwrap_err();
        assert_eq!(
            err.message.unwrap(),
            r#"malformed comparison: mod("foo")>"0"; got mod("foo")  """#
        );
        let err = parse_compare(r#"size("k") = "1""#).unwrap_err();
        assert_eq!(
            err.message.unwrap(),
            r#"malformed comparison: size("k") = "1" (unknown target size)"#
        );
        let err = parse_compare(r#"mod("k") = "x""#).unwrap_err();
        assert_eq!(
            err.message.unwrap(),
            r#"invalid txn compare request: mod("k") = "x""#
        );
        assert_eq!(err.code, EXIT_INVALID_INPUT);
        assert!(parse_compare("nothing").is_err());
        assert!(parse_compare(r#"val("k") == "x""#).is_err());
    }

    #[test]
    fn ops_take_command_arguments() {
        let op = parse_op("put k v --prev-kv").unwrap();
        let expected = PutRequest {
            key: "k".into(),
            value: "v".into(),
            prev_kv: true,
            ..Default::default()
        };
        assert_eq!(op.request, Some(Request::RequestPut(expected)));

        let op = parse_op("get a --prefix --limit=2").unwrap();
        let expected = RangeRequest {
            key: "a".into(),
            range_end: "b".into(),
            limit: 2,
            ..Default::default()
        };
        assert_eq!(op.request, Some(Request::RequestRange(expected)));

        assert!(matches!(
            parse_op("d k").unwrap().request,
            Some(Request::RequestDeleteRange(_))
        ));
        assert_eq!(parse_op("get").unwrap_err().code, EXIT_INVALID_INPUT);
        assert_eq!(
            parse_op("get k -w json").unwrap_err().code,
            EXIT_INVALID_INPUT
        );
        assert_eq!(parse_op("put k").unwrap_err().code, EXIT_BAD_ARGS);
    }

    #[test]
    fn read_needs_three_blank_terminated_sections() {
        let input = "mod(\"k\") > \"0\"\n\nput k v\n\nget k\n\n";
        let txn = read(&mut input.as_bytes(), false, &mut Vec::new()).unwrap();
        assert_eq!(
            (txn.compare.len(), txn.success.len(), txn.failure.len()),
            (1, 1, 1)
        );

        let mut prompts = Vec::new();
        read(&mut "\n\n\n".as_bytes(), true, &mut prompts).unwrap();
        assert_eq!(
            String::from_utf8(prompts).unwrap(),
            "compares:\nsuccess requests (get, put, del):\nfailure requests (get, put, del):\n"
        );

        let err = read(&mut "\n\nput k v\n".as_bytes(), false, &mut Vec::new()).unwrap_err();
        assert_eq!(
            (err.code, err.message.as_deref()),
            (EXIT_INVALID_INPUT, Some("EOF"))
        );
    }
}
