//! Every validation rule, each with a definition that keeps it and one that breaks it.
//!
//! Definitions are written out in full so that each case reads on its own; `ops` adds the
//! usual header.

use fastio_pipeline::{DefinitionError, Pipeline, ProblemKind};

const ORIGIN: &str = "pipeline.yaml";

/// A definition with the usual header and the given `operators:` list.
fn ops(operators: &str) -> String {
    format!("api-version: 0.5.0\nname: p\noperators:\n{operators}")
}

/// Parses and validates, expecting success.
fn ok(yaml: &str) -> Pipeline {
    match Pipeline::from_yaml_str(yaml, ORIGIN) {
        Ok(p) => p,
        Err(e) => panic!("expected a valid definition, got:\n{e}\n--- definition:\n{yaml}"),
    }
}

/// Parses and validates, expecting a validation failure with a problem whose message
/// contains `expected`. Returns the error for further checks.
fn check(yaml: &str, expected: &str) -> DefinitionError {
    match Pipeline::from_yaml_str(yaml, ORIGIN) {
        Ok(_) => panic!("expected a problem containing {expected:?}, but it validated:\n{yaml}"),
        Err(e @ DefinitionError::Invalid { .. }) => {
            assert!(
                e.problems()
                    .iter()
                    .any(|p| p.to_string().contains(expected)),
                "no problem contains {expected:?}; got:\n{e}"
            );
            e
        }
        Err(e) => panic!("expected a validation error containing {expected:?}, got:\n{e}"),
    }
}

/// Expects a parse (syntax or structure) error containing `expected`.
fn check_syntax(yaml: &str, expected: &str) -> DefinitionError {
    match Pipeline::from_yaml_str(yaml, ORIGIN) {
        Err(e @ DefinitionError::Syntax { .. }) => {
            assert!(e.to_string().contains(expected), "got: {e}");
            e
        }
        other => panic!("expected a syntax error containing {expected:?}, got {other:?}"),
    }
}

/// A producer `a` with an array output `v` of `decl`, and a consumer `b` reading it as `input`.
fn linked(decl: &str, input: &str) -> String {
    ops(&format!(
        "- name: a\n  command: [a]\n  output:\n  - name: v\n{decl}\n- name: b\n  command: [b]\n  input:\n  - name: v\n    from: a\n{input}\n"
    ))
}

const INT16_256: &str = "    type: array\n    element-type: int16\n    shape: [256, 512, 512]";

// ----- names -----

#[test]
fn names_of_255_characters_with_dash_and_underscore_are_accepted() {
    let long = "a".repeat(255);
    let p = ok(&format!(
        "api-version: 0.5.0\nname: {long}\noperators:\n- name: CT_reader-2\n  command: [x]\n  output:\n  - name: {long}\n    type: string\n"
    ));
    assert_eq!(p.name(), long);
    assert_eq!(p.operators()[0].name(), "CT_reader-2");
    assert_eq!(p.operators()[0].outputs()[0].name(), long);
}

#[test]
fn a_name_of_256_characters_is_refused() {
    let long = "a".repeat(256);
    check(
        &ops(&format!("- name: {long}\n  command: [x]\n")),
        "is 256 bytes long; the limit is 255",
    );
    check(
        &format!("api-version: 0.5.0\nname: {long}\noperators:\n- name: a\n  command: [x]\n"),
        "pipeline.yaml: name",
    );
}

#[test]
fn names_with_a_dot_or_a_space_are_refused() {
    check(
        &ops("- name: dicom.reader\n  command: [x]\n"),
        r#"operator "dicom.reader": name "dicom.reader" is invalid: '.' is not allowed"#,
    );
    check(
        "api-version: 0.5.0\nname: my pipeline\noperators:\n- name: a\n  command: [x]\n",
        r#"pipeline.yaml: name "my pipeline" is invalid: ' ' is not allowed"#,
    );
    check(
        &ops("- name: a\n  command: [x]\n  output:\n  - name: a.b\n    type: string\n"),
        r#"operator "a", output "a.b": name "a.b" is invalid"#,
    );
}

#[test]
fn operator_names_clash_without_regard_to_case() {
    check(
        &ops("- name: Reader\n  command: [x]\n- name: reader\n  command: [y]\n"),
        r#"operator "reader": name "reader" is already the name of operator "Reader""#,
    );
    let p = ok(&ops(
        "- name: Reader\n  command: [x]\n- name: Writer\n  command: [y]\n",
    ));
    assert_eq!(p.operators().len(), 2);
}

#[test]
fn entry_names_are_unique_within_inputs_and_within_outputs() {
    check(
        &ops(
            "- name: a\n  command: [x]\n  output:\n  - name: Uid\n    type: string\n  - name: uid\n    type: string\n",
        ),
        r#"output "uid": name "uid" is already the name of output "Uid""#,
    );
    check(
        &ops(
            "- name: a\n  command: [x]\n  input:\n  - name: d\n    path: /in1\n  - name: D\n    path: /in2\n",
        ),
        r#"input "D": name "D" is already the name of input "d""#,
    );
    // An input and an output of one operator may share a name.
    ok(&ops(
        "- name: a\n  command: [x]\n  input:\n  - name: d\n    path: /in\n  output:\n  - name: d\n    path: /out\n",
    ));
}

