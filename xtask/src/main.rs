//! Project automation.

mod gpu;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("gpu-test") => gpu::gpu_test(&args[1..]),
        Some("gpu-bench") => gpu::gpu_bench(&args[1..]),
        _ => Ok(()),
    }
}
