//! Accepts the HTTP/2 `:authority` etcdctl 3.4 sends on its per-endpoint
//! connections (`endpoint status`, `--cluster`, `move-leader`, ...).
//!
//! etcdctl 3.4 dials `passthrough:///http://host:port`, so grpc-go sends the
//! whole URL, `http://host:port`, as `:authority`. etcd's grpc-go server
//! ignores it; the h2 crate refuses it as malformed and resets the stream
//! (hyperium/h2#525, declined upstream). This wrapper sits under tonic on
//! each client connection and rewrites such an authority to the same length
//! (`http://host:port` becomes `http:_@host:port`, a valid authority with
//! user info), so HPACK's dynamic table keeps the same sizes on both sides
//! and later references to the entry stay right. Every other byte passes
//! through unchanged.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const FRAME_HEADERS: u8 = 0x1;
const FRAME_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
const PRIORITY_LEN: usize = 5;
/// HTTP/2's default SETTINGS_MAX_FRAME_SIZE, which tonic's server keeps.
const MAX_FRAME_LEN: usize = 16_384;
/// `:authority` in HPACK's static table.
const AUTHORITY_INDEX: u64 = 1;
const READ_CHUNK: usize = 16 * 1024;

/// A header block being collected from HEADERS and CONTINUATION frames.
struct HeaderBlock {
    stream_id: [u8; 4],
    end_stream: bool,
    priority: Option<[u8; PRIORITY_LEN]>,
    fragment: Vec<u8>,
}

/// The client-to-server byte stream of one connection, rewritten as it passes.
#[derive(Default)]
struct Rewriter {
    preface_left: usize,
    /// Payload bytes of a non-header frame still to pass through.
    passthrough_left: usize,
    pending: Vec<u8>,
    block: Option<HeaderBlock>,
}

impl Rewriter {
    fn new() -> Self {
        Self {
            preface_left: PREFACE_LEN,
            ..Default::default()
        }
    }

    /// Consumes `input` and appends what the server should read to `out`.
    fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        self.pending.extend_from_slice(input);
        let mut pos = 0;
        loop {
            let available = self.pending.len() - pos;
            if self.preface_left > 0 || self.passthrough_left > 0 {
                let wanted = self.preface_left.max(self.passthrough_left);
                let take = wanted.min(available);
                if take == 0 {
                    break;
                }
                out.extend_from_slice(&self.pending[pos..pos + take]);
                pos += take;
                if self.preface_left > 0 {
                    self.preface_left -= take;
                } else {
                    self.passthrough_left -= take;
                }
                continue;
            }
            if available < FRAME_HEADER_LEN {
                break;
            }
            let header = &self.pending[pos..pos + FRAME_HEADER_LEN];
            let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
            let kind = header[3];
            if kind != FRAME_HEADERS && kind != FRAME_CONTINUATION {
                out.extend_from_slice(header);
                pos += FRAME_HEADER_LEN;
                self.passthrough_left = len;
                continue;
            }
            if available < FRAME_HEADER_LEN + len {
                break;
            }
            let frame = self.pending[pos..pos + FRAME_HEADER_LEN + len].to_vec();
            pos += FRAME_HEADER_LEN + len;
            self.header_frame(&frame, out);
        }
        self.pending.drain(..pos);
    }

    fn header_frame(&mut self, frame: &[u8], out: &mut Vec<u8>) {
        let flags = frame[4];
        let stream_id: [u8; 4] = frame[5..9]
            .try_into()
            .expect("frame header has a stream id");
        let mut payload = &frame[FRAME_HEADER_LEN..];
        let well_formed = match frame[3] {
            FRAME_HEADERS if self.block.is_none() => {
                if flags & FLAG_PADDED != 0 {
                    let pad = payload.first().copied().unwrap_or(u8::MAX) as usize;
                    payload = payload
                        .get(1..payload.len().saturating_sub(pad))
                        .unwrap_or(&[]);
                }
                let mut priority = None;
                if flags & FLAG_PRIORITY != 0 && payload.len() >= PRIORITY_LEN {
                    priority = Some(payload[..PRIORITY_LEN].try_into().expect("5 bytes"));
                    payload = &payload[PRIORITY_LEN..];
                }
                self.block = Some(HeaderBlock {
                    stream_id,
                    end_stream: flags & FLAG_END_STREAM != 0,
                    priority,
                    fragment: payload.to_vec(),
                });
                true
            }
            FRAME_CONTINUATION => match self.block.as_mut() {
                Some(block) if block.stream_id == stream_id => {
                    block.fragment.extend_from_slice(payload);
                    true
                }
                _ => false,
            },
            _ => false,
        };
        if !well_formed {
            // Not ours to judge: h2 refuses it with the right error.
            if let Some(block) = self.block.take() {
                emit_block(block, out);
            }
            out.extend_from_slice(frame);
            return;
        }
        if flags & FLAG_END_HEADERS != 0
            && let Some(mut block) = self.block.take()
        {
            if let Some(rewritten) = rewrite_block(&block.fragment) {
                block.fragment = rewritten;
            }
            emit_block(block, out);
        }
    }
}

