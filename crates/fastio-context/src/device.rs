//! Device memory for the context: CUDA VMM allocations made through cuda-streams, kept
//! warm per device.
//!
//! [`DevicePool`] is the device half of the context's memory: it makes allocations on a
//! device (`cuMemCreate` with the POSIX-descriptor handle type, through
//! [`cuda_streams::DeviceMemory`]) and keeps freed ones warm, per device and bounded in
//! bytes, so that a create of the same size on the same device reuses one instead of
//! paying `cuMemCreate` again. The CUDA driver is found on first use (dynamic loading);
//! on a machine without one, every obtain is refused with
//! [`CreateError::Device`](crate::CreateError::Device), never a panic. Tests run it on
//! cuda-streams' CPU fake, whose "device memory" is memfds.

use cuda_streams::{CudaError, DeviceMemory, Driver};

use crate::error::CreateError;
use crate::protocol::MemoryKind;

/// A warm allocation in the pool.
#[derive(Debug)]
struct Pooled {
    memory: DeviceMemory,
    last_use: u64,
}

/// What a [`DevicePool`] holds, for stats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DevicePoolStats {
    /// Allocations kept warm.
    pub pooled: usize,
    /// Their bytes.
    pub pooled_bytes: u64,
    /// Allocations made since start.
    pub created: u64,
    /// Obtains served from the pool since start.
    pub recycled: u64,
    /// Pooled allocations dropped (least recently used first) to make room since start.
    pub evicted: u64,
}

/// Device allocations, made and kept warm per device.
#[derive(Debug)]
pub struct DevicePool {
    // The driver: given, or probed on first use (the probe's answer is kept, so a machine
    // without CUDA is asked once).
    driver: Option<Result<Driver, CudaError>>,
    pooled: Vec<Pooled>,
    pooled_bytes: u64,
    limit: u64,
    tick: u64,
    stats: DevicePoolStats,
}

impl DevicePool {
    /// A pool keeping at most `limit` bytes warm, over the CUDA driver of this machine,
    /// found on first use.
    pub fn new(limit: u64) -> Self {
        Self::build(None, limit)
    }

    /// A pool over `driver` (cuda-streams' fake in tests).
    pub fn with_driver(driver: Driver, limit: u64) -> Self {
        Self::build(Some(Ok(driver)), limit)
    }

    fn build(driver: Option<Result<Driver, CudaError>>, limit: u64) -> Self {
        Self {
            driver,
            pooled: Vec::new(),
            pooled_bytes: 0,
            limit,
            tick: 0,
            stats: DevicePoolStats::default(),
        }
    }

    fn driver(&mut self, device: i32) -> Result<&Driver, CreateError> {
        let driver = self.driver.get_or_insert_with(Driver::probe);
        driver.as_ref().map_err(|e| CreateError::Device {
            memory: MemoryKind::Cuda { device },
            reason: e.to_string(),
        })
    }

    /// At least `size` bytes on `device`, and whether they were used before (they hold
    /// old bytes then). A warm allocation of the device is taken when its size is the
    /// request rounded up to the granularity, or at most a quarter more; otherwise a new
    /// one is made.
    ///
    /// # Errors
    /// [`CreateError::Device`] when there is no CUDA driver, no such device, or the
    /// driver refuses (a full device among them).
    pub fn obtain(
        &mut self,
        device: i32,
        size: usize,
    ) -> Result<(DeviceMemory, bool), CreateError> {
        let kind = MemoryKind::Cuda { device };
        let driver = self.driver(device)?.clone();
        let granularity =
            cuda_streams::granularity(&driver, device).map_err(|e| CreateError::Device {
                memory: kind,
                reason: e.to_string(),
            })?;
        let wanted = size.max(1).checked_next_multiple_of(granularity.max(1));
        if let Some(wanted) = wanted
            && let Some(at) = self
                .pooled
                .iter()
                .enumerate()
                .filter(|(_, p)| {
                    let len = p.memory.size();
                    p.memory.device() == device && len >= wanted && len - wanted <= len / 4
                })
                .min_by_key(|(_, p)| p.memory.size())
                .map(|(at, _)| at)
        {
            let pooled = self.pooled.swap_remove(at);
            self.pooled_bytes -= pooled.memory.size() as u64;
            self.stats.recycled += 1;
            return Ok((pooled.memory, true));
        }
        self.make(device, size).map(|memory| (memory, false))
    }

    /// A new allocation of at least `size` bytes on `device`, never a warm one: memory no
    /// other client has held (what a FastIO entry allocated at run time gets, as host
    /// entries get fresh segments). Warm allocations of the device are dropped when it is
    /// full.
    ///
    /// # Errors
    /// As [`DevicePool::obtain`].
    pub fn make(&mut self, device: i32, size: usize) -> Result<DeviceMemory, CreateError> {
        let kind = MemoryKind::Cuda { device };
        let driver = self.driver(device)?.clone();
        // Room on the device first: warm allocations of it are dropped to make some.
        let made = match DeviceMemory::create(&driver, device, size.max(1)) {
            Err(_) if self.pooled.iter().any(|p| p.memory.device() == device) => {
                self.evict_device(device);
                DeviceMemory::create(&driver, device, size.max(1))
            }
            other => other,
        };
        let memory = made.map_err(|e| CreateError::Device {
            memory: kind,
            reason: e.to_string(),
        })?;
        self.stats.created += 1;
        Ok(memory)
    }

