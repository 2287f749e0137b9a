//! An operator whose behaviour the driver tests choose through environment variables
//! (a pipeline's `variables`):
//!
//! - `LOG=<file>`: appends `<operator> <phase> <begin|end> <nanoseconds since the epoch>`
//!   for every callback, and `<operator> pid <pid>` at start;
//! - `EXECUTE=<what>`, what execute does (default `ok`):
//!   `ok`; `fail` (prints `STDERR`'s text to stderr and returns an error); `exit3`;
//!   `sleep:<seconds>`; `hold` (creates an allocation and never releases it);
//!   `hold-published:<name>` (the same, published under `name`); `hold-entry` (opens its
//!   first output entry a second time and never closes it); `orphan`
//!   (leaves a `sleep 60` running); `escape` (leaves a `sleep 600` running in a session
//!   of its own, holding this operator's stdout); `print:<text>` (prints the text on
//!   stdout and stderr); `bytes` (prints a line that is not UTF-8, then 2 MiB more);
//!   `write-input:<name>` (tries the API, then writes through a raw pointer: faults);
//!   `escalate:<name>` (publishes its read-only input under a new name and tries to get
//!   that read-write and write through it; logs `escalation refused: <why>` or fails);
//!   `publish:<name>` (publishes 8 bytes, 1 to 8, under `name` and releases its handle);
//!   `disturb:<name>` (tries to withdraw `name` and to replace it with its own bytes;
//!   logs `disturb refused: <why>` for each refusal, fails if either is allowed or the
//!   publication no longer holds 1 to 8);
//!   `keep-output` (`produce`, keeping a raw pointer to the first output, through which
//!   cleanup then writes: faults, the output being read-only once execute returned);
//!   `produce` / `check` (typed entries: see below); `paths` (disk entries).
//!
//! - `WAIT_FOR=<text>`: before execute does anything, waits (30 s at most) until a line of
//!   the `LOG` file starts with `text` (e.g. `early cleanup end`), to order operators
//!   without timing;
//! - `SHOW_CWD=1`: logs `cwd <working directory> args <arguments joined by spaces>` at start;
//! - `EXIT_DELAY=<seconds>`: sleeps that long after cleanup, before the process exits.
//!
//! `produce` fills every output: a pre-allocated one with `index + 1` converted from f64
//! (and checks that update_shape and allocate are refused); a dynamic one gets
//! `update_shape(every index, SHAPE)` with `SHAPE` a comma list, then the same values.
//! `check` verifies every input holds `index + 1` with the shape in `SHAPE_<name>`
//! (`-` for `_`), and fails execute otherwise.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use fastio::ElementType;
use fastio::operator::{CallbackError, Driver, Lifecycle, Payload};

fn log(what: &str) {
    let Ok(path) = std::env::var("LOG") else {
        return;
    };
    let stage = std::env::var("FASTIO_STAGE").unwrap_or_default();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    // One write per line: O_APPEND keeps concurrent writers' lines whole.
    file.write_all(format!("{stage} {what} {nanos}\n").as_bytes())
        .unwrap();
}

fn main() {
    log(&format!("pid {}", std::process::id()));
    if std::env::var("SHOW_CWD").is_ok_and(|v| v == "1") {
        let cwd = std::env::current_dir().unwrap_or_default();
        let args: Vec<String> = std::env::args().skip(1).collect();
        log(&format!("cwd {} args {}", cwd.display(), args.join(" ")));
    }
    let driver = match Driver::from_env() {
        Ok(driver) => driver,
        Err(e) => {
            eprintln!("cannot join: {e}");
            std::process::exit(2);
        }
    };
    let mut lifecycle = Lifecycle::new()
        .prepare(|_| {
            log("prepare begin");
            log("prepare end");
            Ok(())
        })
        .execute(|driver, payload| {
            if let Ok(text) = std::env::var("WAIT_FOR") {
                wait_for_log(&text)?;
            }
            if std::env::var("EXECUTE").as_deref() == Ok("hold-entry") {
                hold_entry(driver, payload)?;
            }
            log("execute begin");
            let result = execute(payload);
            log("execute end");
            result
        })
        .cleanup(|_| {
            log("cleanup begin");
            let kept = KEPT_OUTPUT.load(std::sync::atomic::Ordering::SeqCst);
            if !kept.is_null() {
                log("writing after execute");
                // SAFETY: none; this deliberately writes through a pointer kept past execute
                // to show that the write never lands: the process dies of SIGSEGV here.
                unsafe { kept.write_volatile(0xAB) };
                log("the late write did not fault");
            }
            log("cleanup end");
            Ok(())
        });
    let result = driver.run(&mut lifecycle);
    if let Ok(seconds) = std::env::var("EXIT_DELAY") {
        std::thread::sleep(std::time::Duration::from_secs_f64(
            seconds.parse().unwrap_or(0.0),
        ));
    }
    if let Err(e) = result {
        eprintln!("{e}");
        std::process::exit(1);
    }
}