/// Writes a header block as one HEADERS frame and as many CONTINUATION
/// frames as it needs.
fn emit_block(block: HeaderBlock, out: &mut Vec<u8>) {
    let mut rest: &[u8] = &block.fragment;
    let mut first = true;
    loop {
        let room = if first && block.priority.is_some() {
            MAX_FRAME_LEN - PRIORITY_LEN
        } else {
            MAX_FRAME_LEN
        };
        let (chunk, after) = rest.split_at(rest.len().min(room));
        let mut flags = if after.is_empty() {
            FLAG_END_HEADERS
        } else {
            0
        };
        let mut payload_len = chunk.len();
        let kind = if first {
            if block.end_stream {
                flags |= FLAG_END_STREAM;
            }
            if block.priority.is_some() {
                flags |= FLAG_PRIORITY;
                payload_len += PRIORITY_LEN;
            }
            FRAME_HEADERS
        } else {
            FRAME_CONTINUATION
        };
        out.extend_from_slice(&(payload_len as u32).to_be_bytes()[1..]);
        out.push(kind);
        out.push(flags);
        out.extend_from_slice(&block.stream_id);
        if first && let Some(priority) = block.priority {
            out.extend_from_slice(&priority);
        }
        out.extend_from_slice(chunk);
        first = false;
        rest = after;
        if rest.is_empty() {
            return;
        }
    }
}

/// Reads an HPACK integer with an `prefix_bits`-bit prefix at `pos`.
fn read_int(buf: &[u8], pos: &mut usize, prefix_bits: u32) -> Option<u64> {
    let max = (1u64 << prefix_bits) - 1;
    let mut value = u64::from(*buf.get(*pos)?) & max;
    *pos += 1;
    if value < max {
        return Some(value);
    }
    let mut shift = 0;
    loop {
        let byte = *buf.get(*pos)?;
        *pos += 1;
        value = value.checked_add(u64::from(byte & 0x7f).checked_shl(shift)?)?;
        if byte & 0x80 == 0 {
            return Some(value);
        }
        shift += 7;
        if shift > 56 {
            return None;
        }
    }
}

