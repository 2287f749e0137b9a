//! The validated model: formats, dependency order, graph queries, entry kinds, dot output.

use std::path::PathBuf;

use fastio_meta::ElementType;
use fastio_pipeline::{DefinitionError, Direction, EntryKind, Format, Pipeline};

fn demo_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/demo/pipeline.yaml")
}

fn demo_yaml() -> String {
    std::fs::read_to_string(demo_path()).unwrap()
}

fn demo() -> Pipeline {
    Pipeline::from_path(demo_path()).unwrap_or_else(|e| panic!("{e}"))
}

fn names(ops: &[&fastio_pipeline::Operator]) -> Vec<String> {
    ops.iter().map(|o| o.name().to_owned()).collect()
}

#[test]
fn the_demo_pipeline_validates() {
    let p = demo();
    assert_eq!(p.name(), "demo");
    assert_eq!(p.timeout().as_secs(), 120);
    let order: Vec<&str> = p.operators().iter().map(|o| o.name()).collect();
    assert_eq!(
        order,
        ["generate", "threshold", "summarize", "write-report"]
    );
    let generate = p.operator("generate").unwrap();
    assert_eq!(generate.command().unwrap(), ["fastio-demo-op", "generate"]);
    assert_eq!(generate.variables()["CLARA_TRACE"], "2");
    let volume = generate.output("volume").unwrap().kind();
    assert_eq!(volume.to_string(), "int16[256,512,512]");
    assert!(volume.is_preallocatable());
    let slices = p
        .operator("threshold")
        .unwrap()
        .output("foreground-slices")
        .unwrap();
    assert!(slices.kind().is_dynamic() && !slices.kind().is_preallocatable());
    let report = p
        .operator("write-report")
        .unwrap()
        .output("report")
        .unwrap();
    assert_eq!(
        report.kind(),
        &EntryKind::Stream {
            element_type: Some("text".into()),
            path: "/output".into()
        }
    );
    assert_eq!(p.links().len(), 5);
}

#[test]
fn yaml_and_json_give_the_same_pipeline() {
    let yaml = demo_yaml();
    let value: serde_json::Value = serde_yaml_ng::from_str(&yaml).unwrap();
    let json = serde_json::to_string_pretty(&value).unwrap();
    let from_yaml = Pipeline::from_yaml_str(&yaml, "demo").unwrap();
    let from_json = Pipeline::from_json_str(&json, "demo").unwrap();
    assert_eq!(from_yaml, from_json);

    // From files, the extension chooses the format.
    let dir = tempfile::tempdir().unwrap();
    let json_file = dir.path().join("demo.JSON");
    std::fs::write(&json_file, &json).unwrap();
    let from_file = Pipeline::from_path(&json_file).unwrap();
    assert_eq!(from_file.operators(), from_yaml.operators());
    assert_eq!(from_file.origin(), json_file.display().to_string());
}

#[test]
fn the_extension_chooses_the_format() {
    assert_eq!(Format::from_path("p.json".as_ref()), Format::Json);
    assert_eq!(Format::from_path("p.Json".as_ref()), Format::Json);
    assert_eq!(Format::from_path("p.yaml".as_ref()), Format::Yaml);
    assert_eq!(Format::from_path("p.yml".as_ref()), Format::Yaml);
    assert_eq!(Format::from_path("pipeline".as_ref()), Format::Yaml);

    // YAML in a .json file is read as JSON, and fails as JSON, naming the file and position.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.json");
    std::fs::write(&file, demo_yaml()).unwrap();
    let e = Pipeline::from_path(&file).unwrap_err();
    let DefinitionError::Syntax {
        format,
        line,
        column,
        ..
    } = &e
    else {
        panic!("expected a syntax error, got {e}");
    };
    assert_eq!(*format, Format::Json);
    assert!(line.is_some() && column.is_some(), "{e}");
    assert!(
        e.to_string().starts_with(&format!("{}: ", file.display())),
        "{e}"
    );
}

