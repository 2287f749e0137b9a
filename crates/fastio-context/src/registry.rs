//! The context's state: resources, publications, handles per connection, the warm pool.
//!
//! Pure bookkeeping, no sockets: the server and the in-process context both drive it.
//!
//! Architecture Invariant: a resource lives while some connection holds a handle to it,
//! or while it is published and not freed. When neither is true its segment goes to the
//! bounded warm pool or is closed; no other path releases memory.
//!
//! Architecture Invariant: nothing slow happens under the registry's lock. Making a
//! segment (`fallocate` of possibly gigabytes) is split in two: [`Registry::obtain`]
//! (pool hit, or a reservation counted against the headroom) and [`Registry::adopt`];
//! the caller makes the segment in between without the lock. Segments leaving the
//! registry for good are queued ([`Registry::take_dead`]) and freed by the caller after it
//! lets go of the lock.
//!
//! Architecture Invariant: no request turns read-only access into write access. What a
//! connection may do with a resource is decided by the handles it was granted: it may
//! write (take the writer lock, publish read-write) only if one of them was read-write.
//! A publication made without write access is read-only, a write-sealed segment is never
//! granted read-write nor pooled, and host entry memory never comes from the pool.
//!
//! A job's FastIO entries are not kept here: a job runtime (the fastio-job crate) keeps
//! which entry has which memory, through the entry primitives ([`Registry::adopt_pinned`],
//! [`Registry::new_device_pinned`], [`Registry::unpin_entry`], [`Registry::grant_pinned`],
//! [`Registry::seal`]); a resource only knows the names of the entries that pin it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use fastio_meta::{TypedShape, validate_publication_name};
use fastio_shm::{Segment, SegmentBuilder};

use crate::device::DevicePool;
pub use crate::error::MemoryFailure;
use crate::error::{
    CreateError, GetError, NotHeld, PublishError, ReleaseError, UnpublishError, WriteError,
};
use crate::protocol::{
    AccessMode, EventHandle, MemoryKind, ReclaimedHandle, ResourceId, SegmentStats, Stats,
};

/// Identifies a connection (a client, or an in-process context) to the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnectionId(pub u64);

/// The size of the segment behind a resource of 0 bytes (an empty array's).
const MIN_SEGMENT_BYTES: usize = 1;

/// Default bound of the warm pool: 1 GiB of segments kept for reuse.
pub const DEFAULT_POOL_BYTES: u64 = 1 << 30;

/// Default bound of the warm pool in segments (each costs the server a descriptor).
pub const DEFAULT_POOL_SEGMENTS: usize = 64;

/// A segment's huge-page state, shared with the background collapser.
#[derive(Debug, Default)]
pub(crate) struct HugeState {
    /// Bytes the collapser found backed by huge pages.
    pub(crate) bytes: AtomicU64,
    /// Still in the pool: the collapser stops as soon as the segment is handed out.
    pub(crate) pooled: AtomicBool,
    /// How far the collapser got: it resumes there the next time the segment rests in
    /// the pool (huge pages stay in the page cache in between).
    pub(crate) collapsed_to: AtomicU64,
    /// Waiting in the collapser's queue (offered once, however often it is pooled).
    pub(crate) queued: AtomicBool,
}

/// Which connections mapped a segment, and whether writable (so that the pool can hand it
/// back to a process that still keeps the mapping).
type MappedBy = Vec<(ConnectionId, bool)>;

#[derive(Debug)]
struct Pooled {
    segment: Segment,
    mapped_by: MappedBy,
    last_use: u64,
    huge: Arc<HugeState>,
}

/// A pool hit, or the go-ahead to make a new segment of `size` bytes (counted in the
/// registry's reservations until [`Registry::adopt`] or [`Registry::abandon`]).
#[derive(Debug)]
pub enum Obtained {
    /// A warm segment from the pool (holds old bytes).
    Pooled(Box<PooledSegment>),
    /// Make a segment of this many bytes, outside the lock.
    Make(Reservation),
}

/// A warm segment taken from the pool.
#[derive(Debug)]
pub struct PooledSegment {
    segment: Segment,
    mapped_by: MappedBy,
    huge: Arc<HugeState>,
}

fn host_only(id: ResourceId) -> MemoryFailure {
    MemoryFailure::System {
        message: format!("resource {id} is device memory; this needs host memory"),
    }
}

/// Who holds a resource's write mapping: one handle of one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Writer {
    conn: ConnectionId,
    handle: u64,
    // How many times the handle took it.
    count: u32,
}

/// Why a handle could not be granted: turned into the asking operation's error.
#[derive(Debug)]
pub enum GrantRefusal {
    /// Read-write access to memory sealed against writes.
    Sealed,
    /// The descriptor could not be made, or the resource is gone.
    Memory(MemoryFailure),
}

/// Bytes counted against the headroom while a segment is made outside the lock.
#[derive(Debug)]
#[must_use = "give it back with adopt or abandon"]
pub struct Reservation {
    size: usize,
    hugetlb: bool,
}

impl Reservation {
    /// Makes the segment (slow: reserves all its memory). Call without the registry lock.
    pub fn make(&self) -> Result<Segment, MemoryFailure> {
        SegmentBuilder::new(self.size)
            .label("fastio")
            .hugetlb(self.hugetlb)
            .create()
            .map_err(MemoryFailure::from_segment)
    }
}

/// The memory behind a resource.
#[derive(Debug)]
enum Memory {
    /// A sealed memfd.
    Host(Segment),
    /// A CUDA VMM allocation (the context's own handle to it).
    Device(cuda_streams::DeviceMemory),
}

impl Memory {
    fn len(&self) -> usize {
        match self {
            Memory::Host(segment) => segment.len(),
            Memory::Device(memory) => memory.size(),
        }
    }

    fn kind(&self) -> MemoryKind {
        match self {
            Memory::Host(_) => MemoryKind::Host,
            Memory::Device(memory) => MemoryKind::Cuda {
                device: memory.device(),
            },
        }
    }

    fn host(&self) -> Option<&Segment> {
        match self {
            Memory::Host(segment) => Some(segment),
            Memory::Device(_) => None,
        }
    }
}

#[derive(Debug)]
struct Resource {
    memory: Memory,
    mapped_by: MappedBy,
    huge: Arc<HugeState>,
    size: usize,
    deleted: bool,
    // Live publications and FastIO entries bound to it: each keeps it alive.
    pins: usize,
    // The FastIO entries it is the memory of (pinned with `pin_entry`), by name: a job's
    // runtime keeps which entry has which memory; the registry keeps this much to refuse
    // `free` of it and to name it in messages.
    entries: Vec<String>,
    handles: u64,
    // The handle holding the write mapping (its connection and the client's number for
    // it), and how many times it took it.
    writer: Option<Writer>,
    // Sealed against writes (a job output whose producer has finished execute).
    sealed: bool,
}

impl Resource {
    /// `conn` stops writing, if one of its handles was the writer.
    fn drop_writer(&mut self, conn: ConnectionId) {
        if self.writer.is_some_and(|w| w.conn == conn) {
            self.writer = None;
        }
    }
}

#[derive(Debug)]
enum NameState {
    Live {
        id: ResourceId,
        typed: Option<TypedShape>,
        event: Option<EventHandle>,
        // Published by a connection that could not write: it gives read-only handles only.
        read_only: bool,
        // Who published it: it, or a connection that can write the memory, may replace or
        // withdraw it; a reader may not.
        publisher: ConnectionId,
    },
    Freed {
        publisher: ConnectionId,
        // Who freed the memory (with a read-write handle).
        freed_by: ConnectionId,
    },
}

/// The handles one connection holds to one resource.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Held {
    count: u64,
    // Some handle granted to this connection was read-write.
    writable: bool,
}

