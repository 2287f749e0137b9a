//! Property-based tests of the parser and validator (proptest): whatever the text, reading
//! a definition returns a pipeline or an error, never panics; a valid pipeline has every
//! operator after those it reads from; the verdict is the same every time.
//! `PROPTEST_CASES` raises the number of cases (256 per property by default).

use fastio_pipeline::{Direction, Pipeline};
use proptest::prelude::*;

const VALID: &str = "api-version: 0.5.0
name: demo
timeout: 30
operators:
- name: make
  command: [make-volume, --size, \"64\"]
  variables: {LEVEL: 2, MODE: fast}
  output:
  - name: volume
    type: array
    element-type: int16
    shape: [4, -1]
  - name: uid
    type: string
  - name: files
    type: stream
    path: /out
- name: use
  command: [use-volume]
  input:
  - name: volume
    from: make
    type: array
    element-type: int16
    shape: [4, -1]
  - name: uid
    from: make
    type: string
  - name: files
    from: make
    type: stream
    path: /in
";

/// Reads `text` both ways; checks the verdict is stable and, when valid, ordered.
fn read_all_ways(text: &str) {
    for json in [false, true] {
        let read = || {
            if json {
                Pipeline::from_json_str(text, "p.json")
            } else {
                Pipeline::from_yaml_str(text, "p.yaml")
            }
        };
        let first = read();
        let second = read();
        match (&first, &second) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a, b);
                check_order(a);
            }
            (Err(a), Err(b)) => {
                assert_eq!(a.to_string(), b.to_string());
                assert!(!a.to_string().is_empty());
            }
            _ => panic!("two readings of the same text disagree"),
        }
    }
}

fn check_order(p: &Pipeline) {
    for link in p.links() {
        assert!(link.output.operator < link.input.operator);
        let (_, input) = p.resolve(link.input, Direction::Input);
        let (producer, _) = p.resolve(link.output, Direction::Output);
        assert_eq!(input.from(), Some(producer.name()));
    }
}

/// One entry of a generated definition.
fn entry(input: bool) -> impl Strategy<Value = String> {
    let names = prop::sample::select(vec!["a", "b", "v", "V", "x-1", "", "bad name"]);
    let froms = prop::option::of(prop::sample::select(vec![
        "o0", "o1", "o2", "O3", "o4", "nobody", "",
    ]));
    let kinds = prop::sample::select(vec![
        "    type: array\n    element-type: float32\n    shape: [2, -1]\n",
        "    type: array\n    element-type: float32\n    shape: [2, 0]\n",
        "    type: array\n    element-type: int7\n    shape: [2]\n",
        "    type: array\n    shape: [0, -2, 99999999999]\n",
        "    type: string\n",
        "    type: u64\n",
        "    type: uint64\n",
        "    type: stream\n    path: /data\n",
        "    type: stream\n    path: relative\n",
        "    path: /d\n    element-type: dicom\n",
        "    type: mystery\n",
    ]);
    (names, froms, kinds).prop_map(move |(name, from, kind)| {
        let mut text = format!("  - name: {name:?}\n");
        if let (true, Some(from)) = (input, from) {
            text.push_str(&format!("    from: {from:?}\n"));
        }
        text.push_str(kind);
        text
    })
}

fn operator(index: usize) -> impl Strategy<Value = String> {
    (
        prop::collection::vec(entry(true), 0..4),
        prop::collection::vec(entry(false), 0..4),
        prop::sample::select(vec!["[op]", "[]", "[\"\"]", "[op, --x]"]),
    )
        .prop_map(move |(inputs, outputs, command)| {
            let mut text = format!("- name: o{index}\n  command: {command}\n");
            if !inputs.is_empty() {
                text.push_str("  input:\n");
                inputs.iter().for_each(|e| text.push_str(e));
            }
            if !outputs.is_empty() {
                text.push_str("  output:\n");
                outputs.iter().for_each(|e| text.push_str(e));
            }
            text
        })
}

