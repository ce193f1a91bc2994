//! Porcupine's Jepsen etcd logs (a cas register in one etcd key), read as a
//! register history, so the checker can be compared with Porcupine's
//! verdicts on them.
//!
//! A line reads `INFO  jepsen.util - <process> <type> <f> <value>`, with
//! `type` one of `:invoke :ok :fail :info`, `f` one of `:read :write :cas`,
//! and `value` `nil`, an integer, `[from to]`, or an error keyword such as
//! `:timed-out`. Lines without the `jepsen.util -` marker are other log
//! output and are skipped.

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::history::{Op, OpType, Process};

/// The one key every operation of a log is given.
const KEY: &str = "register";
const MARKER: &str = "jepsen.util - ";

/// Reads a log into a history whose times are the line order. A `:fail` of
/// a cas (a compare that did not hold) keeps no error, so the checker treats
/// it as an observation; timeouts carry the error `timed-out`.
pub fn parse_porcupine_etcd(text: &str) -> anyhow::Result<Vec<Op>> {
    let mut history = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let Some((_, event)) = line.split_once(MARKER) else {
            continue;
        };
        let index = history.len() as u64;
        let op = parse_event(event, index).with_context(|| format!("line {}", number + 1))?;
        history.push(op);
    }
    Ok(history)
}

enum Argument {
    Nil,
    Integer(i64),
    Pair(i64, i64),
    Error(String),
}

fn parse_event(event: &str, index: u64) -> anyhow::Result<Op> {
    let mut fields = event.split_whitespace();
    let process: u64 = fields
        .next()
        .context("no process")?
        .parse()
        .context("process is not a number")?;
    let kind = match fields.next() {
        Some(":invoke") => OpType::Invoke,
        Some(":ok") => OpType::Ok,
        Some(":fail") => OpType::Fail,
        Some(":info") => OpType::Info,
        other => bail!("unknown type {other:?}"),
    };
    let f = fields
        .next()
        .and_then(|f| f.strip_prefix(':'))
        .context("no function")?;
    let argument = parse_argument(&fields.collect::<Vec<_>>().join(" "))?;
    let mut error = None;
    let value = match (f, argument) {
        (_, Argument::Error(keyword)) => {
            error = Some(keyword);
            json!({ "key": KEY })
        }
        ("read", Argument::Nil) => match kind {
            OpType::Invoke => json!({ "key": KEY }),
            _ => json!({ "key": KEY, "value": Value::Null }),
        },
        ("read", Argument::Integer(value)) => json!({ "key": KEY, "value": value }),
        ("write", Argument::Integer(value)) => json!({ "key": KEY, "value": value }),
        ("cas", Argument::Pair(from, to)) => json!({ "key": KEY, "from": from, "to": to }),
        _ => bail!("unexpected value for {f}"),
    };
    Ok(Op {
        index,
        time: index,
        kind,
        process: Process::Client(process),
        f: f.to_string(),
        value,
        error,
        node: None,
    })
}

fn parse_argument(text: &str) -> anyhow::Result<Argument> {
    if text == "nil" {
        return Ok(Argument::Nil);
    }
    if let Some(keyword) = text.strip_prefix(':') {
        return Ok(Argument::Error(keyword.to_string()));
    }
    if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        let numbers: Vec<i64> = inner
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .context("bad [from to]")?;
        let [from, to] = numbers[..] else {
            bail!("[from to] needs two numbers");
        };
        return Ok(Argument::Pair(from, to));
    }
    Ok(Argument::Integer(text.parse().context("bad value")?))
}