/// Whether a new resource may reuse a pooled segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Recycle {
    Allowed,
    // Entry memory: a former holder of a pooled segment could have kept a writable
    // mapping of it, which the write seal at the end of the producer's execute cannot
    // revoke.
    Never,
}

/// Memory made for a FastIO entry and pinned by it ([`Registry::adopt_pinned`],
/// [`Registry::new_device_pinned`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pinned {
    /// The resource.
    pub id: ResourceId,
    /// Its usable size.
    pub size: usize,
    /// Where it lives.
    pub kind: MemoryKind,
    /// Whether it came from a warm pool and holds old bytes (never, today: entry memory is
    /// always fresh, and fresh host memory is zero).
    pub recycled: bool,
}

/// A handle handed out: the descriptor to pass on and what the client needs to know.
#[derive(Debug)]
pub struct Grant {
    /// The resource.
    pub id: ResourceId,
    /// Usable size.
    pub size: usize,
    /// Published metadata, if any.
    pub typed: Option<TypedShape>,
    /// Whether the segment was recycled and holds old bytes.
    pub recycled: bool,
    /// The publication's interprocess CUDA event, if any.
    pub event: Option<EventHandle>,
    /// Where the memory lives.
    pub kind: MemoryKind,
    /// For device memory, the allocation's size (which importing it needs); 0 for host.
    pub device_bytes: usize,
    /// The descriptor for the client.
    pub memory: GrantedMemory,
}

/// The descriptor a [`Grant`] hands out.
#[derive(Debug)]
pub enum GrantedMemory {
    /// A host segment (read-only when the access asked was read-only).
    Host(Segment),
    /// An exported device allocation (CUDA has no read-only descriptor: read-only access is
    /// asked for when the client maps it).
    Device(std::os::fd::OwnedFd),
}

impl Grant {
    /// The host segment, for host memory.
    pub fn segment(&self) -> Option<&Segment> {
        match &self.memory {
            GrantedMemory::Host(segment) => Some(segment),
            GrantedMemory::Device(_) => None,
        }
    }
}

/// The registry of one context.
#[derive(Debug)]
pub struct Registry {
    resources: HashMap<ResourceId, Resource>,
    names: HashMap<String, NameState>,
    connections: HashMap<ConnectionId, HashMap<ResourceId, Held>>,
    pool: Vec<Pooled>,
    // The warm pool of device memory, per device.
    device_pool: DevicePool,
    pool_bytes: u64,
    pool_limit: u64,
    pool_segments: usize,
    // Bytes being reserved outside the lock by creates in flight.
    reserving: u64,
    // Bytes of job entries admitted but not made yet (`hold_entry_bytes`): out of reach of
    // other creates in this context.
    entry_reserve: u64,
    // Segments leaving for good, to be freed by the caller without the lock.
    dead: Vec<Segment>,
    // Where segments entering the pool are sent to be collapsed into huge pages.
    collapser: Option<crate::collapse::Collapser>,
    tick: u64,
    next_id: u64,
    next_connection: u64,
    created: u64,
    recycled: u64,
    evicted: u64,
}

impl Registry {
    /// An empty registry whose warm pool keeps at most `pool_limit` bytes.
    pub fn new(pool_limit: u64) -> Self {
        Self {
            resources: HashMap::new(),
            names: HashMap::new(),
            connections: HashMap::new(),
            pool: Vec::new(),
            device_pool: DevicePool::new(pool_limit),
            pool_bytes: 0,
            pool_limit,
            pool_segments: DEFAULT_POOL_SEGMENTS,
            reserving: 0,
            entry_reserve: 0,
            dead: Vec::new(),
            collapser: None,
            tick: 0,
            next_id: 1,
            next_connection: 1,
            created: 0,
            recycled: 0,
            evicted: 0,
        }
    }

    /// Bounds the warm pool in segments too (each one is a descriptor held open).
    pub fn set_pool_segments(&mut self, segments: usize) {
        self.pool_segments = segments;
        self.trim_pool(0);
    }

    /// Sends every segment of 2 MiB or more that enters the pool to a background thread
    /// that collapses it into huge pages (`MADV_COLLAPSE`), off every caller's path.
    pub fn collapse_pooled(&mut self, on: bool) {
        self.collapser = on.then(crate::collapse::Collapser::start).flatten();
    }

    /// Segments that left the registry for good since the last call. The caller frees
    /// them (punching their pages, so that clients' parked mappings keep nothing alive)
    /// after releasing the registry's lock.
    pub fn take_dead(&mut self) -> Vec<Segment> {
        std::mem::take(&mut self.dead)
    }

    /// Registers a new connection.
    pub fn connect(&mut self) -> ConnectionId {
        let id = ConnectionId(self.next_connection);
        self.next_connection += 1;
        self.connections.insert(id, HashMap::new());
        id
    }

    /// Drops every handle a connection held (it closed, or its process died).
    pub fn disconnect(&mut self, conn: ConnectionId) {
        let Some(held) = self.connections.remove(&conn) else {
            return;
        };
        for (id, held) in held {
            if let Some(resource) = self.resources.get_mut(&id) {
                resource.handles -= held.count;
                resource.drop_writer(conn);
            }
            self.reclaim_if_dead(id);
        }
    }

    /// Handles held by one connection, per resource.
    pub fn held_by(&self, conn: ConnectionId) -> Vec<(ResourceId, u64)> {
        let mut held: Vec<_> = self
            .connections
            .get(&conn)
            .map(|m| m.iter().map(|(k, v)| (*k, v.count)).collect())
            .unwrap_or_default();
        held.sort();
        held
    }

    /// Drops every handle `conn` holds and says what they were (the end of an operator's
    /// execute: Clara's references must not outlive it).
    pub fn reclaim(&mut self, conn: ConnectionId) -> Vec<ReclaimedHandle> {
        let held: Vec<ReclaimedHandle> = self
            .held_by(conn)
            .into_iter()
            .map(|(id, count)| {
                let (entries, publications) = self.names_of(id);
                ReclaimedHandle {
                    id,
                    count,
                    size: self.resources.get(&id).map_or(0, |r| r.size),
                    entries,
                    publications,
                }
            })
            .collect();
        self.disconnect(conn);
        self.connections.insert(conn, HashMap::new());
        held
    }

    /// The FastIO entries bound to a resource and its live publication names, each
    /// sorted, for messages that name memory the way its users know it.
    fn names_of(&self, id: ResourceId) -> (Vec<String>, Vec<String>) {
        let entries = self
            .resources
            .get(&id)
            .map(|r| r.entries.clone())
            .unwrap_or_default();
        let mut publications: Vec<String> = self
            .names
            .iter()
            .filter(|(_, state)| matches!(state, NameState::Live { id: r, .. } if *r == id))
            .map(|(name, _)| name.clone())
            .collect();
        publications.sort();
        (entries, publications)
    }

    /// A new private resource of `size` bytes, held once by `conn`, made under the lock
    /// (for tests and job set-up; the server uses [`Registry::obtain`] and
    /// [`Registry::adopt`] so that making it happens without the lock).
    pub fn create(&mut self, conn: ConnectionId, size: usize) -> Result<Grant, CreateError> {
        let obtained = self.obtain(conn, size, true, false)?;
        let made = match &obtained {
            Obtained::Make(reservation) => Some(reservation.make()),
            Obtained::Pooled(_) => None,
        };
        let grant = self.adopt(obtained, made, size)?;
        self.add_handle(conn, grant.id, true);
        Ok(grant)
    }

