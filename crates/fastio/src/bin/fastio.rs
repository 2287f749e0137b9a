//! The `fastio` command.
fn main() {}
