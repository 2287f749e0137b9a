//! The background collapser: turns pooled segments into huge pages with `MADV_COLLAPSE`.
//!
//! With shmem THP `never` (the common default) faults never give shared memory huge pages,
//! but `MADV_COLLAPSE` (Linux 6.1+) still turns populated ranges into them. It is slow
//! (seconds per GiB), so it runs on one background thread, only on segments resting in the
//! warm pool, in 32 MiB steps, stopping as soon as a segment is handed out, and sleeping
//! three times as long as it worked after each step: it uses at most a quarter of one CPU.
//! A segment handed out mid-way is resumed where it stopped the next time it rests. When
//! the kernel has no huge page to give (`EAGAIN`/`ENOMEM`: memory fragmented or full of
//! page cache), the segment is tried again later while it rests, after 0.25 s, then twice
//! as long each time up to 16 s (kcompactd makes huge blocks free meanwhile), at most
//! [`MAX_RETRIES`] times per rest.
//! `FASTIO_COLLAPSE=0` (or `ServerConfig::collapse = false`)
//! turns it off.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use fastio_shm::{Access, Mapping, Prefault, Segment, ShmemThp};

use crate::registry::HugeState;

/// Environment variable that turns the collapser off when `0` (and the collapse of new
/// segments at create, see [`fastio_shm::Reserve::Collapse`]).
pub const COLLAPSE_ENV: &str = fastio_shm::COLLAPSE_ENV;

const STEP: usize = 32 << 20;

/// Tries of a resting segment after the kernel had no huge page for it.
pub(crate) const MAX_RETRIES: u32 = 8;

const FIRST_RETRY: Duration = Duration::from_millis(250);

/// Work for the collapser: a descriptor of the segment and its shared state.
type Job = (Segment, Arc<HugeState>);

/// The sending end; the thread ends when it is dropped (with its registry).
#[derive(Debug)]
pub(crate) struct Collapser {
    jobs: Sender<Job>,
}

impl Collapser {
    /// Starts the thread, or `None` where collapsing is off or cannot work (huge pages
    /// denied, no transparent huge pages at all).
    pub(crate) fn start() -> Option<Self> {
        if !fastio_shm::collapse_allowed() {
            return None;
        }
        match ShmemThp::current() {
            None | Some(ShmemThp::Deny) => return None,
            Some(_) => {}
        }
        let (jobs, queue) = channel();
        std::thread::Builder::new()
            .name("fastio-collapse".into())
            .spawn(move || run(&queue))
            .ok()?;
        Some(Self { jobs })
    }

    /// Queues `segment` if it is big enough to hold a huge page and not huge already.
    pub(crate) fn offer(&self, segment: &Segment, huge: &Arc<HugeState>) {
        let size = segment.len() as u64;
        if segment.is_hugetlb()
            || size < fastio_shm::huge_page_size()
            || huge.collapsed_to.load(Ordering::Relaxed) >= size
        {
            return;
        }
        if huge.queued.swap(true, Ordering::Relaxed) {
            return;
        }
        match segment.try_clone() {
            Ok(copy) => {
                let _ = self.jobs.send((copy, huge.clone()));
            }
            Err(_) => huge.queued.store(false, Ordering::Relaxed),
        }
    }
}

/// What became of one pass over a segment.
enum Pass {
    /// Collapsed as far as it goes, handed out, or not collapsible here.
    Done,
    /// The kernel had no huge page: worth another try later.
    NoHugePage,
    /// This kernel cannot collapse shared memory at all.
    Unsupported,
}

fn run(queue: &Receiver<Job>) {
    // Segments waiting for another try: when, the job, how many tries so far.
    let mut retries: Vec<(Instant, Job, u32)> = Vec::new();
    loop {
        let next = match retries.iter().map(|(at, ..)| *at).min() {
            None => match queue.recv() {
                Ok(job) => Some((job, 0)),
                Err(_) => return,
            },
            Some(at) => match queue.recv_timeout(at.saturating_duration_since(Instant::now())) {
                Ok(job) => Some((job, 0)),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            },
        };
        let (job, tries) = match next {
            Some(fresh) => fresh,
            None => {
                let now = Instant::now();
                let Some(due) = retries.iter().position(|(at, ..)| *at <= now) else {
                    continue;
                };
                let (_, job, tries) = retries.swap_remove(due);
                (job, tries)
            }
        };
        let (segment, huge) = job;
        if tries == 0 {
            huge.queued.store(false, Ordering::Relaxed);
        }
        match collapse_resting(&segment, &huge) {
            Pass::Done => {}
            Pass::Unsupported => {
                tracing::debug!("MADV_COLLAPSE is not available here; the collapser stops");
                return;
            }
            // A segment offered again meanwhile is already queued afresh.
            Pass::NoHugePage if tries + 1 < MAX_RETRIES && !huge.queued.load(Ordering::Relaxed) => {
                let wait = (FIRST_RETRY * 2u32.pow(tries)).min(Duration::from_secs(16));
                retries.push((Instant::now() + wait, (segment, huge), tries + 1));
            }
            Pass::NoHugePage => {}
        }
    }
}

/// Collapses `segment` from where it stopped, while it rests in the pool.
fn collapse_resting(segment: &Segment, huge: &HugeState) -> Pass {
    if !huge.pooled.load(Ordering::Relaxed) {
        return Pass::Done;
    }
    let Ok(mapping) = Mapping::new(segment, Access::ReadOnly, Prefault::Lazy) else {
        return Pass::Done;
    };
    let len = mapping.len();
    let mut offset = huge.collapsed_to.load(Ordering::Relaxed) as usize;
    // Maps what is already huge (a fault per 2 MiB), so that the count below sees it.
    let _ = mapping.populate_range(0, offset.min(len));
    while offset < len && huge.pooled.load(Ordering::Relaxed) {
        let n = STEP.min(len - offset);
        let started = Instant::now();
        // Collapsing needs the pages present and up to date: mapping them makes sure.
        let _ = mapping.populate_range(offset, n);
        match mapping.collapse(offset, n) {
            Ok(()) => {}
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => return Pass::Unsupported,
            // No huge page free now (EAGAIN, ENOMEM) or a page busy: try again from here.
            Err(e) => {
                tracing::debug!("MADV_COLLAPSE of a pooled segment: {e}");
                std::thread::sleep(started.elapsed() * 3);
                return Pass::NoHugePage;
            }
        }
        offset += n;
        huge.collapsed_to.store(offset as u64, Ordering::Relaxed);
        huge.bytes
            .store(mapping.huge_mapped_bytes(), Ordering::Relaxed);
        std::thread::sleep(started.elapsed() * 3);
    }
    Pass::Done
}