/// Waits until a line of the log starts with `text`.
fn wait_for_log(text: &str) -> Result<(), CallbackError> {
    let path = std::env::var("LOG")?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        let log = std::fs::read_to_string(&path).unwrap_or_default();
        if log.lines().any(|l| l.starts_with(text)) {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Err(format!("{text:?} never appeared in the log").into())
}

/// Opens the first output entry again and leaks the handle past execute.
fn hold_entry(driver: &Driver, payload: &mut Payload<'_>) -> Result<(), CallbackError> {
    let info = driver
        .stage_info()
        .fastio_outputs
        .first()
        .ok_or("hold-entry needs an output entry")?
        .clone();
    let entry = fastio::job::FastIoEntry::open(payload.fastio_context(), info)?;
    std::mem::forget(entry);
    Ok(())
}
/// The first output's address, kept by `keep-output` for cleanup's late write.
static KEPT_OUTPUT: std::sync::atomic::AtomicPtr<u8> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

fn shape_var(name: &str) -> Vec<i64> {
    std::env::var(name)
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.trim().parse().unwrap())
        .collect()
}

fn values(count: usize) -> Vec<f64> {
    (0..count).map(|i| (i % 100 + 1) as f64).collect()
}

fn execute(payload: &mut Payload<'_>) -> Result<(), CallbackError> {
    let what = std::env::var("EXECUTE").unwrap_or_else(|_| "ok".into());
    match what.split_once(':').unwrap_or((&what, "")) {
        ("ok", _) => Ok(()),
        ("fail", _) => {
            eprintln!("{}", std::env::var("STDERR").unwrap_or_default());
            Err("deliberate failure".into())
        }
        ("exit3", _) => std::process::exit(3),
        ("sleep", seconds) => {
            std::thread::sleep(std::time::Duration::from_secs_f64(seconds.parse()?));
            Ok(())
        }
        ("orphan", _) => {
            // A background process that outlives this operator (detached from its output,
            // so nothing but the driver's clean-up ends it).
            let child = std::process::Command::new("sleep")
                .arg("60")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()?;
            log(&format!("orphan {}", child.id()));
            Ok(())
        }
        ("escape", _) => {
            // setsid(1) calls setsid(2) and execs: the same pid, out of the process group.
            let child = std::process::Command::new("setsid")
                .args(["sleep", "600"])
                .stdin(std::process::Stdio::null())
                .spawn()?;
            log(&format!("escaped {}", child.id()));
            Ok(())
        }
        ("print", text) => {
            println!("{text} on stdout");
            eprintln!("{text} on stderr");
            Ok(())
        }
        ("bytes", _) => {
            let mut out = std::io::stdout().lock();
            out.write_all(b"before \xff\xfe after\n")?;
            // Far more than a pipe holds: a driver that stopped reading stalls or kills us.
            let line = [b'x'; 1023];
            for _ in 0..2048 {
                out.write_all(&line)?;
                out.write_all(b"\n")?;
            }
            out.flush()?;
            Ok(())
        }
        ("hold", _) => {
            let allocation = payload.fastio_context().create(4096)?;
            std::mem::forget(allocation);
            Ok(())
        }
        ("hold-published", name) => {
            let allocation = payload.fastio_context().create(4096)?;
            allocation.publish(name)?;
            std::mem::forget(allocation);
            Ok(())
        }
        // Opened before execute's log line, in `main`.
        ("hold-entry", _) => Ok(()),
        ("write-input", name) => write_input(payload, name),
        ("produce", _) => produce(payload),
        ("escalate", name) => escalate(payload, name),
        ("publish", name) => {
            let mut allocation = payload.fastio_context().create(8)?;
            allocation.write_bytes(0, &[1, 2, 3, 4, 5, 6, 7, 8])?;
            allocation.publish(name)?;
            allocation.release()?;
            Ok(())
        }
        ("disturb", name) => disturb(payload, name),
        ("keep-output", _) => {
            produce(payload)?;
            let output = &mut payload.fastio_outputs()[0];
            let allocation = output.allocation().ok_or("output not allocated")?;
            let ptr = allocation.as_ptr().cast_mut();
            KEPT_OUTPUT.store(ptr, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
        ("check", _) => check(payload),
        ("paths", _) => paths(payload),
        (other, _) => Err(format!("unknown EXECUTE {other:?}").into()),
    }
}

fn produce(payload: &mut Payload<'_>) -> Result<(), CallbackError> {
    let dynamic = shape_var("SHAPE");
    for entry in payload.fastio_outputs() {
        if entry.is_preallocated() {
            if entry.update_shape(&[0], &[2]).is_ok() || entry.allocate().is_ok() {
                return Err("a pre-allocated entry accepted a new shape".into());
            }
        } else {
            if entry.is_allocated() {
                return Err("a dynamic entry had memory before update_shape".into());
            }
            let rank = entry.shape().len().min(dynamic.len());
            let indices: Vec<usize> = (0..rank).collect();
            let shape = entry.update_shape(&indices, &dynamic[..rank])?;
            log(&format!("shape {} {shape:?}", entry.name()));
        }
        let count = (entry.size_in_bytes().ok_or("not allocated")?) / entry.element_type().size();
        entry.set_values(&values(count))?;
    }
    Ok(())
}

fn check(payload: &mut Payload<'_>) -> Result<(), CallbackError> {
    for entry in payload.fastio_inputs() {
        let var = format!("SHAPE_{}", entry.name().replace('-', "_"));
        let expected = shape_var(&var);
        if entry.shape() != expected.as_slice() {
            return Err(format!(
                "{}: shape {:?}, expected {expected:?}",
                entry.name(),
                entry.shape()
            )
            .into());
        }
        let bytes = entry.get_bytes()?;
        let want = fastio::meta::convert(
            ElementType::F64,
            fastio::meta::as_bytes(&values(bytes.len() / entry.element_type().size())),
            entry.element_type(),
        )?;
        if bytes != want {
            return Err(format!("{}: values differ", entry.name()).into());
        }
        log(&format!("checked {}", entry.name()));
    }
    Ok(())
}

fn write_input(payload: &mut Payload<'_>, name: &str) -> Result<(), CallbackError> {
    let entry = payload.fastio_input(name)?;
    let allocation = entry.allocation().ok_or("input not allocated")?;
    // The API offers inputs only by shared reference, so no safe write compiles; a raw
    // pointer gets past the compiler, and the MMU refuses: the mapping is PROT_READ, so
    // the store faults (SIGSEGV).
    let ptr = allocation.as_ptr().cast_mut();
    log("writing through a raw pointer");
    // SAFETY: none; this deliberately writes through a read-only mapping to show that the
    // write never lands. The process dies of SIGSEGV here.
    unsafe { ptr.write_volatile(0xAB) };
    Err("the write to a read-only input did not fault".into())
}

fn escalate(payload: &mut Payload<'_>, name: &str) -> Result<(), CallbackError> {
    let entry = payload.fastio_input(name)?;
    let allocation = entry.allocation().ok_or("input not allocated")?;
    allocation.publish("escalated")?;
    match payload.fastio_context().get("escalated") {
        Ok(mut writable) => {
            writable.write_bytes(0, &[0xAB])?;
            Err("a read-only input was got read-write and written".into())
        }
        Err(e) => {
            log(&format!(
                "escalation refused: {}",
                e.to_string().replace(' ', "_")
            ));
            Ok(())
        }
    }
}

fn disturb(payload: &mut Payload<'_>, name: &str) -> Result<(), CallbackError> {
    let context = payload.fastio_context();
    let refused = |e: fastio::ContextError| {
        log(&format!(
            "disturb refused: {}",
            e.to_string().replace(' ', "_")
        ));
    };
    match context.unpublish(name) {
        Ok(()) => return Err(format!("{name} was withdrawn by a reader").into()),
        Err(e) => refused(e),
    }
    let mut mine = context.create(8)?;
    mine.write_bytes(0, &[0xAB; 8])?;
    match mine.publish_replacing(name) {
        Ok(()) => return Err(format!("{name} was replaced by a reader").into()),
        Err(e) => refused(e),
    }
    mine.release()?;
    let held = context.get_with(name, fastio::AccessMode::ReadOnly)?;
    if held.read_bytes(0, 8)? != [1, 2, 3, 4, 5, 6, 7, 8] {
        return Err(format!("{name} no longer holds its publisher's bytes").into());
    }
    held.release()?;
    Ok(())
}

fn paths(payload: &mut Payload<'_>) -> Result<(), CallbackError> {
    // Clara's operators read their paths from the environment: name:path.
    let inputs = std::env::var("NVIDIA_CLARA_INPUTPATHS").unwrap_or_default();
    let outputs = std::env::var("NVIDIA_CLARA_OUTPUTPATHS").unwrap_or_default();
    if let Some(out) = outputs.split(':').nth(1) {
        std::fs::write(
            std::path::Path::new(out).join("greeting.txt"),
            format!("hello from {}", std::env::var("FASTIO_STAGE")?),
        )?;
        if payload.output_entries()[0].path != out {
            return Err("payload and environment disagree on the output path".into());
        }
    }
    if let Some(input) = inputs.split(':').nth(1) {
        let text = std::fs::read_to_string(std::path::Path::new(input).join("greeting.txt"))?;
        log(&format!("read {}", text.replace(' ', "_")));
    }
    Ok(())
}