fn definition() -> impl Strategy<Value = String> {
    (
        1usize..6,
        prop::sample::select(vec!["0.5.0", "0.4", "x", "1.0.0"]),
        prop::sample::select(vec![
            "",
            "timeout: 0\n",
            "timeout: 60\n",
            "timeout: 18446744073709551615\n",
        ]),
    )
        .prop_flat_map(|(n, version, timeout)| {
            let ops: Vec<_> = (0..n).map(operator).collect();
            ops.prop_map(move |ops| {
                format!(
                    "api-version: {version}\nname: p\n{timeout}operators:\n{}",
                    ops.concat()
                )
            })
        })
}

/// Whether the graph (edges from reader to the operators it reads) has a cycle.
fn has_cycle(reads: &[Vec<usize>]) -> bool {
    // Repeatedly remove operators that read nothing left; a cycle is what remains.
    let mut left: Vec<bool> = vec![true; reads.len()];
    loop {
        let removable: Vec<usize> = (0..reads.len())
            .filter(|&i| left[i] && reads[i].iter().all(|&j| !left[j]))
            .collect();
        if removable.is_empty() {
            return left.iter().any(|&l| l);
        }
        removable.into_iter().for_each(|i| left[i] = false);
    }
}

/// A random graph of operators: operator `i` outputs `v<i>` and reads `v<j>` from each `o<j>`
/// in its list; written in a shuffled order.
fn graph() -> impl Strategy<Value = (Vec<Vec<usize>>, Vec<usize>)> {
    (2usize..16).prop_flat_map(|n| {
        let reads = prop::collection::vec(
            prop::collection::btree_set(0..n, 0..3).prop_map(|s| s.into_iter().collect()),
            n,
        );
        let order = Just((0..n).collect::<Vec<usize>>()).prop_shuffle();
        (reads, order)
    })
}

proptest! {
    #[test]
    fn random_graphs_are_valid_exactly_when_acyclic((reads, order) in graph()) {
        // Self-reads are a rule of their own; keep to links between operators.
        let reads: Vec<Vec<usize>> = reads
            .iter()
            .enumerate()
            .map(|(i, r)| r.iter().copied().filter(|&j| j != i).collect())
            .collect();
        let mut text = String::from("api-version: 0.5.0\nname: g\noperators:\n");
        for &i in &order {
            text.push_str(&format!(
                "- name: o{i}\n  command: [op]\n  output:\n  - name: v{i}\n    type: u64\n"
            ));
            if !reads[i].is_empty() {
                text.push_str("  input:\n");
                for j in &reads[i] {
                    text.push_str(&format!("  - name: v{j}\n    from: o{j}\n    type: u64\n"));
                }
            }
        }
        match Pipeline::from_yaml_str(&text, "g.yaml") {
            Ok(p) => {
                prop_assert!(!has_cycle(&reads));
                check_order(&p);
                prop_assert_eq!(p.links().len(), reads.iter().map(Vec::len).sum::<usize>());
            }
            Err(e) => {
                prop_assert!(has_cycle(&reads), "{}", e);
                prop_assert!(e.problems().iter().all(|p| p.to_string().contains("cycle")), "{}", e);
            }
        }
    }

    #[test]
    fn any_text_is_read_without_panicking(text in "\\PC{0,400}") {
        read_all_ways(&text);
    }

    #[test]
    fn yaml_like_text_is_read_without_panicking(
        text in "([-:\\[\\]{}&*!|>'\"#,?. \n]|[a-z0-9]{1,6}){0,120}"
    ) {
        read_all_ways(&text);
    }

    #[test]
    fn generated_definitions_are_judged_consistently(text in definition()) {
        read_all_ways(&text);
    }

    #[test]
    fn damaged_valid_definitions_never_panic(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8)
    ) {
        let mut bytes = VALID.as_bytes().to_vec();
        for (at, byte, how) in edits {
            let i = at.index(bytes.len() + 1);
            match how {
                0 => bytes.insert(i, byte),
                1 if i < bytes.len() => { bytes.remove(i); }
                _ if i < bytes.len() => bytes[i] = byte,
                _ => {}
            }
        }
        read_all_ways(&String::from_utf8_lossy(&bytes));
    }
}

#[test]
fn the_valid_definition_is_valid() {
    let p = Pipeline::from_yaml_str(VALID, "p.yaml").unwrap();
    assert_eq!(p.links().len(), 3);
}