    /// First half of making a resource of `size` bytes: a warm segment from the pool
    /// (preferring one `conn` has mapped, writable when `writable`), or a reservation of
    /// `size` bytes checked against the memory still available, counting the reservations
    /// of creates in flight. With `hugetlb`, only a pooled hugetlb segment will do.
    ///
    /// A resource of 0 bytes (the memory of an empty array) is valid: memfds and mappings
    /// cannot be empty, so its segment has the smallest size, while [`Registry::adopt`]
    /// records (and clients see) size 0.
    pub fn obtain(
        &mut self,
        conn: ConnectionId,
        size: usize,
        writable: bool,
        hugetlb: bool,
    ) -> Result<Obtained, MemoryFailure> {
        self.obtain_as(conn, size, writable, hugetlb, Recycle::Allowed)
    }

    /// [`Registry::obtain`] for a FastIO entry: never a pooled segment.
    pub fn obtain_fresh(&mut self, size: usize, hugetlb: bool) -> Result<Obtained, MemoryFailure> {
        self.obtain_as(ConnectionId(0), size, true, hugetlb, Recycle::Never)
    }

    fn obtain_as(
        &mut self,
        conn: ConnectionId,
        size: usize,
        writable: bool,
        hugetlb: bool,
        recycle: Recycle,
    ) -> Result<Obtained, MemoryFailure> {
        let size = size.max(MIN_SEGMENT_BYTES);
        if recycle == Recycle::Allowed
            && let Some(pooled) = self.take_pooled(size, conn, writable, hugetlb)
        {
            return Ok(Obtained::Pooled(Box::new(pooled)));
        }
        self.admit(size as u64)?;
        self.reserving += size as u64;
        Ok(Obtained::Make(Reservation { size, hugetlb }))
    }

    /// Refuses `bytes` more when they, the reservations in flight and the safety margin do
    /// not fit in the memory available now.
    fn admit(&self, bytes: u64) -> Result<(), MemoryFailure> {
        if let Some(available) = fastio_shm::available_memory() {
            let reserved = self.reserving.saturating_add(self.entry_reserve);
            let wanted = bytes
                .saturating_add(reserved)
                .saturating_add(fastio_shm::HEADROOM_MARGIN);
            if wanted > available {
                let free = available.saturating_sub(reserved + fastio_shm::HEADROOM_MARGIN);
                return Err(MemoryFailure::OutOfMemory {
                    size: usize::try_from(bytes).unwrap_or(usize::MAX),
                    message: format!(
                        "cannot reserve {bytes} bytes of shared memory: only {free} bytes are available (keeping {} bytes of margin and {reserved} bytes reserved by creates in progress and by a job's entries still to be made)",
                        fastio_shm::HEADROOM_MARGIN,
                    ),
                });
            }
        }
        Ok(())
    }

    /// Gives back a reservation whose segment could not be made.
    pub fn abandon(&mut self, reservation: Reservation) {
        self.reserving -= reservation.size as u64;
    }

    /// Second half: the resource, held by nobody yet, over the pooled segment or the one
    /// made for the reservation (`made`).
    pub fn adopt(
        &mut self,
        obtained: Obtained,
        made: Option<Result<Segment, MemoryFailure>>,
        size: usize,
    ) -> Result<Grant, MemoryFailure> {
        let (segment, mapped_by, huge, recycled) = match obtained {
            Obtained::Pooled(p) => (p.segment, p.mapped_by, p.huge, true),
            Obtained::Make(reservation) => {
                self.abandon(reservation);
                let segment = made.unwrap_or_else(|| {
                    Err(MemoryFailure::System {
                        message: "a reservation was adopted without its segment".into(),
                    })
                })?;
                self.created += 1;
                let huge = Arc::new(HugeState::default());
                if segment.is_hugetlb() {
                    huge.bytes.store(segment.len() as u64, Ordering::Relaxed);
                }
                // Made huge at create: counted, and the collapser starts after it.
                huge.bytes
                    .fetch_max(segment.huge_at_create(), Ordering::Relaxed);
                huge.collapsed_to
                    .store(segment.huge_at_create(), Ordering::Relaxed);
                (segment, Vec::new(), huge, false)
            }
        };
        let client_copy = match segment.try_clone() {
            Ok(copy) => copy,
            Err(e) => {
                self.dead.push(segment);
                return Err(MemoryFailure::from_segment(e));
            }
        };
        let id = self.insert_resource(Memory::Host(segment), mapped_by, huge, size);
        Ok(Grant {
            id,
            size,
            typed: None,
            recycled,
            event: None,
            kind: MemoryKind::Host,
            device_bytes: 0,
            memory: GrantedMemory::Host(client_copy),
        })
    }

    /// Records a new resource, held by nobody yet, under the next id.
    fn insert_resource(
        &mut self,
        memory: Memory,
        mapped_by: MappedBy,
        huge: Arc<HugeState>,
        size: usize,
    ) -> ResourceId {
        let id = ResourceId(self.next_id);
        self.next_id += 1;
        self.resources.insert(
            id,
            Resource {
                memory,
                mapped_by,
                huge,
                size,
                deleted: false,
                pins: 0,
                entries: Vec::new(),
                handles: 0,
                writer: None,
                sealed: false,
            },
        );
        id
    }

    /// A new private resource of at least `size` bytes on CUDA device `device`, held once
    /// by `conn`: from the device's warm pool, or made through the CUDA driver. Device
    /// memory is not host memory: it is not counted against the host's headroom.
    pub fn create_device(
        &mut self,
        conn: ConnectionId,
        device: i32,
        size: usize,
    ) -> Result<Grant, CreateError> {
        let grant = self.new_device_resource(device, size)?;
        self.add_handle(conn, grant.id, true);
        Ok(grant)
    }

    /// A new resource of device memory held by nobody yet.
    fn new_device_resource(&mut self, device: i32, size: usize) -> Result<Grant, CreateError> {
        let obtained = self.device_pool.obtain(device, size)?;
        self.adopt_device(device, size, obtained)
    }

    /// [`Registry::new_device_resource`] never from the warm pool: memory no other client
    /// has held (a FastIO entry's allocation at run time, as host entries get fresh
    /// segments).
    fn new_fresh_device_resource(
        &mut self,
        device: i32,
        size: usize,
    ) -> Result<Grant, CreateError> {
        let made = self.device_pool.make(device, size)?;
        self.adopt_device(device, size, (made, false))
    }

    fn adopt_device(
        &mut self,
        device: i32,
        size: usize,
        (memory, recycled): (cuda_streams::DeviceMemory, bool),
    ) -> Result<Grant, CreateError> {
        let device_bytes = memory.size();
        let client = memory.export_fd().map_err(|e| CreateError::Device {
            memory: MemoryKind::Cuda { device },
            reason: e.to_string(),
        })?;
        if !recycled {
            self.created += 1;
        } else {
            self.recycled += 1;
        }
        let id = self.insert_resource(
            Memory::Device(memory),
            Vec::new(),
            Arc::new(HugeState::default()),
            size,
        );
        Ok(Grant {
            id,
            size,
            typed: None,
            recycled,
            event: None,
            kind: MemoryKind::Cuda { device },
            device_bytes,
            memory: GrantedMemory::Device(client),
        })
    }

    /// Makes device memory through `driver` from now on (cuda-streams' fake in tests);
    /// without it, the machine's CUDA driver is found on the first device create.
    pub fn set_device_driver(&mut self, driver: cuda_streams::Driver) {
        self.device_pool = DevicePool::with_driver(driver, self.pool_limit);
    }

    /// Holds a newly adopted resource once for `conn` (the end of a create).
    pub fn hold_new(&mut self, conn: ConnectionId, id: ResourceId) {
        self.add_handle(conn, id, true);
    }

    // Primitives for the memory of a job's FastIO entries. A job runtime (the fastio-job
    // crate) keeps which entry has which memory and who may open it when; what holds for
    // the memory itself (handle counts, the writer rule, seals, never pooled memory,
    // reclaim on disconnect) is kept here, by these few calls.

