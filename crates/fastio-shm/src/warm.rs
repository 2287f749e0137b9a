//! The warm reserve: memory kept in this machine's RAM between jobs.
//!
//! On a virtual machine whose balloon reports free memory to the host (virtio-balloon free
//! page reporting), blocks of huge-page size that stay free for about two seconds go back
//! to the host, and the next process to touch them pays a host fault per 4 KiB page:
//! measured on a 2-core VM, 1 GiB of fresh huge pages in 1.45 s ten seconds after the
//! memory was freed, against 0.07 s right after. A job that starts after a pause pays that
//! for every byte it hands over.
//!
//! A **keeper** ([`keep`], run by `fastio keep-warm`) is a small process that holds, between
//! jobs, **blanks**: memfds of the sizes the last job made, already made of huge pages and
//! zero, never sealed, never mapped by anyone but the keeper while it made them. A job host
//! **leases** the keeper ([`join`]) and receives every blank it holds; when this process
//! then makes a segment of a blank's exact size ([`crate::SegmentBuilder::create`]), the
//! blank becomes the segment (sealed and locked down as any new segment) instead of fresh
//! memory. Its pages never went back to the kernel's allocator, so none of them can have
//! gone back to the host. (Freeing memory and allocating it again at once does not do
//! this: the allocator hands out other free blocks first, reported ones among them.)
//!
//! When the lease ends ([`leave`], or the holder's death) the keeper gets back the blanks
//! the job did not use, learns the sizes the job made, and makes blanks of those sizes
//! again, a step at a time between requests; it holds them until it has been idle for its
//! keep time ([`KEEP_WARM_ENV`], [`DEFAULT_KEEP`]), then exits and the memory is the
//! system's again.
//!
//! Invariants:
//! - A blank is seen by no client of a context before it becomes a segment, and by no
//!   process but the keeper and one lease holder; a segment made from it is as fresh, for
//!   every client, as one made of new memory. Segments are never given back.
//! - One lease at a time: a second job host finds the keeper busy and makes fresh memory.
//! - The keeper talks only to processes of its own user, and a holder only to a keeper of
//!   its own user (`SO_PEERCRED` both ways), over an abstract Unix socket
//!   (`fastio-warm/<uid>/<name>`): nothing is left on any filesystem. A holder accepts only
//!   blanks that are memfds of its user, open read-write, of the size announced, all
//!   allocated, with no seal; so does the keeper of the blanks a holder gives back.
//! - Every wait is bounded: a client waits at most [`CLIENT_WAIT`] to connect (a keeper
//!   that does not accept, stopped or stuck, is as good as none) and for each answer; the
//!   keeper waits at most [`CLIENT_WAIT`] for a request and never on a lease holder, whose
//!   end the kernel signals.
//! - A keeper's blanks never add up to more than a quarter of the machine's memory, or of
//!   its memory cgroup's limit where lower (each name has its keeper). An idle keeper looks
//!   at the memory available every second and leaves a sixteenth of that to others: below
//!   it, it frees blanks (largest first) and makes no more. A lease holder counts the
//!   blanks it holds as available, and frees them (largest first) before every memory
//!   check of a create that takes no blank, until the system itself has the memory
//!   (`make_room`).
//! - The keeper trusts a lease holder of its own user with the blanks it gives back: they
//!   must be untouched (the holder never maps them).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use rustix::fs::MemfdFlags;
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

use crate::transfer::{recv_message, send_message};

/// Environment variable: how many seconds a keeper holds its blanks once idle (a whole
/// number; `0` turns the warm reserve off: no keeper is joined or started).
pub const KEEP_WARM_ENV: &str = "FASTIO_KEEP_WARM";

/// Environment variable: the keeper's name, for several independent reserves of one user
/// (tests, separate pipelines). Letters, digits, `-`, `_` and `.`; `default` when unset.
pub const WARM_NAME_ENV: &str = "FASTIO_WARM_NAME";

/// How long a keeper holds its blanks once idle, unless [`KEEP_WARM_ENV`] says otherwise.
pub const DEFAULT_KEEP: Duration = Duration::from_secs(120);

/// A job host whose segments of a huge page or more add up to less starts no keeper:
/// small hand-overs cost too little for a process to be kept for them.
pub const MIN_RESERVE: u64 = 64 << 20;

/// The longest a client waits for each answer of a keeper, and a keeper for a request.
pub const CLIENT_WAIT: Duration = Duration::from_secs(2);

/// The most segment sizes a job host remembers (the largest are kept).
const MAX_SIZES: usize = 64;

const VERSION: u8 = 1;
const LEASE: u8 = b'L';
const STATUS: u8 = b'S';
const STOP: u8 = b'Q';
const GRANT: u8 = b'G';
const BLANK: u8 = b'K';
const SIZES: u8 = b'Z';
const BUSY: u8 = b'B';

/// Why the warm reserve could not be used or kept.
#[derive(Debug, thiserror::Error)]
pub enum WarmError {
    /// A setting is malformed.
    #[error("{name}={value:?} is not valid: {expected}")]
    BadSetting {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// What it should be.
        expected: &'static str,
    },
    /// A system call failed.
    #[error("{op} failed: {errno}")]
    Os {
        /// Which operation.
        op: &'static str,
        /// The error number (in the message, so not the error's `source()`).
        errno: Errno,
    },
}

fn os(op: &'static str) -> impl FnOnce(Errno) -> WarmError {
    move |errno| WarmError::Os { op, errno }
}

/// How long a keeper holds its blanks once idle, from [`KEEP_WARM_ENV`]; `None` when the
/// warm reserve is off.
pub fn keep_time() -> Result<Option<Duration>, WarmError> {
    parse_keep_time(std::env::var(KEEP_WARM_ENV).ok())
}

fn parse_keep_time(value: Option<String>) -> Result<Option<Duration>, WarmError> {
    match value {
        None => Ok(Some(DEFAULT_KEEP)),
        Some(value) => match value.trim().parse::<u64>() {
            Ok(0) => Ok(None),
            Ok(seconds) => Ok(Some(Duration::from_secs(seconds))),
            Err(_) => Err(WarmError::BadSetting {
                name: KEEP_WARM_ENV,
                value,
                expected: "a whole number of seconds (0 turns the warm reserve off)",
            }),
        },
    }
}

