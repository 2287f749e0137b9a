//! Bounds on what a definition may cost to read, checked before it is parsed for real.
//!
//! A few hundred kilobytes of YAML can otherwise cost minutes or gigabytes: deeply nested
//! flow collections make YAML scanners quadratic, and aliases repeat a node without
//! repeating its text (a "billion laughs"). So the text is first walked once as a stream
//! of YAML events (yaml-rust2, which pulls tokens lazily, so the walk stops at the first
//! node past a limit): nesting depth is bounded, and so is the size of the document with
//! every alias expanded, which is what the deserializer will build. JSON has no aliases,
//! and serde_json stops at 128 levels of nesting by itself; both formats are bounded in
//! size.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser};

/// The largest definition read, in bytes: 16 MiB (a 10,000-operator definition is about
/// 2 MiB).
pub const MAX_DEFINITION_BYTES: usize = 16 << 20;

/// The deepest nesting of collections in a YAML definition (the format itself needs 5).
pub const MAX_DEPTH: usize = 64;

/// The most nodes (scalars and collections) a YAML definition may hold with its aliases
/// expanded.
pub const MAX_NODES: u64 = 4_000_000;

/// The most bytes of scalars a YAML definition may hold with its aliases expanded.
pub const MAX_SCALAR_BYTES: u64 = 64 << 20;

/// A limit the text went past, with where (1-based line and column) when known.
#[derive(Debug)]
pub(crate) struct Exceeded {
    pub what: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
}

/// Checks the size of any definition.
pub(crate) fn check_size(len: usize) -> Result<(), Exceeded> {
    if len > MAX_DEFINITION_BYTES {
        return Err(Exceeded {
            what: format!(
                "the definition is {len} bytes; the limit is {MAX_DEFINITION_BYTES} bytes (16 MiB)"
            ),
            line: None,
            column: None,
        });
    }
    Ok(())
}

/// Bounds the nesting of flow collections by counting brackets, before any YAML parser
/// sees the text: scanners keep state for every open flow level and look at all of it for
/// each token, so deep flow nesting costs them quadratic time before they emit an event.
/// Brackets inside quoted strings count too: a definition with more than [`MAX_DEPTH`]
/// unclosed brackets in its strings is refused, which is a small price for a check that no
/// quoting trick can get around.
pub(crate) fn check_brackets(text: &str) -> Result<(), Exceeded> {
    let mut depth = 0usize;
    let (mut line, mut column) = (1, 0);
    for byte in text.bytes() {
        column += 1;
        match byte {
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(Exceeded {
                        what: format!("collections are nested more than {MAX_DEPTH} deep"),
                        line: Some(line),
                        column: Some(column),
                    });
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'\n' => {
                line += 1;
                column = 0;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Walks a YAML text's events and checks depth and expanded size. A syntax error ends the
/// walk without a verdict (`Ok(false)`): the real parser then reports it in its own words.
pub(crate) fn check_yaml(text: &str) -> Result<bool, Exceeded> {
    #[derive(Default, Clone, Copy)]
    struct Size {
        nodes: u64,
        bytes: u64,
    }
    // Open collections: their anchor and their size so far.
    let mut open: Vec<(usize, Size)> = Vec::new();
    let mut anchors: HashMap<usize, Size> = HashMap::new();
    let mut total = Size::default();
    let mut parser = Parser::new_from_str(text);
    loop {
        let (event, mark) = match parser.next_token() {
            Ok(next) => next,
            Err(_) => return Ok(false),
        };
        let at = |what: String| Exceeded {
            what,
            line: Some(mark.line()),
            column: Some(mark.col() + 1),
        };
        // What this event adds to the document: a scalar, a collection's own node, or an
        // alias's whole anchored node again.
        let (added, anchor) = match event {
            Event::StreamEnd => return Ok(true),
            Event::Scalar(value, _, anchor, _) => (
                Size {
                    nodes: 1,
                    bytes: value.len() as u64,
                },
                anchor,
            ),
            Event::Alias(id) => (anchors.get(&id).copied().unwrap_or_default(), 0),
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if open.len() >= MAX_DEPTH {
                    return Err(at(format!(
                        "collections are nested more than {MAX_DEPTH} deep"
                    )));
                }
                total.nodes += 1;
                open.push((anchor, Size { nodes: 1, bytes: 0 }));
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let Some((anchor, size)) = open.pop() else {
                    return Ok(false);
                };
                if anchor > 0 {
                    anchors.insert(anchor, size);
                }
                if let Some((_, parent)) = open.last_mut() {
                    parent.nodes += size.nodes;
                    parent.bytes += size.bytes;
                }
                continue;
            }
            Event::Nothing | Event::StreamStart | Event::DocumentStart | Event::DocumentEnd => {
                continue;
            }
        };
        if anchor > 0 {
            anchors.insert(anchor, added);
        }
        if let Some((_, parent)) = open.last_mut() {
            parent.nodes += added.nodes;
            parent.bytes += added.bytes;
        }
        total.nodes += added.nodes;
        total.bytes += added.bytes;
        if total.nodes > MAX_NODES {
            return Err(at(format!(
                "with its aliases expanded, the definition has more than {MAX_NODES} nodes"
            )));
        }
        if total.bytes > MAX_SCALAR_BYTES {
            return Err(at(format!(
                "with its aliases expanded, the definition holds more than {MAX_SCALAR_BYTES} bytes of values"
            )));
        }
    }
}
