//! Project automation.

mod bench;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("bench") => bench::bench(&args[1..]),
        _ => anyhow::bail!("usage: cargo xtask bench [criterion arguments]"),
    }
}