/// The keeper's name, from [`WARM_NAME_ENV`].
pub fn keeper_name() -> Result<String, WarmError> {
    parse_keeper_name(std::env::var(WARM_NAME_ENV).ok())
}

fn parse_keeper_name(value: Option<String>) -> Result<String, WarmError> {
    match value {
        None => Ok("default".to_owned()),
        Some(value)
            if !value.is_empty()
                && value.len() <= 64
                && value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) =>
        {
            Ok(value)
        }
        Some(value) => Err(WarmError::BadSetting {
            name: WARM_NAME_ENV,
            value,
            expected: "1 to 64 letters, digits, '-', '_' or '.'",
        }),
    }
}

fn address(name: &str) -> Result<SocketAddrUnix, WarmError> {
    let uid = rustix::process::geteuid().as_raw();
    SocketAddrUnix::new_abstract_name(format!("fastio-warm/{uid}/{name}").as_bytes())
        .map_err(os("naming the keeper's socket"))
}

fn seqpacket() -> Result<OwnedFd, WarmError> {
    rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(os("socket"))
}

fn set_timeouts(fd: &OwnedFd, wait: Option<Duration>) -> Result<(), WarmError> {
    use rustix::net::sockopt::{Timeout, set_socket_timeout};
    set_socket_timeout(fd, Timeout::Recv, wait).map_err(os("setting a socket timeout"))?;
    set_socket_timeout(fd, Timeout::Send, wait).map_err(os("setting a socket timeout"))
}

/// Sets `conn`'s timeouts to what is left until `deadline`; false once it has passed.
fn until(conn: &OwnedFd, deadline: Instant) -> bool {
    let left = deadline.saturating_duration_since(Instant::now());
    !left.is_zero() && set_timeouts(conn, Some(left)).is_ok()
}

/// Whether the process at the other end of `conn` runs as this process's user.
fn same_user(conn: &OwnedFd) -> bool {
    rustix::net::sockopt::socket_peercred(conn).is_ok_and(|c| c.uid == rustix::process::geteuid())
}

/// A connection to the keeper named `name`, or `None` when none runs (or one of another
/// user holds the name).
fn connect(name: &str) -> Result<Option<OwnedFd>, WarmError> {
    let fd = seqpacket()?;
    // Set before connecting: a Unix socket's connect waits as long as its send timeout
    // while the listener's queue is full (a keeper stopped or stuck), and for ever without.
    set_timeouts(&fd, Some(CLIENT_WAIT))?;
    match rustix::net::connect(&fd, &address(name)?) {
        Ok(()) => {}
        // No keeper; or one whose queue stayed full for CLIENT_WAIT: as good as none.
        Err(Errno::CONNREFUSED | Errno::NOENT | Errno::AGAIN) => return Ok(None),
        Err(e) => return Err(os("connecting to the warm-reserve keeper")(e)),
    }
    if !same_user(&fd) {
        return Ok(None);
    }
    Ok(Some(fd))
}

/// One request and its answer; `None` when the keeper went away or did not answer in time.
fn ask(conn: &OwnedFd, request: u8) -> Option<crate::transfer::Received> {
    send_message(conn.as_fd(), &[VERSION, request], &[]).ok()?;
    recv_message(conn.as_fd()).ok()
}

fn u64_at(body: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(body.get(at..at + 8)?.try_into().ok()?))
}

fn with_u64s(tag: u8, values: impl IntoIterator<Item = u64>) -> Vec<u8> {
    let mut body = vec![tag];
    for v in values {
        body.extend_from_slice(&v.to_le_bytes());
    }
    body
}

/// What a keeper holds and does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeeperStatus {
    /// Its process id.
    pub pid: u32,
    /// Bytes of blanks ready now.
    pub held: u64,
    /// Bytes of blanks it makes while idle: the sizes the last job made, bounded.
    pub target: u64,
    /// Whether a job host holds the lease now.
    pub leased: bool,
    /// Bytes of blanks lease holders have made segments of, in all.
    pub used: u64,
    /// Leases granted, in all.
    pub leases: u64,
    /// Seconds it holds its blanks once idle.
    pub keep_secs: u64,
}

/// The status of the keeper named `name`, or `None` when none runs (or it did not answer
/// within [`CLIENT_WAIT`]).
pub fn status(name: &str) -> Result<Option<KeeperStatus>, WarmError> {
    let Some(conn) = connect(name)? else {
        return Ok(None);
    };
    let Some(reply) = ask(&conn, STATUS) else {
        return Ok(None);
    };
    let body = &reply.body;
    if body.first() != Some(&STATUS) {
        return Ok(None);
    }
    let field = |i: usize| u64_at(body, 1 + 8 * i);
    Ok((|| {
        Some(KeeperStatus {
            pid: u32::try_from(field(0)?).ok()?,
            held: field(1)?,
            target: field(2)?,
            leased: field(3)? != 0,
            used: field(4)?,
            leases: field(5)?,
            keep_secs: field(6)?,
        })
    })())
}

/// Asks the keeper named `name` to free its blanks and exit; whether one did.
pub fn stop(name: &str) -> Result<bool, WarmError> {
    let Some(conn) = connect(name)? else {
        return Ok(false);
    };
    Ok(ask(&conn, STOP).is_some_and(|r| r.body.first() == Some(&STOP)))
}

// ---------------------------------------------------------------------------------------
// The lease holder's side (a job host).

struct Lease {
    conn: OwnedFd,
    blanks: Vec<(OwnedFd, u64)>,
}

static HELD: Mutex<Option<Lease>> = Mutex::new(None);
/// Sizes of the segments of a huge page or more this process made since it started or
/// last joined a keeper (the [`MAX_SIZES`] largest).
static MADE: Mutex<Vec<u64>> = Mutex::new(Vec::new());

fn lease() -> std::sync::MutexGuard<'static, Option<Lease>> {
    HELD.lock().unwrap_or_else(|p| p.into_inner())
}

fn made() -> std::sync::MutexGuard<'static, Vec<u64>> {
    MADE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Leases the keeper named `name`: this process receives every blank it holds, and each
