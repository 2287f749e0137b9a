//! Real C programs, compiled with the system compiler against the committed header and
//! the library this build made, then run: alone, as two processes sharing a context
//! server, linked through the drop-in name, statically, and under AddressSanitizer.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use fastio_context::{Context, Server, ServerConfig};
use fastio_driver::{JobOptions, run_job};
use fastio_meta::ElementType;
use fastio_pipeline::Pipeline;
use tempfile::TempDir;

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The directory holding libfastio.so and libfastio.a of this build, built fresh.
///
/// Cargo does not build a cdylib-only library before its integration tests (they cannot
/// link to it), so the test asks Cargo for it, in the target directory and profile of
/// this test binary (target/<profile>/deps/<test>). Up to date, this takes a moment.
fn lib_dir() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().unwrap();
            let profile_dir = exe.parent().and_then(Path::parent).unwrap();
            let target_dir = profile_dir.parent().unwrap();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "--quiet", "-p", "fastio-ffi", "--lib"])
                .env("CARGO_TARGET_DIR", target_dir)
                .current_dir(crate_dir());
            if profile_dir.file_name().is_some_and(|p| p == "release") {
                cmd.arg("--release");
            }
            let status = cmd.status().unwrap();
            assert!(status.success(), "{cmd:?} failed");
            assert!(profile_dir.join("libfastio.so").exists());
            profile_dir.to_path_buf()
        })
        .clone()
}

#[derive(Clone, Copy, PartialEq)]
enum Lang {
    C11,
    Cxx17,
}

#[derive(Clone, Copy, PartialEq)]
enum Link {
    /// -lfastio against libfastio.so.
    Shared,
    /// -lnvclara through a libnvclara.so symlink: Clara's link flag.
    DropIn,
    /// libfastio.a and the system libraries Rust's standard library needs.
    Static,
}

struct Build {
    source: &'static str,
    lang: Lang,
    link: Link,
    asan: bool,
    extra: &'static [&'static str],
}

impl Build {
    fn c(source: &'static str) -> Self {
        Self {
            source,
            lang: Lang::C11,
            link: Link::Shared,
            asan: false,
            extra: &[],
        }
    }

    /// Compiles with warnings as errors; returns the program (in `dir`).
    fn compile(&self, dir: &Path) -> PathBuf {
        let lib = lib_dir();
        let source = if self.source.starts_with("examples/") {
            crate_dir().join("../..").join(self.source)
        } else {
            crate_dir().join("tests/c").join(self.source)
        };
        let exe = dir.join(Path::new(self.source).file_stem().unwrap());
        let (compiler, std) = match self.lang {
            Lang::C11 => ("gcc", "-std=c11"),
            Lang::Cxx17 => ("g++", "-std=c++17"),
        };
        let mut cmd = Command::new(compiler);
        cmd.args([std, "-Wall", "-Wextra", "-Werror", "-pedantic", "-g"])
            .arg("-D_DEFAULT_SOURCE")
            .arg("-I")
            .arg(crate_dir().join("include"))
            .arg("-I")
            .arg(crate_dir().join("tests/c"));
        if self.asan {
            cmd.args(["-fsanitize=address", "-fno-omit-frame-pointer"]);
        }
        if self.lang == Lang::Cxx17 {
            cmd.args(["-x", "c++"]);
        }
        cmd.arg(source);
        if self.lang == Lang::Cxx17 {
            cmd.args(["-x", "none"]);
        }
        cmd.arg("-o").arg(&exe).args(self.extra);
        match self.link {
            Link::Shared => {
                cmd.arg("-L").arg(&lib).arg("-lfastio");
                cmd.arg(format!("-Wl,-rpath,{}", lib.display()));
            }
            Link::DropIn => {
                // Made once per directory: several programs may be built into one.
                let drop_in = dir.join("libnvclara.so");
                if drop_in.symlink_metadata().is_err() {
                    std::os::unix::fs::symlink(lib.join("libfastio.so"), drop_in).unwrap();
                }
                cmd.arg("-L").arg(dir).arg("-lnvclara");
                cmd.arg(format!("-Wl,-rpath,{}", dir.display()));
            }
            Link::Static => {
                cmd.arg(lib.join("libfastio.a"));
                cmd.args([
                    "-lgcc_s",
                    "-lutil",
                    "-lrt",
                    "-lpthread",
                    "-lm",
                    "-ldl",
                    "-lc",
                ]);
            }
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{:?} failed:\n{}",
            cmd,
            String::from_utf8_lossy(&out.stderr)
        );
        exe
    }
}