    /// Whether `bytes` more of host memory fit what is available now, counting the
    /// reservations in flight and the safety margin: a job checks its pre-allocated
    /// entries as a whole before making any of them.
    pub fn admit_total(&self, bytes: u64) -> Result<(), MemoryFailure> {
        self.admit(bytes)
    }

    /// Holds `bytes` of admitted host memory for a job's entries to be made later: counted
    /// by every admission from now on, until [`Registry::release_entry_bytes`].
    pub fn hold_entry_bytes(&mut self, bytes: u64) {
        self.entry_reserve = self.entry_reserve.saturating_add(bytes);
    }

    /// Gives back bytes held by [`Registry::hold_entry_bytes`] (the entry is being made,
    /// and its own reservation counts them from now on, or it never will be).
    pub fn release_entry_bytes(&mut self, bytes: u64) {
        self.entry_reserve = self.entry_reserve.saturating_sub(bytes);
    }

    /// Second half of making host memory for entry `entry` (the first is
    /// [`Registry::obtain_fresh`], never a pooled segment): the new resource, pinned by
    /// the entry and held by nobody.
    pub fn adopt_pinned(
        &mut self,
        obtained: Obtained,
        made: Option<Result<Segment, MemoryFailure>>,
        size: usize,
        entry: &str,
    ) -> Result<Pinned, MemoryFailure> {
        let grant = self.adopt(obtained, made, size)?;
        Ok(self.pin_entry(&grant, entry))
    }

    /// Device memory of at least `size` bytes on `device` for entry `entry`, made through
    /// the CUDA driver, never from the device's warm pool (memory no other client has
    /// held, as host entries get fresh segments), pinned by the entry and held by nobody.
    /// Not counted against the host's headroom.
    pub fn new_device_pinned(
        &mut self,
        device: i32,
        size: usize,
        entry: &str,
    ) -> Result<Pinned, CreateError> {
        let grant = self.new_fresh_device_resource(device, size)?;
        Ok(self.pin_entry(&grant, entry))
    }

    /// The new resource of `grant` is pinned by entry `entry` (its client copy of the
    /// descriptor is dropped: the entry's handles are granted later).
    fn pin_entry(&mut self, grant: &Grant, entry: &str) -> Pinned {
        if let Some(resource) = self.resources.get_mut(&grant.id) {
            resource.pins += 1;
            resource.entries.push(entry.to_owned());
        }
        Pinned {
            id: grant.id,
            size: grant.size,
            kind: grant.kind,
            recycled: grant.recycled,
        }
    }

    /// Entry `entry` lets go of resource `id` (it got new memory, or the job ends): the
    /// resource lives on while handles to it remain, then dies.
    pub fn unpin_entry(&mut self, id: ResourceId, entry: &str) {
        if let Some(resource) = self.resources.get_mut(&id)
            && let Some(at) = resource.entries.iter().position(|e| e == entry)
        {
            resource.entries.remove(at);
            resource.pins -= 1;
        }
        self.reclaim_if_dead(id);
    }

    /// A new handle for `conn` to resource `id`, which an entry pins, with the entry's
    /// shape and event. Read-write access to sealed memory is refused.
    pub fn grant_pinned(
        &mut self,
        conn: ConnectionId,
        id: ResourceId,
        access: AccessMode,
        typed: TypedShape,
        event: Option<EventHandle>,
    ) -> Result<Grant, GrantRefusal> {
        if self.resources.get(&id).is_none_or(|r| r.entries.is_empty()) {
            return Err(GrantRefusal::Memory(MemoryFailure::System {
                message: format!("resource {id} is not the memory of a FastIO entry"),
            }));
        }
        let mut grant = self.grant(conn, id, access, Some(typed))?;
        grant.event = event;
        Ok(grant)
    }

    /// Seals resource `id` against writes, for good: from now on no descriptor in any
    /// process can write host memory, map it writable or punch holes in it, and the
    /// registry grants it read-only only (device memory has no seal of its own).
    pub fn seal(&mut self, id: ResourceId) -> Result<(), MemoryFailure> {
        self.seal_resource(id)
    }

    /// A read-write descriptor of host memory an entry pins, to fill it without the
    /// registry's lock before any operator runs (a sealed segment refuses the writable
    /// mapping).
    pub fn pinned_segment(&self, id: ResourceId) -> Result<Segment, MemoryFailure> {
        match self.resources.get(&id) {
            Some(resource) if !resource.entries.is_empty() => resource
                .memory
                .host()
                .ok_or_else(|| host_only(id))?
                .try_clone()
                .map_err(MemoryFailure::from_segment),
            _ => Err(MemoryFailure::System {
                message: format!("resource {id} is not the memory of a FastIO entry"),
            }),
        }
    }

    /// Publishes a resource `conn` holds under `name`; refused if the name is taken.
    pub fn publish(
        &mut self,
        conn: ConnectionId,
        id: ResourceId,
        name: &str,
        typed: Option<TypedShape>,
        event: Option<EventHandle>,
    ) -> Result<(), PublishError> {
        self.publish_as(conn, id, name, typed, event, false)
    }

    /// [`Registry::publish`]; with `replace`, a publication or freed name that has `name`
    /// is replaced (its resource loses that pin) instead of refusing.
    pub fn publish_as(
        &mut self,
        conn: ConnectionId,
        id: ResourceId,
        name: &str,
        typed: Option<TypedShape>,
        event: Option<EventHandle>,
        replace: bool,
    ) -> Result<(), PublishError> {
        validate_publication_name(name).map_err(|e| PublishError::InvalidName {
            name: name.to_owned(),
            reason: e.to_string(),
        })?;
        let held = self.check_held(conn, id)?;
        let resource = &self.resources[&id];
        if resource.deleted {
            return Err(PublishError::Deleted { id: id.0 });
        }
        // Without write access the publication cannot grant it to others either.
        let read_only = !held.writable || resource.sealed;
        if let Some(t) = &typed {
            let need = t.byte_size();
            if need > resource.size {
                return Err(PublishError::MetadataTooLarge {
                    needed: need,
                    size: resource.size,
                });
            }
        }
        match self.names.get(name) {
            Some(NameState::Live { .. }) if !replace => {
                return Err(PublishError::AlreadyPublished {
                    name: name.to_owned(),
                });
            }
            Some(NameState::Freed { .. }) if !replace => {
                return Err(PublishError::NameFreed {
                    name: name.to_owned(),
                });
            }
            Some(state) if !self.may_change(conn, state) => {
                return Err(PublishError::NotPublisher {
                    name: name.to_owned(),
                });
            }
            _ => {}
        }
        if let Some(resource) = self.resources.get_mut(&id) {
            resource.pins += 1;
        }
        let replaced = self.names.insert(
            name.to_owned(),
            NameState::Live {
                id,
                typed,
                event,
                read_only,
                publisher: conn,
            },
        );
        self.unpin(replaced);
        Ok(())
    }

    /// Withdraws `name`, live or freed, so that it can be published again. Handles got
    /// through it stay valid. Only its publisher, or a connection holding its memory
    /// read-write, may (a reader must not take it away from the others).
    pub fn unpublish(&mut self, conn: ConnectionId, name: &str) -> Result<(), UnpublishError> {
        match self.names.get(name) {
            None => Err(UnpublishError::UnknownName {
                name: name.to_owned(),
            }),
            Some(state) if !self.may_change(conn, state) => Err(UnpublishError::NotPublisher {
                name: name.to_owned(),
            }),
            Some(_) => {
                let state = self.names.remove(name);
                self.unpin(state);
                Ok(())
            }
        }
    }