/// segment it then makes of a blank's size is made of that blank. Returns the bytes of
/// blanks received, or `None` when no keeper runs, another process holds the lease, or the
/// keeper did not answer within [`CLIENT_WAIT`] (the process then makes fresh memory, as
/// without a keeper). Forgets the sizes made so far ([`leave`] reports those made after).
pub fn join(name: &str) -> Result<Option<u64>, WarmError> {
    made().clear();
    let deadline = Instant::now() + CLIENT_WAIT;
    let Some(conn) = connect(name)? else {
        return Ok(None);
    };
    let Some(reply) = ask(&conn, LEASE) else {
        return Ok(None);
    };
    let (Some(&GRANT), Some(count)) = (reply.body.first(), u64_at(&reply.body, 1)) else {
        return Ok(None);
    };
    let mut blanks = Vec::new();
    for _ in 0..count.min(MAX_SIZES as u64) {
        if !until(&conn, deadline) {
            break;
        }
        let Ok(mut m) = recv_message(conn.as_fd()) else {
            break;
        };
        if let (Some(&BLANK), Some(len), 1) = (m.body.first(), u64_at(&m.body, 1), m.fds.len()) {
            let fd = m.fds.remove(0);
            if is_blank(&fd, len) {
                blanks.push((fd, len));
            }
        }
    }
    let bytes = blanks.iter().map(|(_, len)| len).sum();
    *lease() = Some(Lease { conn, blanks });
    Ok(Some(bytes))
}

/// Whether `fd` is a memfd of this user, of `len` bytes, all of them allocated (a segment
/// made of it never meets a hole it must allocate later, and a blank's size is bounded by
/// real memory), open for reading and writing (sealing needs it), sealable and without a
/// seal.
fn is_blank(fd: &OwnedFd, len: u64) -> bool {
    let Ok(stat) = rustix::fs::fstat(fd) else {
        return false;
    };
    let read_write = rustix::fs::fcntl_getfl(fd)
        .is_ok_and(|f| f & rustix::fs::OFlags::RWMODE == rustix::fs::OFlags::RDWR);
    read_write
        && stat.st_uid == rustix::process::geteuid().as_raw()
        && u64::try_from(stat.st_size).is_ok_and(|s| s == len)
        && u64::try_from(stat.st_blocks).is_ok_and(|b| b.saturating_mul(512) >= len)
        && rustix::fs::fcntl_get_seals(fd).is_ok_and(|s| s.is_empty())
}

/// Ends this process's lease, if it holds one: the blanks not used go back to the keeper,
/// with the sizes this process made since it joined, and the keeper makes blanks of those
/// sizes again from then on (call it once the job's segments are freed). Returns those
/// sizes (also without a lease: what a keeper started now should hold).
pub fn leave() -> Vec<u64> {
    let sizes = made().clone();
    if let Some(held) = lease().take() {
        let deadline = Instant::now() + CLIENT_WAIT;
        for (fd, len) in &held.blanks {
            let body = with_u64s(BLANK, [*len]);
            if !until(&held.conn, deadline)
                || send_message(held.conn.as_fd(), &body, &[fd.as_fd()]).is_err()
            {
                break;
            }
        }
        if until(&held.conn, deadline) {
            let _ = send_message(held.conn.as_fd(), &with_u64s(SIZES, sizes.clone()), &[]);
        }
    }
    sizes
}

/// Bytes of blanks this process holds (0 without a lease): memory it can make segments of
/// without asking the system for more.
pub fn leased_bytes() -> u64 {
    lease()
        .as_ref()
        .map_or(0, |l| l.blanks.iter().map(|(_, len)| len).sum())
}

/// A blank of exactly `len` bytes, if this process holds one; the size is remembered
/// either way (see [`leave`]).
pub(crate) fn take_blank(len: u64) -> Option<OwnedFd> {
    {
        let mut sizes = made();
        sizes.push(len);
        if sizes.len() > MAX_SIZES {
            sizes.sort_unstable_by(|a, b| b.cmp(a));
            sizes.truncate(MAX_SIZES);
        }
    }
    let mut guard = lease();
    let held = guard.as_mut()?;
    let at = held.blanks.iter().position(|(_, l)| *l == len)?;
    Some(held.blanks.swap_remove(at).0)
}

/// Frees blanks this process holds, largest first, until the system itself has `need`
/// bytes available (or none is left): blanks count as available memory
/// ([`crate::available_memory`]), so whatever is about to take memory on the strength of
/// that count frees them first (every check of a segment's create does).
pub(crate) fn make_room(need: u64) {
    if let Some(held) = lease().as_mut() {
        shed(&mut held.blanks, || {
            crate::memory::system_available_memory().is_some_and(|a| a < need)
        });
    }
}

/// Frees blanks, largest first, while `short()` says memory is short.
fn shed(blanks: &mut Vec<(OwnedFd, u64)>, short: impl Fn() -> bool) {
    blanks.sort_unstable_by_key(|(_, l)| *l);
    while !blanks.is_empty() && short() {
        blanks.pop();
    }
}

// ---------------------------------------------------------------------------------------
// The keeper.

/// How [`keep`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kept {
    /// Another keeper of that name runs already; this one never started.
    AlreadyRunning,
    /// It was idle for its whole keep time.
    Idle,
    /// It was asked to stop ([`stop`]).
    Stopped,
}