fn write_int(out: &mut Vec<u8>, high_bits: u8, prefix_bits: u32, mut value: u64) {
    let max = (1u64 << prefix_bits) - 1;
    if value < max {
        out.push(high_bits | value as u8);
        return;
    }
    out.push(high_bits | max as u8);
    value -= max;
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads an HPACK string literal at `pos`, decoding Huffman if used.
fn read_string(buf: &[u8], pos: &mut usize) -> Option<Vec<u8>> {
    let huffman = buf.get(*pos)? & 0x80 != 0;
    let len = read_int(buf, pos, 7)? as usize;
    let raw = buf.get(*pos..pos.checked_add(len)?)?;
    *pos += len;
    if !huffman {
        return Some(raw.to_vec());
    }
    let mut decoded = Vec::with_capacity(len * 2);
    httlib_huffman::decode(raw, &mut decoded, httlib_huffman::DecoderSpeed::FourBits).ok()?;
    Some(decoded)
}

/// `scheme://host:port` becomes `scheme:_@host:port`: the same length, and
/// an authority h2 accepts.
fn fix_authority(value: &[u8]) -> Option<Vec<u8>> {
    let at = value.windows(3).position(|w| w == b"://")?;
    let mut fixed = value.to_vec();
    fixed[at..at + 3].copy_from_slice(b":_@");
    Some(fixed)
}

/// The header block with a scheme-carrying `:authority` rewritten, or None
/// if it has none (or cannot be parsed, which h2 then reports itself).
fn rewrite_block(block: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(block.len() + 16);
    let mut changed = false;
    let mut pos = 0;
    while pos < block.len() {
        let start = pos;
        let first = block[pos];
        let (high_bits, prefix_bits) = if first & 0x80 != 0 {
            read_int(block, &mut pos, 7)?;
            out.extend_from_slice(&block[start..pos]);
            continue;
        } else if first & 0xc0 == 0x40 {
            (first & 0xc0, 6)
        } else if first & 0xe0 == 0x20 {
            read_int(block, &mut pos, 5)?;
            out.extend_from_slice(&block[start..pos]);
            continue;
        } else {
            (first & 0xf0, 4)
        };
        let name_index = read_int(block, &mut pos, prefix_bits)?;
        let is_authority = if name_index == 0 {
            read_string(block, &mut pos)? == b":authority"
        } else {
            name_index == AUTHORITY_INDEX
        };
        let name_end = pos;
        let value = read_string(block, &mut pos)?;
        match is_authority.then(|| fix_authority(&value)).flatten() {
            Some(fixed) => {
                changed = true;
                if name_index == 0 {
                    out.extend_from_slice(&block[start..name_end]);
                } else {
                    write_int(&mut out, high_bits, prefix_bits, name_index);
                }
                write_int(&mut out, 0, 7, fixed.len() as u64);
                out.extend_from_slice(&fixed);
            }
            None => out.extend_from_slice(&block[start..pos]),
        }
    }
    changed.then_some(out)
}

/// A client connection whose incoming bytes pass through the [`Rewriter`].
pub struct AuthorityRewrite<T> {
    inner: T,
    rewriter: Rewriter,
    ready: Vec<u8>,
    ready_pos: usize,
}

impl<T> AuthorityRewrite<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            rewriter: Rewriter::new(),
            ready: Vec::new(),
            ready_pos: 0,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for AuthorityRewrite<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.ready_pos < this.ready.len() {
                let take = buf.remaining().min(this.ready.len() - this.ready_pos);
                buf.put_slice(&this.ready[this.ready_pos..this.ready_pos + take]);
                this.ready_pos += take;
                return Poll::Ready(Ok(()));
            }
            this.ready.clear();
            this.ready_pos = 0;
            let mut chunk = [0u8; READ_CHUNK];
            let mut chunk_buf = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut chunk_buf) {
                Poll::Ready(Ok(())) if chunk_buf.filled().is_empty() => {
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Ok(())) => {
                    let filled = chunk_buf.filled();
                    this.rewriter.feed(filled, &mut this.ready);
                }
                other => return other,
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for AuthorityRewrite<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<T: Connected> Connected for AuthorityRewrite<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn literal(name_index: u8, value: &[u8]) -> Vec<u8> {
        let mut out = vec![0x40 | name_index, value.len() as u8];
        out.extend_from_slice(value);
        out
    }

    fn headers_frame(flags: u8, block: &[u8]) -> Vec<u8> {
        let mut frame = (block.len() as u32).to_be_bytes()[1..].to_vec();
        frame.extend_from_slice(&[FRAME_HEADERS, flags, 0, 0, 0, 1]);
        frame.extend_from_slice(block);
        frame
    }

    fn feed_all(input: &[u8], step: usize) -> Vec<u8> {
        let mut rewriter = Rewriter::new();
        let mut out = Vec::new();
        for chunk in input.chunks(step) {
            rewriter.feed(chunk, &mut out);
        }
        out
    }

    #[test]
    fn scheme_authority_keeps_its_length() {
        let block = [vec![0x82], literal(1, b"http://127.0.0.1:2379")].concat();
        let rewritten = rewrite_block(&block).expect("rewritten");
        assert_eq!(
            rewritten,
            [vec![0x82], literal(1, b"http:_@127.0.0.1:2379")].concat()
        );
        let value = b"http:_@127.0.0.1:2379";
        assert_eq!(value.len(), b"http://127.0.0.1:2379".len());
        assert!(http::uri::Authority::try_from(&value[..]).is_ok());
    }

    #[test]
    fn huffman_authority_is_decoded_and_rewritten() {
        let mut encoded = Vec::new();
        httlib_huffman::encode(b"https://localhost:2379", &mut encoded).unwrap();
        let mut block = vec![0x41];
        write_int(&mut block, 0x80, 7, encoded.len() as u64);
        block.extend_from_slice(&encoded);
        let rewritten = rewrite_block(&block).expect("rewritten");
        assert_eq!(rewritten, literal(1, b"https:_@localhost:2379"));
    }

    #[test]
    fn plain_authorities_and_other_headers_pass_unchanged() {
        let block = [
            vec![0x82, 0x86],
            literal(1, b"127.0.0.1:2379"),
            literal(4, b"/etcdserverpb.KV/Range"),
        ]
        .concat();
        assert_eq!(rewrite_block(&block), None);
        let stream = [
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            headers_frame(FLAG_END_HEADERS, &block),
        ]
        .concat();
        for step in [1, 7, 4096] {
            assert_eq!(feed_all(&stream, step), stream);
        }
    }

    #[test]
    fn frames_are_rebuilt_around_the_rewritten_block() {
        let block = literal(1, b"http://10.0.0.1:2379");
        let mut padded = vec![2];
        padded.extend_from_slice(&block);
        padded.extend_from_slice(&[0, 0]);
        let data_frame = [vec![0, 0, 3, 0, 1, 0, 0, 0, 1], b"abc".to_vec()].concat();
        let stream = [
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            headers_frame(FLAG_END_HEADERS | FLAG_PADDED, &padded),
            data_frame.clone(),
        ]
        .concat();
        let expected = [
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            headers_frame(FLAG_END_HEADERS, &literal(1, b"http:_@10.0.0.1:2379")),
            data_frame,
        ]
        .concat();
        for step in [1, 5, 4096] {
            assert_eq!(feed_all(&stream, step), expected);
        }
    }

    #[test]
    fn integers_round_trip() {
        for value in [0, 14, 15, 16, 127, 128, 1337, 70_000] {
            let mut out = Vec::new();
            write_int(&mut out, 0x40, 4, value);
            let mut pos = 0;
            assert_eq!(read_int(&out, &mut pos, 4), Some(value));
            assert_eq!(pos, out.len());
        }
    }
}