#[test]
fn only_one_input_may_be_unnamed() {
    let p = ok(&ops(
        "- name: a\n  command: [x]\n  input:\n  - path: /input\n    type: stream\n    element-type: dicom\n",
    ));
    assert_eq!(p.operators()[0].inputs()[0].name(), "");
    check(
        &ops("- name: a\n  command: [x]\n  input:\n  - path: /in1\n  - path: /in2\n"),
        r#"operator "a", input[1]: name is required: only one input of an operator may be unnamed"#,
    );
}

#[test]
fn one_output_may_be_unnamed_and_an_unnamed_input_reads_it() {
    // Clara: at most one unnamed entry per input set and per output set.
    let p = ok(&ops(
        "- name: a\n  command: [x]\n  input:\n  - path: /in\n  output:\n  - path: /out\n- name: b\n  command: [y]\n  input:\n  - from: a\n    path: /in\n",
    ));
    let a = &p.operators()[0];
    assert_eq!(a.outputs()[0].name(), "");
    assert_eq!(p.upstream("b")[0].name(), "a");
    let (producer, output) = p.source("b", "").unwrap();
    assert_eq!((producer.name(), output.name()), ("a", ""));
    check(
        &ops("- name: a\n  command: [x]\n  output:\n  - path: /o1\n  - path: /o2\n"),
        r#"operator "a", output[1]: name is required: only one output of an operator may be unnamed"#,
    );
    // The unnamed payload input and an unnamed linked input are two unnamed inputs.
    check(
        &ops(
            "- name: a\n  command: [x]\n  output:\n  - path: /out\n- name: b\n  command: [y]\n  input:\n  - path: /payload\n  - from: a\n    path: /in\n",
        ),
        r#"operator "b", input[1]: name is required: only one input of an operator may be unnamed"#,
    );
    check(
        &ops(
            "- name: a\n  command: [x]\n  output:\n  - name: named\n    path: /out\n- name: b\n  command: [y]\n  input:\n  - from: a\n    path: /in\n",
        ),
        r#"operator "b", input[0]: from names operator "a", which has no unnamed output"#,
    );
}

#[test]
fn shared_memory_entries_need_names() {
    check(
        &ops("- name: a\n  command: [x]\n  output:\n  - type: string\n"),
        r#"operator "a", output[0]: name is required for type string: operators open shared-memory entries by name"#,
    );
    check(
        &linked(INT16_256, INT16_256).replace("  - name: v\n    from: a", "  - from: a"),
        r#"operator "b", input[0]: name is required for type array"#,
    );
}

#[test]
fn operators_and_pipelines_need_names() {
    check(
        "api-version: 0.5.0\noperators:\n- command: [x]\n",
        "pipeline.yaml: name is required: every pipeline has a name",
    );
    check(
        "api-version: 0.5.0\nname: p\noperators:\n- command: [x]\n",
        "pipeline.yaml: operators[0]: name is required",
    );
}

// ----- entry types -----

#[test]
fn an_array_needs_shape_and_element_type_and_takes_no_path() {
    ok(&ops(&format!(
        "- name: a\n  command: [x]\n  output:\n  - name: v\n{INT16_256}\n"
    )));
    check(
        &ops(
            "- name: a\n  command: [x]\n  output:\n  - name: v\n    type: array\n    element-type: int16\n",
        ),
        r#"operator "a", output "v": shape is required"#,
    );
    check(
        &ops(
            "- name: a\n  command: [x]\n  output:\n  - name: v\n    type: array\n    shape: [3]\n",
        ),
        r#"operator "a", output "v": element-type is required"#,
    );
    check(
        &ops(&format!(
            "- name: a\n  command: [x]\n  output:\n  - name: v\n{INT16_256}\n    path: /out\n"
        )),
        r#"operator "a", output "v": path must not be given: an array lives in shared memory"#,
    );
}

#[test]
fn an_array_element_type_is_a_primitive_in_any_accepted_spelling() {
    let p = ok(&ops(
        "- name: a\n  command: [x]\n  output:\n  - name: v\n    type: array\n    element-type: <f4\n    shape: [2]\n  - name: w\n    type: array\n    element-type: f16\n    shape: [2]\n",
    ));
    let kinds: Vec<String> = p.operators()[0]
        .outputs()
        .iter()
        .map(|e| e.kind().to_string())
        .collect();
    assert_eq!(kinds, ["float32[2]", "float16[2]"]);
    check(
        &ops(
            "- name: a\n  command: [x]\n  output:\n  - name: v\n    type: array\n    element-type: dicom\n    shape: [2]\n",
        ),
        r#"element-type "dicom" is not a primitive type"#,
    );
}

