//! Re-implementations of the Go library behaviour that shows in etcdctl's
//! output and messages: `strconv` quoting and integer errors,
//! `time.ParseDuration`, and go-humanize's byte sizes.

use std::time::Duration;

/// Go's `strconv.Quote` of a byte string (Go strings may hold any bytes).
pub fn quote(s: &[u8]) -> String {
    let mut out = String::from("\"");
    for chunk in s.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\x07' => out.push_str("\\a"),
                '\x08' => out.push_str("\\b"),
                '\x0c' => out.push_str("\\f"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\x0b' => out.push_str("\\v"),
                c if is_print(c) => out.push(c),
                c if c < ' ' || c == '\x7f' => out.push_str(&format!("\\x{:02x}", c as u32)),
                c if (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push_str(&format!("\\U{:08x}", c as u32)),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out.push('"');
    out
}

/// Approximates Go's `unicode.IsPrint`: exact for ASCII; beyond it, spaces
/// other than U+0020, controls and the common invisible format characters
/// are not printable.
fn is_print(c: char) -> bool {
    if c.is_ascii() {
        return (' '..='~').contains(&c);
    }
    !c.is_control()
        && !c.is_whitespace()
        && !matches!(c, '\u{ad}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2064}' | '\u{feff}')
}

/// Reads one Go quoted string (`fmt`'s `%q` verb) from the start of `s`:
/// either `"..."` with Go escapes or a back-quoted raw string. Returns its
/// bytes and the rest of `s`, or `None` if `s` does not start with a valid
/// quoted string.
pub fn scan_quoted(s: &str) -> Option<(Vec<u8>, &str)> {
    if let Some(raw) = s.strip_prefix('`') {
        let end = raw.find('`')?;
        return Some((raw.as_bytes()[..end].to_vec(), &raw[end + 1..]));
    }
    let body = s.strip_prefix('"')?;
    let mut out = Vec::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &body[i + 1..])),
            '\n' => return None,
            '\\' => {
                let (_, e) = chars.next()?;
                match e {
                    'a' => out.push(0x07),
                    'b' => out.push(0x08),
                    'f' => out.push(0x0c),
                    'n' => out.push(b'\n'),
                    'r' => out.push(b'\r'),
                    't' => out.push(b'\t'),
                    'v' => out.push(0x0b),
                    '\\' => out.push(b'\\'),
                    '"' => out.push(b'"'),
                    'x' | 'u' | 'U' => {
                        let digits = match e {
                            'x' => 2,
                            'u' => 4,
                            _ => 8,
                        };
                        let mut v = 0u32;
                        for _ in 0..digits {
                            v = v << 4 | chars.next()?.1.to_digit(16)?;
                        }
                        if e == 'x' {
                            // \x escapes give single bytes, which need not be UTF-8.
                            out.push(v as u8);
                        } else {
                            let mut buf = [0; 4];
                            out.extend_from_slice(
                                char::from_u32(v)?.encode_utf8(&mut buf).as_bytes(),
                            );
                        }
                    }
                    '0'..='7' => {
                        let mut v = e.to_digit(8)?;
                        for _ in 0..2 {
                            v = v << 3 | chars.next()?.1.to_digit(8)?;
                        }
                        out.push(u8::try_from(v).ok()?);
                    }
                    _ => return None,
                }
            }
            c => {
                let mut buf = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    None
}

/// Go's `strconv.ParseInt(s, base, 64)`, with its error message.
pub fn parse_int(s: &str, base: u32) -> Result<i64, String> {
    use std::num::IntErrorKind;
    i64::from_str_radix(s, base).map_err(|e| {
        let reason = match e.kind() {
            IntErrorKind::PosOverflow | IntErrorKind::NegOverflow => "value out of range",
            _ => "invalid syntax",
        };
        format!(
            "strconv.ParseInt: parsing {}: {reason}",
            quote(s.as_bytes())
        )
    })
}

/// Go's `time.ParseDuration` (e.g. "2s", "1m30s", "500ms"), negative
/// durations excluded.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let invalid = || format!("time: invalid duration {}", quote(s.as_bytes()));
    let rest = s.strip_prefix('+').unwrap_or(s);
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() || rest.starts_with('-') {
        return Err(invalid());
    }
    let mut total = 0f64;
    let mut rest = rest;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let number = &rest[..number_len];
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(invalid());
        }
        let value: f64 = number.parse().map_err(|_| invalid())?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        let nanos = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => {
                return Err(format!(
                    "time: missing unit in duration {}",
                    quote(s.as_bytes())
                ));
            }
            _ => {
                return Err(format!(
                    "time: unknown unit {} in duration {}",
                    quote(unit.as_bytes()),
                    quote(s.as_bytes())
                ));
            }
        };
        total += value * nanos;
        rest = &rest[unit_len..];
    }
    Ok(Duration::from_nanos(total as u64))
}