/// Runs a keeper named `name` until it has been idle (no lease, nothing to make) for
/// `keep_for`, or is stopped: it makes blanks of the sizes in `sizes` (bounded by a quarter
/// of the machine's memory and by what is available) and leases them to job hosts of this
/// user ([`join`]). Returns at once with [`Kept::AlreadyRunning`] when a keeper of that
/// name runs already.
pub fn keep(name: &str, keep_for: Duration, sizes: &[u64]) -> Result<Kept, WarmError> {
    let listener = seqpacket()?;
    match rustix::net::bind(&listener, &address(name)?) {
        Ok(()) => {}
        Err(Errno::ADDRINUSE) => return Ok(Kept::AlreadyRunning),
        Err(e) => return Err(os("binding the keeper's socket")(e)),
    }
    rustix::net::listen(&listener, 16).map_err(os("listen"))?;
    let mut keeper = Keeper::new(keep_for);
    keeper.set_plan(sizes.to_vec());
    let mut idle_since = Instant::now();
    loop {
        let timeout = if keeper.lease.is_some() {
            None
        } else if keeper.wants_more() {
            Some(Duration::ZERO)
        } else {
            let left = keep_for.saturating_sub(idle_since.elapsed());
            if left.is_zero() {
                return Ok(Kept::Idle);
            }
            Some(left.min(PRESSURE_CHECK))
        };
        let (listener_ready, lease_ready) = {
            let mut fds = vec![PollFd::new(&listener, PollFlags::IN)];
            if let Some(conn) = &keeper.lease {
                fds.push(PollFd::new(conn, PollFlags::IN));
            }
            let timeout = timeout.map(|t| {
                rustix::time::Timespec::try_from(t).unwrap_or(rustix::time::Timespec {
                    tv_sec: i64::MAX,
                    tv_nsec: 0,
                })
            });
            match rustix::event::poll(&mut fds, timeout.as_ref()) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(e) => return Err(os("poll")(e)),
            }
            (
                !fds[0].revents().is_empty(),
                fds.get(1).is_some_and(|f| !f.revents().is_empty()),
            )
        };
        if lease_ready && keeper.lease_message() {
            keeper.end_lease();
            idle_since = Instant::now();
        }
        if listener_ready {
            match rustix::net::accept_with(&listener, SocketFlags::CLOEXEC) {
                Ok(conn) => {
                    if keeper.serve(conn) == Served::Stop {
                        return Ok(Kept::Stopped);
                    }
                }
                // Out of descriptors, say: the request stays queued and the listener
                // readable; wait a little rather than spin on it.
                Err(_) => std::thread::sleep(ACCEPT_BACKOFF),
            }
        }
        if !listener_ready && keeper.lease.is_none() {
            keeper.relieve();
            if keeper.wants_more() {
                keeper.make_step();
                idle_since = Instant::now();
            }
        }
    }
}

/// The pause after a failed `accept`.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// How often an idle keeper looks at the memory available.
const PRESSURE_CHECK: Duration = Duration::from_secs(1);

/// The memory an idle keeper leaves available to others: below it, it frees blanks
/// (largest first) and makes none.
fn pressure_floor() -> u64 {
    (crate::memory::total_memory().unwrap_or(0) / 16).max(2 * crate::HEADROOM_MARGIN)
}

#[derive(PartialEq, Eq)]
enum Served {
    Done,
    Stop,
}

/// A blank in the making: its memfd, size, and the bytes made so far.
struct Making {
    fd: OwnedFd,
    len: u64,
    done: u64,
}

struct Keeper {
    blanks: Vec<(OwnedFd, u64)>,
    making: Option<Making>,
    // The sizes to hold blanks of.
    plan: Vec<u64>,
    lease: Option<OwnedFd>,
    // The sizes the lease holder made, once it has said.
    sizes: Option<Vec<u64>>,
    used: u64,
    leases: u64,
    keep_for: Duration,
}

/// What the keeper makes between two looks at its socket.
const MAKE_STEP: u64 = 32 << 20;

impl Keeper {
    /// A keeper that holds and plans nothing yet.
    fn new(keep_for: Duration) -> Self {
        Self {
            blanks: Vec::new(),
            making: None,
            plan: Vec::new(),
            lease: None,
            sizes: None,
            used: 0,
            leases: 0,
            keep_for,
        }
    }

    /// Keeps the sizes that fit in a quarter of the machine's memory, largest first.
    fn set_plan(&mut self, mut sizes: Vec<u64>) {
        let huge = crate::huge_page_size();
        let mut room = crate::memory::total_memory().unwrap_or(0) / 4;
        sizes.retain(|&s| s >= huge);
        sizes.sort_unstable_by(|a, b| b.cmp(a));
        sizes.truncate(MAX_SIZES);
        self.plan = sizes
            .into_iter()
            .filter(|&s| {
                let fits = s <= room;
                if fits {
                    room -= s;
                }
                fits
            })
            .collect();
        // Blanks of sizes no longer planned are freed.
        let mut wanted = self.plan.clone();
        self.blanks.retain(|(_, len)| {
            let keep = wanted.iter().position(|s| s == len);
            if let Some(at) = keep {
                wanted.swap_remove(at);
            }
            keep.is_some()
        });
    }

    /// The next size planned that no blank has, if any.
    fn missing(&self) -> Option<u64> {
        let mut have: Vec<u64> = self.blanks.iter().map(|(_, l)| *l).collect();
        self.plan
            .iter()
            .copied()
            .find(|s| match have.iter().position(|h| h == s) {
                Some(at) => {
                    have.swap_remove(at);
                    false
                }
                None => true,
            })
    }

    fn wants_more(&self) -> bool {
        self.making.is_some() || self.missing().is_some()
    }

    fn held(&self) -> u64 {
        self.blanks.iter().map(|(_, l)| l).sum::<u64>() + self.making.as_ref().map_or(0, |m| m.done)
    }