#[test]
fn an_array_shape_follows_the_declared_shape_rules() {
    ok(&ops(
        "- name: a\n  command: [x]\n  output:\n  - name: v\n    type: array\n    element-type: u8\n    shape: [3, -1, 224, 0]\n",
    ));
    check(
        &ops(
            "- name: a\n  command: [x]\n  output:\n  - name: v\n    type: array\n    element-type: u8\n    shape: [3, -2]\n",
        ),
        "shape [3, -2] is invalid: dimension 1 is -2",
    );
    check(
        &ops(
            "- name: a\n  command: [x]\n  output:\n  - name: v\n    type: array\n    element-type: u8\n    shape: []\n",
        ),
        "shape [] is invalid",
    );
}

#[test]
fn a_stream_needs_a_fully_qualified_path_and_takes_no_shape() {
    let p = ok(&ops(
        "- name: a\n  command: [x]\n  output:\n  - name: r\n    type: stream\n    element-type: dicom\n    path: /output\n",
    ));
    assert_eq!(
        p.operators()[0].outputs()[0].kind().to_string(),
        "stream(dicom)"
    );
    check(
        &ops(
            "- name: a\n  command: [x]\n  output:\n  - name: r\n    type: stream\n    element-type: dicom\n",
        ),
        r#"operator "a", output "r": path is required"#,
    );
    check(
        &ops(
            "- name: a\n  command: [x]\n  output:\n  - name: r\n    type: stream\n    path: output\n",
        ),
        r#"path "output" must be fully qualified"#,
    );
    check(
        &ops(
            "- name: a\n  command: [x]\n  output:\n  - name: r\n    type: stream\n    path: /o\n    shape: [2]\n",
        ),
        r#"output "r": shape must not be given"#,
    );
}

#[test]
fn streams_of_one_operator_do_not_share_a_path() {
    check(
        &ops(
            "- name: a\n  command: [x]\n  input:\n  - path: /data\n  output:\n  - name: r\n    path: /data\n",
        ),
        r#"output "r": path "/data" is already the path of input[0] of this operator"#,
    );
    ok(&ops(
        "- name: a\n  command: [x]\n  output:\n  - name: r\n    path: /data\n- name: b\n  command: [x]\n  output:\n  - name: r\n    path: /data\n",
    ));
}

#[test]
fn an_entry_without_type_is_a_stream() {
    let p = ok(&ops(
        "- name: a\n  command: [x]\n  output:\n  - name: r\n    path: /out\n",
    ));
    assert_eq!(p.operators()[0].outputs()[0].kind().type_name(), "stream");
}

#[test]
fn strings_and_primitives_take_no_element_type_shape_or_path() {
    ok(&ops(
        "- name: a\n  command: [x]\n  output:\n  - name: s\n    type: string\n  - name: n\n    type: f32\n  - name: m\n    type: uint64\n",
    ));
    check(
        &ops(
            "- name: a\n  command: [x]\n  output:\n  - name: s\n    type: string\n    element-type: uint8\n",
        ),
        r#"output "s": element-type must not be given: a string is always uint8"#,
    );
    check(
        &ops(
            "- name: a\n  command: [x]\n  output:\n  - name: s\n    type: string\n    shape: [-1]\n",
        ),
        r#"output "s": shape must not be given"#,
    );
    check(
        &ops("- name: a\n  command: [x]\n  output:\n  - name: n\n    type: u16\n    shape: [1]\n"),
        r#"output "n": shape must not be given: a primitive is always one value"#,
    );
    check(
        &ops("- name: a\n  command: [x]\n  output:\n  - name: n\n    type: int8\n    path: /x\n"),
        r#"output "n": path must not be given"#,
    );
}

#[test]
fn every_primitive_spelling_is_a_type_and_nothing_else_is() {
    for (long, short) in [
        ("uint8", "u8"),
        ("uint16", "u16"),
        ("uint32", "u32"),
        ("uint64", "u64"),
        ("int8", "i8"),
        ("int16", "i16"),
        ("int32", "i32"),
        ("int64", "i64"),
        ("float16", "f16"),
        ("float32", "f32"),
        ("float64", "f64"),
    ] {
        let p = ok(&ops(&format!(
            "- name: a\n  command: [x]\n  output:\n  - name: l\n    type: {long}\n  - name: s\n    type: {short}\n"
        )));
        let outs = p.operators()[0].outputs();
        assert_eq!(outs[0].kind(), outs[1].kind(), "{long} and {short}");
        assert_eq!(outs[0].kind().element_type().unwrap().name(), long);
    }
    check(
        &ops("- name: a\n  command: [x]\n  output:\n  - name: n\n    type: tensor\n"),
        r#"type "tensor" is unknown"#,
    );
    check(
        &ops("- name: a\n  command: [x]\n  output:\n  - name: n\n    type: <f4\n"),
        r#"type "<f4" is unknown"#,
    );
}

