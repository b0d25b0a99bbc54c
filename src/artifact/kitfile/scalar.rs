//! How yaml.v3 writes scalars and orders map keys: the style its encoder asks
//! for a Go string (resolve.go: plain unless the text would read back as
//! another type; a literal block when it has a newline), the style its
//! emitter then allows (emitterc.go's scalar analysis), Go's float format,
//! and the "natural" order of `parameters` keys (sorter.go).

use std::cmp::Ordering;

pub(super) enum Style {
    Plain,
    SingleQuoted,
    DoubleQuoted,
    Literal,
}

/// The style a Go string is written in, in block or flow context: what
/// encode.go `stringv` asks for (a literal block for multi-line text, double
/// quotes for text that would read back as another type, else plain), as far
/// as emitterc.go's scalar analysis allows it.
pub(super) fn style(text: &str, in_flow: bool) -> Style {
    if text.contains('\n') {
        allowed(text, Style::Literal, in_flow)
    } else if resolves_to_non_string(text) || is_base60(text) {
        Style::DoubleQuoted
    } else {
        allowed(text, Style::Plain, in_flow)
    }
}

/// resolve.go's fixed plain values (null, bools, inf, nan) and the YAML 1.1
/// bools encode.go still quotes.
const QUOTED: &[&str] = &[
    "", "~", "null", "Null", "NULL", "true", "True", "TRUE", "false", "False", "FALSE", ".nan",
    ".NaN", ".NAN", ".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF", "-.inf", "-.Inf", "-.INF",
    "y", "Y", "yes", "Yes", "YES", "on", "On", "ON", "n", "N", "no", "No", "NO", "off", "Off",
    "OFF",
];

/// Whether `resolve("", s)` gives a tag other than !!str: only a first
/// character of `.+-0-9` leads to more than the table.
fn resolves_to_non_string(s: &str) -> bool {
    let plain = s.replace('_', "");
    // Rust's f64 grammar is resolve.go's float pattern, plus inf/nan which
    // parse to non-finite values; an overflowing literal stays a string too.
    let float = || plain.parse::<f64>().is_ok_and(f64::is_finite);
    QUOTED.contains(&s)
        || match s.as_bytes()[0] {
            b'.' => underscores_between_digits(s) && float(), // strconv.ParseFloat
            b'+' | b'-' | b'0'..=b'9' => {
                timestamp(&mut s.as_bytes()).is_some() || is_int(&plain) || float()
            }
            _ => false,
        }
}

fn underscores_between_digits(s: &str) -> bool {
    let b = s.as_bytes();
    let digit = |i: usize| b.get(i).is_some_and(u8::is_ascii_digit);
    (0..b.len()).all(|i| b[i] != b'_' || (i > 0 && digit(i - 1) && digit(i + 1)))
}

/// strconv.ParseInt/ParseUint(s, 0, 64) for a `0b`/`0o`/`0x` literal
/// (unprefixed integers are floats too); the limit is u64's whatever the sign.
fn is_int(s: &str) -> bool {
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    let radix = match body.get(..2) {
        Some("0b" | "0B") => 2,
        Some("0o" | "0O") => 8,
        Some("0x" | "0X") => 16,
        _ => return false,
    };
    let digits = &body[2..];
    digits.chars().all(|c| c.is_digit(radix)) && u64::from_str_radix(digits, radix).is_ok()
}

/// YAML 1.1 base-60 numbers, still quoted (encode.go `isBase60Float`):
/// `^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$`.
fn is_base60(s: &str) -> bool {
    let s = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (whole, fraction) = s.split_once('.').unwrap_or((s, ""));
    let mut groups = whole.split(':');
    let first = groups.next().unwrap_or_default();
    let digits = |t: &str| t.bytes().all(|c| c.is_ascii_digit() || c == b'_');
    first.starts_with(|c: char| c.is_ascii_digit())
        && digits(first)
        && digits(fraction)
        && whole.contains(':')
        && groups.all(|g| matches!(g.as_bytes(), [b'0'..=b'9'] | [b'0'..=b'5', b'0'..=b'9']))
}

/// resolve.go's timestamps, read as time.Parse reads its layouts, range
/// checks included: `2006-1-2`, alone, or then `T`/`t`, `15:4:5`, an optional
/// fraction and `Z07:00`, or then spaces, `15:4:5` and an optional fraction.
fn timestamp(s: &mut &[u8]) -> Option<()> {
    let year = digits(s, 4, 4, 10_000)?;
    let month = eat(s, b'-').and_then(|()| digits(s, 1, 2, 13))?;
    let day = eat(s, b'-').and_then(|()| digits(s, 1, 2, 32))?;
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = [0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][month as usize];
    (day > 0 && day <= days + u32::from(month == 2 && leap)).then_some(())?;
    match s.first() {
        None => return Some(()),
        Some(b' ') => {
            while eat(s, b' ').is_some() {}
            clock(s)?;
        }
        Some(b'T' | b't') => {
            *s = &s[1..];
            clock(s)?;
            if eat(s, b'Z').is_none() {
                eat(s, b'+').or_else(|| eat(s, b'-'))?;
                digits(s, 2, 2, 25)?;
                eat(s, b':').and_then(|()| digits(s, 2, 2, 61))?;
            }
        }
        _ => return None,
    }
    s.is_empty().then_some(())
}

