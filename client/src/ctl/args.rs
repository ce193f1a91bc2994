//! Arguments of `get`, `put` and `del`, shared by the commands and by the
//! operations of `txn`, and their translation into requests following
//! etcdctl's `getGetOp`, `getPutOp` and `getDelOp`.

use std::ffi::OsString;

use ballast_client::{DeleteOptions, FROM_KEY_RANGE_END, GetOptions, PutOptions, prefix_range_end};
use ballast_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use bytes::Bytes;
use clap::Args;

use super::{CtlError, EXIT_BAD_ARGS, EXIT_BAD_FEATURE, go};

#[derive(Args, Debug)]
pub struct GetArgs {
    /// The key, or the start of the range
    pub key: OsString,
    /// The end of the range (exclusive)
    pub range_end: Option<OsString>,
    /// Linearizable(l) or Serializable(s)
    #[arg(long, default_value = "l")]
    pub consistency: String,
    /// Order of results; ASCEND or DESCEND (ASCEND by default)
    #[arg(long, default_value = "")]
    pub order: String,
    /// Sort target; CREATE, KEY, MODIFY, VALUE, or VERSION
    #[arg(long, default_value = "")]
    pub sort_by: String,
    /// Maximum number of results
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub limit: i64,
    /// Get keys with matching prefix
    #[arg(long)]
    pub prefix: bool,
    /// Get keys that are greater than or equal to the given key using byte compare
    #[arg(long)]
    pub from_key: bool,
    /// Specify the kv revision
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub rev: i64,
    /// Get only the keys
    #[arg(long)]
    pub keys_only: bool,
    /// Get only the count (needs --write-out=json)
    #[arg(long)]
    pub count_only: bool,
    /// Only write values when using the "simple" output format
    #[arg(long)]
    pub print_value_only: bool,
}

impl GetArgs {
    pub fn request(&self) -> Result<(Bytes, GetOptions), CtlError> {
        if self.prefix && self.from_key {
            return Err(prefix_and_from_key());
        }
        if self.keys_only && self.count_only {
            return Err(CtlError::new(
                EXIT_BAD_ARGS,
                "`--keys-only` and `--count-only` cannot be set at the same time, choose one",
            ));
        }
        let mut options = GetOptions::default();
        match self.consistency.as_str() {
            "s" => options.serializable = true,
            "l" => {}
            other => {
                return Err(CtlError::new(
                    EXIT_BAD_FEATURE,
                    format!("unknown consistency flag {}", go::quote(other.as_bytes())),
                ));
            }
        }
        let mut key = bytes(&self.key);
        if let Some(range_end) = &self.range_end {
            if self.prefix || self.from_key {
                return Err(too_many_arguments());
            }
            options.range_end = bytes(range_end);
        }
        options.limit = self.limit;
        if self.rev > 0 {
            options.revision = self.rev;
        }
        let order = match self.order.to_uppercase().as_str() {
            "ASCEND" => SortOrder::Ascend,
            "DESCEND" => SortOrder::Descend,
            "" => SortOrder::None,
            _ => {
                return Err(CtlError::new(
                    EXIT_BAD_FEATURE,
                    format!("bad sort order {}", self.order),
                ));
            }
        };
        options.sort_target = match self.sort_by.to_uppercase().as_str() {
            "CREATE" => SortTarget::Create,
            "KEY" | "" => SortTarget::Key,
            "MODIFY" => SortTarget::Mod,
            "VALUE" => SortTarget::Value,
            "VERSION" => SortTarget::Version,
            _ => {
                return Err(CtlError::new(
                    EXIT_BAD_FEATURE,
                    format!("bad sort target {}", self.sort_by),
                ));
            }
        };
        // Keys come back in ascending key order anyway; clientv3 drops that
        // sort so the server can apply the limit without reading the range.
        options.sort_order = if options.sort_target == SortTarget::Key && order == SortOrder::Ascend
        {
            SortOrder::None
        } else {
            order
        };
        if self.prefix || self.from_key {
            (key, options.range_end) = key_range(key, self.prefix);
        }
        options.keys_only = self.keys_only;
        options.count_only = self.count_only;
        Ok((key, options))
    }
}

