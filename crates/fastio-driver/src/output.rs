//! Reading operators' output: stdout and stderr as bytes, split into lines, kept in the
//! operator's log file, handed to the caller's sink, and (stderr) kept as a tail for the
//! report.
//!
//! The reader never stops on bad bytes: invalid UTF-8 is shown lossily (U+FFFD) and written
//! to the log as it came, so an operator that prints it is never killed by SIGPIPE for it.
//! Lines are bounded ([`MAX_LINE`]): a longer run of bytes without a newline is passed on in
//! pieces, so an operator cannot make the driver hold unbounded memory. The reader polls
//! with a timeout and can be told to stop, so a descendant that escaped the job and still
//! holds the write end of the pipe cannot make the driver wait for end of file forever.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The longest line passed on whole; longer runs without a newline come in pieces of this
/// many bytes.
pub const MAX_LINE: usize = 64 * 1024;

/// How often a reader with nothing to read looks at its stop flag.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Which of an operator's output streams a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One line of an operator's output, without its newline, decoded lossily.
#[derive(Clone, Copy, Debug)]
pub struct OutputLine<'a> {
    /// The operator's name.
    pub operator: &'a str,
    /// The stream it came from.
    pub stream: Stream,
    /// The text (invalid UTF-8 shown as U+FFFD).
    pub text: &'a str,
}

/// Receives every line of every operator's output as it is read, on the reader threads.
#[derive(Clone)]
pub struct OutputSink(Arc<dyn Fn(&OutputLine<'_>) + Send + Sync>);

impl OutputSink {
    /// A sink calling `f` for each line.
    pub fn new(f: impl Fn(&OutputLine<'_>) + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }
}

impl std::fmt::Debug for OutputSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OutputSink")
    }
}

/// Lines kept from an operator's output.
pub(crate) type Tail = Arc<Mutex<VecDeque<String>>>;

/// Where one operator's lines go.
#[derive(Clone)]
pub(crate) struct Destinations {
    pub operator: Arc<str>,
    pub log: Option<Arc<Mutex<File>>>,
    pub sink: Option<OutputSink>,
}

/// A thread reading one stream of one operator.
pub(crate) struct Reader {
    thread: thread::JoinHandle<()>,
    stop: Arc<AtomicBool>,
}

impl Reader {
    /// Starts reading `fd` until end of file or until [`finish`] stops it. `tail` keeps the
    /// last `tail_lines` lines.
    pub fn start(
        fd: OwnedFd,
        stream: Stream,
        to: Destinations,
        tail: Option<(Tail, usize)>,
    ) -> std::io::Result<Self> {
        // Non-blocking, so that a stopped reader drains what is there and returns.
        rustix::io::ioctl_fionbio(&fd, true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::Builder::new()
            .name(format!("output {}", to.operator))
            .spawn(move || read(fd, stream, &to, tail.as_ref(), &flag))?;
        Ok(Self { thread, stop })
    }
}

/// Waits up to `patience` for every reader to reach end of file, then tells those still
/// reading (a pipe kept open by a process outside the job's control) to drain what is
/// there and stop. Returns within `patience` plus one poll interval.
pub(crate) fn finish(readers: Vec<Reader>, patience: Duration) {
    let until = Instant::now() + patience;
    while Instant::now() < until && readers.iter().any(|r| !r.thread.is_finished()) {
        thread::sleep(Duration::from_millis(10));
    }
    for r in &readers {
        r.stop.store(true, Ordering::Relaxed);
    }
    for r in readers {
        let _ = r.thread.join();
    }
}

fn read(
    fd: OwnedFd,
    stream: Stream,
    to: &Destinations,
    tail: Option<&(Tail, usize)>,
    stop: &AtomicBool,
) {
    let mut line: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let timeout = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: POLL_INTERVAL.as_nanos() as i64,
    };
    loop {
        match rustix::io::read(&fd, &mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                let mut rest = &chunk[..n];
                while let Some(end) = rest.iter().position(|&b| b == b'\n') {
                    line.extend_from_slice(&rest[..end]);
                    emit(&mut line, stream, to, tail);
                    rest = &rest[end + 1..];
                }
                line.extend_from_slice(rest);
                while line.len() >= MAX_LINE {
                    let mut piece: Vec<u8> = line.drain(..MAX_LINE).collect();
                    emit(&mut piece, stream, to, tail);
                }
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::AGAIN) => {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let borrowed = fd.as_fd();
                let mut fds = [rustix::event::PollFd::new(
                    &borrowed,
                    rustix::event::PollFlags::IN,
                )];
                let _ = rustix::event::poll(&mut fds, Some(&timeout));
            }
            Err(_) => break,
        }
    }
    if !line.is_empty() {
        emit(&mut line, stream, to, tail);
    }
}

/// Passes one line on and empties `line`.
fn emit(line: &mut Vec<u8>, stream: Stream, to: &Destinations, tail: Option<&(Tail, usize)>) {
    if let Some(log) = &to.log {
        let mut file = log.lock().unwrap_or_else(|p| p.into_inner());
        line.push(b'\n');
        // The log is a convenience: a full disk must not stop the operator.
        let _ = file.write_all(line);
        line.pop();
    }
    let text = String::from_utf8_lossy(line);
    if let Some(sink) = &to.sink {
        (sink.0)(&OutputLine {
            operator: &to.operator,
            stream,
            text: &text,
        });
    }
    if let Some((tail, keep)) = tail {
        let mut tail = tail.lock().unwrap_or_else(|p| p.into_inner());
        if tail.len() == *keep {
            tail.pop_front();
        }
        tail.push_back(text.into_owned());
    }
    line.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_without_end_comes_in_bounded_pieces_and_bad_bytes_lossily() {
        let (read_end, write_end) = rustix::pipe::pipe().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let seen = lines.clone();
        let to = Destinations {
            operator: "op".into(),
            log: None,
            sink: Some(OutputSink::new(move |l| {
                seen.lock().unwrap().push(l.text.to_owned())
            })),
        };
        let reader = Reader::start(read_end, Stream::Stdout, to, None).unwrap();
        let mut long = vec![b'x'; 2 * MAX_LINE + 100];
        long.extend_from_slice(b"\nbad \xff end");
        // The pipe holds less than this: the reader must keep reading while we write.
        let writer = std::thread::spawn(move || {
            rustix::io::write(&write_end, &long[..MAX_LINE]).unwrap();
            let mut rest = &long[MAX_LINE..];
            while !rest.is_empty() {
                let n = rustix::io::write(&write_end, rest).unwrap();
                rest = &rest[n..];
            }
        });
        writer.join().unwrap();
        finish(vec![reader], Duration::from_secs(10));
        let lines = lines.lock().unwrap();
        let lengths: Vec<usize> = lines.iter().map(String::len).collect();
        assert_eq!(lengths[..3], [MAX_LINE, MAX_LINE, 100]);
        assert_eq!(lines[3], "bad \u{FFFD} end");
    }
}