    /// Whether `conn` may replace or withdraw the publication `state`: it published it,
    /// holds its memory read-write, or freed it.
    fn may_change(&self, conn: ConnectionId, state: &NameState) -> bool {
        match *state {
            NameState::Live { id, publisher, .. } => {
                publisher == conn
                    || self
                        .connections
                        .get(&conn)
                        .and_then(|m| m.get(&id))
                        .is_some_and(|h| h.count > 0 && h.writable)
            }
            NameState::Freed {
                publisher,
                freed_by,
            } => publisher == conn || freed_by == conn,
        }
    }

    /// A name stopped pointing at a live publication's resource: the resource loses that
    /// pin, and dies if nothing else keeps it.
    fn unpin(&mut self, state: Option<NameState>) {
        if let Some(NameState::Live { id, .. }) = state {
            if let Some(resource) = self.resources.get_mut(&id) {
                resource.pins -= 1;
            }
            self.reclaim_if_dead(id);
        }
    }

    /// A new handle to the resource published as `name`.
    pub fn get(
        &mut self,
        conn: ConnectionId,
        name: &str,
        access: AccessMode,
    ) -> Result<Grant, GetError> {
        let (id, typed, event) = match self.names.get(name) {
            Some(NameState::Live {
                read_only: true, ..
            }) if access == AccessMode::ReadWrite => {
                return Err(GetError::ReadOnlyPublication {
                    name: name.to_owned(),
                });
            }
            Some(NameState::Live {
                id, typed, event, ..
            }) => (*id, typed.clone(), *event),
            Some(NameState::Freed { .. }) => {
                return Err(GetError::NameFreed {
                    name: name.to_owned(),
                });
            }
            None => {
                return Err(GetError::UnknownName {
                    name: name.to_owned(),
                });
            }
        };
        let mut grant = self.grant(conn, id, access, typed).map_err(|e| match e {
            GrantRefusal::Sealed => GetError::Sealed {
                name: name.to_owned(),
                id: id.0,
            },
            GrantRefusal::Memory(e) => e.into(),
        })?;
        grant.event = event;
        Ok(grant)
    }

    /// A new handle to resource `id` for `conn`.
    fn grant(
        &mut self,
        conn: ConnectionId,
        id: ResourceId,
        access: AccessMode,
        typed: Option<TypedShape>,
    ) -> Result<Grant, GrantRefusal> {
        let resource = &self.resources[&id];
        if access == AccessMode::ReadWrite && resource.sealed {
            return Err(GrantRefusal::Sealed);
        }
        let kind = resource.memory.kind();
        let device_bytes = match &resource.memory {
            Memory::Host(_) => 0,
            Memory::Device(device) => device.size(),
        };
        let memory = match &resource.memory {
            Memory::Host(segment) => match access {
                AccessMode::ReadOnly => segment.read_only(),
                AccessMode::ReadWrite => segment.try_clone(),
            }
            .map(GrantedMemory::Host)
            .map_err(|e| GrantRefusal::Memory(MemoryFailure::from_segment(e)))?,
            Memory::Device(device) => {
                device.export_fd().map(GrantedMemory::Device).map_err(|e| {
                    GrantRefusal::Memory(MemoryFailure::System {
                        message: e.to_string(),
                    })
                })?
            }
        };
        let size = resource.size;
        self.add_handle(conn, id, access == AccessMode::ReadWrite);
        Ok(Grant {
            id,
            size,
            typed,
            recycled: false,
            event: None,
            kind,
            device_bytes,
            memory,
        })
    }

    fn seal_resource(&mut self, id: ResourceId) -> Result<(), MemoryFailure> {
        if let Some(resource) = self.resources.get_mut(&id) {
            // Device memory has no seal: its readers map it read-only where the driver
            // allows, and the context refuses it read-write from now on.
            if let Memory::Host(segment) = &resource.memory {
                segment.seal_writes().map_err(MemoryFailure::from_segment)?;
            }
            resource.sealed = true;
        }
        Ok(())
    }

    /// [`Registry::release`] of handle `handle` (the client's number for it; 0: not
    /// said): its write mapping goes with it.
    pub fn release_handle(
        &mut self,
        conn: ConnectionId,
        id: ResourceId,
        handle: u64,
    ) -> Result<(), ReleaseError> {
        self.check_held(conn, id)?;
        self.drop_handle_writer(conn, id, handle);
        self.release(conn, id)
    }

    /// [`Registry::free`] of handle `handle`: its write mapping goes with it.
    pub fn free_handle(
        &mut self,
        conn: ConnectionId,
        id: ResourceId,
        handle: u64,
    ) -> Result<(), ReleaseError> {
        self.check_held(conn, id)?;
        self.drop_handle_writer(conn, id, handle);
        self.free(conn, id)
    }

    fn drop_handle_writer(&mut self, conn: ConnectionId, id: ResourceId, handle: u64) {
        if let Some(resource) = self.resources.get_mut(&id)
            && handle != 0
            && resource
                .writer
                .is_some_and(|w| w.conn == conn && w.handle == handle)
        {
            resource.writer = None;
        }
    }

    /// Drops one handle `conn` holds.
    pub fn release(&mut self, conn: ConnectionId, id: ResourceId) -> Result<(), ReleaseError> {
        self.check_held(conn, id)?;
        let held = self
            .connections
            .get_mut(&conn)
            .and_then(|m| m.get_mut(&id))
            .expect("checked above");
        held.count -= 1;
        if held.count == 0 {
            self.connections.get_mut(&conn).map(|m| m.remove(&id));
            // Its last handle gone, the connection cannot be writing any more.
            if let Some(resource) = self.resources.get_mut(&id) {
                resource.drop_writer(conn);
            }
        }
        if let Some(resource) = self.resources.get_mut(&id) {
            resource.handles -= 1;
        }
        self.reclaim_if_dead(id);
        Ok(())
    }

    /// Takes the write mapping of a resource `conn` holds for its handle `handle` (the
    /// client's number for it): refused while another handle, of this connection or
    /// another, has it (Clara: a second writer fails to map). Counted per handle.
    pub fn acquire_write(
        &mut self,
        conn: ConnectionId,
        id: ResourceId,
        handle: u64,
    ) -> Result<(), WriteError> {
        if !self.check_held(conn, id)?.writable {
            return Err(WriteError::ReadOnlyHandle { id: id.0 });
        }
        let resource = self.resources.get_mut(&id).expect("held resources exist");
        if resource.sealed {
            return Err(WriteError::Sealed { id: id.0 });
        }
        match &mut resource.writer {
            Some(w) if w.conn == conn && w.handle == handle => w.count += 1,
            Some(_) => return Err(WriteError::WriterBusy { id: id.0 }),
            None => {
                resource.writer = Some(Writer {
                    conn,
                    handle,
                    count: 1,
                })
            }
        }
        Ok(())
    }

    /// Gives back one write mapping that handle `handle` of `conn` took.
    pub fn release_write(
        &mut self,
        conn: ConnectionId,
        id: ResourceId,
        handle: u64,
    ) -> Result<(), WriteError> {
        self.check_held(conn, id)?;
        let resource = self.resources.get_mut(&id).expect("held resources exist");
        match &mut resource.writer {
            Some(w) if w.conn == conn && w.handle == handle => {
                w.count -= 1;
                if w.count == 0 {
                    resource.writer = None;
                }
                Ok(())
            }
            _ => Err(WriteError::NotWriter { id: id.0 }),
        }
    }