    /// Makes the next [`MAKE_STEP`] of a blank: free huge pages only (never compacting
    /// memory), while available memory keeps its margin. Where none can be had, the plan
    /// shrinks to the blanks held.
    fn make_step(&mut self) {
        if self.making.is_none() {
            let Some(len) = self.missing() else {
                return;
            };
            let made =
                rustix::fs::memfd_create("fastio", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
                    .ok()
                    .filter(|fd| rustix::fs::ftruncate(fd, len).is_ok());
            let Some(fd) = made else {
                return self.give_up();
            };
            self.making = Some(Making { fd, len, done: 0 });
        }
        let Some(m) = self.making.as_mut() else {
            return;
        };
        let huge = crate::huge_page_size();
        let whole = m.len / huge * huge;
        let to = whole.min(m.done + MAKE_STEP);
        let enough =
            crate::available_memory().is_none_or(|a| a >= (to - m.done) + pressure_floor());
        let made = match (enough, usize::try_from(m.done), usize::try_from(to)) {
            (true, Ok(from), Ok(end)) if end > from => {
                crate::mapping::reserve_collapsed(&m.fd, from, end, (true, false), |_| Ok(()))
                    .unwrap_or(0) as u64
            }
            _ => 0,
        };
        m.done += made;
        if m.done >= whole {
            // The tail smaller than a huge page, if any, in small pages.
            let tail = m.len - whole;
            let fd = &m.fd;
            let ok = tail == 0
                || rustix::fs::fallocate(fd, rustix::fs::FallocateFlags::empty(), whole, tail)
                    .is_ok();
            if let (true, Some(m)) = (ok, self.making.take()) {
                self.blanks.push((m.fd, m.len));
                return;
            }
        }
        if made == 0 {
            self.give_up();
        }
    }

    /// Under memory pressure (less available than [`pressure_floor`]), frees blanks,
    /// largest first, until the floor is met again, and plans no more than it keeps.
    fn relieve(&mut self) {
        let floor = pressure_floor();
        self.relieve_while(|| crate::available_memory().is_some_and(|a| a < floor));
    }

    fn relieve_while(&mut self, short: impl Fn() -> bool) {
        if !short() {
            return;
        }
        self.making = None;
        shed(&mut self.blanks, short);
        self.give_up();
    }

    /// Stops making blanks: the plan is what is held.
    fn give_up(&mut self) {
        self.making = None;
        self.plan = self.blanks.iter().map(|(_, l)| *l).collect();
    }

    /// One request on a new connection.
    fn serve(&mut self, conn: OwnedFd) -> Served {
        if !same_user(&conn) || set_timeouts(&conn, Some(CLIENT_WAIT)).is_err() {
            return Served::Done;
        }
        let Ok(request) = recv_message(conn.as_fd()) else {
            return Served::Done;
        };
        let [VERSION, tag] = request.body[..] else {
            return Served::Done;
        };
        match tag {
            LEASE if self.lease.is_some() => {
                let _ = send_message(conn.as_fd(), &[BUSY], &[]);
            }
            LEASE => {
                // A blank half made is not handed out; making it again later is cheap.
                self.making = None;
                let blanks = std::mem::take(&mut self.blanks);
                let mut sent = 0;
                let granted =
                    send_message(conn.as_fd(), &with_u64s(GRANT, [blanks.len() as u64]), &[])
                        .is_ok()
                        && blanks.iter().all(|(fd, len)| {
                            let body = with_u64s(BLANK, [*len]);
                            let ok = send_message(conn.as_fd(), &body, &[fd.as_fd()]).is_ok();
                            sent += usize::from(ok);
                            ok
                        });
                if granted {
                    self.leases += 1;
                    self.used += blanks.iter().map(|(_, l)| l).sum::<u64>();
                    self.sizes = None;
                    self.lease = Some(conn);
                } else {
                    // The blanks sent before the failure may be in the hands of a live
                    // process that makes segments of them: never hand them out again.
                    self.blanks = blanks.into_iter().skip(sent).collect();
                }
            }
            STATUS => {
                let fields = [
                    u64::from(std::process::id()),
                    self.held(),
                    self.plan.iter().sum(),
                    u64::from(self.lease.is_some()),
                    self.used,
                    self.leases,
                    self.keep_for.as_secs(),
                ];
                let _ = send_message(conn.as_fd(), &with_u64s(STATUS, fields), &[]);
            }
            STOP => {
                let _ = send_message(conn.as_fd(), &[STOP], &[]);
                return Served::Stop;
            }
            _ => {}
        }
        Served::Done
    }

    /// Reads what the lease holder sent; whether the lease has ended.
    fn lease_message(&mut self) -> bool {
        let Some(conn) = &self.lease else {
            return false;
        };
        match recv_message(conn.as_fd()) {
            Ok(mut m) if m.body.first() == Some(&BLANK) && m.fds.len() == 1 => {
                let fd = m.fds.remove(0);
                match u64_at(&m.body, 1) {
                    // No more than a keeper ever gives: a holder giving back without end
                    // would fill the descriptor table, and `accept` would fail (and the
                    // loop spin) for as long as the lease lasts.
                    Some(len) if self.blanks.len() < MAX_SIZES && is_blank(&fd, len) => {
                        self.used = self.used.saturating_sub(len);
                        self.blanks.push((fd, len));
                    }
                    _ => {}
                }
                false
            }
            Ok(m) if m.body.first() == Some(&SIZES) && (m.body.len() - 1) % 8 == 0 => {
                let sizes = (1..m.body.len())
                    .step_by(8)
                    .filter_map(|at| u64_at(&m.body, at));
                self.sizes = Some(sizes.collect());
                false
            }
            // The holder closed, died, or sent what no holder sends.
            _ => true,
        }
    }

    /// The lease is over: blanks of the sizes the holder made are made again from now on;
    /// of the same sizes as before when it made less than [`MIN_RESERVE`] (a job that
    /// hands little over, e.g. through files, does not throw the reserve away) or died
    /// without saying.
    fn end_lease(&mut self) {
        self.lease = None;
        let plan = match self.sizes.take() {
            Some(sizes) if sizes.iter().fold(0u64, |a, s| a.saturating_add(*s)) >= MIN_RESERVE => {
                sizes
            }
            _ => self.plan.clone(),
        };
        self.set_plan(plan);
    }
}

#[cfg(test)]
mod tests {
    //! A keeper in a thread of the test process, leased by the test itself (nextest runs
    //! each test in its own process, so the lease, which is per process, is the test's).

    use super::*;
    use crate::SegmentBuilder;
    use std::os::fd::AsRawFd;

    const MIB: u64 = 1 << 20;

    /// The lease is per process: where tests share one (`cargo test`), one at a time.
    static SERIAL: Mutex<()> = Mutex::new(());

    fn serial() -> std::sync::MutexGuard<'static, ()> {
        SERIAL.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn unique(tag: &str) -> String {
        format!("test-{}-{tag}", std::process::id())
    }

    /// Polls `f` every 20 ms until it gives a value; fails after 30 s.
    fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "waited 30 s for {what}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn start(name: &str, keep_for: Duration, sizes: &[u64]) -> std::thread::JoinHandle<Kept> {
        let (owned, sizes) = (name.to_owned(), sizes.to_vec());
        let keeper = std::thread::spawn(move || keep(&owned, keep_for, &sizes).unwrap());
        wait_for("the keeper to answer", || status(name).unwrap());
        keeper
    }

    /// Waits until the keeper holds every blank it plans, and returns its status.
    fn settled(name: &str, target: u64) -> KeeperStatus {
        wait_for("the keeper to make its blanks", || {
            status(name)
                .unwrap()
                .filter(|s| s.target == target && s.held == target && !s.leased)
        })
    }

