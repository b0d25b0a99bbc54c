//! The document layout of yaml.v3's emitter (emitterc.go) with `SetIndent(2)`
//! and no line width (v3 never folds): block collections indented by two,
//! a sequence item's content just past its `- `, a mapping or sequence that
//! is a sequence item starting on the item's line, `{}`/`[]` for empty ones,
//! `? `/`: ` for keys that are multi-line or over 128 bytes, and the writing
//! of each scalar style (escapes, block scalar headers, continuation lines).

use super::scalar::{is_break, is_printable, style, Style};
use super::Node;

pub(super) fn document(root: &[(String, Node)]) -> String {
    let mut out = String::new();
    map(&mut out, root, 0);
    out
}

/// Writes `node` where the output stands, at column `indent`: a block
/// collection's first entry goes there, the rest on lines of their own.
/// Leaves the output at the start of a line.
fn node(out: &mut String, node: &Node, indent: usize) {
    match node {
        Node::Str(text) => scalar(out, text, false, indent),
        Node::Plain(text) => out.push_str(text),
        Node::Map(_) if node.is_empty() => out.push_str("{}"),
        Node::Seq(_) if node.is_empty() => out.push_str("[]"),
        Node::Map(entries) => return map(out, entries, indent),
        Node::Seq(items) => {
            for (i, item) in items.iter().enumerate() {
                pad(out, if i == 0 { 0 } else { indent });
                out.push_str("- ");
                self::node(out, item, indent + 2);
            }
            return;
        }
        Node::Flow(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                out.push_str(if i == 0 { "" } else { ", " });
                scalar(out, item, true, indent + 2);
            }
            out.push(']');
        }
    }
    end_line(out);
}

fn map(out: &mut String, entries: &[(String, Node)], indent: usize) {
    for (i, (key, value)) in entries.iter().enumerate() {
        pad(out, if i == 0 { 0 } else { indent });
        if key.len() <= 128 && !key.contains(is_break) {
            scalar(out, key, false, indent + 2);
            let block = matches!(value, Node::Map(_) | Node::Seq(_)) && !value.is_empty();
            out.push_str(if block { ":\n" } else { ": " });
            pad(out, if block { indent + 2 } else { 0 });
        } else {
            out.push_str("? ");
            scalar(out, key, false, indent + 2);
            end_line(out);
            pad(out, indent);
            out.push_str(": ");
        }
        node(out, value, indent + 2);
    }
}

/// A scalar whose continuation lines, if any, are indented to `indent`.
fn scalar(out: &mut String, text: &str, in_flow: bool, indent: usize) {
    match style(text, in_flow) {
        Style::Plain => out.push_str(text),
        Style::SingleQuoted => {
            // Only U+2028/U+2029 can break a line here; the analysis
            // rules out '\n', '\r' and NEL.
            out.push('\'');
            lines(out, &text.replace('\'', "''"), indent, false);
            out.push('\'');
        }
        Style::DoubleQuoted => double_quoted(out, text),
        Style::Literal => {
            out.push('|');
            if text.starts_with(|c| c == ' ' || is_break(c)) {
                out.push('2'); // the indentation indicator is always best_indent
            }
            let mut tail = text.chars().rev().map(is_break);
            match (tail.next(), tail.next()) {
                (Some(false), _) => out.push('-'),
                (Some(true), None | Some(true)) => out.push('+'),
                _ => {}
            }
            out.push('\n');
            lines(out, text, indent, true);
        }
    }
}

/// Copies `text`, indenting each line that has content after a line break
/// (and the first one, for a block scalar). Breaks are copied as they are.
fn lines(out: &mut String, text: &str, indent: usize, mut line_start: bool) {
    for c in text.chars() {
        if is_break(c) {
            line_start = true;
        } else if line_start {
            pad(out, indent);
            line_start = false;
        }
        out.push(c);
    }
}

fn double_quoted(out: &mut String, text: &str) {
    // yaml.v3's is_bom() looks at the value's first bytes, whatever the
    // position: a value that starts with U+FEFF has every character escaped.
    let escape_all = text.starts_with('\u{FEFF}');
    out.push('"');
    for c in text.chars() {
        if !(escape_all || c == '"' || c == '\\' || is_break(c) || !is_printable(c)) {
            out.push(c);
            continue;
        }
        const SHORT: &str = "\0\u{7}\u{8}\t\n\u{B}\u{C}\r\u{1B}\"\\\u{85}\u{A0}\u{2028}\u{2029}";
        out.push('\\');
        match SHORT.chars().position(|s| s == c) {
            Some(i) => out.push(char::from(b"0abtnvfre\"\\N_LP"[i])),
            None => {
                let code = u32::from(c);
                out.push_str(&match code {
                    0..=0xFF => format!("x{code:02X}"),
                    0x100..=0xFFFF => format!("u{code:04X}"),
                    _ => format!("U{code:08X}"),
                });
            }
        }
    }
    out.push('"');
}

/// Ends the line unless the output already stands at the start of one (a
/// block scalar ends with its last break).
fn end_line(out: &mut String) {
    if !out.ends_with(is_break) {
        out.push('\n');
    }
}

fn pad(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n(' ', n));
}
