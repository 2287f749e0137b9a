//! Which operators use the pipeline driver and which are plain programs: the rule is
//! [`OperatorKind`]'s documentation.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use fastio_pipeline::Pipeline;

/// How an operator takes part in a job.
///
/// An operator that uses the driver (Rust `fastio::Driver`, C `nvidia_clara_cpd__*`,
/// Python `clara.Driver`) starts at job start: its prepare overlaps upstream work and the
/// context holds back its execute until its inputs are complete. A plain program (a shell
/// script, a converter) knows nothing of the job: it is started only once every upstream
/// operator has finished execute, and it succeeds by exiting 0 (Clara's disk semantics).
///
/// The rule, first match wins:
/// 1. `uses-driver: true` or `false` in the definition;
/// 2. an operator with a shared-memory (typed) input or output uses the driver: nothing
///    else reaches those entries;
/// 3. the program shows that it uses the driver: a compiled program contains
///    `FASTIO_STAGE` (the variable fastio's driver reads, in every program built with it,
///    Rust or C) or `nvidia_clara_cpd__` (Clara's C driver API, in the symbol table of a
///    program linked with `-lnvclara` or `-lfastio`); a Python script (`python3 op.py`, a
///    `#!` script, the code of `python3 -c CODE`) imports `clara` or `fastio`; `env` in
///    front (`env A=1 python3 op.py`) is looked through;
/// 4. otherwise it is a plain program: shell scripts among them, since a shell cannot
///    use the driver itself (one that `exec`s a driver program is started late, which is
///    safe; see below).
///
/// A program that cannot be read is taken to use the driver, so that it is started at job
/// start and its start failure ends the job at once.
///
/// Why a look at the program rather than a declaration alone: Clara definitions do not
/// say, and a definition that works must keep working unchanged. The two ways to be wrong
/// are not alike: a driver program taken for a plain one still runs correctly (it joins
/// late, finds its inputs complete, and only loses the overlap of prepare), while a plain
/// program taken for a driver one would run before its inputs exist. So the look is for
/// evidence of the driver, and everything without it is plain; `uses-driver` settles any
/// doubt. A plain program that shows a marker by accident (a compiled program that reads
/// `FASTIO_STAGE` itself) exits without joining the job, and the job fails with a message
/// that names the reason and `uses-driver: false`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OperatorKind {
    /// It uses the pipeline driver: started at job start, follows the driver's life-cycle.
    Driver,
    /// A plain program: started once its upstream operators have finished execute,
    /// succeeds by exiting 0.
    Plain,
}

/// Why an operator is of its kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KindReason {
    /// `uses-driver` in the definition.
    Declared,
    /// It has a shared-memory input or output.
    SharedMemory,
    /// The file mentions the driver (`marker`).
    Mentions {
        /// The program or script.
        file: PathBuf,
        /// What was found in it.
        marker: &'static str,
    },
    /// The command's code (`-c CODE`) mentions the driver.
    CodeMentions {
        /// What was found in it.
        marker: &'static str,
    },
    /// The program could not be read.
    Unreadable {
        /// The program.
        file: PathBuf,
    },
    /// Nothing shows that it uses the driver.
    NoMention,
}

impl fmt::Display for KindReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KindReason::Declared => f.write_str("declared by uses-driver"),
            KindReason::SharedMemory => f.write_str("it has shared-memory entries"),
            KindReason::Mentions { file, marker } => {
                write!(f, "{} contains {marker}", file.display())
            }
            KindReason::CodeMentions { marker } => write!(f, "its code contains {marker}"),
            KindReason::Unreadable { file } => write!(f, "{} cannot be read", file.display()),
            KindReason::NoMention => f.write_str("its program shows no use of the driver"),
        }
    }
}

/// Markers of the driver in a compiled program.
const BINARY_MARKERS: [&str; 2] = ["FASTIO_STAGE", "nvidia_clara_cpd__"];
/// Python modules whose import marks a driver operator.
const PYTHON_MODULES: [&str; 2] = ["clara", "fastio"];
/// Programs that run a script named by their first non-option argument, or code given with
/// `-c`.
const INTERPRETERS: [&str; 6] = ["python", "python3", "sh", "bash", "dash", "zsh"];

/// What was found in files already looked at, by path and whether read as a script
/// (`None`: unreadable): a pipeline of many operators running one program reads it once.
#[derive(Default)]
pub(crate) struct Seen(HashMap<(PathBuf, bool), Option<Option<&'static str>>>);

impl Seen {
    fn program(&mut self, path: &Path) -> Option<Option<&'static str>> {
        *self
            .0
            .entry((path.to_owned(), false))
            .or_insert_with(|| mentions_driver(path).ok())
    }

    fn script(&mut self, path: &Path) -> Option<&'static str> {
        self.0
            .entry((path.to_owned(), true))
            .or_insert_with(|| read_start(path).ok().map(|text| script_marker(&text)))
            .flatten()
    }
}