    /// Marks a held resource deleted, so that its names stop resolving, and drops the handle.
    /// Needs a read-write handle, or to have published it.
    pub fn free(&mut self, conn: ConnectionId, id: ResourceId) -> Result<(), ReleaseError> {
        // Freeing takes the memory from every holder and name: a reader may not (its
        // publisher may, from any handle).
        let published_here = self.names.values().any(|s| {
            matches!(s, NameState::Live { id: live, publisher, .. } if *live == id && *publisher == conn)
        });
        if !self.check_held(conn, id)?.writable && !published_here {
            return Err(ReleaseError::ReadOnlyHandle { id: id.0 });
        }
        // A bound entry must keep its memory for the readers still to come.
        if let Some(entry) = self.resources.get(&id).and_then(|r| r.entries.first()) {
            return Err(ReleaseError::EntryMemory {
                id: id.0,
                entry: entry.clone(),
            });
        }
        let resource = self.resources.get_mut(&id).expect("held resources exist");
        resource.deleted = true;
        for state in self.names.values_mut() {
            if let NameState::Live {
                id: live,
                publisher,
                ..
            } = *state
                && live == id
            {
                *state = NameState::Freed {
                    publisher,
                    freed_by: conn,
                };
            }
        }
        self.release(conn, id)
    }

    /// What a listing shows of the registry ([`crate::Context::inspect`]).
    pub(crate) fn snapshot(&self) -> crate::listing::RegistrySnapshot {
        let publications = self
            .names
            .iter()
            .filter_map(|(name, state)| match state {
                NameState::Live { id, typed, .. } => Some((
                    name.clone(),
                    *id,
                    typed
                        .as_ref()
                        .map(|t| (t.element_type, t.shape.dims().to_vec())),
                    self.resources.get(id).map_or(0, |r| r.size),
                )),
                NameState::Freed { .. } => None,
            })
            .collect();
        let handles = self
            .connections
            .iter()
            .flat_map(|(conn, held)| held.iter().map(|(id, h)| (*conn, *id, h.count)))
            .collect();
        crate::listing::RegistrySnapshot {
            stats: self.stats(),
            publications,
            sizes: self.resources.iter().map(|(id, r)| (*id, r.size)).collect(),
            handles,
        }
    }

    /// The registry's accounting.
    pub fn stats(&self) -> Stats {
        Stats {
            resources: self.resources.len(),
            live_bytes: self
                .resources
                .values()
                .filter(|r| r.memory.kind().is_host())
                .map(|r| r.memory.len() as u64)
                .sum(),
            device_live_bytes: self
                .resources
                .values()
                .filter(|r| !r.memory.kind().is_host())
                .map(|r| r.memory.len() as u64)
                .sum(),
            device_pooled: self.device_pool.stats().pooled,
            device_pooled_bytes: self.device_pool.stats().pooled_bytes,
            pooled_segments: self.pool.len(),
            pooled_bytes: self.pool_bytes,
            publications: self
                .names
                .values()
                .filter(|s| matches!(s, NameState::Live { .. }))
                .count(),
            handles: self.resources.values().map(|r| r.handles).sum(),
            connections: self.connections.len(),
            segments_created: self.created,
            segments_recycled: self.recycled,
            segments_evicted: self.evicted,
            reserving_bytes: self.reserving,
            huge_page_bytes: self
                .resources
                .values()
                .map(|r| &r.huge)
                .chain(self.pool.iter().map(|p| &p.huge))
                .map(|h| h.bytes.load(Ordering::Relaxed))
                .sum(),
            segments: {
                let mut list: Vec<SegmentStats> = self
                    .resources
                    .iter()
                    .map(|(id, r)| SegmentStats {
                        resource: Some(*id),
                        bytes: r.memory.len() as u64,
                        huge_page_bytes: r.huge.bytes.load(Ordering::Relaxed),
                        hugetlb: r.memory.host().is_some_and(Segment::is_hugetlb),
                        kind: r.memory.kind(),
                    })
                    .chain(self.pool.iter().map(|p| SegmentStats {
                        resource: None,
                        bytes: p.segment.len() as u64,
                        huge_page_bytes: p.huge.bytes.load(Ordering::Relaxed),
                        hugetlb: p.segment.is_hugetlb(),
                        kind: MemoryKind::Host,
                    }))
                    .chain(self.device_pool.pooled().into_iter().map(|(kind, bytes)| {
                        SegmentStats {
                            resource: None,
                            bytes: bytes as u64,
                            kind,
                            ..SegmentStats::default()
                        }
                    }))
                    .collect();
                list.sort_by_key(|s| (s.resource.is_none(), s.resource));
                list
            },
        }
    }

    fn add_handle(&mut self, conn: ConnectionId, id: ResourceId, writable: bool) {
        if let Some(resource) = self.resources.get_mut(&id)
            && !resource.mapped_by.contains(&(conn, writable))
        {
            resource.mapped_by.push((conn, writable));
        }
        let held = self
            .connections
            .entry(conn)
            .or_default()
            .entry(id)
            .or_default();
        held.count += 1;
        held.writable |= writable;
        if let Some(resource) = self.resources.get_mut(&id) {
            resource.handles += 1;
        }
    }

    fn check_held(&self, conn: ConnectionId, id: ResourceId) -> Result<Held, NotHeld> {
        let held = self
            .connections
            .get(&conn)
            .and_then(|m| m.get(&id))
            .copied()
            .unwrap_or_default();
        if held.count == 0 {
            return Err(NotHeld(id.0));
        }
        Ok(held)
    }

    fn reclaim_if_dead(&mut self, id: ResourceId) {
        let dead = self
            .resources
            .get(&id)
            .is_some_and(|r| r.handles == 0 && (r.deleted || r.pins == 0));
        if !dead {
            return;
        }
        let resource = self.resources.remove(&id).expect("checked above");
        let segment = match resource.memory {
            Memory::Host(segment) => segment,
            // No handle to it is left anywhere: the device's warm pool takes it.
            Memory::Device(memory) => {
                self.device_pool.give_back(memory);
                return;
            }
        };
        let len = segment.len() as u64;
        // A write-sealed segment can never be written again (any writable descriptor may
        // have sealed it): it is closed, never pooled.
        if len > self.pool_limit
            || self.pool_segments == 0
            || resource.sealed
            || segment.is_write_sealed()
        {
            self.dead.push(segment);
            return;
        }
        // Admission follows use: the least recently used segments make room.
        self.trim_pool(len);
        self.tick += 1;
        self.pool_bytes += len;
        let mut mapped_by = resource.mapped_by;
        mapped_by.retain(|(c, _)| self.connections.contains_key(c));
        resource.huge.pooled.store(true, Ordering::Relaxed);
        if let Some(collapser) = &self.collapser {
            collapser.offer(&segment, &resource.huge);
        }
        self.pool.push(Pooled {
            segment,
            mapped_by,
            last_use: self.tick,
            huge: resource.huge,
        });
    }

    /// Evicts least recently used pooled segments until `incoming` more bytes and one more
    /// segment fit the bounds.
    fn trim_pool(&mut self, incoming: u64) {
        let extra = usize::from(incoming > 0);
        while !self.pool.is_empty()
            && (self.pool_bytes + incoming > self.pool_limit
                || self.pool.len() + extra > self.pool_segments)
        {
            let oldest = self
                .pool
                .iter()
                .enumerate()
                .min_by_key(|(_, p)| p.last_use)
                .map(|(i, _)| i)
                .expect("the pool is not empty");
            let evicted = self.pool.swap_remove(oldest);
            evicted.huge.pooled.store(false, Ordering::Relaxed);
            self.pool_bytes -= evicted.segment.len() as u64;
            self.evicted += 1;
            self.dead.push(evicted.segment);
        }
    }