    fn finish(name: &str, keeper: std::thread::JoinHandle<Kept>) {
        assert!(stop(name).unwrap());
        assert_eq!(keeper.join().unwrap(), Kept::Stopped);
        assert_eq!(
            status(name).unwrap(),
            None,
            "a stopped keeper still answers"
        );
    }

    #[test]
    fn a_job_host_makes_its_segments_of_the_keepers_blanks_and_the_keeper_learns_its_sizes() {
        let _serial = serial();
        let name = unique("blanks");
        let keeper = start(&name, Duration::from_secs(60), &[64 * MIB, 2 * MIB]);
        settled(&name, 66 * MIB);
        assert_eq!(join(&name).unwrap(), Some(66 * MIB));
        assert_eq!(leased_bytes(), 66 * MIB);

        let segment = SegmentBuilder::new(64 << 20).create().unwrap();
        assert_eq!(
            leased_bytes(),
            2 * MIB,
            "the 64 MiB blank became the segment"
        );
        assert!(segment.is_writable());
        assert_eq!(segment.huge_at_create(), 64 * MIB);
        let stat = rustix::fs::fstat(&segment).unwrap();
        assert_eq!(
            stat.st_mode & 0o777,
            0o400,
            "locked down as any new segment"
        );
        let seals = rustix::fs::fcntl_get_seals(&segment).unwrap();
        assert!(seals.contains(rustix::fs::SealFlags::SHRINK | rustix::fs::SealFlags::GROW));
        let map =
            crate::Mapping::new(&segment, crate::Access::ReadWrite, crate::Prefault::Lazy).unwrap();
        let mut bytes = vec![1u8; 64 << 20];
        map.read_at(0, &mut bytes).unwrap();
        assert!(bytes.iter().all(|&b| b == 0), "a blank reads as zero");

        // No blank of 3 MiB: fresh memory, and the size is remembered.
        let _other = SegmentBuilder::new(3 << 20).create().unwrap();
        assert_eq!(leased_bytes(), 2 * MIB);
        assert_eq!(leave(), vec![64 * MIB, 3 * MIB]);
        assert_eq!(leased_bytes(), 0);

        // The keeper got the 2 MiB blank back, freed it (not planned any more), and made
        // blanks of the sizes the job made.
        let after = settled(&name, 67 * MIB);
        assert_eq!(after.leases, 1);
        assert_eq!(
            after.used,
            64 * MIB,
            "only the blank made a segment counts as used"
        );
        finish(&name, keeper);
    }

    #[test]
    fn a_job_that_makes_little_leaves_the_plan_as_it_was() {
        let _serial = serial();
        let name = unique("little");
        let keeper = start(&name, Duration::from_secs(60), &[4 * MIB]);
        settled(&name, 4 * MIB);
        assert_eq!(join(&name).unwrap(), Some(4 * MIB));
        // 2 MiB made: less than MIN_RESERVE.
        let _small = SegmentBuilder::new(2 << 20).create().unwrap();
        assert_eq!(leave(), vec![2 * MIB]);
        let after = settled(&name, 4 * MIB);
        assert_eq!((after.leases, after.used), (1, 0));
        finish(&name, keeper);
    }

    #[test]
    fn a_second_job_host_finds_the_keeper_busy() {
        let _serial = serial();
        let name = unique("busy");
        let keeper = start(&name, Duration::from_secs(60), &[]);
        assert_eq!(join(&name).unwrap(), Some(0));
        let other = connect(&name).unwrap().unwrap();
        let reply = ask(&other, LEASE).unwrap();
        assert_eq!(reply.body, [BUSY]);
        assert!(status(&name).unwrap().unwrap().leased);
        leave();
        wait_for("the lease to end", || {
            status(&name).unwrap().filter(|s| !s.leased)
        });
        finish(&name, keeper);
    }

    #[test]
    fn hostile_requests_cost_the_keeper_nothing() {
        let _serial = serial();
        let name = unique("hostile");
        let keeper = start(&name, Duration::from_secs(60), &[2 * MIB]);
        settled(&name, 2 * MIB);
        // Garbage, a wrong version, a request cut short, a connection that says nothing
        // (the keeper waits CLIENT_WAIT for it), a blank sent by someone who holds no lease.
        for body in [&b"\xff\xff\xff"[..], &[9, LEASE], &[VERSION], &[]] {
            let conn = connect(&name).unwrap().unwrap();
            let _ = send_message(conn.as_fd(), body, &[]);
            let _ = recv_message(conn.as_fd());
        }
        let silent = connect(&name).unwrap().unwrap();
        let stray = rustix::fs::memfd_create("stray", MemfdFlags::CLOEXEC).unwrap();
        let conn = connect(&name).unwrap().unwrap();
        let _ = send_message(conn.as_fd(), &with_u64s(BLANK, [0]), &[stray.as_fd()]);
        drop(silent);
        // A lease holder that sends garbage loses its lease; the blanks it got are gone
        // with it, and the keeper makes them again.
        let holder = connect(&name).unwrap().unwrap();
        let granted = ask(&holder, LEASE).unwrap();
        assert_eq!(granted.body.first(), Some(&GRANT));
        send_message(holder.as_fd(), b"\x01garbage", &[]).unwrap();
        let after = settled(&name, 2 * MIB);
        assert_eq!(after.leases, 1);
        // Still serving.
        assert_eq!(join(&name).unwrap(), Some(2 * MIB));
        leave();
        finish(&name, keeper);
    }

