//! The pieces of `ballastctl` that reproduce etcdctl's behaviour: argument
//! handling, the txn input language and the output formats.

pub mod args;
pub mod go;
pub mod json;
pub mod printer;
pub mod table;
pub mod txn;

/// etcdctl's exit codes (`ctlv3/command/error.go`).
pub const EXIT_ERROR: u8 = 1;
/// No endpoint to connect to.
pub const EXIT_BAD_CONNECTION: u8 = 2;
/// Malformed `txn` input.
pub const EXIT_INVALID_INPUT: u8 = 3;
/// A valid flag with an unsupported value.
pub const EXIT_BAD_FEATURE: u8 = 4;
pub const EXIT_BAD_ARGS: u8 = 128;

/// Why a command failed: the process exits with `code` after printing
/// `Error: <message>` to stderr, if there is a message.
#[derive(Debug)]
pub struct CtlError {
    pub code: u8,
    pub message: Option<String>,
}

impl CtlError {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        CtlError {
            code,
            message: Some(message.into()),
        }
    }

    /// An exit status whose reasons were already reported.
    pub fn silent(code: u8) -> Self {
        CtlError {
            code,
            message: None,
        }
    }
}
