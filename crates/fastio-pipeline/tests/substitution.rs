//! `${...}` in commands and variables, and variables set from outside the definition.

use fastio_pipeline::{DefinitionError, Format, Override, Pipeline};

const DEFINITION: &str = r#"
api-version: 0.5.0
name: subst
operators:
- name: seg
  command: [python3, "${PIPELINE_DIR}/seg.py", "--threshold=${THRESHOLD}", "$${LITERAL}", "$HOME"]
  variables:
    THRESHOLD: 0.5
    MODEL: ${PIPELINE_DIR}/model.onnx
- name: other
  command: [other, "${MODE}"]
  variables:
    MODE: fast
"#;

fn load(overrides: &[&str]) -> Result<Pipeline, DefinitionError> {
    let overrides: Vec<Override> = overrides.iter().map(|o| o.parse().unwrap()).collect();
    Pipeline::from_str_with(
        DEFINITION,
        "/studies/p1/pipeline.yaml",
        Format::Yaml,
        &overrides,
    )
}

fn operator<'a>(p: &'a Pipeline, name: &str) -> &'a fastio_pipeline::Operator {
    p.operators().iter().find(|o| o.name() == name).unwrap()
}

#[test]
fn the_definition_folder_and_variables_are_replaced_in_commands() {
    let p = load(&[]).unwrap();
    let seg = operator(&p, "seg");
    assert_eq!(
        seg.command().unwrap(),
        [
            "python3",
            "/studies/p1/seg.py",
            "--threshold=0.5",
            "${LITERAL}",
            "$HOME"
        ]
    );
    assert_eq!(seg.variables()["MODEL"], "/studies/p1/model.onnx");
}

#[test]
fn set_overrides_a_declared_variable_everywhere_or_adds_one_to_one_operator() {
    let p = load(&["THRESHOLD=0.9", "other.EXTRA=${PIPELINE_DIR}/x"]).unwrap();
    let seg = operator(&p, "seg");
    assert_eq!(seg.command().unwrap()[2], "--threshold=0.9");
    assert_eq!(seg.variables()["THRESHOLD"], "0.9");
    assert!(!seg.variables().contains_key("EXTRA"));
    assert_eq!(operator(&p, "other").variables()["EXTRA"], "/studies/p1/x");
}

#[test]
fn a_setting_that_applies_to_nothing_is_refused() {
    let err = load(&["THRESHHOLD=0.9"]).unwrap_err().to_string();
    assert!(
        err.contains("no operator declares variable \"THRESHHOLD\""),
        "{err}"
    );
    let err = load(&["nobody.X=1"]).unwrap_err().to_string();
    assert!(err.contains("no operator \"nobody\""), "{err}");
}

#[test]
fn unknown_names_reach_the_program_and_unclosed_braces_are_listed_with_operator_and_field() {
    let text = DEFINITION
        .replace("\"${MODE}\"", "\"${NOPE}\", \"${MODE\"")
        .replace("${PIPELINE_DIR}/model.onnx", "${THRESHOLD}/m");
    let err = Pipeline::from_yaml_str(&text, "p.yaml").unwrap_err();
    let problems: Vec<String> = err.problems().iter().map(ToString::to_string).collect();
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(
        problems[0].contains("operator \"other\"") && problems[0].contains("not closed"),
        "{}",
        problems[0]
    );
    // Without the unclosed brace the definition loads, the unknown names left as written.
    let text = DEFINITION
        .replace("\"${MODE}\"", "\"${NOPE}\"")
        .replace("${PIPELINE_DIR}/model.onnx", "${THRESHOLD}/m");
    let pipeline = Pipeline::from_yaml_str(&text, "p.yaml").unwrap();
    let debug = format!("{pipeline:?}");
    assert!(
        debug.contains("${NOPE}") && debug.contains("${THRESHOLD}/m"),
        "{debug}"
    );
}