    #[test]
    fn a_holder_that_gives_back_holes_and_absurd_sizes_costs_the_keeper_nothing() {
        let _serial = serial();
        let name = unique("holes");
        let keeper = start(&name, Duration::from_secs(60), &[2 * MIB]);
        settled(&name, 2 * MIB);
        let holder = connect(&name).unwrap().unwrap();
        let granted = ask(&holder, LEASE).unwrap();
        assert_eq!(granted.body.first(), Some(&GRANT));
        let blank = recv_message(holder.as_fd()).unwrap();
        assert_eq!((blank.body.first(), blank.fds.len()), (Some(&BLANK), 1));
        // "Blanks" made of nothing but holes (a segment made of one would allocate its
        // memory at first touch, SIGBUS when there is none): of 4 EiB each, whose sizes add
        // up past what a u64 holds, and one of a size the keeper will plan. Then sizes that
        // add up past a u64 too.
        for _ in 0..4 {
            let hole = sealable_hole(1 << 62);
            let body = with_u64s(BLANK, [1 << 62]);
            send_message(holder.as_fd(), &body, &[hole.as_fd()]).unwrap();
        }
        let hole = sealable_hole(4 * MIB);
        let body = with_u64s(BLANK, [4 * MIB]);
        send_message(holder.as_fd(), &body, &[hole.as_fd()]).unwrap();
        let sizes = with_u64s(SIZES, [u64::MAX, u64::MAX, 4 * MIB]);
        send_message(holder.as_fd(), &sizes, &[]).unwrap();
        drop(holder);
        // The keeper took none of them, still serves, and plans what fits.
        let after = settled(&name, 4 * MIB);
        assert_eq!(after.leases, 1);
        assert_eq!(join(&name).unwrap(), Some(4 * MIB));
        let segment = SegmentBuilder::new(4 << 20).create().unwrap();
        assert_eq!(leased_bytes(), 0, "the segment was made of the blank");
        let blocks = rustix::fs::fstat(&segment).unwrap().st_blocks;
        assert!(blocks * 512 >= (4 << 20), "the segment has holes");
        leave();
        finish(&name, keeper);
    }

    #[test]
    fn a_keeper_leaves_when_idle_and_a_second_one_of_the_same_name_does_not_start() {
        let _serial = serial();
        let name = unique("idle");
        let keeper = start(&name, Duration::from_millis(500), &[2 * MIB]);
        assert_eq!(
            keep(&name, Duration::from_secs(60), &[]).unwrap(),
            Kept::AlreadyRunning
        );
        // Bounded by wait_for, not timed: speed is no test's business.
        wait_for("the idle keeper to leave", || {
            keeper.is_finished().then_some(())
        });
        assert_eq!(keeper.join().unwrap(), Kept::Idle);
        assert_eq!(status(&name).unwrap(), None);
        assert_eq!(join(&name).unwrap(), None, "nothing to join");
    }