    /// Keeps `memory` warm for a later [`DevicePool::obtain`], evicting the least recently
    /// used to stay within the bound; memory larger than the bound is dropped at once.
    /// Only memory made here belongs in the pool: imported memory is dropped.
    pub fn give_back(&mut self, memory: DeviceMemory) {
        let len = memory.size() as u64;
        if len > self.limit || memory.is_imported() {
            return;
        }
        while self.pooled_bytes + len > self.limit {
            let Some(oldest) = self
                .pooled
                .iter()
                .enumerate()
                .min_by_key(|(_, p)| p.last_use)
                .map(|(at, _)| at)
            else {
                break;
            };
            let evicted = self.pooled.swap_remove(oldest);
            self.pooled_bytes -= evicted.memory.size() as u64;
            self.stats.evicted += 1;
        }
        self.tick += 1;
        self.pooled_bytes += len;
        self.pooled.push(Pooled {
            memory,
            last_use: self.tick,
        });
    }

    fn evict_device(&mut self, device: i32) {
        let before = self.pooled.len();
        self.pooled.retain(|p| p.memory.device() != device);
        self.stats.evicted += (before - self.pooled.len()) as u64;
        self.pooled_bytes = self.pooled.iter().map(|p| p.memory.size() as u64).sum();
    }

    /// What the pool holds and has done.
    pub fn stats(&self) -> DevicePoolStats {
        DevicePoolStats {
            pooled: self.pooled.len(),
            pooled_bytes: self.pooled_bytes,
            ..self.stats
        }
    }

    /// The sizes of the warm allocations of each device, for listings.
    pub fn pooled(&self) -> Vec<(MemoryKind, usize)> {
        self.pooled
            .iter()
            .map(|p| {
                (
                    MemoryKind::Cuda {
                        device: p.memory.device(),
                    },
                    p.memory.size(),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    const MIB: usize = 1 << 20;

    #[test]
    fn allocations_are_made_on_their_device_and_handed_to_another_process_as_a_descriptor() {
        let driver = Driver::fake(2);
        let mut pool = DevicePool::with_driver(driver.clone(), 64 * MIB as u64);
        let (memory, recycled) = pool.obtain(1, 3 * MIB).unwrap();
        assert!(!recycled);
        assert_eq!(memory.device(), 1);
        assert_eq!(
            memory.size() % cuda_streams::granularity(&driver, 1).unwrap(),
            0
        );
        assert!(memory.size() >= 3 * MIB);
        // What a client does with the descriptor it receives.
        let fd = memory.export_fd().unwrap();
        let imported = DeviceMemory::import(&driver, fd.as_fd(), 1, memory.size()).unwrap();
        assert!(imported.is_imported());
        assert_eq!(pool.stats().created, 1);
    }

    #[test]
    fn freed_allocations_stay_warm_per_device_and_are_reused_only_there() {
        let mut pool = DevicePool::with_driver(Driver::fake(2), 64 * MIB as u64);
        let (a, _) = pool.obtain(0, 4 * MIB).unwrap();
        let fd = a.export_fd().unwrap();
        let identity = rustix::fs::fstat(&fd).unwrap().st_ino;
        pool.give_back(a);
        assert_eq!(pool.stats().pooled_bytes, 4 * MIB as u64);
        // Another device never gets it.
        let (other, recycled) = pool.obtain(1, 4 * MIB).unwrap();
        assert!(!recycled);
        assert_eq!(other.device(), 1);
        // Far smaller requests do not take it either (it would waste most of it).
        let (small, recycled) = pool.obtain(0, MIB).unwrap();
        assert!(!recycled);
        assert!(small.size() < 4 * MIB);
        // The same size on the same device does.
        let (again, recycled) = pool.obtain(0, 4 * MIB).unwrap();
        assert!(recycled);
        let fd = again.export_fd().unwrap();
        assert_eq!(rustix::fs::fstat(&fd).unwrap().st_ino, identity);
        let s = pool.stats();
        assert_eq!((s.pooled, s.recycled, s.created), (0, 1, 3));
    }

    #[test]
    fn the_pool_stays_within_its_bound_dropping_the_least_recently_used() {
        let mut pool = DevicePool::with_driver(Driver::fake(1), 8 * MIB as u64);
        let made: Vec<DeviceMemory> = (0..3).map(|_| pool.obtain(0, 4 * MIB).unwrap().0).collect();
        for memory in made {
            pool.give_back(memory);
        }
        let s = pool.stats();
        assert_eq!(
            (s.pooled, s.pooled_bytes, s.evicted),
            (2, 8 * MIB as u64, 1)
        );
        // Larger than the whole bound: never kept.
        let (big, _) = pool.obtain(0, 16 * MIB).unwrap();
        pool.give_back(big);
        assert_eq!(pool.stats().pooled_bytes, 8 * MIB as u64);
    }

    #[test]
    fn a_bad_device_or_a_full_one_is_a_clear_refusal() {
        let mut pool = DevicePool::with_driver(Driver::fake(1), 0);
        let e = pool.obtain(3, MIB).unwrap_err();
        assert!(
            matches!(
                e,
                CreateError::Device {
                    memory: MemoryKind::Cuda { device: 3 },
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("cuda:3"), "{e}");
        // The fake device holds 16 GiB.
        let e = pool.obtain(0, 64 << 30).unwrap_err();
        assert!(e.to_string().contains("OUT_OF_MEMORY"), "{e}");
    }

    #[test]
    fn without_a_cuda_driver_an_obtain_is_refused_not_a_panic() {
        // On machines with a GPU this runs for real instead; either way it must answer.
        let mut pool = DevicePool::new(0);
        match pool.obtain(0, MIB) {
            Ok((memory, _)) => assert_eq!(memory.device(), 0),
            Err(e) => assert!(matches!(e, CreateError::Device { .. }), "{e}"),
        }
    }
}