#[derive(Args, Debug)]
pub struct PutArgs {
    /// The key to write
    pub key: OsString,
    /// The value; read from standard input when omitted
    pub value: Option<OsString>,
    /// lease ID (in hexadecimal) to attach to the key
    #[arg(long, default_value = "0")]
    pub lease: String,
    /// return the previous key-value pair before modification
    #[arg(long)]
    pub prev_kv: bool,
    /// updates the key using its current value
    #[arg(long)]
    pub ignore_value: bool,
    /// updates the key using its current lease
    #[arg(long)]
    pub ignore_lease: bool,
}

impl PutArgs {
    /// `stdin` supplies the value when none was given and the value is not
    /// ignored; `None` (or an empty input) is an error, as in etcdctl.
    pub fn request(
        &self,
        stdin: impl FnOnce() -> Option<Vec<u8>>,
    ) -> Result<(Bytes, Bytes, PutOptions), CtlError> {
        if self.ignore_value && self.value.is_some() {
            return Err(CtlError::new(
                EXIT_BAD_ARGS,
                "put command needs only 1 argument when 'ignore-value' is set",
            ));
        }
        let value = if self.ignore_value {
            Bytes::new()
        } else {
            match &self.value {
                Some(value) => bytes(value),
                None => match stdin() {
                    Some(input) if !input.is_empty() => input.into(),
                    _ => {
                        return Err(CtlError::new(
                            EXIT_BAD_ARGS,
                            "put command needs 1 argument and input from stdin or 2 arguments",
                        ));
                    }
                },
            }
        };
        let lease = go::parse_int(&self.lease, 16).map_err(|e| {
            CtlError::new(
                EXIT_BAD_ARGS,
                format!("bad lease ID ({e}), expecting ID in Hex"),
            )
        })?;
        let options = PutOptions {
            lease,
            prev_kv: self.prev_kv,
            ignore_value: self.ignore_value,
            ignore_lease: self.ignore_lease,
        };
        Ok((bytes(&self.key), value, options))
    }
}

#[derive(Args, Debug)]
pub struct DelArgs {
    /// The key, or the start of the range
    pub key: OsString,
    /// The end of the range (exclusive)
    pub range_end: Option<OsString>,
    /// delete keys with matching prefix
    #[arg(long)]
    pub prefix: bool,
    /// return deleted key-value pairs
    #[arg(long)]
    pub prev_kv: bool,
    /// delete keys that are greater than or equal to the given key using byte compare
    #[arg(long)]
    pub from_key: bool,
}

impl DelArgs {
    pub fn request(&self) -> Result<(Bytes, DeleteOptions), CtlError> {
        if self.prefix && self.from_key {
            return Err(prefix_and_from_key());
        }
        let mut key = bytes(&self.key);
        let mut options = DeleteOptions {
            prev_kv: self.prev_kv,
            ..Default::default()
        };
        if let Some(range_end) = &self.range_end {
            if self.prefix || self.from_key {
                return Err(too_many_arguments());
            }
            options.range_end = bytes(range_end);
        }
        if self.prefix || self.from_key {
            (key, options.range_end) = key_range(key, self.prefix);
        }
        Ok((key, options))
    }
}

/// Key and range end for `--prefix` (`prefix`) or `--from-key`. An empty
/// key means the whole keyspace either way: from "\0" to the end.
fn key_range(key: Bytes, prefix: bool) -> (Bytes, Bytes) {
    let from_key = || Bytes::from_static(FROM_KEY_RANGE_END);
    if key.is_empty() {
        (from_key(), from_key())
    } else if prefix {
        let end = prefix_range_end(&key);
        (key, end)
    } else {
        (key, from_key())
    }
}

/// Command-line arguments as the raw bytes the user passed.
fn bytes(arg: &OsString) -> Bytes {
    arg.clone().into_encoded_bytes().into()
}

fn prefix_and_from_key() -> CtlError {
    CtlError::new(
        EXIT_BAD_ARGS,
        "`--prefix` and `--from-key` cannot be set at the same time, choose one",
    )
}

fn too_many_arguments() -> CtlError {
    CtlError::new(
        EXIT_BAD_ARGS,
        "too many arguments, only accept one argument when `--prefix` or `--from-key` is set",
    )
}