#[test]
fn json_definitions_report_problems_like_yaml_ones() {
    let e = Pipeline::from_json_str(
        r#"{"api-version": "0.5.0", "name": "p", "operators": [{"name": "a", "command": ["x"],
            "output": [{"name": "v", "type": "array", "element-type": "float32"}]}]}"#,
        "p.json",
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"p.json: operator "a", output "v": shape is required: an array needs its dimensions (-1 or 0 for one fixed at run time)"#
    );
    let e =
        Pipeline::from_json_str(r#"{"api-version": "0.5.0", "nmae": "p"}"#, "p.json").unwrap_err();
    assert!(e.to_string().contains("unknown field `nmae`"), "{e}");
}

#[test]
fn an_unreadable_file_is_reported_with_its_path() {
    let e = Pipeline::from_path("/nonexistent/pipeline.yaml").unwrap_err();
    assert!(matches!(e, DefinitionError::Read { .. }));
    assert!(
        e.to_string()
            .starts_with("/nonexistent/pipeline.yaml: cannot read"),
        "{e}"
    );
}

#[test]
fn messages_name_the_file_the_operator_the_entry_and_the_field() {
    let yaml = "api-version: 0.5.0\nname: p\noperators:\n- name: reader\n  command: [r]\n  output:\n  - name: image\n    type: array\n    element-type: int16\n    shape: [4]\n- name: segmenter\n  command: [s]\n  input:\n  - name: volume\n    from: reader\n    type: array\n    element-type: int16\n    shape: [4]\n";
    let e = Pipeline::from_yaml_str(yaml, "pipeline.yaml").unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"pipeline.yaml: operator "segmenter", input "volume": from names operator "reader", which has no output "volume""#
    );
    let problem = &e.problems()[0];
    assert_eq!(problem.field(), "from");
    assert_eq!(problem.location.origin, "pipeline.yaml");
    let op = problem.location.operator.as_ref().unwrap();
    assert_eq!((op.index, op.name.as_deref()), (1, Some("segmenter")));
    let entry = problem.location.entry.as_ref().unwrap();
    assert_eq!(
        (entry.direction, entry.index, entry.name.as_deref()),
        (Direction::Input, 0, Some("volume"))
    );
}

/// Operators defined consumers first: `d` reads `b`, `b` reads `a`; `c` is independent.
const OUT_OF_ORDER: &str = "api-version: 0.5.0
name: p
operators:
- name: d
  command: [x]
  input:
  - {name: s, from: b, type: string}
- name: c
  command: [x]
- name: b
  command: [x]
  input:
  - {name: s, from: a, type: string}
  output:
  - {name: s, type: string}
- name: a
  command: [x]
  output:
  - {name: s, type: string}
  - {name: n, type: u32}
";

#[test]
fn operators_come_in_dependency_order_then_definition_order() {
    let p = Pipeline::from_yaml_str(OUT_OF_ORDER, "p").unwrap();
    let order: Vec<&str> = p.operators().iter().map(|o| o.name()).collect();
    // `c` and `a` are ready first, in definition order; then `b`, then `d`.
    assert_eq!(order, ["c", "a", "b", "d"]);
}

#[test]
fn graph_queries_follow_the_links() {
    let p = demo();
    assert_eq!(names(&p.upstream("summarize")), ["threshold"]);
    assert_eq!(names(&p.downstream("threshold")), ["summarize"]);
    assert_eq!(names(&p.upstream("GENERATE")), Vec::<String>::new());
    assert_eq!(names(&p.downstream("write-report")), Vec::<String>::new());
    assert!(p.upstream("nobody").is_empty());

    let readers = p.readers("threshold", "mask");
    assert_eq!(readers.len(), 1);
    assert_eq!(
        (readers[0].0.name(), readers[0].1.name()),
        ("summarize", "mask")
    );
    assert!(p.readers("write-report", "report").is_empty());
    assert!(p.readers("threshold", "nothing").is_empty());

    let (op, out) = p.source("write-report", "voxel-count").unwrap();
    assert_eq!((op.name(), out.name()), ("summarize", "voxel-count"));
    assert!(p.source("generate", "volume").is_none());

    // Several readers of one output, and several outputs of one upstream.
    let fan = Pipeline::from_yaml_str(
        "api-version: 0.5.0
name: fan
operators:
- name: src
  command: [x]
  input:
  - path: /input
  output:
  - {name: v, type: f32}
- name: left
  command: [x]
  input:
  - {name: v, from: src, type: float32}
- name: right
  command: [x]
  input:
  - {name: v, from: src, type: f32}
",
        "fan",
    )
    .unwrap();
    let readers: Vec<&str> = fan
        .readers("src", "v")
        .iter()
        .map(|(o, _)| o.name())
        .collect();
    assert_eq!(readers, ["left", "right"]);
    assert_eq!(names(&fan.downstream("src")), ["left", "right"]);
    let payload: Vec<(&str, &str)> = fan
        .payload_inputs()
        .iter()
        .map(|(o, e)| (o.name(), e.name()))
        .collect();
    assert_eq!(payload, [("src", "")]);
}

