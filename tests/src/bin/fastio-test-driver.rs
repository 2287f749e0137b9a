//! Runs one job of the pipeline definition given as the only argument with the library's
//! driver, operator programs looked up beside this program, outputs under the second
//! argument; prints `pid <pid>` first (for tests that kill the driver), the summary last.

use std::path::PathBuf;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    println!("pid {}", std::process::id());
    let pipeline = fastio::pipeline::Pipeline::from_path(&args[1]).expect("a valid definition");
    let mut options = fastio::driver::JobOptions::for_pipeline(&pipeline);
    options.output_root = PathBuf::from(&args[2]);
    let me = std::env::current_exe().expect("own path");
    options.program_dirs = vec![me.parent().expect("a directory").to_owned()];
    let report = fastio::driver::run_job(&pipeline, &options, &mut |_| {}).expect("job started");
    print!("{}", report.render());
    std::process::exit(i32::from(!report.succeeded()));
}