/// Decides the kind of the operator at `index` of `pipeline`, whose program resolves to
/// `program` (the driver's own lookup) and which starts in folder `cwd` (where a relative
/// script argument is found).
pub(crate) fn operator_kind(
    pipeline: &Pipeline,
    index: usize,
    program: &Path,
    cwd: &Path,
    seen: &mut Seen,
) -> (OperatorKind, KindReason) {
    let op = &pipeline.operators()[index];
    if let Some(declared) = op.uses_driver() {
        let kind = if declared {
            OperatorKind::Driver
        } else {
            OperatorKind::Plain
        };
        return (kind, KindReason::Declared);
    }
    if op.has_shared_memory() {
        return (OperatorKind::Driver, KindReason::SharedMemory);
    }
    let Some(argv) = op.command() else {
        return (OperatorKind::Plain, KindReason::NoMention);
    };
    let mut program = if program.components().count() == 1 {
        // A bare name: the operating system will look it up in PATH.
        search_path(program).unwrap_or_else(|| program.to_owned())
    } else {
        program.to_owned()
    };
    let mut args = &argv[1..];
    // `env [NAME=VALUE]... PROGRAM ARGS` runs PROGRAM: look at that one.
    while program.file_name().is_some_and(|n| n == "env") {
        let Some((next, rest)) = after_env(args) else {
            break;
        };
        program = if next.contains('/') {
            cwd.join(next)
        } else {
            search_path(Path::new(next)).unwrap_or_else(|| PathBuf::from(next))
        };
        args = rest;
    }
    let program = program.as_path();
    match seen.program(program) {
        None => {
            return (
                OperatorKind::Driver,
                KindReason::Unreadable {
                    file: program.to_owned(),
                },
            );
        }
        Some(Some(marker)) => {
            return (
                OperatorKind::Driver,
                KindReason::Mentions {
                    file: program.to_owned(),
                    marker,
                },
            );
        }
        Some(None) => {}
    }
    if let Some(reason) = interpreted_mention(args, program, cwd, seen) {
        return (OperatorKind::Driver, reason);
    }
    (OperatorKind::Plain, KindReason::NoMention)
}

/// The program `env` runs and its arguments: after `env`'s options (`-i`, `-u NAME`,
/// `-C DIR`) and `NAME=VALUE` settings. `None` when there is none (`env` alone prints the
/// environment) or an option is not understood.
fn after_env(args: &[String]) -> Option<(&str, &[String])> {
    let mut i = 0;
    while let Some(arg) = args.get(i) {
        match arg.as_str() {
            "-i" | "--ignore-environment" | "-0" | "--null" => i += 1,
            "-u" | "--unset" | "-C" | "--chdir" => i += 2,
            "--" => return args.get(i + 1).map(|p| (p.as_str(), &args[i + 2..])),
            a if a.starts_with('-') => return None,
            a if a.contains('=') => i += 1,
            program => return Some((program, &args[i + 1..])),
        }
    }
    None
}

/// The first file of that name in a `PATH` directory, as `execvp` finds it.
fn search_path(name: &Path) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate).is_ok_and(|m| {
                use std::os::unix::fs::PermissionsExt;
                m.is_file() && m.permissions().mode() & 0o111 != 0
            })
        })
}

/// For an interpreter's command line: the script it runs (first non-option argument) or
/// its `-c` code, searched for markers.
fn interpreted_mention(
    args: &[String],
    program: &Path,
    cwd: &Path,
    seen: &mut Seen,
) -> Option<KindReason> {
    let name = program.file_name()?.to_str()?;
    // python3.12 counts as python3.
    let base = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
    if !INTERPRETERS.contains(&name) && !INTERPRETERS.contains(&base) {
        return None;
    }
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if arg == "-c" {
            let code = args.next()?;
            return script_marker(code.as_bytes())
                .map(|marker| KindReason::CodeMentions { marker });
        }
        if arg == "-m" || arg == "--" {
            // A module by name: not a file to look at.
            return None;
        }
        if arg.starts_with('-') {
            continue;
        }
        let script = cwd.join(arg);
        return seen.script(&script).map(|marker| KindReason::Mentions {
            file: script,
            marker,
        });
    }
    None
}

/// How much of a script is read: imports come first.
const SCRIPT_BYTES: u64 = 1 << 20;