// ----- from -----

#[test]
fn from_appears_only_on_inputs() {
    check(
        &ops(
            "- name: a\n  command: [x]\n- name: b\n  command: [x]\n  output:\n  - name: s\n    from: a\n    type: string\n",
        ),
        r#"operator "b", output "s": from must not be given: only inputs"#,
    );
}

#[test]
fn from_links_an_input_to_an_upstream_output_of_the_same_declaration() {
    let p = ok(&linked(INT16_256, INT16_256));
    let (producer, output) = p.source("b", "v").unwrap();
    assert_eq!((producer.name(), output.name()), ("a", "v"));
}

#[test]
fn from_and_input_names_match_without_regard_to_case() {
    let yaml = linked(INT16_256, INT16_256)
        .replace("from: a", "from: A")
        .replace("  input:\n  - name: v", "  input:\n  - name: V");
    let p = ok(&yaml);
    // The model spells `from` as the upstream operator does.
    assert_eq!(p.operator("b").unwrap().inputs()[0].from(), Some("a"));
}

#[test]
fn from_must_name_an_operator_of_the_pipeline() {
    check(
        &linked(INT16_256, INT16_256).replace("from: a", "from: reader"),
        r#"pipeline.yaml: operator "b", input "v": from names operator "reader", which is not in the pipeline"#,
    );
}

#[test]
fn from_must_name_an_operator_with_an_output_of_the_input_name() {
    let yaml =
        linked(INT16_256, INT16_256).replace("  input:\n  - name: v", "  input:\n  - name: volume");
    check(
        &yaml,
        r#"pipeline.yaml: operator "b", input "volume": from names operator "a", which has no output "volume""#,
    );
}

#[test]
fn from_must_match_the_upstream_type() {
    check(
        &linked(INT16_256, "    type: string"),
        r#"operator "b", input "v": type differs from output "v" of operator "a": the input declares string, the output int16[256,512,512]"#,
    );
    check(
        &linked("    type: u32", "    type: u64"),
        "type differs from output \"v\" of operator \"a\": the input declares u64, the output u32",
    );
    // Two spellings of one primitive are the same type.
    ok(&linked("    type: u64", "    type: uint64"));
    ok(&linked("    type: string", "    type: string"));
}

#[test]
fn from_must_match_the_upstream_element_type() {
    check(
        &linked(INT16_256, &INT16_256.replace("int16", "uint16")),
        "element-type differs from output \"v\" of operator \"a\": the input declares uint16[256,512,512]",
    );
    let stream = |t: &str| format!("    type: stream\n    element-type: {t}\n    path: /p");
    check(
        &linked(&stream("dicom"), &stream("nifti")),
        "element-type differs",
    );
    ok(&linked(&stream("dicom"), &stream("dicom")));
}

#[test]
fn from_must_match_the_upstream_shape_as_declared() {
    check(
        &linked(
            INT16_256,
            &INT16_256.replace("[256, 512, 512]", "[256, 512]"),
        ),
        "shape differs from output \"v\" of operator \"a\": the input declares int16[256,512], the output int16[256,512,512]",
    );
    let dynamic = |d: &str| format!("    type: array\n    element-type: u8\n    shape: [{d}, 4]");
    check(&linked(&dynamic("-1"), &dynamic("0")), "shape differs");
    ok(&linked(&dynamic("-1"), &dynamic("-1")));
}

#[test]
fn only_streams_come_from_the_payload() {
    for (decl, type_name) in [
        (INT16_256, "array"),
        ("    type: string", "string"),
        ("    type: f64", "f64"),
    ] {
        check(
            &ops(&format!(
                "- name: a\n  command: [x]\n  input:\n  - name: v\n{decl}\n"
            )),
            &format!(
                r#"operator "a", input "v": from is required for type {type_name}: only stream inputs can come from the job's payload"#
            ),
        );
    }
    let p = ok(&ops(
        "- name: a\n  command: [x]\n  input:\n  - name: dicom\n    type: stream\n    path: /input\n",
    ));
    assert_eq!(p.payload_inputs().len(), 1);
}

#[test]
fn an_operator_cannot_read_from_itself() {
    check(
        &ops(
            "- name: a\n  command: [x]\n  input:\n  - name: s\n    from: A\n    type: string\n  output:\n  - name: s\n    type: string\n",
        ),
        r#"operator "a", input "s": from names the operator itself"#,
    );
}