    #[test]
    fn only_unsealed_memfds_of_the_announced_size_are_taken_as_blanks() {
        let fd =
            rustix::fs::memfd_create("b", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
        rustix::fs::ftruncate(&fd, 8192).unwrap();
        rustix::fs::fallocate(&fd, rustix::fs::FallocateFlags::empty(), 0, 4096).unwrap();
        assert!(!is_blank(&fd, 8192), "a hole: memory still to be allocated");
        rustix::fs::ftruncate(&fd, 4096).unwrap();
        assert!(is_blank(&fd, 4096));
        // The same memfd opened again for reading only: no seal could be added through it,
        // so the create of a segment of it would fail.
        let read_only = std::fs::File::open(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .map(OwnedFd::from)
            .unwrap();
        assert!(!is_blank(&read_only, 4096), "read-only");
        assert!(!is_blank(&fd, 8192), "another size");
        rustix::fs::fcntl_add_seals(&fd, rustix::fs::SealFlags::GROW).unwrap();
        assert!(!is_blank(&fd, 4096), "sealed");
        let path = std::env::temp_dir().join(unique("file"));
        let file = std::fs::File::create(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        file.set_len(4096).unwrap();
        assert!(!is_blank(&OwnedFd::from(file), 4096), "not a memfd");
    }

    /// A memfd of `len` bytes, none allocated, that takes seals (as a blank does).
    fn sealable_hole(len: u64) -> OwnedFd {
        let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
        let fd = rustix::fs::memfd_create("b", flags).unwrap();
        rustix::fs::ftruncate(&fd, len).unwrap();
        fd
    }

    fn memfd(len: u64) -> OwnedFd {
        let fd = rustix::fs::memfd_create("b", MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, len).unwrap();
        fd
    }

    #[test]
    fn memory_pressure_frees_blanks_largest_first_and_shrinks_the_plan() {
        let mut keeper = Keeper::new(DEFAULT_KEEP);
        keeper.blanks = vec![(memfd(2 * MIB), 2 * MIB), (memfd(8 * MIB), 8 * MIB)];
        keeper.plan = vec![8 * MIB, 4 * MIB, 2 * MIB];
        // No pressure: nothing changes.
        keeper.relieve_while(|| false);
        assert_eq!(keeper.held(), 10 * MIB);
        assert!(keeper.wants_more(), "the 4 MiB blank is still to make");
        // Short until one blank is gone: the largest goes, and nothing more is made.
        let calls = std::cell::Cell::new(0);
        keeper.relieve_while(|| {
            calls.set(calls.get() + 1);
            calls.get() <= 2
        });
        assert_eq!(keeper.held(), 2 * MIB);
        assert_eq!(keeper.plan, vec![2 * MIB]);
        assert!(!keeper.wants_more());
    }

    #[test]
    fn the_keepers_share_is_of_the_memory_its_cgroup_allows() {
        // A container limited to 256 MiB on a larger machine: a quarter of that is 64 MiB
        // of blanks, and the pressure floor is a sixteenth of it (at least twice the margin).
        crate::memory::PRETEND_CGROUP_LIMIT.set(Some(256 * MIB));
        let mut keeper = Keeper::new(DEFAULT_KEEP);
        keeper.set_plan(vec![64 * MIB, 32 * MIB, 2 * MIB]);
        let floor = pressure_floor();
        crate::memory::PRETEND_CGROUP_LIMIT.set(None);
        assert_eq!(
            keeper.plan,
            vec![64 * MIB],
            "a quarter of the cgroup's 256 MiB"
        );
        assert_eq!(floor, 2 * crate::HEADROOM_MARGIN);
    }

    #[test]
    fn a_holder_giving_back_more_blanks_than_a_keeper_gives_fills_no_descriptor_table() {
        let mut keeper = Keeper::new(DEFAULT_KEEP);
        let (ours, theirs) = crate::transfer::seqpacket_pair().unwrap();
        keeper.lease = Some(ours);
        for _ in 0..MAX_SIZES + 16 {
            let blank = sealable_hole(4096);
            rustix::fs::fallocate(&blank, rustix::fs::FallocateFlags::empty(), 0, 4096).unwrap();
            let body = with_u64s(BLANK, [4096]);
            send_message(theirs.as_fd(), &body, &[blank.as_fd()]).unwrap();
        }
        for _ in 0..MAX_SIZES + 16 {
            assert!(!keeper.lease_message(), "the lease goes on");
        }
        assert_eq!(keeper.blanks.len(), MAX_SIZES);
    }

    #[test]
    fn a_holder_short_of_memory_frees_blanks_of_other_sizes() {
        let mut blanks = vec![
            (memfd(2 * MIB), 2 * MIB),
            (memfd(8 * MIB), 8 * MIB),
            (memfd(4 * MIB), 4 * MIB),
        ];
        shed(&mut blanks, || false);
        assert_eq!(blanks.len(), 3);
        let left = std::cell::Cell::new(2);
        shed(&mut blanks, || {
            left.set(left.get() - 1);
            left.get() >= 0
        });
        let sizes: Vec<u64> = blanks.iter().map(|(_, l)| *l).collect();
        assert_eq!(sizes, vec![2 * MIB], "the largest went first");
    }

    #[test]
    fn a_keeper_that_never_accepts_holds_no_client_for_ever() {
        let _serial = serial();
        let name = unique("stuck");
        // A keeper stopped (SIGSTOP) or stuck: it listens but never accepts, and its queue
        // of connections fills up.
        let listener = seqpacket().unwrap();
        rustix::net::bind(&listener, &address(&name).unwrap()).unwrap();
        rustix::net::listen(&listener, 0).unwrap();
        let mut queued = Vec::new();
        loop {
            let fd = rustix::net::socket_with(
                AddressFamily::UNIX,
                SocketType::SEQPACKET,
                SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
                None,
            )
            .unwrap();
            match rustix::net::connect(&fd, &address(&name).unwrap()) {
                Ok(()) => queued.push(fd),
                Err(Errno::AGAIN) => break,
                Err(e) => panic!("connecting: {e}"),
            }
            assert!(queued.len() < 1024, "the queue never filled");
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let client = name.clone();
        std::thread::spawn(move || {
            let _ = tx.send((
                status(&client).unwrap(),
                stop(&client).unwrap(),
                join(&client).unwrap(),
            ));
        });
        let answers = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("a client still waits for a keeper that never accepts");
        assert_eq!(answers, (None, false, None), "as if no keeper ran");
        assert_eq!(leased_bytes(), 0);
    }

    fn inode(fd: &OwnedFd) -> (u64, u64) {
        let stat = rustix::fs::fstat(fd).unwrap();
        (stat.st_dev, stat.st_ino)
    }

    #[test]
    fn blanks_sent_before_a_grant_failed_are_never_handed_out_again() {
        let mut keeper = Keeper::new(DEFAULT_KEEP);
        keeper.blanks = (0..MAX_SIZES).map(|_| (memfd(4096), 4096)).collect();
        // A holder that asks for the lease and reads nothing, behind a send buffer that
        // holds a few messages: the grant fails part way, after CLIENT_WAIT.
        let (ours, theirs) = crate::transfer::seqpacket_pair().unwrap();
        rustix::net::sockopt::set_socket_send_buffer_size(&ours, 1).unwrap();
        send_message(theirs.as_fd(), &[VERSION, LEASE], &[]).unwrap();
        assert!(keeper.serve(ours) == Served::Done);
        assert!(keeper.lease.is_none(), "the grant did not fail");
        // What reached the holder (the keeper's end is closed: the queue ends).
        let mut received = Vec::new();
        while let Ok(m) = recv_message(theirs.as_fd()) {
            received.extend(m.fds.iter().map(inode));
        }
        assert!(
            !received.is_empty() && received.len() < MAX_SIZES,
            "{} blanks reached the holder",
            received.len()
        );
        let kept: Vec<_> = keeper.blanks.iter().map(|(fd, _)| inode(fd)).collect();
        assert!(
            received.iter().all(|r| !kept.contains(r)),
            "the keeper still holds blanks a live holder received, for the next lease"
        );
        assert_eq!(kept.len() + received.len(), MAX_SIZES, "the rest are kept");
    }

    #[test]
    fn a_create_of_a_size_no_blank_has_counts_blanks_only_once_freed() {
        let _serial = serial();
        let name = unique("room");
        let keeper = start(&name, Duration::from_secs(60), &[4 * MIB, 2 * MIB]);
        settled(&name, 6 * MIB);
        assert_eq!(join(&name).unwrap(), Some(6 * MIB));
        // This thread sees the system short of memory: only the margin is left, and freeing
        // blanks gives none back (the figure is pretended). Segments smaller than a huge
        // page, or of an explicit way of reserving, never take a blank: they may count the
        // blanks as available memory only by freeing them.
        crate::memory::PRETEND_AVAILABLE.set(Some(crate::HEADROOM_MARGIN));
        let small = SegmentBuilder::new(1 << 20).create();
        let explicit = SegmentBuilder::new(4 << 20)
            .reserve(crate::Reserve::Fallocate)
            .create();
        crate::memory::PRETEND_AVAILABLE.set(None);
        assert!(
            matches!(small, Err(crate::SegmentError::OutOfMemory { .. })),
            "{small:?}"
        );
        assert!(
            matches!(explicit, Err(crate::SegmentError::OutOfMemory { .. })),
            "{explicit:?}"
        );
        assert_eq!(leased_bytes(), 0, "the blanks were freed to make room");
        leave();
        finish(&name, keeper);
    }

    #[test]
    fn settings_are_checked() {
        assert_eq!(parse_keeper_name(None).unwrap(), "default");
        assert_eq!(
            parse_keeper_name(Some("ci-1.a_b".into())).unwrap(),
            "ci-1.a_b"
        );
        for bad in ["", "../x", "a b", &"x".repeat(65)] {
            let e = parse_keeper_name(Some(bad.to_owned()))
                .unwrap_err()
                .to_string();
            assert!(e.contains("FASTIO_WARM_NAME"), "{e}");
        }
        assert_eq!(parse_keep_time(None).unwrap(), Some(DEFAULT_KEEP));
        assert_eq!(parse_keep_time(Some("0".into())).unwrap(), None);
        assert_eq!(
            parse_keep_time(Some(" 5 ".into())).unwrap(),
            Some(Duration::from_secs(5))
        );
        let e = parse_keep_time(Some("soon".into()))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("FASTIO_KEEP_WARM") && e.contains("seconds"),
            "{e}"
        );
    }
}