    /// A pooled segment that holds `size` bytes without wasting more than a quarter of
    /// itself: first one `conn` has mapped with the access it needs (no page will fault
    /// again there), then the smallest.
    fn take_pooled(
        &mut self,
        size: usize,
        conn: ConnectionId,
        writable: bool,
        hugetlb: bool,
    ) -> Option<PooledSegment> {
        let index = self
            .pool
            .iter()
            .enumerate()
            .filter(|(_, p)| {
                let len = p.segment.len();
                len >= size && len - size <= len / 4 && (p.segment.is_hugetlb() || !hugetlb)
            })
            .min_by_key(|(_, p)| {
                let mapped_here = p.mapped_by.contains(&(conn, writable));
                (!mapped_here, p.segment.len())
            })
            .map(|(i, _)| i)?;
        let pooled = self.pool.swap_remove(index);
        pooled.huge.pooled.store(false, Ordering::Relaxed);
        self.pool_bytes -= pooled.segment.len() as u64;
        self.recycled += 1;
        Some(PooledSegment {
            segment: pooled.segment,
            mapped_by: pooled.mapped_by,
            huge: pooled.huge,
        })
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        // The pool's memory goes now, even where clients keep parked mappings of it.
        // Resources still alive are left alone: their handles' mappings stay valid.
        for pooled in self.pool.drain(..) {
            let _ = pooled.segment.punch();
        }
        for segment in self.dead.drain(..) {
            let _ = segment.punch();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fastio_meta::{ElementType, Shape};

    fn typed(dims: &[usize]) -> Option<TypedShape> {
        Some(TypedShape::new(ElementType::U8, Shape::new(dims.to_vec()).unwrap()).unwrap())
    }

    #[test]
    fn an_unpublished_resource_dies_with_its_last_handle() {
        let mut r = Registry::new(0);
        let c = r.connect();
        let g = r.create(c, 4096).unwrap();
        assert_eq!(r.stats().resources, 1);
        r.release(c, g.id).unwrap();
        assert_eq!(r.stats().resources, 0);
        assert_eq!(r.stats().live_bytes, 0);
    }

    #[test]
    fn a_published_resource_outlives_its_handles_until_freed() {
        let mut r = Registry::new(0);
        let (a, b) = (r.connect(), r.connect());
        let g = r.create(a, 100).unwrap();
        r.publish(a, g.id, "buf", None, None).unwrap();
        r.release(a, g.id).unwrap();
        assert_eq!(r.stats().resources, 1, "publication keeps it");
        let h = r.get(b, "buf", AccessMode::ReadOnly).unwrap();
        assert!(!h.segment().unwrap().is_writable());
        // A reader cannot take it from the others.
        assert_eq!(
            r.free(b, h.id),
            Err(ReleaseError::ReadOnlyHandle { id: h.id.0 })
        );
        let h = r.get(b, "buf", AccessMode::ReadWrite).unwrap();
        r.free(b, h.id).unwrap();
        r.release(b, h.id).unwrap();
        assert_eq!(r.stats().resources, 0);
        assert!(matches!(
            r.get(a, "buf", AccessMode::ReadOnly),
            Err(GetError::NameFreed { .. })
        ));
    }

    #[test]
    fn its_publisher_may_free_a_resource_from_a_read_only_handle() {
        let mut r = Registry::new(0);
        let a = r.connect();
        let g = r.create(a, 100).unwrap();
        r.publish(a, g.id, "mine", None, None).unwrap();
        r.release(a, g.id).unwrap();
        let h = r.get(a, "mine", AccessMode::ReadOnly).unwrap();
        r.free(a, h.id).unwrap();
        assert_eq!(r.stats().resources, 0);
    }

    #[test]
    fn free_keeps_other_handles_valid_until_released() {
        let mut r = Registry::new(0);
        let (a, b) = (r.connect(), r.connect());
        let g = r.create(a, 100).unwrap();
        r.publish(a, g.id, "x", None, None).unwrap();
        let h = r.get(b, "x", AccessMode::ReadWrite).unwrap();
        r.free(a, g.id).unwrap();
        assert_eq!(r.stats().resources, 1, "b still holds it");
        assert_eq!(r.stats().publications, 0);
        r.release(b, h.id).unwrap();
        assert_eq!(r.stats().resources, 0);
    }

    #[test]
    fn names_publish_once() {
        let mut r = Registry::new(0);
        let c = r.connect();
        let g = r.create(c, 10).unwrap();
        r.publish(c, g.id, "n", None, None).unwrap();
        assert!(matches!(
            r.publish(c, g.id, "n", None, None),
            Err(PublishError::AlreadyPublished { .. })
        ));
        r.publish(c, g.id, "n2", typed(&[2, 5]), None).unwrap();
        assert_eq!(r.stats().publications, 2);
    }

    #[test]
    fn only_held_resources_can_be_published_released_or_freed() {
        let mut r = Registry::new(0);
        let (a, b) = (r.connect(), r.connect());
        let g = r.create(a, 10).unwrap();
        assert!(matches!(
            r.publish(b, g.id, "n", None, None),
            Err(PublishError::NotHeld { .. })
        ));
        assert!(matches!(
            r.release(b, g.id),
            Err(ReleaseError::NotHeld { .. })
        ));
        assert!(matches!(r.free(b, g.id), Err(ReleaseError::NotHeld { .. })));
        r.release(a, g.id).unwrap();
        assert!(matches!(
            r.release(a, g.id),
            Err(ReleaseError::NotHeld { .. })
        ));
    }

    #[test]
    fn metadata_larger_than_the_allocation_is_refused() {
        let mut r = Registry::new(0);
        let c = r.connect();
        let g = r.create(c, 10).unwrap();
        assert!(matches!(
            r.publish(c, g.id, "n", typed(&[11]), None),
            Err(PublishError::MetadataTooLarge {
                needed: 11,
                size: 10
            })
        ));
    }

    #[test]
    fn disconnect_drops_the_connections_handles() {
        let mut r = Registry::new(0);
        let (a, b) = (r.connect(), r.connect());
        let g = r.create(a, 10).unwrap();
        r.publish(a, g.id, "n", None, None).unwrap();
        r.get(b, "n", AccessMode::ReadOnly).unwrap();
        r.get(b, "n", AccessMode::ReadOnly).unwrap();
        r.create(b, 20).unwrap();
        assert_eq!(r.stats().handles, 4);
        r.disconnect(b);
        let s = r.stats();
        assert_eq!((s.resources, s.handles, s.connections), (1, 1, 1));
    }

    #[test]
    fn dead_segments_are_recycled_within_the_pool_bound() {
        let mut r = Registry::new(10_000);
        let c = r.connect();
        let g = r.create(c, 8000).unwrap();
        r.release(c, g.id).unwrap();
        assert_eq!(r.stats().pooled_bytes, 8000);
        let again = r.create(c, 7000).unwrap();
        assert!(again.recycled);
        assert_eq!(again.size, 7000);
        assert_eq!(r.stats().segments_recycled, 1);
        // Too small to hold, or too wasteful: a fresh segment.
        let other = r.create(c, 100).unwrap();
        assert!(!other.recycled);
        // Over the bound: dropped, not pooled.
        let big = r.create(c, 20_000).unwrap();
        r.release(c, big.id).unwrap();
        assert_eq!(r.stats().pooled_bytes, 0);
    }
}

#[cfg(test)]
mod pool_tests {
    use super::*;

    fn blocks(s: &Segment) -> u64 {
        rustix::fs::fstat(s).unwrap().st_blocks as u64
    }

    #[test]
    fn the_pool_prefers_a_segment_the_connection_has_mapped() {
        let mut r = Registry::new(1 << 30);
        let (a, b) = (r.connect(), r.connect());
        let ga = r.create(a, 8192).unwrap();
        let gb = r.create(b, 8192).unwrap();
        let (ia, ib) = (
            ga.segment().unwrap().identity(),
            gb.segment().unwrap().identity(),
        );
        // a's segment enters the pool first: of two equal sizes, the one picked without a
        // preference.
        r.release(a, ga.id).unwrap();
        r.release(b, gb.id).unwrap();
        assert_eq!(r.create(b, 8192).unwrap().segment().unwrap().identity(), ib);
        assert_eq!(r.create(a, 8192).unwrap().segment().unwrap().identity(), ia);
    }

    #[test]
    fn bytes_held_for_a_jobs_entries_are_out_of_reach_of_other_creates() {
        let mut r = Registry::new(0);
        let c = r.connect();
        let available = fastio_shm::available_memory().expect("memory is reported");
        // A job admitted with entries still to be made holds what they need.
        r.hold_entry_bytes(available);
        assert!(matches!(
            r.create(c, 4096),
            Err(CreateError::OutOfMemory { .. })
        ));
        // Given back as an entry is made (its own reservation counts it then).
        r.release_entry_bytes(available);
        assert!(r.create(c, 4096).is_ok());
    }

    #[test]
    fn a_segment_too_big_for_what_is_left_evicts_the_least_recently_used() {
        let mut r = Registry::new(10_000);
        let c = r.connect();
        let small = r.create(c, 3000).unwrap();
        let other = r.create(c, 3000).unwrap();
        let big = r.create(c, 8000).unwrap();
        r.release(c, small.id).unwrap();
        r.release(c, other.id).unwrap();
        assert_eq!(r.stats().pooled_bytes, 6000);
        // 8000 more do not fit beside 6000: both small ones go, the big one stays.
        r.release(c, big.id).unwrap();
        let s = r.stats();
        assert_eq!((s.pooled_segments, s.pooled_bytes), (1, 8000));
        assert_eq!(s.segments_evicted, 2);
        assert!(r.create(c, 8000).unwrap().recycled);
        // Beyond the whole bound: not pooled at all.
        let huge = r.create(c, 20_000).unwrap();
        r.release(c, huge.id).unwrap();
        assert_eq!(r.stats().pooled_bytes, 0);
    }

    #[test]
    fn the_pool_is_bounded_in_descriptors_too() {
        let mut r = Registry::new(1 << 30);
        let c = r.connect();
        // Many tiny frees, each its own segment, once left 249 pooled descriptors and
        // then "Too many open files" at every create.
        let grants: Vec<_> = (0..300).map(|_| r.create(c, 1).unwrap()).collect();
        for g in grants {
            r.free(c, g.id).unwrap();
        }
        let s = r.stats();
        assert_eq!(s.pooled_segments, DEFAULT_POOL_SEGMENTS);
        assert_eq!(s.segments_evicted, 300 - DEFAULT_POOL_SEGMENTS as u64);
        r.set_pool_segments(8);
        assert_eq!(r.stats().pooled_segments, 8);
    }

    #[test]
    fn a_segment_leaving_for_good_is_handed_out_to_be_punched_after_the_lock() {
        let mut r = Registry::new(0);
        let c = r.connect();
        let g = r.create(c, 1 << 20).unwrap();
        let client = match g.memory {
            GrantedMemory::Host(segment) => segment,
            GrantedMemory::Device(_) => unreachable!("host memory was asked for"),
        };
        let m = fastio_shm::Mapping::new(
            &client,
            fastio_shm::Access::ReadWrite,
            fastio_shm::Prefault::Lazy,
        )
        .unwrap();
        m.write_at(0, &[1u8; 1 << 20]).unwrap();
        r.release(c, g.id).unwrap();
        // The registry let go of it but kept it for the caller, who punches it unlocked.
        let dead = r.take_dead();
        assert_eq!(dead.len(), 1);
        assert!(blocks(&client) > 0, "nothing freed under the lock");
        for d in dead {
            d.punch().unwrap();
        }
        assert_eq!(blocks(&client), 0, "a client's mapping keeps nothing alive");
    }
}

#[cfg(test)]
mod writer_tests {
    use super::*;

    #[test]
    fn one_handle_writes_at_a_time_until_it_lets_go() {
        let mut r = Registry::new(0);
        let (a, b) = (r.connect(), r.connect());
        let g = r.create(a, 64).unwrap();
        r.publish(a, g.id, "w", None, None).unwrap();
        r.get(b, "w", AccessMode::ReadWrite).unwrap();
        r.acquire_write(a, g.id, 1).unwrap();
        r.acquire_write(a, g.id, 1).unwrap();
        assert_eq!(
            r.acquire_write(b, g.id, 1),
            Err(WriteError::WriterBusy { id: g.id.0 })
        );
        r.release_write(a, g.id, 1).unwrap();
        assert!(r.acquire_write(b, g.id, 1).is_err(), "a still holds one");
        r.release_write(a, g.id, 1).unwrap();
        r.acquire_write(b, g.id, 1).unwrap();
        // A writer that goes away, by release or disconnect, lets the next one in.
        r.disconnect(b);
        r.acquire_write(a, g.id, 1).unwrap();
        r.release(a, g.id).unwrap();
        let c = r.connect();
        r.get(c, "w", AccessMode::ReadWrite).unwrap();
        r.acquire_write(c, g.id, 1).unwrap();
    }

    #[test]
    fn a_second_handle_of_the_same_connection_is_a_second_writer() {
        let mut r = Registry::new(0);
        let a = r.connect();
        let g = r.create(a, 64).unwrap();
        r.publish(a, g.id, "w", None, None).unwrap();
        r.get(a, "w", AccessMode::ReadWrite).unwrap();
        r.acquire_write(a, g.id, 1).unwrap();
        assert_eq!(
            r.acquire_write(a, g.id, 2),
            Err(WriteError::WriterBusy { id: g.id.0 })
        );
        // Only the writer gives it back.
        assert_eq!(
            r.release_write(a, g.id, 2),
            Err(WriteError::NotWriter { id: g.id.0 })
        );
        // Releasing the writing handle lets go, though the connection holds another.
        r.release_handle(a, g.id, 1).unwrap();
        r.acquire_write(a, g.id, 2).unwrap();
        // Releasing another handle does not.
        let other = r.get(a, "w", AccessMode::ReadWrite).unwrap();
        r.release_handle(a, other.id, 3).unwrap();
        assert_eq!(
            r.acquire_write(a, g.id, 4),
            Err(WriteError::WriterBusy { id: g.id.0 })
        );
        // Freeing the writing handle lets go too.
        let third = r.get(a, "w", AccessMode::ReadWrite).unwrap();
        r.free_handle(a, g.id, 2).unwrap();
        r.acquire_write(a, third.id, 5).unwrap();
    }
}

#[cfg(test)]
mod read_only_tests {
    use super::*;

    #[test]
    fn a_read_only_handle_publishes_a_read_only_publication() {
        let mut r = Registry::new(0);
        let (producer, reader, other) = (r.connect(), r.connect(), r.connect());
        let made = r.create(producer, 4096).unwrap();
        r.publish(producer, made.id, "volume", None, None).unwrap();
        let input = r.get(reader, "volume", AccessMode::ReadOnly).unwrap();
        r.publish(reader, input.id, "alias", None, None).unwrap();
        assert_eq!(
            r.get(other, "alias", AccessMode::ReadWrite).unwrap_err(),
            GetError::ReadOnlyPublication {
                name: "alias".into()
            }
        );
        let got = r.get(other, "alias", AccessMode::ReadOnly).unwrap();
        assert!(!got.segment().unwrap().is_writable());
        // Nor does a second publication by a read-only holder of the alias grant more.
        r.publish(other, got.id, "alias2", None, None).unwrap();
        assert!(r.get(other, "alias2", AccessMode::ReadWrite).is_err());
    }

    #[test]
    fn the_writer_lock_needs_write_access() {
        let mut r = Registry::new(0);
        let (a, b) = (r.connect(), r.connect());
        let g = r.create(a, 64).unwrap();
        r.publish(a, g.id, "w", None, None).unwrap();
        r.get(b, "w", AccessMode::ReadOnly).unwrap();
        assert_eq!(
            r.acquire_write(b, g.id, 1),
            Err(WriteError::ReadOnlyHandle { id: g.id.0 })
        );
        r.acquire_write(a, g.id, 1).unwrap();
    }
}
