//! The `Kitfile` that `kit unpack` writes for a ModelKit: the config blob is
//! the Kitfile as JSON, which kit reads with Go's `json.Unmarshal` into its
//! `KitFile` struct and writes with go.yaml.in/yaml/v3 (`SetIndent(2)`).
//! [`kitfile_yaml`] gives the same bytes. This file owns the entry point and
//! the JSON side: kit's schema (field order, `omitempty`) and how
//! `encoding/json` fills it; `scalar` styles scalars and orders map keys,
//! `emit` lays the document out.
//!
//! Known divergences from kit, all for input no real Kitfile has:
//! * invalid UTF-8 and unpaired `\u` surrogates are errors (Go reads U+FFFD);
//! * a key matches a field by exact name, else the first ASCII
//!   case-insensitive match (Go also folds KELVIN SIGN and LONG S, and lets
//!   the last of several matches win);
//! * `0b-1`-style strings stay plain (yaml.v3 quotes them), and signed
//!   0x/0o/0b ints are checked against u64's range, not i64's;
//! * in `parameters` key order only ASCII digits form numeric runs, and
//!   non-ASCII letters are Rust's alphabetic chars, not `unicode.IsLetter`;
//! * errors name the field path (`package.name: expected string, found
//!   number`), not Go's struct field.

mod emit;
mod scalar;
#[cfg(test)]
mod tests;

use serde_json::{Map, Value};

/// The file name `kit unpack` writes the Kitfile under, at the model's root (a ModelKit's config,
/// a ModelPack `kit pack` built carries it in an annotation).
pub const FILE_NAME: &str = "Kitfile";

type Object = Map<String, Value>;
type Entries = Vec<(String, Node)>;

/// The Kitfile `kit unpack` writes for this config JSON; Err(reason) when kit
/// itself could not read it.
///
/// # Errors
///
/// The config is not JSON, not an object (or `null`), or has a field whose
/// JSON type does not fit kit's struct.
pub fn kitfile_yaml(config_json: &[u8]) -> Result<Vec<u8>, String> {
    let value: Value =
        serde_json::from_slice(config_json).map_err(|e| format!("config is not JSON: {e}"))?;
    let root = object(Some(&value), "config")?;
    Ok(emit::document(&decode_struct(KITFILE, root, "")?).into_bytes())
}

/// A YAML node as yaml.v3's encoder hands it to the emitter.
enum Node {
    /// A Go string: its style follows yaml.v3's rules.
    Str(String),
    /// A number, bool or null, always plain.
    Plain(String),
    /// Block mapping, `{}` when empty.
    Map(Entries),
    /// Block sequence, `[]` when empty.
    Seq(Vec<Node>),
    /// A `,flow` list of strings (`authors`).
    Flow(Vec<String>),
}

impl Node {
    /// An empty collection (written `{}` or `[]`).
    fn is_empty(&self) -> bool {
        match self {
            Node::Map(entries) => entries.is_empty(),
            Node::Seq(items) => items.is_empty(),
            Node::Flow(items) => items.is_empty(),
            Node::Str(_) | Node::Plain(_) => false,
        }
    }
}

/// kit's structs: their YAML field names in order. All are `omitempty` but
/// those marked `!`; [`decode`] knows each field's Go type by its name.
const KITFILE: &str = "manifestVersion! package model code datasets docs prompts mcpServers";
const PACKAGE: &str = "name version description license authors";
const MODEL: &str = "name path license framework format version description parts parameters \
    digest diffId";
const MODEL_PART: &str = "name path license type digest diffId";
const CODE: &str = "path description license digest diffId";
const DATASET: &str =
    "name path remotePath remoteHash description license parameters digest diffId";
const DOCS: &str = "path! description digest diffId";
const PROMPT: &str = "name path description digest diffId"; // and MCPServer

