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

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use fastio_meta::{Shape, TypedShape, validate_publication_name};
use fastio_shm::{Segment, SegmentBuilder};

use crate::device::DevicePool;
pub use crate::error::MemoryFailure;
use crate::error::{
    CreateError, EntryError, GetError, NotHeld, PublishError, ReleaseError, UnpublishError,
    WriteError,
};
use crate::job::{EntryId, EntryPlan, ReclaimedHandle};
use crate::protocol::{AccessMode, EventHandle, MemoryKind, ResourceId, SegmentStats, Stats};

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

/// Why [`Registry::grant`] refused: turned into the asking operation's error.
enum Refusal {
    Sealed,
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

/// A FastIO entry's memory: none yet, or a resource with the entry's concrete shape.
#[derive(Debug)]
struct EntrySlot {
    plan: EntryPlan,
    bound: Option<(ResourceId, TypedShape)>,
    // The interprocess CUDA event of the current memory, set by the producer.
    event: Option<EventHandle>,
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
    entries: Vec<EntrySlot>,
    connections: HashMap<ConnectionId, HashMap<ResourceId, Held>>,
    pool: Vec<Pooled>,
    // The warm pool of device memory, per device.
    device_pool: DevicePool,
    pool_bytes: u64,
    pool_limit: u64,
    pool_segments: usize,
    // Bytes being reserved outside the lock by creates in flight.
    reserving: u64,
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
            entries: Vec::new(),
            connections: HashMap::new(),
            pool: Vec::new(),
            device_pool: DevicePool::new(pool_limit),
            pool_bytes: 0,
            pool_limit,
            pool_segments: DEFAULT_POOL_SEGMENTS,
            reserving: 0,
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
            .entries
            .iter()
            .filter(|e| e.bound.as_ref().is_some_and(|(r, _)| *r == id))
            .map(|e| e.plan.name.clone())
            .collect();
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
            let wanted = bytes
                .saturating_add(self.reserving)
                .saturating_add(fastio_shm::HEADROOM_MARGIN);
            if wanted > available {
                let free = available.saturating_sub(self.reserving + fastio_shm::HEADROOM_MARGIN);
                return Err(MemoryFailure::OutOfMemory {
                    size: usize::try_from(bytes).unwrap_or(usize::MAX),
                    message: format!(
                        "cannot reserve {bytes} bytes of shared memory: only {free} bytes are available (keeping {} bytes of margin and {} bytes reserved by creates in progress)",
                        fastio_shm::HEADROOM_MARGIN,
                        self.reserving
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

    /// A new entry resource held by nobody (its caller pins it at once), made under the
    /// lock; never a pooled segment.
    fn new_resource(&mut self, size: usize) -> Result<Grant, MemoryFailure> {
        let obtained = self.obtain_fresh(size, false)?;
        let made = match &obtained {
            Obtained::Make(reservation) => Some(reservation.make()),
            Obtained::Pooled(_) => None,
        };
        self.adopt(obtained, made, size)
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
            Refusal::Sealed => GetError::Sealed {
                name: name.to_owned(),
                id: id.0,
            },
            Refusal::Memory(e) => e.into(),
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
    ) -> Result<Grant, Refusal> {
        let resource = &self.resources[&id];
        if access == AccessMode::ReadWrite && resource.sealed {
            return Err(Refusal::Sealed);
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
            .map_err(|e| Refusal::Memory(MemoryFailure::from_segment(e)))?,
            Memory::Device(device) => {
                device.export_fd().map(GrantedMemory::Device).map_err(|e| {
                    Refusal::Memory(MemoryFailure::System {
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

    /// [`Registry::grant`] of an entry's memory.
    fn grant_entry(
        &mut self,
        conn: ConnectionId,
        entry: EntryId,
        id: ResourceId,
        access: AccessMode,
        typed: TypedShape,
    ) -> Result<Grant, EntryError> {
        self.grant(conn, id, access, Some(typed))
            .map_err(|e| match e {
                Refusal::Sealed => EntryError::Sealed {
                    name: self.entries[entry.0 as usize].plan.name.clone(),
                },
                Refusal::Memory(e) => e.into(),
            })
    }

    /// Sets up a job's FastIO entries, allocating (zeroed) those whose shape is fully
    /// known. Entry `i` of `plans` becomes `EntryId(i)`.
    ///
    /// The memory of every pre-allocated entry is checked against what is available as a
    /// whole before any of it is allocated: a job that cannot fit fails at once, having
    /// taken nothing.
    pub fn define_entries(&mut self, plans: &[EntryPlan]) -> Result<(), EntryError> {
        let mut total = 0u64;
        for plan in plans.iter().filter(|p| p.is_preallocated()) {
            let bytes = plan
                .declared
                .iter()
                .try_fold(plan.element_type.size() as u64, |acc, &d| {
                    acc.checked_mul(u64::try_from(d).ok()?)
                })
                .ok_or_else(|| EntryError::Shape {
                    name: plan.name.clone(),
                    dims: plan.declared.iter().map(|&d| d as usize).collect(),
                    reason: "it has more bytes than can be addressed".into(),
                })?;
            // Device entries take no host memory.
            if plan.memory.is_host() {
                total = total.saturating_add(bytes);
            }
        }
        self.admit(total).map_err(|e| match e {
            MemoryFailure::OutOfMemory { message, .. } => EntryError::OutOfMemory {
                size: usize::try_from(total).unwrap_or(usize::MAX),
                message: format!(
                    "the job's pre-allocated FastIO entries need {total} bytes together; nothing was allocated: {message}"
                ),
            },
            other => other.into(),
        })?;
        for plan in plans {
            self.entries.push(EntrySlot {
                plan: plan.clone(),
                bound: None,
                event: None,
            });
            if plan.is_preallocated() {
                let dims: Vec<usize> = plan.declared.iter().map(|&d| d as usize).collect();
                let index = self.entries.len() - 1;
                let memory = match plan.memory {
                    MemoryKind::Host => None,
                    // Made on its device now; its bytes are whatever the device held.
                    MemoryKind::Cuda { device } => {
                        let bytes = plan.element_type.size() * dims.iter().product::<usize>();
                        let grant = self.new_device_resource(device, bytes).map_err(|e| {
                            EntryError::Device {
                                name: plan.name.clone(),
                                memory: plan.memory,
                                reason: match e {
                                    CreateError::Device { reason, .. } => reason,
                                    other => other.to_string(),
                                },
                            }
                        })?;
                        Some(grant)
                    }
                };
                let (id, _, recycled) = self.bind_entry(index, &dims, memory)?;
                if recycled && plan.memory.is_host() {
                    // Readers open pre-allocated entries as they are: zero them here (a
                    // new job's pool is empty, so this is the rare case).
                    let mapping = fastio_shm::Mapping::new(
                        self.host_segment(id)?,
                        fastio_shm::Access::ReadWrite,
                        fastio_shm::Prefault::Lazy,
                    )
                    .map_err(MemoryFailure::from_segment)?;
                    mapping.zero().map_err(MemoryFailure::from_segment)?;
                }
                if plan.producer.is_none() {
                    // Nothing in this job writes it: it stays zero for every reader.
                    self.seal_resource(id)?;
                }
            }
        }
        Ok(())
    }

    /// Gives entry `entry` memory of shape `dims` holding `bytes` (C order), before any
    /// operator runs: how a job of one operator gets its inputs from files. Fixed
    /// dimensions must be the declared ones.
    pub fn fill_entry(
        &mut self,
        entry: EntryId,
        dims: &[usize],
        bytes: &[u8],
    ) -> Result<(), EntryError> {
        let index = entry.0 as usize;
        let slot = self.entry_slot(entry)?;
        let mismatch = dims.len() != slot.plan.declared.len()
            || dims
                .iter()
                .zip(&slot.plan.declared)
                .any(|(&d, &declared)| declared > 0 && d as i64 != declared);
        if mismatch {
            return Err(EntryError::Shape {
                name: slot.plan.name.clone(),
                dims: dims.to_vec(),
                reason: format!("it is declared {:?} (-1 or 0: any)", slot.plan.declared),
            });
        }
        // Fresh memory: what define_entries gave an entry nobody in the job writes is
        // already sealed against writes.
        let sealed_after = slot.plan.producer.is_none();
        let id = self.bind_entry(index, dims, None)?.0;
        let resource = &self.resources[&id];
        if bytes.len() != resource.size {
            return Err(EntryError::Shape {
                name: self.entries[index].plan.name.clone(),
                dims: dims.to_vec(),
                reason: format!(
                    "they need {} bytes, the data has {}",
                    resource.size,
                    bytes.len()
                ),
            });
        }
        let segment = resource.memory.host().ok_or_else(|| host_only(id))?;
        let mapping = fastio_shm::Mapping::new(
            segment,
            fastio_shm::Access::ReadWrite,
            fastio_shm::Prefault::Lazy,
        )
        .map_err(MemoryFailure::from_segment)?;
        mapping
            .write_at(0, bytes)
            .map_err(MemoryFailure::from_segment)?;
        drop(mapping);
        if sealed_after {
            self.seal_resource(id)?;
        }
        Ok(())
    }

    /// Seals the memory of `entries` against writes, for good: their producer has
    /// finished execute, and from now on no descriptor in any process can write it, map it
    /// writable or punch holes in it. Entries without memory are skipped.
    pub fn seal_entries(&mut self, entries: &[EntryId]) -> Result<(), MemoryFailure> {
        for entry in entries {
            let bound = self
                .entries
                .get(entry.0 as usize)
                .and_then(|slot| slot.bound.as_ref().map(|(id, _)| *id));
            if let Some(id) = bound {
                self.seal_resource(id)?;
            }
        }
        Ok(())
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

    /// The host segment of resource `id` (FastIO entries are host memory).
    fn host_segment(&self, id: ResourceId) -> Result<&Segment, MemoryFailure> {
        self.resources[&id]
            .memory
            .host()
            .ok_or_else(|| host_only(id))
    }

    fn entry_slot(&self, entry: EntryId) -> Result<&EntrySlot, EntryError> {
        self.entries
            .get(entry.0 as usize)
            .ok_or(EntryError::UnknownEntry { id: entry.0 })
    }

    /// Where entry `entry` lives (host memory or a device), if there is such an entry.
    pub fn entry_memory(&self, entry: EntryId) -> Option<MemoryKind> {
        self.entries
            .get(entry.0 as usize)
            .map(|slot| slot.plan.memory)
    }

    /// Whether the entry has memory now, and its bytes.
    pub fn entry_bytes(&self, entry: EntryId) -> Option<usize> {
        let slot = self.entries.get(entry.0 as usize)?;
        slot.bound.as_ref().map(|(_, typed)| typed.byte_size())
    }

    /// A handle to the memory behind `entry`.
    pub fn open_entry(
        &mut self,
        conn: ConnectionId,
        entry: EntryId,
        access: AccessMode,
    ) -> Result<Grant, EntryError> {
        let slot = self.entry_slot(entry)?;
        let Some((id, typed)) = slot.bound.clone() else {
            return Err(EntryError::NotAllocated {
                name: slot.plan.name.clone(),
            });
        };
        let event = slot.event;
        let mut grant = self.grant_entry(conn, entry, id, access, typed)?;
        grant.event = event;
        Ok(grant)
    }

    /// Attaches `event` to the entry's current memory.
    pub fn set_entry_event(
        &mut self,
        entry: EntryId,
        event: EventHandle,
    ) -> Result<(), EntryError> {
        let slot = self
            .entries
            .get_mut(entry.0 as usize)
            .ok_or(EntryError::UnknownEntry { id: entry.0 })?;
        if slot.bound.is_none() {
            return Err(EntryError::NotAllocated {
                name: slot.plan.name.clone(),
            });
        }
        slot.event = Some(event);
        Ok(())
    }

    /// Gives a dynamic entry memory for `dims` and a read-write handle to it. An earlier
    /// allocation of the entry is unbound (it lives on while handles to it remain).
    pub fn allocate_entry(
        &mut self,
        conn: ConnectionId,
        entry: EntryId,
        dims: &[usize],
    ) -> Result<Grant, EntryError> {
        self.check_allocate_entry(entry, dims)?;
        let (id, typed, recycled) = self.bind_entry(entry.0 as usize, dims, None)?;
        let mut grant = self.grant_entry(conn, entry, id, AccessMode::ReadWrite, typed)?;
        grant.recycled = recycled;
        Ok(grant)
    }

    /// [`Registry::allocate_entry`] with memory obtained beforehand ([`Registry::obtain`]
    /// and, outside the lock, the segment made): the dimensions are checked again.
    pub fn allocate_entry_with(
        &mut self,
        conn: ConnectionId,
        entry: EntryId,
        dims: &[usize],
        memory: Grant,
    ) -> Result<Grant, EntryError> {
        if let Err(e) = self.check_allocate_entry(entry, dims) {
            self.reclaim_if_dead(memory.id);
            return Err(e);
        }
        let (id, typed, recycled) = self.bind_entry(entry.0 as usize, dims, Some(memory))?;
        let mut grant = self.grant_entry(conn, entry, id, AccessMode::ReadWrite, typed)?;
        // The producer zeroes a recycled segment as it maps it (as for `create`), rather
        // than the server holding the registry while it clears possibly gigabytes.
        grant.recycled = recycled;
        Ok(grant)
    }

    /// The bytes a dynamic entry of `dims` needs, or why it cannot be allocated so.
    pub fn check_allocate_entry(
        &self,
        entry: EntryId,
        dims: &[usize],
    ) -> Result<usize, EntryError> {
        let slot = self.entry_slot(entry)?;
        let plan = &slot.plan;
        if plan.is_preallocated() {
            return Err(EntryError::Preallocated {
                name: plan.name.clone(),
            });
        }
        let fits = dims.len() == plan.declared.len()
            && dims
                .iter()
                .zip(&plan.declared)
                .all(|(&d, &declared)| declared <= 0 || d as i64 == declared);
        if !fits {
            return Err(EntryError::Shape {
                name: plan.name.clone(),
                dims: dims.to_vec(),
                reason: format!(
                    "it is declared {:?}, and every dimension must equal the declaration where it is not dynamic",
                    plan.declared
                ),
            });
        }
        let shape_error = |e: fastio_meta::MetaError| EntryError::Shape {
            name: plan.name.clone(),
            dims: dims.to_vec(),
            reason: e.to_string(),
        };
        let typed = TypedShape::new(
            plan.element_type,
            Shape::new(dims.to_vec()).map_err(shape_error)?,
        )
        .map_err(shape_error)?;
        Ok(typed.byte_size())
    }

    /// Gives entry `index` a fresh resource of `dims`, unpinning its previous one (and
    /// dropping the previous memory's event). Returns whether the segment was recycled:
    /// entries start zeroed, so whoever maps it first must zero it then.
    fn bind_entry(
        &mut self,
        index: usize,
        dims: &[usize],
        memory: Option<Grant>,
    ) -> Result<(ResourceId, TypedShape, bool), EntryError> {
        let element_type = self.entries[index].plan.element_type;
        let name = self.entries[index].plan.name.clone();
        let shape_error = |e: fastio_meta::MetaError| EntryError::Shape {
            name: name.clone(),
            dims: dims.to_vec(),
            reason: e.to_string(),
        };
        let typed = TypedShape::new(
            element_type,
            Shape::new(dims.to_vec()).map_err(shape_error)?,
        )
        .map_err(shape_error)?;
        let grant = match (memory, self.entries[index].plan.memory) {
            (Some(grant), _) => grant,
            (None, MemoryKind::Host) => self.new_resource(typed.byte_size())?,
            // An entry declared on a device gets fresh memory there.
            (None, memory @ MemoryKind::Cuda { device }) => self
                .new_fresh_device_resource(device, typed.byte_size())
                .map_err(|e| EntryError::Device {
                    name: name.clone(),
                    memory,
                    reason: match e {
                        CreateError::Device { reason, .. } => reason,
                        other => other.to_string(),
                    },
                })?,
        };
        if let Some(resource) = self.resources.get_mut(&grant.id) {
            resource.pins += 1;
        }
        let slot = &mut self.entries[index];
        slot.event = None;
        let previous = slot.bound.replace((grant.id, typed.clone()));
        if let Some((old, _)) = previous {
            if let Some(resource) = self.resources.get_mut(&old) {
                resource.pins -= 1;
            }
            self.reclaim_if_dead(old);
        }
        Ok((grant.id, typed, grant.recycled))
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
        if let Some(slot) = self
            .entries
            .iter()
            .find(|e| e.bound.as_ref().is_some_and(|(b, _)| *b == id))
        {
            return Err(ReleaseError::EntryMemory {
                id: id.0,
                entry: slot.plan.name.clone(),
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
        let entries = self
            .entries
            .iter()
            .map(|e| {
                e.bound
                    .as_ref()
                    .map(|(id, typed)| (*id, typed.shape.dims().to_vec(), typed.byte_size()))
            })
            .collect();
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
            entries,
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
mod entry_tests {
    use super::*;
    use fastio_meta::ElementType;

    fn dynamic_entry() -> EntryPlan {
        EntryPlan {
            memory: Default::default(),
            name: "slices".into(),
            producer: Some(0),
            element_type: ElementType::I32,
            declared: vec![-1],
        }
    }

    #[test]
    fn a_job_that_cannot_fit_fails_before_allocating_anything() {
        // Ten entries of an eighth of what is available each: once, the first eight were
        // allocated before the ninth failed.
        let available = fastio_shm::available_memory().expect("memory is reported");
        let each = available / 8;
        let plans: Vec<EntryPlan> = (0..10)
            .map(|i| EntryPlan {
                memory: Default::default(),
                name: format!("volume{i}"),
                producer: Some(0),
                element_type: ElementType::U8,
                declared: vec![each as i64],
            })
            .collect();
        let mut r = Registry::new(0);
        let err = r.define_entries(&plans).unwrap_err();
        assert!(matches!(err, EntryError::OutOfMemory { .. }), "{err}");
        assert!(err.to_string().contains("nothing was allocated"), "{err}");
        let s = r.stats();
        assert_eq!((s.segments_created, s.resources, s.live_bytes), (0, 0, 0));
    }

    #[test]
    fn an_entrys_memory_cannot_be_freed_under_its_readers() {
        let mut r = Registry::new(0);
        r.define_entries(&[dynamic_entry()]).unwrap();
        let c = r.connect();
        let g = r.allocate_entry(c, EntryId(0), &[4]).unwrap();
        assert!(matches!(
            r.free(c, g.id),
            Err(ReleaseError::EntryMemory { .. })
        ));
        r.release(c, g.id).unwrap();
        // The entry still holds it: a reader opens it.
        let reader = r.connect();
        assert_eq!(
            r.open_entry(reader, EntryId(0), AccessMode::ReadOnly)
                .unwrap()
                .id,
            g.id
        );
    }

    #[test]
    fn reallocating_an_entry_drops_the_old_memorys_event_and_never_takes_pooled_memory() {
        let mut r = Registry::new(1 << 20);
        r.define_entries(&[dynamic_entry()]).unwrap();
        let c = r.connect();
        // A pooled segment that a former holder may still map writable.
        let private = r.create(c, 4096).unwrap();
        r.release(c, private.id).unwrap();
        assert_eq!(r.stats().pooled_segments, 1);
        let first = r.allocate_entry(c, EntryId(0), &[1024]).unwrap();
        assert!(!first.recycled, "entry memory is always fresh");
        assert_eq!(r.stats().pooled_segments, 1);
        r.set_entry_event(EntryId(0), EventHandle([1; 64])).unwrap();
        r.release(c, first.id).unwrap();
        let second = r.allocate_entry(c, EntryId(0), &[1024]).unwrap();
        assert!(!second.recycled);
        let reader = r.connect();
        let opened = r
            .open_entry(reader, EntryId(0), AccessMode::ReadOnly)
            .unwrap();
        assert_eq!(opened.event, None, "the event belonged to the old memory");
    }
}

#[cfg(test)]
mod read_only_tests {
    use super::*;
    use fastio_meta::ElementType;
    use std::os::fd::AsRawFd;

    fn entry(producer: Option<usize>) -> EntryPlan {
        EntryPlan {
            memory: Default::default(),
            name: "volume".into(),
            producer,
            element_type: ElementType::U8,
            declared: vec![4096],
        }
    }

    #[test]
    fn a_read_only_handle_publishes_a_read_only_publication() {
        let mut r = Registry::new(0);
        r.define_entries(&[entry(Some(0))]).unwrap();
        let (producer, reader, other) = (r.connect(), r.connect(), r.connect());
        r.open_entry(producer, EntryId(0), AccessMode::ReadWrite)
            .unwrap();
        let input = r
            .open_entry(reader, EntryId(0), AccessMode::ReadOnly)
            .unwrap();
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

    #[test]
    fn a_sealed_entry_refuses_every_write_path_and_is_never_pooled() {
        let mut r = Registry::new(1 << 20);
        r.define_entries(&[entry(Some(0))]).unwrap();
        let (producer, reader) = (r.connect(), r.connect());
        let out = r
            .open_entry(producer, EntryId(0), AccessMode::ReadWrite)
            .unwrap();
        r.publish(producer, out.id, "published-output", None, None)
            .unwrap();
        r.seal_entries(&[EntryId(0)]).unwrap();
        assert_eq!(
            r.open_entry(producer, EntryId(0), AccessMode::ReadWrite)
                .unwrap_err(),
            EntryError::Sealed {
                name: "volume".into()
            }
        );
        assert_eq!(
            r.get(reader, "published-output", AccessMode::ReadWrite)
                .unwrap_err(),
            GetError::Sealed {
                name: "published-output".into(),
                id: out.id.0
            }
        );
        assert_eq!(
            r.acquire_write(producer, out.id, 1),
            Err(WriteError::Sealed { id: out.id.0 })
        );
        // Descriptor tricks on a reader's descriptor: reopened for writing (as root, whom
        // the inode's mode does not stop), it still cannot write, punch or map writable.
        let input = r
            .open_entry(reader, EntryId(0), AccessMode::ReadOnly)
            .unwrap();
        let path = format!(
            "/proc/self/fd/{}",
            std::os::fd::AsFd::as_fd(input.segment().unwrap()).as_raw_fd()
        );
        if let Ok(fd) = rustix::fs::open(
            path.as_str(),
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        ) {
            assert_eq!(
                rustix::io::pwrite(&fd, b"x", 0),
                Err(rustix::io::Errno::PERM)
            );
            assert_eq!(
                rustix::fs::fallocate(
                    &fd,
                    rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
                    0,
                    4096
                ),
                Err(rustix::io::Errno::PERM)
            );
            let segment = Segment::from_fd(fd).unwrap();
            assert!(
                fastio_shm::Mapping::new(
                    &segment,
                    fastio_shm::Access::ReadWrite,
                    fastio_shm::Prefault::Lazy
                )
                .is_err()
            );
        }
        // A segment a client sealed itself is closed when it dies, not pooled.
        let private = r.create(reader, 4096).unwrap();
        private.segment().unwrap().seal_writes().unwrap();
        r.release(reader, private.id).unwrap();
        assert_eq!(r.stats().pooled_segments, 0);
    }

    #[test]
    fn a_device_entry_is_made_on_its_device_written_by_its_producer_and_read_only_after() {
        let mut r = Registry::new(1 << 20);
        r.set_device_driver(cuda_streams::Driver::fake(2));
        let cuda1 = MemoryKind::Cuda { device: 1 };
        let plan = EntryPlan {
            memory: cuda1,
            ..entry(Some(0))
        };
        r.define_entries(&[plan]).unwrap();
        // Device entries take no host memory.
        assert_eq!(r.stats().live_bytes, 0);
        assert_eq!(r.stats().device_live_bytes, 2 << 20);
        let (producer, reader) = (r.connect(), r.connect());
        let out = r
            .open_entry(producer, EntryId(0), AccessMode::ReadWrite)
            .unwrap();
        assert_eq!(out.kind, cuda1);
        assert!(matches!(out.memory, GrantedMemory::Device(_)));
        assert_eq!(out.device_bytes, 2 << 20);
        r.seal_entries(&[EntryId(0)]).unwrap();
        assert_eq!(
            r.open_entry(producer, EntryId(0), AccessMode::ReadWrite)
                .unwrap_err(),
            EntryError::Sealed {
                name: "volume".into()
            }
        );
        let input = r
            .open_entry(reader, EntryId(0), AccessMode::ReadOnly)
            .unwrap();
        assert_eq!(input.kind, cuda1);
    }

    #[test]
    fn a_dynamic_device_entry_gets_fresh_memory_on_its_device_when_its_producer_allocates_it() {
        let mut r = Registry::new(64 << 20);
        r.set_device_driver(cuda_streams::Driver::fake(2));
        let cuda1 = MemoryKind::Cuda { device: 1 };
        let plan = EntryPlan {
            memory: cuda1,
            declared: vec![-1],
            ..entry(Some(0))
        };
        r.define_entries(&[plan]).unwrap();
        assert_eq!(
            r.stats().device_live_bytes,
            0,
            "nothing before the producer asks"
        );
        let (producer, reader) = (r.connect(), r.connect());
        // A warm allocation of the same size on the same device, once another client's.
        let warm = r.create_device(reader, 1, 3 << 20).unwrap();
        r.release(reader, warm.id).unwrap();
        assert_eq!(r.stats().device_pooled, 1);

        let first = r.allocate_entry(producer, EntryId(0), &[3 << 20]).unwrap();
        assert_eq!(first.kind, cuda1);
        assert!(matches!(first.memory, GrantedMemory::Device(_)));
        assert_eq!((first.size, first.device_bytes), (3 << 20, 4 << 20));
        assert!(!first.recycled);
        assert_eq!(
            r.stats().device_pooled,
            1,
            "the warm allocation was not taken"
        );
        assert_eq!(r.stats().live_bytes, 0, "no host memory");
        r.set_entry_event(EntryId(0), EventHandle([7; 64])).unwrap();

        // A new shape: new memory, without the old memory's event; the old goes once
        // its last handle does.
        let second = r.allocate_entry(producer, EntryId(0), &[1 << 20]).unwrap();
        assert_ne!(second.id, first.id);
        assert_eq!(second.kind, cuda1);
        assert_eq!(r.stats().device_live_bytes, (4 + 2) << 20);
        r.release(producer, first.id).unwrap();
        assert_eq!(r.stats().device_live_bytes, 2 << 20);

        r.seal_entries(&[EntryId(0)]).unwrap();
        assert_eq!(
            r.open_entry(producer, EntryId(0), AccessMode::ReadWrite)
                .unwrap_err(),
            EntryError::Sealed {
                name: "volume".into()
            }
        );
        let input = r
            .open_entry(reader, EntryId(0), AccessMode::ReadOnly)
            .unwrap();
        assert_eq!(
            (input.id, input.kind, input.event),
            (second.id, cuda1, None)
        );
    }

    #[test]
    fn a_dynamic_device_entry_without_its_device_is_refused_naming_the_entry() {
        let mut r = Registry::new(0);
        r.set_device_driver(cuda_streams::Driver::fake(1));
        let plan = EntryPlan {
            memory: MemoryKind::Cuda { device: 3 },
            declared: vec![-1],
            ..entry(Some(0))
        };
        r.define_entries(&[plan]).unwrap();
        let c = r.connect();
        let e = r.allocate_entry(c, EntryId(0), &[16]).unwrap_err();
        assert!(
            matches!(&e, EntryError::Device { name, memory: MemoryKind::Cuda { device: 3 }, .. } if name == "volume"),
            "{e}"
        );
        assert!(
            e.to_string()
                .starts_with("FastIO entry \"volume\" cannot be allocated on cuda:3: "),
            "{e}"
        );
        assert_eq!(r.entry_bytes(EntryId(0)), None, "still unallocated");
    }

    #[test]
    fn a_device_entry_without_its_device_fails_the_job_at_set_up() {
        let mut r = Registry::new(0);
        r.set_device_driver(cuda_streams::Driver::fake(1));
        let plan = EntryPlan {
            memory: MemoryKind::Cuda { device: 4 },
            ..entry(Some(0))
        };
        let e = r.define_entries(&[plan]).unwrap_err();
        assert!(
            matches!(&e, EntryError::Device { name, .. } if name == "volume"),
            "{e}"
        );
        assert!(e.to_string().contains("cuda:4"), "{e}");
    }

    #[test]
    fn an_entry_nobody_produces_is_sealed_from_the_start() {
        let mut r = Registry::new(0);
        r.define_entries(&[entry(None)]).unwrap();
        let c = r.connect();
        assert!(matches!(
            r.open_entry(c, EntryId(0), AccessMode::ReadWrite),
            Err(EntryError::Sealed { .. })
        ));
    }
}
