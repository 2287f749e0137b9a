//! The `fastio` command (its code is `fastio::cli`, shared with the Python console script).

fn main() {
    // Operator programs installed beside this one are found first.
    let program_dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(ToOwned::to_owned));
    std::process::exit(fastio::cli::main(std::env::args_os(), program_dir));
}