/// A struct's YAML entries in field order, `omitempty` applied.
fn decode_struct(fields: &str, object: Option<&Object>, path: &str) -> Result<Entries, String> {
    let mut entries = Vec::new();
    for field in fields.split_whitespace() {
        let name = field.trim_end_matches('!');
        let at = format!("{path}.{name}");
        let at = at.trim_start_matches('.');
        let value = object.and_then(|map| {
            let folded = || map.iter().find(|(k, _)| k.eq_ignore_ascii_case(name));
            map.get(name).or_else(|| folded().map(|(_, v)| v))
        });
        if let Some(node) = decode(field, value, at)? {
            entries.push((name.to_owned(), node));
        }
    }
    Ok(entries)
}

/// A field's node, or None when it is not written.
fn decode(field: &str, value: Option<&Value>, at: &str) -> Result<Option<Node>, String> {
    let written = |node: Node| (!node.is_empty()).then_some(node);
    let structs = |fields| -> Result<Option<Node>, String> {
        let item =
            |v: &Value, at: &str| Ok(Node::Map(decode_struct(fields, object(Some(v), at)?, at)?));
        Ok(written(Node::Seq(list(value, at, item)?)))
    };
    Ok(match field.trim_end_matches('!') {
        // A struct value, dropped when all its fields are (none is written).
        "package" => written(Node::Map(decode_struct(PACKAGE, object(value, at)?, at)?)),
        // A struct pointer, dropped only when nil.
        "model" => object(value, at)?
            .map(|map| decode_struct(MODEL, Some(map), at).map(Node::Map))
            .transpose()?,
        "code" => structs(CODE)?,
        "datasets" => structs(DATASET)?,
        "docs" => structs(DOCS)?,
        "prompts" | "mcpServers" => structs(PROMPT)?,
        "parts" => structs(MODEL_PART)?,
        // `[]string` tagged `,flow`.
        "authors" => written(Node::Flow(list(value, at, |v, at| {
            Ok(string(Some(v), at)?.to_owned())
        })?)),
        // `any`, dropped only when nil.
        "parameters" => value.filter(|v| !v.is_null()).map(any),
        // LayerInfo's `yaml:"-"` strings.
        "digest" | "diffId" => string(value, at).map(|_| None)?,
        _ => {
            let text = string(value, at)?;
            (field.ends_with('!') || !text.is_empty()).then(|| Node::Str(text.to_owned()))
        }
    })
}

/// A value as Go decodes it into `any` (map, slice, float64, string, bool,
/// nil), as yaml.v3 encodes that.
fn any(value: &Value) -> Node {
    match value {
        Value::Null => Node::Plain("null".into()),
        Value::Bool(b) => Node::Plain(b.to_string()),
        Value::Number(n) => Node::Plain(scalar::go_float(n.as_f64().unwrap_or_default())),
        Value::String(text) => Node::Str(text.clone()),
        Value::Array(items) => Node::Seq(items.iter().map(any).collect()),
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().map(|(k, v)| (k.clone(), any(v))).collect();
            entries.sort_by(|a, b| scalar::key_order(&a.0, &b.0));
            Node::Map(entries)
        }
    }
}

/// The value if it has the JSON type `expected`; None for `null` or an absent
/// key, which leave Go's zero value.
fn typed<'v, T>(
    value: Option<&'v Value>,
    at: &str,
    expected: &str,
    cast: fn(&'v Value) -> Option<T>,
) -> Result<Option<T>, String> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    cast(value).map(Some).ok_or_else(|| {
        let found = match value {
            Value::Bool(_) => "bool",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            _ => "object",
        };
        format!("{at}: expected {expected}, found {found}")
    })
}

fn string<'v>(value: Option<&'v Value>, at: &str) -> Result<&'v str, String> {
    Ok(typed(value, at, "string", Value::as_str)?.unwrap_or_default())
}

fn object<'v>(value: Option<&'v Value>, at: &str) -> Result<Option<&'v Object>, String> {
    typed(value, at, "object", Value::as_object)
}

/// A JSON array's items, each decoded by `item`.
fn list<T>(
    value: Option<&Value>,
    at: &str,
    item: impl Fn(&Value, &str) -> Result<T, String>,
) -> Result<Vec<T>, String> {
    let items = typed(value, at, "array", Value::as_array)?.map_or(&[][..], Vec::as_slice);
    let items = items.iter().enumerate();
    items.map(|(i, v)| item(v, &format!("{at}[{i}]"))).collect()
}
