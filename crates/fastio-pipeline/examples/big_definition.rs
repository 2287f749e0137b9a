//! Times parsing and validating large generated definitions: a chain of N operators
//! (each reads its predecessor's output), the same chain closed into one cycle, and a
//! wide fan-in. `cargo run --release -p fastio-pipeline --example big_definition [N]`.

use std::time::Instant;

use fastio_pipeline::Pipeline;

fn chain(n: usize, close_cycle: bool) -> String {
    let mut text = String::from("api-version: 0.5.0\nname: big\noperators:\n");
    for i in (0..n).rev() {
        text.push_str(&format!(
            "- name: o{i}\n  command: [op, --index, \"{i}\"]\n  output:\n  - name: v\n    type: array\n    element-type: float32\n    shape: [512, 512]\n"
        ));
        let from = match i {
            0 if close_cycle => Some(n - 1),
            0 => None,
            _ => Some(i - 1),
        };
        if let Some(from) = from {
            text.push_str(&format!(
                "  input:\n  - name: v\n    from: o{from}\n    type: array\n    element-type: float32\n    shape: [512, 512]\n"
            ));
        }
    }
    text
}

fn fan_in(n: usize) -> String {
    let mut text = String::from(
        "api-version: 0.5.0\nname: big\noperators:\n- name: sink\n  command: [op]\n  input:\n",
    );
    for i in 0..n {
        text.push_str(&format!("  - name: v{i}\n    from: s{i}\n    type: u64\n"));
    }
    for i in 0..n {
        text.push_str(&format!(
            "- name: s{i}\n  command: [op]\n  output:\n  - name: v{i}\n    type: u64\n"
        ));
    }
    text
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map_or(10_000, |a| a.parse().expect("a number of operators"));
    for (label, text) in [
        ("chain", chain(n, false)),
        ("cycle", chain(n, true)),
        ("fan-in", fan_in(n)),
    ] {
        let start = Instant::now();
        let result = Pipeline::from_yaml_str(&text, "big.yaml");
        let elapsed = start.elapsed();
        println!(
            "{label:7} {n} operators, {:.2} MiB: {} in {:.3} s",
            text.len() as f64 / (1 << 20) as f64,
            match &result {
                Ok(_) => "valid".to_owned(),
                Err(e) => format!("{} problem(s)", e.problems().len()),
            },
            elapsed.as_secs_f64()
        );
    }
}