/// Variables that would change how a C program joins a job; the tests set them
/// explicitly.
const JOB_VARIABLES: [&str; 6] = [
    "FASTIO_CONTEXT",
    "FASTIO_PIPELINE",
    "FASTIO_STAGE",
    "NVIDIA_CLARA_INPUTPATHS",
    "NVIDIA_CLARA_OUTPUTPATHS",
    "NVIDIA_CLARA_NOSYNCLOCK",
];

/// Runs `exe` (in its own directory) with `args` and `env`, and fails the test unless it
/// exits 0.
fn run(exe: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(exe);
    for var in JOB_VARIABLES {
        cmd.env_remove(var);
    }
    let out = cmd
        .args(args)
        .current_dir(exe.parent().unwrap())
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} {args:?} exited with {}\nstdout:\n{}\nstderr:\n{}",
        exe.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn compile_and_run(build: Build) -> String {
    let dir = TempDir::new().unwrap();
    let exe = build.compile(dir.path());
    let out = run(&exe, &[], &[]);
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn publish_get_round_trip_in_c11() {
    assert!(compile_and_run(Build::c("roundtrip.c")).contains("roundtrip ok"));
}

#[test]
fn empty_arrays_are_created_published_and_got_in_c() {
    assert!(compile_and_run(Build::c("empty.c")).contains("empty ok"));
}

#[test]
fn hugetlb_on_request_uses_the_pool_or_says_it_fell_back_in_c() {
    // This machine may have no hugetlb pool: then the fallback is what is checked, for real.
    assert!(compile_and_run(Build::c("hugetlb.c")).contains(" ok"));
}

#[test]
fn publications_are_replaced_or_unpublished_on_purpose_in_c() {
    assert!(compile_and_run(Build::c("republish.c")).contains("republish ok"));
}

#[test]
fn publish_get_round_trip_in_cxx17() {
    let build = Build {
        lang: Lang::Cxx17,
        ..Build::c("roundtrip.c")
    };
    assert!(compile_and_run(build).contains("roundtrip ok"));
}

#[test]
fn the_library_exports_exactly_the_functions_the_header_declares() {
    let header = std::fs::read_to_string(crate_dir().join("include/clara_cpd.h")).unwrap();
    let mut declared: Vec<&str> = header
        .lines()
        .filter(|l| l.starts_with("result nvidia_clara") || l.starts_with("const char *nvidia"))
        .map(|l| {
            let start = l.find("nvidia_clara").unwrap();
            let end = l[start..].find('(').unwrap();
            &l[start..start + end]
        })
        .collect();
    declared.sort();
    let out = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(lib_dir().join("libfastio.so"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let symbols = String::from_utf8(out.stdout).unwrap();
    let mut exported: Vec<&str> = symbols
        .lines()
        .filter(|l| l.contains(" T "))
        .filter_map(|l| l.split_whitespace().last())
        .collect();
    exported.sort();
    assert_eq!(exported, declared);
    // Every name of Clara's C API that fastio provides is among them.
    for required in [
        "nvidia_clara_fastio__create",
        "nvidia_clara_fastio__publish",
        "nvidia_clara_fastio__get",
        "nvidia_clara_fastio__release",
        "nvidia_clara_fastio__free",
        "nvidia_clara_fastio__set_type_and_dimensions",
        "nvidia_clara_payload__fastio_context",
        "nvidia_clara_cpd__create",
        "nvidia_clara_cpd__start",
        "nvidia_clara_cpd__wait_for_completion",
        "nvidia_clara_cpd__release",
        "nvidia_clara_payload__input_entries",
        "nvidia_clara_payload__output_entries",
        "nvidia_clara_payload_entry__name",
        "nvidia_clara_payload_entry__path",
    ] {
        assert!(declared.contains(&required), "{required}");
    }
}

#[test]
fn self_contained_test_programs_also_build_and_pass_as_cxx17() {
    for (source, extra, expected) in [
        ("bad_inputs.c", &[][..], "bad inputs ok"),
        ("mapping.c", &[][..], "mapping ok"),
        ("threads.c", &["-pthread"][..], "threads ok"),
        ("lifecycle.c", &[][..], "lifecycle ok"),
    ] {
        let build = Build {
            lang: Lang::Cxx17,
            extra,
            ..Build::c(source)
        };
        assert!(compile_and_run(build).contains(expected), "{source}");
    }
}

#[test]
fn every_bad_input_fails_with_a_message_and_corrupts_nothing() {
    assert!(compile_and_run(Build::c("bad_inputs.c")).contains("bad inputs ok"));
}

#[test]
fn one_writer_at_a_time_and_read_only_handles_fault_on_write() {
    assert!(compile_and_run(Build::c("mapping.c")).contains("mapping ok"));
}

#[test]
fn a_stale_pointer_into_a_released_allocation_faults() {
    assert!(compile_and_run(Build::c("stale.c")).contains("stale ok"));
}

#[test]
fn last_error_message_is_per_thread() {
    let build = Build {
        extra: &["-pthread"],
        ..Build::c("threads.c")
    };
    assert!(compile_and_run(build).contains("threads ok"));
}

#[test]
fn clara_operator_builds_with_clara_h_and_lnvclara_in_c_and_cxx() {
    for lang in [Lang::C11, Lang::Cxx17] {
        let build = Build {
            lang,
            link: Link::DropIn,
            ..Build::c("drop_in.c")
        };
        let out = compile_and_run(build);
        assert!(out.contains("drop-in ok"), "{out}");
        assert!(out.contains("\"volume\" was freed"), "{out}");
    }
}

#[test]
fn static_library_links_and_runs() {
    let build = Build {
        link: Link::Static,
        ..Build::c("roundtrip.c")
    };
    assert!(compile_and_run(build).contains("roundtrip ok"));
}

#[test]
fn c_programs_are_clean_under_address_sanitizer() {
    for (source, extra) in [
        ("roundtrip.c", &[][..]),
        ("bad_inputs.c", &[][..]),
        ("threads.c", &["-pthread"][..]),
        ("lifecycle.c", &[][..]),
    ] {
        let build = Build {
            asan: true,
            extra,
            ..Build::c(source)
        };
        let dir = TempDir::new().unwrap();
        let exe = build.compile(dir.path());
        let out = run(
            &exe,
            &[],
            &[("ASAN_OPTIONS", "detect_leaks=1:halt_on_error=1")],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("AddressSanitizer"), "{source}: {stderr}");
    }
}

/// A context server in this process, as `fastio serve` would run it.
fn server() -> Server {
    Server::start(ServerConfig::default()).unwrap()
}

#[test]
fn one_c_process_publishes_and_another_gets_through_the_server() {
    let server = server();
    let env = [("FASTIO_CONTEXT", server.address())];
    let dir = TempDir::new().unwrap();
    let exe = Build::c("two_process.c").compile(dir.path());
    run(&exe, &["produce"], &env);
    // The producer's process is gone; the publication keeps the memory.
    let rust = Context::connect(server.address()).unwrap();
    let grid = rust.get("grid").unwrap();
    assert_eq!(grid.dimensions(), Some(&[3, 4][..]));
    assert_eq!(
        grid.to_vec::<f32>().unwrap(),
        (0..12).map(|i| i as f32).collect::<Vec<_>>()
    );
    grid.release().unwrap();
    run(&exe, &["consume"], &env);
    run(&exe, &["after-free"], &env);
    assert!(rust.get("grid").is_err());
}

#[test]
fn one_writer_at_a_time_across_processes_until_the_writer_dies() {
    use std::io::{BufRead, BufReader};
    let server = server();
    let env = [("FASTIO_CONTEXT", server.address())];
    let rust = Context::connect(server.address()).unwrap();
    let shared = rust.create(4096).unwrap();
    shared.publish("shared").unwrap();
    let dir = TempDir::new().unwrap();
    let exe = Build::c("two_process.c").compile(dir.path());
    let mut holder = Command::new(&exe)
        .arg("hold-writer")
        .envs(env.iter().copied())
        .env_remove("NVIDIA_CLARA_NOSYNCLOCK")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "MAPPED");
    run(&exe, &["second-busy"], &env);
    // A Rust client of the context is excluded the same way.
    let other = rust.get("shared").unwrap();
    let refused = other.acquire_write().unwrap_err().to_string();
    assert!(refused.contains("one writer at a time"), "{refused}");
    holder.kill().unwrap();
    holder.wait().unwrap();
    // The writer died holding its mapping: the server let go when its socket closed.
    wait_for(|| {
        let ok = other.acquire_write().is_ok();
        if ok {
            other.release_write().unwrap();
        }
        ok
    });
    run(&exe, &["second-ok"], &env);
}

/// Polls `f` every 10 ms for up to 5 s; fails the test if it never holds.
fn wait_for(mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "condition never held"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Byte `i` of the test array of element type `code` (tests/c/element_types.c has the
/// same function).
fn pattern(code: u32, i: usize) -> u8 {
    ((i * 31 + code as usize * 7 + 3) & 0xff) as u8
}

#[test]
fn all_eleven_element_types_cross_between_c_and_rust_bit_exactly() {
    let server = server();
    let env = [("FASTIO_CONTEXT", server.address())];
    let rust = Context::connect(server.address()).unwrap();
    for t in ElementType::ALL {
        let bytes: Vec<u8> = (0..6 * t.size()).map(|i| pattern(t.code(), i)).collect();
        let mut a = rust.create(bytes.len()).unwrap();
        a.set_type_and_dimensions(t, &[2, 3]).unwrap();
        a.write_bytes(0, &bytes).unwrap();
        a.publish(&format!("r_{}", t.name())).unwrap();
        a.release().unwrap();
    }
    let dir = TempDir::new().unwrap();
    let exe = Build::c("element_types.c").compile(dir.path());
    run(&exe, &["produce"], &env);
    run(&exe, &["consume"], &env);
    for t in ElementType::ALL {
        let a = rust.get(&format!("c_{}", t.name())).unwrap();
        assert_eq!(a.element_type(), Some(t));
        assert_eq!(a.dimensions(), Some(&[2, 3][..]));
        assert_eq!(a.size(), 6 * t.size());
        let expected: Vec<u8> = (0..6 * t.size()).map(|i| pattern(t.code(), i)).collect();
        assert_eq!(a.read_bytes(0, a.size()).unwrap(), expected, "{t}");
        a.release().unwrap();
    }
    assert_eq!(ElementType::F16.size() * 6, 12);
}

#[test]
fn handles_of_a_c_process_that_exits_without_releasing_are_reclaimed() {
    let server = server();
    let env = [("FASTIO_CONTEXT", server.address())];
    let dir = TempDir::new().unwrap();
    let exe = Build::c("leak.c").compile(dir.path());
    run(&exe, &[], &env);
    let observer = server.local_context();
    // The server notices the closed connection on its own thread; wait for it (bounded).
    let deadline = Instant::now() + Duration::from_secs(10);
    let stats = loop {
        let stats = observer.stats().unwrap();
        if stats.handles == 0 || Instant::now() > deadline {
            break stats;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(stats.handles, 0, "{stats:?}");
    // Only the published allocation remains, held by its publication.
    assert_eq!(stats.resources, 1, "{stats:?}");
    assert_eq!(stats.live_bytes, 1 << 20, "{stats:?}");
    assert_eq!(stats.publications, 1, "{stats:?}");
}

#[test]
fn life_cycle_runs_prepare_execute_cleanup_in_order_and_takes_back_the_payload() {
    assert!(compile_and_run(Build::c("lifecycle.c")).contains("lifecycle ok"));
}

#[test]
fn payload_entries_follow_clara_path_variables_and_the_name_buffer_protocol() {
    let dir = TempDir::new().unwrap();
    let exe = Build::c("payload_entries.c").compile(dir.path());
    let root = dir.path().to_str().unwrap();
    let inputs = format!("dicom:{root}/in;:{root}/in2");
    let outputs = format!("report:{root}/out");
    let out = run(
        &exe,
        &[root],
        &[
            ("NVIDIA_CLARA_INPUTPATHS", &inputs),
            ("NVIDIA_CLARA_OUTPUTPATHS", &outputs),
        ],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("payload entries ok"));
    // A standalone run creates its output directories.
    assert!(dir.path().join("out").is_dir());
}

/// A typed pipeline of two runs of tests/c/entries_op.c.
fn entries_pipeline(exe: &Path, producer_args: &str) -> String {
    let exe = exe.display();
    format!(
        r#"api-version: 0.5.0
orchestrator: Clara
name: c-entries
timeout: 60
operators:
- name: producer
  command: ["{exe}", "producer"{producer_args}]
  output:
  - name: grid
    type: array
    element-type: float32
    shape: [3, 4]
  - name: slices
    type: array
    element-type: int32
    shape: [3, -1]
  - name: note
    type: string
- name: consumer
  command: ["{exe}", "consumer"]
  input:
  - name: grid
    from: producer
    type: array
    element-type: float32
    shape: [3, 4]
  - name: slices
    from: producer
    type: array
    element-type: int32
    shape: [3, -1]
  - name: note
    from: producer
    type: string
"#
    )
}

#[test]
fn fastio_entries_of_a_standalone_c_operator_behave_as_declared() {
    for asan in [false, true] {
        let dir = TempDir::new().unwrap();
        let exe = Build {
            asan,
            ..Build::c("entries_op.c")
        }
        .compile(dir.path());
        let definition = dir.path().join("pipeline.yaml");
        std::fs::write(&definition, entries_pipeline(&exe, "")).unwrap();
        let definition = definition.to_str().unwrap();
        for (role, stage) in [("producer", "producer"), ("consumer-alone", "consumer")] {
            let out = run(
                &exe,
                &[role],
                &[("FASTIO_PIPELINE", definition), ("FASTIO_STAGE", stage)],
            );
            assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("{role} ok")));
            assert!(!String::from_utf8_lossy(&out.stderr).contains("AddressSanitizer"));
        }
    }
}

#[test]
fn c_operators_share_entries_and_context_allocations_in_a_job() {
    let dir = TempDir::new().unwrap();
    let exe = Build::c("entries_op.c").compile(dir.path());
    let text = entries_pipeline(&exe, r#", "leak""#);
    let pipeline = Pipeline::from_yaml_str(&text, "pipeline.yaml").unwrap();
    let mut options = JobOptions::for_pipeline(&pipeline);
    options.output_root = dir.path().join("output");
    let report = run_job(&pipeline, &options, &mut |_| {}).unwrap();
    assert!(report.succeeded(), "{}", report.render());
    let producer = &report.operators[0];
    // The allocation the producer left unreleased was reclaimed and reported,
    // by the job and by the operator's notification.
    assert_eq!(producer.reclaimed.len(), 1, "{}", report.render());
    assert_eq!(producer.reclaimed[0].count, 1);
    let stderr = producer.stderr_tail.join("\n");
    assert!(
        stderr.contains("without releasing 1 Fast I/O allocation handle(s)"),
        "{stderr}"
    );
    assert!(
        report.operators[1].reclaimed.is_empty(),
        "{}",
        report.render()
    );
}

/// Runs examples/c/`source` standalone under AddressSanitizer as `stage` of
/// pipeline-c.yaml, with `outputs` as its Clara output paths; returns its stdout.
fn run_example_under_asan(dir: &Path, source: &'static str, stage: &str, outputs: &str) -> String {
    let exe = Build {
        asan: true,
        link: Link::DropIn,
        ..Build::c(source)
    }
    .compile(dir);
    let demo = crate_dir().join("../../examples/demo/pipeline-c.yaml");
    let out = run(
        &exe,
        &[],
        &[
            ("FASTIO_PIPELINE", demo.to_str().unwrap()),
            ("FASTIO_STAGE", stage),
            ("NVIDIA_CLARA_OUTPUTPATHS", outputs),
            ("ASAN_OPTIONS", "detect_leaks=1:halt_on_error=1"),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("AddressSanitizer"), "{source}: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn example_c_operators_run_standalone_cleanly_under_address_sanitizer() {
    // slice_range: the dynamic input was never made, so the range is "none" (-1, -1);
    // it still maps, writes and unmaps its pre-allocated output.
    let dir = TempDir::new().unwrap();
    let stdout = run_example_under_asan(dir.path(), "examples/c/slice_range.c", "slice-range", "");
    assert!(
        stdout.contains("slice range: -1 to -1 (of 0 slices"),
        "{stdout}"
    );

    let dir = TempDir::new().unwrap();
    let outputs = format!("voxel-report:{}", dir.path().display());
    let stdout = run_example_under_asan(
        dir.path(),
        "examples/c/voxel_report.c",
        "voxel-report",
        &outputs,
    );
    // Alone, the pre-allocated inputs read as zeros and the dynamic list was never made.
    assert!(stdout.contains("voxels above the threshold: 0"), "{stdout}");
    assert!(stdout.contains("slices with foreground: 0"), "{stdout}");
    assert!(
        stdout.contains("slice range from slice_range: 0 to 0"),
        "{stdout}"
    );
    let report = std::fs::read_to_string(dir.path().join("voxel-report.txt")).unwrap();
    assert_eq!(report, stdout);
}

/// The directory of this build's `fastio-demo-op` (the demo pipeline's Rust operators),
/// built on demand as the library is.
fn demo_op_dir() -> PathBuf {
    let dir = lib_dir();
    let target_dir = dir.parent().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--quiet",
        "-p",
        "fastio",
        "--bin",
        "fastio-demo-op",
    ])
    .env("CARGO_TARGET_DIR", target_dir)
    .current_dir(crate_dir());
    if dir.file_name().is_some_and(|p| p == "release") {
        cmd.arg("--release");
    }
    assert!(cmd.status().unwrap().success(), "{cmd:?} failed");
    dir
}

/// The numbers of a line of `text` after `prefix`, in order.
fn numbers_after(text: &str, prefix: &str) -> Vec<u64> {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or("");
    line.split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .map(|w| w.parse().unwrap())
        .collect()
}

#[test]
fn demo_pipeline_with_the_c_example_operators_runs_as_a_job() {
    let dir = TempDir::new().unwrap();
    // Built as `cargo xtask clib` does: clara.h and -lnvclara, warnings as errors.
    for source in ["examples/c/slice_range.c", "examples/c/voxel_report.c"] {
        Build {
            link: Link::DropIn,
            ..Build::c(source)
        }
        .compile(dir.path());
    }
    let definition = crate_dir().join("../../examples/demo/pipeline-c.yaml");
    let pipeline = Pipeline::from_path(&definition).unwrap();
    let mut options = JobOptions::for_pipeline(&pipeline);
    options.output_root = dir.path().join("output");
    options.program_dirs = vec![dir.path().to_path_buf(), demo_op_dir()];
    let report = run_job(&pipeline, &options, &mut |_| {}).unwrap();
    assert!(report.succeeded(), "{}", report.render());
    let rust =
        std::fs::read_to_string(dir.path().join("output/write-report/report/report.txt")).unwrap();
    let c = std::fs::read_to_string(
        dir.path()
            .join("output/voxel-report/voxel-report/voxel-report.txt"),
    )
    .unwrap();
    // The C operator read the same count and slices the Rust operators computed.
    let count = numbers_after(&rust, "voxel count: ");
    assert_eq!(
        numbers_after(&c, "voxels above the threshold: "),
        count,
        "{c}"
    );
    assert!(count[0] > 0, "{rust}");
    // "N voxels above the threshold 300 in K slices (F to L)"
    let summary = numbers_after(&rust, "summary: ");
    let slices = numbers_after(&c, "slices with foreground: ");
    assert_eq!(slices, summary[summary.len() - 3..], "{rust}{c}");
    // voxel-report read the slice range that the C operator slice-range wrote before it
    // (unwritten, the pre-allocated entry would read as 0 to 0).
    let range = numbers_after(&c, "slice range from slice_range: ");
    assert_eq!(range, summary[summary.len() - 2..], "{rust}{c}");
    assert!(range[0] > 0, "{rust}{c}");
    let entry = report
        .entries
        .iter()
        .find(|e| e.producer == "slice-range" && e.name == "slice-range")
        .unwrap();
    assert_eq!(entry.readers, ["voxel-report"], "{}", report.render());
    assert_eq!(entry.bytes, Some(8), "{}", report.render());
}

#[test]
fn c_reads_the_cuda_event_asks_for_the_operator_stream_and_allocates_a_dynamic_device_output() {
    let server = server();
    let rust = Context::connect(server.address()).unwrap();
    let handle = fastio_context::EventHandle(std::array::from_fn(|i| (3 * i + 1) as u8));
    let a = rust.create(16).unwrap();
    a.publish_with_event("with-event", handle).unwrap();
    let b = rust.create(16).unwrap();
    b.publish("plain").unwrap();
    let dir = TempDir::new().unwrap();
    let exe = Build::c("cuda.c").compile(dir.path());
    let out = run(&exe, &["events"], &[("FASTIO_CONTEXT", server.address())]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("events ok"));

    // This machine has no CUDA driver (the GPU bundle covers the other case).
    if cuda_streams::Driver::probe().is_ok() {
        return;
    }
    let definition = dir.path().join("pipeline.yaml");
    std::fs::write(
        &definition,
        format!(
            "api-version: 0.5.0\nname: cuda\noperators:\n- name: src\n  command: [\"{exe}\", \"operator\"]\n  output:\n  - {{name: volume, type: array, element-type: float32, shape: [4]}}\n- name: gpu-op\n  command: [\"{exe}\", \"operator\"]\n  input:\n  - {{name: volume, from: src, type: array, element-type: float32, shape: [4]}}\n",
            exe = exe.display()
        ),
    )
    .unwrap();
    let out = run(
        &exe,
        &["operator"],
        &[
            ("FASTIO_PIPELINE", definition.to_str().unwrap()),
            ("FASTIO_STAGE", "gpu-op"),
        ],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("operator ok"));

    // A dynamic output declared on a device: refused when its shape is set, not at set-up.
    std::fs::write(
        &definition,
        format!(
            "api-version: 0.5.0\nname: cuda\noperators:\n- name: infer\n  command: [\"{exe}\", \"dynamic\"]\n  output:\n  - {{name: logits, type: array, element-type: float32, shape: [-1, 8], device: cuda:0}}\n",
            exe = exe.display()
        ),
    )
    .unwrap();
    let out = run(
        &exe,
        &["dynamic"],
        &[
            ("FASTIO_PIPELINE", definition.to_str().unwrap()),
            ("FASTIO_STAGE", "infer"),
        ],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("dynamic ok"));
}

#[test]
fn c_device_pointers_and_copies_refuse_bad_arguments_and_say_when_cuda_is_missing() {
    // With a CUDA driver here, the fake's memory below would not import: the GPU bundle
    // covers the device side there.
    if cuda_streams::Driver::probe().is_ok() {
        return;
    }
    // The server makes device memory on cuda-streams' CPU fake; the C process has no
    // driver, as on a machine without CUDA.
    let server = Server::start(ServerConfig {
        device_driver: Some(cuda_streams::Driver::fake(1)),
        ..ServerConfig::default()
    })
    .unwrap();
    let rust = Context::connect(server.address()).unwrap();
    let host = rust.create(16).unwrap();
    host.publish("host-mem").unwrap();
    let dev = rust
        .create_in(fastio_context::MemoryKind::Cuda { device: 0 }, 4096)
        .unwrap();
    dev.publish("on-device").unwrap();
    let dir = TempDir::new().unwrap();
    let exe = Build::c("cuda.c").compile(dir.path());
    let out = run(&exe, &["device"], &[("FASTIO_CONTEXT", server.address())]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("device ok"));
}

#[test]
fn the_gpu_copies_program_builds_and_says_when_there_is_no_gpu() {
    // The program the GPU bundle runs on the H200 (`fastio-gpu-c`); here it must build with
    // warnings as errors against the committed header, and say clearly that it needs a GPU.
    if cuda_streams::Driver::probe().is_ok() {
        return;
    }
    let dir = TempDir::new().unwrap();
    let exe = Build::c("gpu_copies.c").compile(dir.path());
    let out = Command::new(&exe).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(stdout.contains("no CUDA driver or device here"), "{stdout}");
}