#[test]
fn cycles_are_reported_with_their_operators() {
    let string_in =
        |from: &str| format!("  input:\n  - name: s\n    from: {from}\n    type: string\n");
    let out = "  output:\n  - name: s\n    type: string\n";
    let yaml = ops(&format!(
        "- name: a\n  command: [x]\n{}{out}- name: b\n  command: [x]\n{}{out}- name: c\n  command: [x]\n{}{out}- name: d\n  command: [x]\n{}",
        string_in("c"),
        string_in("a"),
        string_in("b"),
        string_in("c"),
    ));
    let e = check(
        &yaml,
        r#"operator "a": from makes a dependency cycle: "a" -> "b" -> "c" -> "a""#,
    );
    // One problem for the one cycle; `d`, downstream of it, is not on it.
    let cycles: Vec<_> = e
        .problems()
        .iter()
        .filter_map(|p| match &p.kind {
            ProblemKind::Cycle { operators } => Some(operators.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(cycles, [vec!["a", "b", "c", "a"]]);
}

#[test]
fn two_separate_cycles_are_both_reported() {
    let node = |name: &str, from: &str| {
        format!(
            "- name: {name}\n  command: [x]\n  input:\n  - name: s\n    from: {from}\n    type: string\n  output:\n  - name: s\n    type: string\n"
        )
    };
    let yaml = ops(&[
        node("a", "b"),
        node("b", "a"),
        node("c", "d"),
        node("d", "c"),
    ]
    .concat());
    let e = check(&yaml, r#"cycle: "a" -> "b" -> "a""#);
    assert!(e.to_string().contains(r#"cycle: "c" -> "d" -> "c""#), "{e}");
}

// ----- pipeline level -----

#[test]
fn orchestrator_argo_is_refused_for_typed_pipelines_only() {
    let typed = "- name: a\n  command: [x]\n  output:\n  - name: s\n    type: string\n";
    check(
        &format!("api-version: 0.5.0\nname: p\norchestrator: Argo\noperators:\n{typed}"),
        r#"pipeline.yaml: orchestrator Argo cannot run typed pipelines (operator "a" has output "s" of type string)"#,
    );
    ok(&format!(
        "api-version: 0.5.0\nname: p\norchestrator: Clara\noperators:\n{typed}"
    ));
    ok(
        "api-version: 0.4.0\nname: p\norchestrator: Argo\noperators:\n- name: a\n  command: [x]\n  output:\n  - name: o\n    path: /out\n",
    );
    check(
        &format!("api-version: 0.5.0\nname: p\norchestrator: Kubeflow\noperators:\n{typed}"),
        r#"orchestrator "Kubeflow" is unknown"#,
    );
}

#[test]
fn api_version_0_4_0_accepts_path_only_pipelines_but_no_typed_entries() {
    let p = ok(
        "api-version: 0.4.0\nname: p\noperators:\n- name: a\n  command: [x]\n  input:\n  - path: /input\n  output:\n  - name: out\n    path: /output\n- name: b\n  command: [y]\n  input:\n  - name: out\n    from: a\n    path: /input\n  output:\n  - name: final\n    path: /output\n",
    );
    assert_eq!(p.api_version(), "0.4.0");
    assert_eq!(p.downstream("a")[0].name(), "b");
    check(
        "api-version: 0.4.0\nname: p\noperators:\n- name: a\n  command: [x]\n  output:\n  - name: n\n    type: u8\n",
        r#"output "n": type u8 needs api-version 0.5.0 or later (typed pipelines), but the pipeline declares 0.4.0"#,
    );
}

#[test]
fn api_version_is_required_and_is_a_version() {
    check(
        "name: p\noperators:\n- name: a\n  command: [x]\n",
        "api-version is required",
    );
    check(
        "api-version: five\nname: p\noperators:\n- name: a\n  command: [x]\n",
        r#"api-version "five" is not a version"#,
    );
    // A bare number is read as its text.
    assert_eq!(
        ok("api-version: 0.6\nname: p\noperators:\n- name: a\n  command: [x]\n").api_version(),
        "0.6"
    );
}

#[test]
fn a_pipeline_needs_operators() {
    check("api-version: 0.5.0\nname: p\n", "operators is required");
    check(
        "api-version: 0.5.0\nname: p\noperators: []\n",
        "operators is required",
    );
}

#[test]
fn timeout_defaults_to_600_seconds_and_must_be_positive() {
    let one = "- name: a\n  command: [x]\n";
    assert_eq!(ok(&ops(one)).timeout().as_secs(), 600);
    let with = |t: &str| format!("api-version: 0.5.0\nname: p\ntimeout: {t}\noperators:\n{one}");
    assert_eq!(ok(&with("30")).timeout().as_secs(), 30);
    check(
        &with("0"),
        "pipeline.yaml: timeout must be at least 1 second",
    );
    check_syntax(&with("-5"), "timeout");
}

// ----- operators -----

#[test]
fn an_operator_needs_a_command() {
    let p = ok(&ops("- name: a\n  command: [python3, -m, op, --fast]\n"));
    assert_eq!(
        p.operators()[0].command().unwrap(),
        ["python3", "-m", "op", "--fast"]
    );
    p.check_runs_locally().unwrap();
    check(&ops("- name: a\n"), r#"operator "a": command is required"#);
    check(
        &ops("- name: a\n  command: []\n"),
        "command must start with a program: the list is empty",
    );
    check(
        &ops("- name: a\n  command: ['', x]\n"),
        "the program is an empty string",
    );
    check(
        &ops("- name: a\n  container:\n    image: example/a\n    command: []\n"),
        "command must start with a program: the list is empty",
    );
    check_syntax(&ops("- name: a\n  command: run-me\n"), "command");
}

#[test]
fn the_container_command_runs_locally_and_command_overrides_it() {
    let p = ok(&ops(
        "- name: a\n  container:\n    image: example/reader\n    tag: 18.04\n    command: [sh, -c, 'cp -r /in /out']\n- name: b\n  command: [./local-b]\n  container:\n    image: example/b\n    command: [/opt/b/run]\n",
    ));
    let a = &p.operators()[0];
    assert_eq!(a.command().unwrap(), ["sh", "-c", "cp -r /in /out"]);
    let container = a.container().unwrap();
    assert_eq!(
        (container.image(), container.tag(), container.reference()),
        ("example/reader", "18.04", "example/reader:18.04".to_owned()),
        "a tag that reads as a number is kept as written"
    );
    let b = &p.operators()[1];
    assert_eq!(b.command().unwrap(), ["./local-b"], "command wins locally");
    let container = b.container().unwrap();
    assert_eq!(container.command().unwrap(), ["/opt/b/run"]);
    assert_eq!(container.tag(), "latest", "Clara's default tag");
}

#[test]
fn an_image_without_a_command_validates_but_cannot_run_locally() {
    let p = ok(&ops(
        "- name: a\n  container:\n    image: example/reader\n    tag: 0.1.0\n- name: b\n  command: [b]\n- name: c\n  container:\n    image: example/c\n",
    ));
    assert_eq!(p.operators()[0].command(), None);
    let e = p.check_runs_locally().unwrap_err();
    let lines: Vec<String> = e.problems().iter().map(|p| p.to_string()).collect();
    assert_eq!(lines.len(), 2, "{e}");
    assert!(
        lines[0].starts_with(
            r#"pipeline.yaml: operator "a": command is required to run locally: the operator names container image example/reader:0.1.0 but neither command nor container.command"#
        ),
        "{e}"
    );
    assert!(lines[1].contains(r#"operator "c""#), "{e}");
    assert_eq!(e.problems()[1].location.operator.as_ref().unwrap().index, 2);
    check(
        &ops("- name: a\n  container:\n    tag: 0.1.0\n    command: [x]\n"),
        r#"operator "a": container.image is required"#,
    );
    check_syntax(
        &ops("- name: a\n  container:\n    image: x\n    entrypoint: [x]\n"),
        "unknown field `entrypoint`",
    );
}

#[test]
fn requests_are_whole_numbers_kept_for_rendering() {
    let p = ok(&ops(
        "- name: a\n  command: [x]\n  requests:\n    gpu: 1\n    memory: 8192\n    cpu: 4\n- name: b\n  command: [x]\n",
    ));
    let requests = p.operators()[0].requests();
    assert_eq!(
        (requests.gpu, requests.memory_mb, requests.cpu),
        (Some(1), Some(8192), Some(4))
    );
    assert!(p.operators()[1].requests().is_empty());
    check(
        &ops("- name: a\n  command: [x]\n  requests:\n    gpu: two\n"),
        r#"operator "a": requests.gpu "two" is invalid: give a whole number"#,
    );
    check(
        &ops("- name: a\n  command: [x]\n  requests:\n    memory: 0\n"),
        r#"requests.memory "0" is invalid: give a whole number of megabytes (1 or more)"#,
    );
    check(
        &ops("- name: a\n  command: [x]\n  requests:\n    cpu: 0.5\n"),
        r#"requests.cpu "0.5" is invalid"#,
    );
    check(
        &ops("- name: a\n  command: [x]\n  requests:\n    gpu: 99999999999\n"),
        "more than any machine has",
    );
    check_syntax(
        &ops("- name: a\n  command: [x]\n  requests:\n    gpus: 1\n"),
        "unknown field `gpus`",
    );
}

#[test]
fn pull_secrets_are_secret_names() {
    let p = ok(
        "api-version: 0.5.0\nname: p\norchestrator: Clara\npull-secrets:\n- ngc-clara\n- registry.example\noperators:\n- name: a\n  command: [x]\n",
    );
    assert_eq!(p.pull_secrets(), ["ngc-clara", "registry.example"]);
    assert_eq!(p.orchestrator(), Some("Clara"));
    check(
        "api-version: 0.5.0\nname: p\npull-secrets:\n- NGC_Clara\noperators:\n- name: a\n  command: [x]\n",
        r#"pipeline.yaml: pull-secrets entry "NGC_Clara" is invalid: a secret name has only lower-case letters"#,
    );
    check_syntax(
        "api-version: 0.5.0\nname: p\npull-secrets: ngc\noperators:\n- name: a\n  command: [x]\n",
        "pull-secrets",
    );
}

#[test]
fn models_parameters_and_services_are_accepted_and_reported_unused() {
    let p = ok(
        "api-version: 0.6.0\nname: p\ndescription: Segments.\nparameters:\n  input-from: reader\noperators:\n- name: a\n  command: [x]\n  models:\n  - name: segmentation_ct_spleen_v1\n  parameters:\n    level: 3\n  services:\n  - name: trtis\n    container:\n      image: nvcr.io/nvidia/tritonserver\n- name: b\n  command: [y]\n",
    );
    assert_eq!(p.description(), Some("Segments."));
    assert_eq!(p.parameters()["input-from"], "reader");
    let a = &p.operators()[0];
    assert_eq!(a.models(), ["segmentation_ct_spleen_v1"]);
    assert_eq!(a.parameters()["level"], "3");
    let notes: Vec<String> = p.unused().iter().map(|u| u.to_string()).collect();
    assert_eq!(notes.len(), 4, "{notes:#?}");
    assert!(
        notes[0].starts_with("pipeline.yaml: parameters is not used: fastio does not substitute"),
        "{notes:#?}"
    );
    assert!(
        notes[1].starts_with(r#"pipeline.yaml: operator "a": models is not used"#),
        "{notes:#?}"
    );
    assert!(notes[2].contains(r#"operator "a": parameters is not used"#));
    assert!(notes[3].contains(r#"operator "a": services is not used: Clara deprecated"#));
    // Nothing unused, nothing reported.
    assert!(ok(&ops("- name: a\n  command: [x]\n")).unused().is_empty());
    check(
        &ops("- name: a\n  command: [x]\n  models:\n  - name: bad.model\n"),
        r#"operator "a": models entry "bad.model" is invalid"#,
    );
    check(
        &ops("- name: a\n  command: [x]\n  models:\n  - version: 1\n"),
        "a model needs a name",
    );
    check(
        &ops("- name: a\n  command: [x]\n  parameters:\n    'a b': 1\n"),
        r#"parameters entry "a b" is invalid"#,
    );
}

#[test]
fn uses_driver_false_is_refused_with_shared_memory_entries() {
    let p = ok(&ops(
        "- name: a\n  command: [x]\n  uses-driver: false\n  output:\n  - name: d\n    path: /out\n- name: b\n  command: [y]\n  uses-driver: true\n- name: c\n  command: [z]\n",
    ));
    let declared: Vec<Option<bool>> = p.operators().iter().map(|o| o.uses_driver()).collect();
    assert_eq!(declared, [Some(false), Some(true), None]);
    check(
        &ops(
            "- name: a\n  command: [x]\n  uses-driver: false\n  output:\n  - name: d\n    path: /out\n  - name: uid\n    type: string\n",
        ),
        r#"operator "a": uses-driver must not be false here: output "uid" is of type string"#,
    );
}

#[test]
fn an_untyped_clara_0_4_pipeline_validates() {
    // The shape of Clara's own untyped examples: container blocks, paths only, unnamed
    // entries, `from` without a name.
    let p = ok(
        "api-version: 0.4.0\nname: we-love-operators\noperators:\n- name: i-am-first\n  container:\n    image: clara/examples/centos\n    tag: centos7\n    command: ['sh', '-c', 'cp -r /in/. /out']\n  input:\n  - path: /in\n  output:\n  - path: /out\n- name: last-i-am\n  container:\n    image: clara/examples/ubuntu\n    tag: 18.04\n    command: ['sh', '-c', 'cp -r /my-in/. /my-out']\n  input:\n  - from: i-am-first\n    path: /my-in\n  output:\n  - path: /my-out\n",
    );
    assert_eq!(p.links().len(), 1);
    assert!(p.operators().iter().all(|o| !o.has_shared_memory()));
    check(
        "api-version: 0.4.0\nname: p\noperators:\n- name: a\n  command: [x]\n  output:\n  - name: v\n    type: string\n",
        "type string needs api-version 0.5.0 or later",
    );
}

#[test]
fn variables_accept_numbers_and_booleans_as_text() {
    let p = ok(&ops(
        "- name: a\n  command: [x]\n  variables:\n    CLARA_TRACE: 2\n    RATIO: 0.5\n    DEBUG: true\n    MODE: fast\n",
    ));
    let vars = p.operators()[0].variables();
    let got: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(
        got,
        [
            ("CLARA_TRACE", "2"),
            ("DEBUG", "true"),
            ("MODE", "fast"),
            ("RATIO", "0.5")
        ]
    );
    check(
        &ops("- name: a\n  command: [x]\n  variables:\n    'A=B': 1\n"),
        r#"operator "a": variables entry "A=B" is invalid: the name contains '='"#,
    );
    check_syntax(
        &ops("- name: a\n  command: [x]\n  variables:\n    LIST: [1, 2]\n"),
        "a string, number or boolean",
    );
}

// ----- parse errors -----

#[test]
fn unknown_fields_are_refused_by_name_with_their_line() {
    let e = check_syntax(
        &ops("- name: a\n  command: [x]\n  image: example/a\n"),
        "unknown field `image`",
    );
    let DefinitionError::Syntax { line, column, .. } = e else {
        unreachable!()
    };
    assert_eq!((line, column), (Some(6), Some(3)));
    check_syntax(
        &ops(
            "- name: a\n  command: [x]\n  output:\n  - name: v\n    type: string\n    fastio: true\n",
        ),
        "operators[0].output[0]: unknown field `fastio`",
    );
    check_syntax(
        "api-version: 0.5.0\nname: p\nservices: []\n",
        "unknown field `services`",
    );
}

#[test]
fn yaml_syntax_errors_keep_the_parser_position() {
    let e = check_syntax("api-version: 0.5.0\nname: [p\n", "pipeline.yaml: ");
    let DefinitionError::Syntax { line, .. } = e else {
        unreachable!()
    };
    assert!(line.is_some(), "{e}");
    assert!(e.to_string().contains("line"), "{e}");
}

// ----- all problems at once -----

#[test]
fn every_problem_is_listed_in_definition_order() {
    let e = check(
        "api-version: 0.5.0\nname: bad name\noperators:\n- name: a\n  command: [x]\n  output:\n  - name: v\n    type: array\n    element-type: int16\n- name: b\n  output:\n  - name: w\n    type: stream\n",
        "name \"bad name\"",
    );
    let fields: Vec<&str> = e.problems().iter().map(|p| p.field()).collect();
    assert_eq!(fields, ["name", "shape", "command", "path"], "{e}");
    assert_eq!(
        e.to_string().lines().count(),
        4,
        "one line per problem:\n{e}"
    );
}

#[test]
fn damaged_clara_definitions_give_errors_never_panics() {
    // Every Clara field, then the definition with one line removed or cut short at one line:
    // each validates or is refused, and a valid one answers check_runs_locally; nothing panics.
    let yaml = "api-version: 0.6.0\norchestrator: Clara\nname: p\ndescription: d\nparameters:\n  level: 3\npull-secrets:\n- ngc-clara\noperators:\n- name: reader\n  container:\n    image: example/reader\n    tag: 18.04\n    command: [sh, -c, x]\n  requests:\n    gpu: 1\n    memory: 8192\n    cpu: 2\n  models:\n  - name: spleen\n  parameters:\n    x: y\n  services:\n  - name: s\n  uses-driver: false\n  input:\n  - path: /in\n  output:\n  - path: /out\n- name: writer\n  command: [w]\n  container:\n    image: example/writer\n  input:\n  - from: reader\n    path: /in\n  output:\n  - name: out\n    type: stream\n    path: /out\n";
    ok(yaml);
    let lines: Vec<&str> = yaml.lines().collect();
    let mut refused = 0;
    for i in 0..lines.len() {
        let mut without = lines.clone();
        without.remove(i);
        for text in [without.join("\n"), lines[..i].join("\n")] {
            match Pipeline::from_yaml_str(&text, ORIGIN) {
                Ok(p) => {
                    let _ = p.check_runs_locally();
                }
                Err(_) => refused += 1,
            }
        }
    }
    assert!(refused > 0);
}

#[test]
fn an_array_output_may_live_on_a_device_and_its_readers_see_where() {
    let p = ok(&linked(
        &format!("{INT16_256}\n    device: cuda:1"),
        INT16_256,
    ));
    let [a, b] = p.operators() else {
        panic!("two operators")
    };
    let cuda1 = fastio_context::MemoryKind::Cuda { device: 1 };
    assert_eq!(a.outputs()[0].memory(), cuda1);
    assert_eq!(b.inputs()[0].memory(), cuda1);
    // Without the key, host memory, as before.
    let p = ok(&linked(INT16_256, INT16_256));
    assert!(p.operators()[0].outputs()[0].memory().is_host());
    assert!(p.operators()[1].inputs()[0].memory().is_host());
    // A dynamic shape too: its producer allocates it on the device at run time.
    let dynamic = "    type: array\n    element-type: int16\n    shape: [-1, 512]";
    let p = ok(&linked(&format!("{dynamic}\n    device: cuda:1"), dynamic));
    assert_eq!(p.operators()[0].outputs()[0].memory(), cuda1);
    assert_eq!(p.operators()[1].inputs()[0].memory(), cuda1);
}

#[test]
fn device_is_refused_when_malformed_on_inputs_and_on_other_types() {
    check(
        &linked(&format!("{INT16_256}\n    device: gpu0"), INT16_256),
        r#"operator "a", output "v": device "gpu0" is not a place memory can live"#,
    );
    check(
        &linked(INT16_256, &format!("{INT16_256}\n    device: cuda:0")),
        "device must not be given: an input lives where its producer's output does",
    );
    check(
        &ops(
            "- name: a\n  command: [x]\n  output:\n  - name: s\n    type: string\n    device: cuda:0\n",
        ),
        "only an array may live on a device",
    );
}