/// `15:4:5`, then an optional fraction: `.` or `,` and digits.
fn clock(s: &mut &[u8]) -> Option<()> {
    digits(s, 1, 2, 24)?;
    eat(s, b':').and_then(|()| digits(s, 1, 2, 60))?;
    eat(s, b':').and_then(|()| digits(s, 1, 2, 60))?;
    if matches!(s, [b'.' | b',', b'0'..=b'9', ..]) {
        let len = s[1..].iter().take_while(|c| c.is_ascii_digit()).count();
        *s = &s[1 + len..];
    }
    Some(())
}

/// `min..=max` digits, as many as there are (time.Parse's `getnum`), with a
/// value below `limit`.
fn digits(s: &mut &[u8], min: usize, max: usize, limit: u32) -> Option<u32> {
    let len = s.iter().take_while(|c| c.is_ascii_digit()).count().min(max);
    let value = s[..len].iter().fold(0, |n, c| n * 10 + u32::from(c - b'0'));
    *s = &s[len..];
    (len >= min && value < limit).then_some(value)
}

fn eat(s: &mut &[u8], c: u8) -> Option<()> {
    *s = s.strip_prefix(&[c])?;
    Some(())
}

/// emitterc.go's `analyze_scalar` and `select_scalar_style`: plain falls
/// back to single quotes, those and literal blocks to double quotes.
fn allowed(text: &str, requested: Style, in_flow: bool) -> Style {
    let c: Vec<char> = text.chars().collect();
    let (first, last) = (c[0], c[c.len() - 1]); // not empty: "" resolves to null
    let document_marker = text.starts_with("---") || text.starts_with("...");
    let (mut flow, mut block) = (document_marker, document_marker);
    for (i, &ch) in c.iter().enumerate() {
        let blank_next = c.get(i + 1).is_none_or(|&n| n == ' ' || n == '\t');
        let blank_before = i == 0 || matches!(c[i - 1], ' ' | '\t' | '\0') || is_break(c[i - 1]);
        let (f, b) = match ch {
            ch if i == 0 && "#,[]{}&*!|>'\"%@`".contains(ch) => (true, true),
            '?' if i == 0 => (true, blank_next),
            ':' => (true, blank_next),
            '-' if i == 0 => (blank_next, blank_next),
            ',' | '?' | '[' | ']' | '{' | '}' => (true, false),
            '#' => (blank_before, blank_before),
            _ => (false, false),
        };
        flow |= f;
        block |= b;
    }
    let special = |tab_ok: bool| c.iter().any(|&x| !(is_printable(x) || tab_ok && x == '\t'));
    let pair = |a: fn(char) -> bool, b: fn(char) -> bool| c.windows(2).any(|w| a(w[0]) && b(w[1]));
    let space = |x: char| x == ' ';
    let space_break = pair(space, is_break);
    let quotable = !(special(false) || space_break || pair(is_break, space));
    let indicators = if in_flow { flow } else { block };
    let plain = quotable && !indicators && first != ' ' && last != ' ' && !text.contains(is_break);
    let literal = !(in_flow || last == ' ' || space_break || special(true));
    match requested {
        Style::Plain if plain => Style::Plain,
        Style::Plain if quotable => Style::SingleQuoted,
        Style::Literal if literal => Style::Literal,
        _ => Style::DoubleQuoted,
    }
}

/// yaml.v3's `is_printable`: LF, printable ASCII and the BMP from U+00A0
/// except surrogates, the BOM, U+FFFE and U+FFFF (so no emoji).
pub(super) fn is_printable(c: char) -> bool {
    matches!(c, '\n' | ' '..='~' | '\u{A0}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}')
        && c != '\u{FEFF}'
}

pub(super) fn is_break(c: char) -> bool {
    matches!(c, '\r' | '\n' | '\u{85}' | '\u{2028}' | '\u{2029}')
}

/// strconv.FormatFloat(f, 'g', -1, 64): shortest digits, exponent form when
/// the exponent is below -4 or at least 6, with two exponent digits or more.
pub(super) fn go_float(f: f64) -> String {
    let scientific = format!("{f:e}");
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or_default();
    if (-4..6).contains(&exponent) {
        return f.to_string();
    }
    let sign = if exponent < 0 { '-' } else { '+' };
    format!("{mantissa}e{sign}{:02}", exponent.unsigned_abs())
}

/// sorter.go's order for string keys: runs of digits compare as numbers,
/// letters by code point, and a letter against anything else depends on
/// whether a digit came just before.
pub(super) fn key_order(a: &str, b: &str) -> Ordering {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let letter = |c: char| c.is_alphabetic() && !c.is_numeric();
    let digits = |s: &[char]| s.iter().take_while(|c| c.is_ascii_digit()).count();
    let mut after_digit = false;
    for (i, (&x, &y)) in a.iter().zip(&b).enumerate() {
        if x == y {
            after_digit = x.is_ascii_digit();
        } else if letter(x) && letter(y) {
            return x.cmp(&y);
        } else if letter(x) || letter(y) {
            return if letter(x) == after_digit {
                Ordering::Less
            } else {
                Ordering::Greater
            };
        } else {
            // A run continuing non-zero digits counts as non-zero.
            let nonzero = a[..i]
                .iter()
                .rev()
                .take_while(|c| c.is_ascii_digit())
                .any(|&c| c != '0');
            let seed = i64::from((x == '0' || y == '0') && nonzero);
            let run = |s: &[char]| {
                let value = s[i..i + digits(&s[i..])].iter().fold(seed, |n, c| {
                    n.wrapping_mul(10)
                        .wrapping_add(i64::from(c.to_digit(10).unwrap_or(0)))
                });
                (value, digits(&s[i..]), s[i])
            };
            return run(&a).cmp(&run(&b));
        }
    }
    a.len().cmp(&b.len())
}
