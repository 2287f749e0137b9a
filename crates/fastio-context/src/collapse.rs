//! The background collapser: turns pooled segments into huge pages with `MADV_COLLAPSE`.
//!
//! With shmem THP `never` (the common default) faults never give shared memory huge pages,
//! but `MADV_COLLAPSE` (Linux 6.1+) still turns populated ranges into them. It is slow
//! (seconds per GiB), so it runs on one background thread, only on segments resting in the
//! warm pool, in 32 MiB steps, stopping as soon as a segment is handed out, and sleeping
//! three times as long as it worked after each step: it uses at most a quarter of one CPU.
//! A segment handed out mid-way is resumed where it stopped the next time it rests.
//! `FASTIO_COLLAPSE=0` (or `ServerConfig::collapse = false`)
//! turns it off.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::Instant;

use fastio_shm::{Access, Mapping, Prefault, Segment, ShmemThp};

use crate::registry::HugeState;

/// Environment variable that turns the collapser off when `0` (and the collapse of new
/// segments at create, see [`fastio_shm::Reserve::Collapse`]).
pub const COLLAPSE_ENV: &str = fastio_shm::COLLAPSE_ENV;

const STEP: usize = 32 << 20;

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

fn run(queue: &Receiver<Job>) {
    while let Ok((segment, huge)) = queue.recv() {
        huge.queued.store(false, Ordering::Relaxed);
        if !huge.pooled.load(Ordering::Relaxed) {
            continue;
        }
        let Ok(mapping) = Mapping::new(&segment, Access::ReadOnly, Prefault::Lazy) else {
            continue;
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
                Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
                    // This kernel cannot collapse shared memory: nothing more to try.
                    tracing::debug!("MADV_COLLAPSE is not available here; the collapser stops");
                    return;
                }
                // No huge page free now (EAGAIN, ENOMEM) or a page busy: try again from
                // here the next time the segment rests in the pool.
                Err(e) => {
                    tracing::debug!("MADV_COLLAPSE of a pooled segment: {e}");
                    std::thread::sleep(started.elapsed() * 3);
                    break;
                }
            }
            offset += n;
            huge.collapsed_to.store(offset as u64, Ordering::Relaxed);
            huge.bytes
                .store(mapping.huge_mapped_bytes(), Ordering::Relaxed);
            std::thread::sleep(started.elapsed() * 3);
        }
    }
}