/// go-humanize's `Bytes` (SI units), as etcdctl prints database sizes:
/// "20 kB", "1.5 MB".
pub fn humanize_bytes(size: u64) -> String {
    const SIZES: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if size < 10 {
        return format!("{size} B");
    }
    let exponent = (log(size as f64) / log(1000.0)).floor();
    let suffix = SIZES[exponent as usize];
    let value = (size as f64 / 1000f64.powi(exponent as i32) * 10.0 + 0.5).floor() / 10.0;
    if value < 10.0 {
        format!("{value:.1} {suffix}")
    } else {
        format!("{value:.0} {suffix}")
    }
}

/// Go's `math.Log` (FreeBSD's algorithm, which its amd64 assembly follows
/// step by step), so that sizes at unit boundaries round as in etcdctl. Only
/// called with finite values >= 10.
fn log(x: f64) -> f64 {
    // The constants as bit patterns, exactly as FreeBSD and Go give them.
    const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
    const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);
    const L1: f64 = f64::from_bits(0x3fe5_5555_5555_5593);
    const L2: f64 = f64::from_bits(0x3fd9_9999_9997_fa04);
    const L3: f64 = f64::from_bits(0x3fd2_4924_9422_9359);
    const L4: f64 = f64::from_bits(0x3fcc_71c5_1d8e_78af);
    const L5: f64 = f64::from_bits(0x3fc7_4664_96cb_03de);
    const L6: f64 = f64::from_bits(0x3fc3_9a09_d078_c69f);
    const L7: f64 = f64::from_bits(0x3fc2_f112_df3e_5244);

    // Frexp for normal numbers: x = f1 * 2^ki with f1 in [0.5, 1).
    let bits = x.to_bits();
    let mut ki = ((bits >> 52) & 0x7ff) as i64 - 0x3fe;
    let mut f1 = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3fe0_0000_0000_0000);
    if f1 < std::f64::consts::SQRT_2 / 2.0 {
        f1 *= 2.0;
        ki -= 1;
    }
    let f = f1 - 1.0;
    let k = ki as f64;

    let s = f / (2.0 + f);
    let s2 = s * s;
    let s4 = s2 * s2;
    let t1 = s2 * (L1 + s4 * (L3 + s4 * (L5 + s4 * L7)));
    let t2 = s4 * (L2 + s4 * (L4 + s4 * L6));
    let r = t1 + t2;
    let hfsq = 0.5 * f * f;
    k * LN2_HI - ((hfsq - (s * (hfsq + r) + k * LN2_LO)) - f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_matches_strconv() {
        assert_eq!(quote(b"foo"), r#""foo""#);
        assert_eq!(quote(b"a\"b\\c\n\x00\x7f"), r#""a\"b\\c\n\x00\x7f""#);
        assert_eq!(quote(b"\xff\xe2\x82\xac"), r#""\xff€""#);
        assert_eq!(quote("\u{feff}".as_bytes()), r#""\ufeff""#);
    }

    #[test]
    fn scan_quoted_handles_go_escapes() {
        let (v, rest) = scan_quoted(r#""a\x00b\"c\101\u00e9" tail"#).unwrap();
        assert_eq!(v, b"a\x00b\"cA\xc3\xa9");
        assert_eq!(rest, " tail");
        assert_eq!(scan_quoted("`raw\\n`x").unwrap(), (b"raw\\n".to_vec(), "x"));
        assert!(scan_quoted(r#""unterminated"#).is_none());
        assert!(scan_quoted(r#""bad \q""#).is_none());
        assert!(scan_quoted(r#""\'""#).is_none());
        assert!(scan_quoted(r#""\400""#).is_none());
        assert!(scan_quoted("x").is_none());
    }

    #[test]
    fn parse_int_reports_like_go() {
        assert_eq!(parse_int("-12", 10), Ok(-12));
        assert_eq!(parse_int("ff", 16), Ok(255));
        assert_eq!(
            parse_int("abc", 10).unwrap_err(),
            r#"strconv.ParseInt: parsing "abc": invalid syntax"#
        );
        assert_eq!(
            parse_int("99999999999999999999", 10).unwrap_err(),
            r#"strconv.ParseInt: parsing "99999999999999999999": value out of range"#
        );
        assert!(parse_int("", 10).is_err());
        assert!(parse_int("0x10", 16).is_err());
    }

    #[test]
    fn parse_duration_accepts_go_syntax() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("2").is_err());
        assert!(parse_duration("2x").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn humanize_bytes_matches_go_humanize() {
        assert_eq!(humanize_bytes(0), "0 B");
        assert_eq!(humanize_bytes(9), "9 B");
        assert_eq!(humanize_bytes(999), "999 B");
        assert_eq!(humanize_bytes(1000), "1.0 kB");
        assert_eq!(humanize_bytes(20480), "20 kB");
        assert_eq!(humanize_bytes(25_000), "25 kB");
        assert_eq!(humanize_bytes(1_500_000), "1.5 MB");
        assert_eq!(humanize_bytes(1_000_000_000_000), "1.0 TB");
        assert_eq!(humanize_bytes(u64::MAX), "18 EB");
    }

    #[test]
    fn log_agrees_with_libm_closely() {
        for x in [10.0, 1000.0, 20480.0, 1e9, 1e12, 1.8e19] {
            assert!((log(x) - f64::ln(x)).abs() <= f64::EPSILON * f64::ln(x));
        }
    }
}