#[test]
fn entry_kinds_give_the_effective_type_and_shape() {
    let string = EntryKind::String;
    assert_eq!(string.element_type(), Some(ElementType::U8));
    assert_eq!(string.declared_shape().unwrap().declared(), [-1]);
    assert!(string.is_shared_memory() && string.is_dynamic() && !string.is_preallocatable());

    let count = EntryKind::Primitive(ElementType::U64);
    assert_eq!(count.element_type(), Some(ElementType::U64));
    assert_eq!(count.declared_shape().unwrap().declared(), [1]);
    assert!(count.is_preallocatable() && !count.is_dynamic());
    assert_eq!(count.to_string(), "u64");

    let p = Pipeline::from_yaml_str(
        "api-version: 0.5.0
name: k
operators:
- name: a
  command: [x]
  output:
  - {name: fixed, type: array, element-type: float32, shape: [3, 224, 224]}
  - {name: open, type: array, element-type: uint8, shape: [3, -1, 224, 0]}
  - {name: disk, path: /out}
",
        "k",
    )
    .unwrap();
    let outs = p.operators()[0].outputs();
    assert!(outs[0].kind().is_preallocatable());
    assert_eq!(outs[0].kind().element_type(), Some(ElementType::F32));
    assert!(!outs[1].kind().is_preallocatable());
    assert_eq!(
        outs[1].kind().declared_shape().unwrap().dynamic_indices(),
        [1, 3]
    );
    assert_eq!(outs[1].kind().to_string(), "uint8[3,-1,224,0]");
    assert!(!outs[2].kind().is_shared_memory() && !outs[2].kind().is_preallocatable());
    assert_eq!(outs[2].kind().element_type(), None);
    assert_eq!(outs[2].kind().declared_shape(), None);
    assert_eq!(outs[2].kind().to_string(), "stream");
}

#[test]
fn the_demo_graph_in_dot() {
    insta::assert_snapshot!(demo().to_dot());
}

#[test]
fn dot_labels_streams_strings_primitives_and_unnamed_entries() {
    let p = Pipeline::from_yaml_str(
        "api-version: 0.5.0
name: labels
operators:
- name: reader
  command: [x]
  output:
  - {name: results, type: stream, element-type: dicom, path: /out}
  - {name: uid, type: string}
  - {name: count, type: uint64}
  - {path: /raw}
- name: writer
  command: [x]
  input:
  - {name: results, from: reader, type: stream, element-type: dicom, path: /in}
  - {name: uid, from: reader, type: string}
  - {name: count, from: reader, type: u64}
  - {from: reader, path: /raw}
",
        "labels",
    )
    .unwrap();
    assert_eq!(
        p.to_dot(),
        r#"digraph "labels" {
    rankdir=LR;
    node [shape=box];
    "reader";
    "writer";
    "reader" -> "writer" [label="results: stream(dicom)"];
    "reader" -> "writer" [label="uid: string"];
    "reader" -> "writer" [label="count: u64"];
    "reader" -> "writer" [label="stream"];
}
"#
    );
}

#[test]
fn damaged_definitions_give_errors_never_panics() {
    // Every definition the demo becomes with one line removed, or cut short at one line,
    // either validates or is refused with an error: nothing panics.
    let yaml = demo_yaml();
    let lines: Vec<&str> = yaml.lines().collect();
    let mut refused = 0;
    for i in 0..lines.len() {
        let mut without = lines.clone();
        without.remove(i);
        let cut = &lines[..i];
        for text in [without.join("\n"), cut.join("\n")] {
            if Pipeline::from_yaml_str(&text, "demo").is_err() {
                refused += 1;
            }
        }
    }
    assert!(
        refused > lines.len(),
        "most damaged definitions are refused"
    );
}