/// Opens a regular file for reading. Anything else (a FIFO, which would block the open or
/// the read, a device such as `/dev/zero`, which never ends) is refused: the look at a
/// program must cost a bounded time.
fn open_regular(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        // A FIFO opens at once instead of waiting for a writer; regular files ignore it.
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(file)
}

/// The first [`SCRIPT_BYTES`] of a file.
fn read_start(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut text = Vec::new();
    open_regular(path)?
        .take(SCRIPT_BYTES)
        .read_to_end(&mut text)?;
    Ok(text)
}

/// Whether the program file shows the driver: a `#!` script by its imports, a compiled
/// program by its markers. Read in pieces, so that a large program costs the memory of one.
fn mentions_driver(path: &Path) -> std::io::Result<Option<&'static str>> {
    const PIECE: usize = 1 << 20;
    // Long enough for any marker to straddle two pieces.
    const OVERLAP: usize = 64;
    let mut file = open_regular(path)?;
    let mut buffer = vec![0u8; PIECE + OVERLAP];
    let mut kept = 0;
    let mut first = true;
    loop {
        let read = file.read(&mut buffer[kept..])?;
        if read == 0 {
            return Ok(None);
        }
        let filled = kept + read;
        let data = &buffer[..filled];
        if first && data.starts_with(b"#!") {
            // A script: its imports are in the first piece.
            return Ok(script_marker(data));
        }
        first = false;
        if let Some(marker) = BINARY_MARKERS
            .into_iter()
            .find(|m| memchr::memmem::find(data, m.as_bytes()).is_some())
        {
            return Ok(Some(marker));
        }
        kept = OVERLAP.min(filled);
        buffer.copy_within(filled - kept..filled, 0);
    }
}

/// A Python import of a driver module in script text (`import clara`, `from clara import
/// Driver`, `import fastio as f`). Names in the text otherwise (a script that logs
/// `$FASTIO_STAGE`) do not count.
fn script_marker(text: &[u8]) -> Option<&'static str> {
    let text = String::from_utf8_lossy(text);
    for statement in text.lines().flat_map(|l| l.split(';')) {
        let words: Vec<&str> = statement.split_whitespace().collect();
        let module = match words.as_slice() {
            ["import", rest @ ..] => rest.join(" "),
            ["from", module, "import", ..] => (*module).to_owned(),
            _ => continue,
        };
        // `import os, clara.x` imports clara; the top package is what counts.
        for item in module.split(',') {
            let top = item.trim().split(['.', ' ']).next().unwrap_or("");
            if let Some(found) = PYTHON_MODULES.into_iter().find(|m| *m == top) {
                return Some(match found {
                    "clara" => "an import of clara",
                    _ => "an import of fastio",
                });
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_imports_of_the_driver_modules_are_found_and_others_are_not() {
        for code in [
            "from clara import Driver",
            "import clara",
            "import os, fastio.operator as op",
            "import json; import clara",
            "  from fastio import Driver  # indented",
        ] {
            assert!(script_marker(code.as_bytes()).is_some(), "{code}");
        }
        for code in [
            "import clarinet",
            "from fastio_tools import x",
            "print('import clara')",
            "# uses no driver",
            "import os",
            "echo \"$FASTIO_STAGE start\" >> \"$LOG\"",
        ] {
            assert_eq!(script_marker(code.as_bytes()), None, "{code}");
        }
    }

    #[test]
    fn env_runs_the_program_after_its_settings() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let line = args(&["-u", "HOME", "A=1", "python3", "op.py"]);
        let (program, rest) = after_env(&line).unwrap();
        assert_eq!((program, rest), ("python3", &line[4..]));
        assert_eq!(after_env(&args(&["A=1"])), None);
        assert_eq!(after_env(&args(&["--split-string", "x"])), None);
    }

    #[test]
    fn a_marker_straddling_two_pieces_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("program");
        let mut bytes = vec![0u8; (1 << 20) - 5];
        bytes.extend_from_slice(b"FASTIO_STAGE");
        bytes.extend_from_slice(&[0u8; 100]);
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(mentions_driver(&path).unwrap(), Some("FASTIO_STAGE"));
        std::fs::write(&path, vec![7u8; 3 << 20]).unwrap();
        assert_eq!(mentions_driver(&path).unwrap(), None);
    }

    #[test]
    fn fifos_and_devices_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::RWXU,
            0,
        )
        .unwrap();
        // Without the check, opening the FIFO blocks for a writer that never comes.
        assert!(mentions_driver(&fifo).is_err());
        assert!(read_start(&fifo).is_err());
        assert!(mentions_driver(Path::new("/dev/zero")).is_err());
    }
}
