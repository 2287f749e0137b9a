//! Hostile definitions cost nothing: durations are bounded, and size, nesting and alias
//! expansion are limited with clear errors before anything large is built; linking and
//! cycle detection stay correct at 10,000 operators (how fast is measured by the
//! `big_definition` example, not asserted here).

use fastio_pipeline::{DefinitionError, MAX_DEFINITION_BYTES, Pipeline};

const ORIGIN: &str = "pipeline.yaml";

fn limit_error(text: &str) -> String {
    match Pipeline::from_yaml_str(text, ORIGIN) {
        Err(e @ DefinitionError::Limit { .. }) => e.to_string(),
        other => panic!("expected a limit error, got {other:?}"),
    }
}

#[test]
fn a_timeout_beyond_seven_days_is_a_problem_not_a_panic() {
    let with = |t: &str| {
        format!(
            "api-version: 0.5.0\nname: p\ntimeout: {t}\noperators:\n- name: a\n  command: [x]\n"
        )
    };
    for huge in ["9223372036854775807", "18446744073709551615", "604801"] {
        let e = Pipeline::from_yaml_str(&with(huge), ORIGIN).unwrap_err();
        assert_eq!(e.problems().len(), 1, "{e}");
        assert_eq!(e.problems()[0].kind.field(), "timeout");
        assert!(
            e.to_string().contains("beyond the limit of 604800 seconds"),
            "{e}"
        );
    }
    let p = Pipeline::from_yaml_str(&with("604800"), ORIGIN).unwrap();
    assert_eq!(p.timeout(), fastio_pipeline::MAX_TIMEOUT);
}

#[test]
fn deeply_nested_flow_collections_are_refused_at_the_depth_limit() {
    // 400 KB of nesting: minutes for a YAML scanner that walks every open level per token.
    let depth = 200_000;
    let text = format!(
        "api-version: 0.5.0\nname: p\npull-secrets: {}{}\n",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let e = limit_error(&text);
    assert!(e.contains("nested more than 64 deep"), "{e}");
    assert!(e.starts_with("pipeline.yaml:3:"), "{e}");
    let maps = format!(
        "pull-secrets: {}1{}\n",
        "{a: ".repeat(depth),
        "}".repeat(depth)
    );
    assert!(limit_error(&maps).contains("nested more than 64 deep"));
}

#[test]
fn deep_block_nesting_is_refused_too() {
    let mut text = String::from("pull-secrets:\n");
    for level in 0..100 {
        text.push_str(&" ".repeat(2 * level + 2));
        text.push_str("a:\n");
    }
    assert!(limit_error(&text).contains("nested more than 64 deep"));
}

#[test]
fn aliases_cannot_multiply_a_small_definition() {
    // 60 KB of text that names a 20,000-item command 300 times: six million strings once
    // expanded, and a valid definition if nothing stops it.
    let mut text = format!(
        "api-version: 0.5.0\nname: p\noperators:\n- name: o0\n  command: &c [{}]\n",
        vec!["x"; 20_000].join(",")
    );
    for i in 1..=300 {
        text.push_str(&format!("- name: o{i}\n  command: *c\n"));
    }
    assert!(text.len() < 64 * 1024);
    let e = limit_error(&text);
    assert!(e.contains("with its aliases expanded"), "{e}");
}

#[test]
fn nested_aliases_are_counted_with_everything_they_repeat() {
    // The classic: each level repeats the one below ten times; 10^9 leaves at level 9.
    let mut text = String::from(
        "api-version: 0.5.0\nname: p\npull-secrets:\n  l0: &l0 [x,x,x,x,x,x,x,x,x,x]\n",
    );
    for level in 1..10 {
        let below = format!("*l{}", level - 1);
        text.push_str(&format!(
            "  l{level}: &l{level} [{}]\n",
            [below.as_str(); 10].join(",")
        ));
    }
    assert!(limit_error(&text).contains("with its aliases expanded"));
}

#[test]
fn a_few_aliases_are_fine() {
    let text = "api-version: 0.5.0\nname: p\noperators:\n\
                - name: a\n  command: &cmd [run, --fast]\n  variables: &vars {A: 1}\n\
                - name: b\n  command: *cmd\n  variables: *vars\n";
    let p = Pipeline::from_yaml_str(text, ORIGIN).unwrap();
    assert_eq!(p.operators()[1].command().unwrap(), ["run", "--fast"]);
    assert_eq!(p.operators()[1].variables()["A"], "1");
}

#[test]
fn a_definition_past_the_size_limit_is_refused_in_both_formats_and_from_a_file() {
    let mut text = String::from("api-version: 0.5.0\nname: p\n");
    text.push_str(&"#".repeat(MAX_DEFINITION_BYTES));
    assert!(limit_error(&text).contains("the limit is 16777216 bytes"));
    let json = format!("{{\"name\": \"{}\"}}", "x".repeat(MAX_DEFINITION_BYTES));
    assert!(matches!(
        Pipeline::from_json_str(&json, "p.json"),
        Err(DefinitionError::Limit { .. })
    ));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.yaml");
    std::fs::write(&path, &text).unwrap();
    assert!(matches!(
        Pipeline::from_path(&path),
        Err(DefinitionError::Limit { .. })
    ));
}

/// A chain `o0 -> o1 -> ... -> o{n-1}` written in reverse order, plus `extra` YAML.
fn chain(n: usize, close_cycle: bool) -> String {
    let mut text = String::from("api-version: 0.5.0\nname: big\noperators:\n");
    for i in (0..n).rev() {
        text.push_str(&format!(
            "- name: o{i}\n  command: [op]\n  output:\n  - name: v\n    type: u64\n"
        ));
        let from = if i > 0 {
            Some(i - 1)
        } else if close_cycle {
            Some(n - 1)
        } else {
            None
        };
        if let Some(from) = from {
            text.push_str(&format!(
                "  input:\n  - name: v\n    from: o{from}\n    type: u64\n"
            ));
        }
    }
    text
}

#[test]
fn ten_thousand_operators_link_in_dependency_order() {
    let p = Pipeline::from_yaml_str(&chain(10_000, false), ORIGIN).unwrap();
    assert_eq!(p.operators().len(), 10_000);
    assert_eq!(p.links().len(), 9_999);
    for (position, op) in p.operators().iter().enumerate() {
        assert_eq!(op.name(), format!("o{position}"));
    }
}

#[test]
fn a_cycle_through_ten_thousand_operators_is_reported_once() {
    let e = Pipeline::from_yaml_str(&chain(10_000, true), ORIGIN).unwrap_err();
    assert_eq!(e.problems().len(), 1, "{e}");
    let message = e.to_string();
    assert!(message.contains("cycle"), "{}", &message[..200]);
}
