//! The entry table: which memory each FastIO entry of a job has now, and the calls that
//! give it memory, open it, seal it.
//!
//! The memory itself belongs to the context's registry, reached through
//! [`ContextMemory`]: an entry's resource is made fresh (never a pooled segment) and
//! pinned by the entry, so it lives while the entry is bound to it, like a publication;
//! unbinding it (new memory for the entry) lets it die with its last handle. Handles,
//! the writer rule, seals and reclaim stay the registry's.
//!
//! Allocation policy lives in few places: [`EntryTable::define`] (pre-allocation at set-up,
//! checked as a whole first), [`allocate`] (a dynamic entry's memory, made without any
//! lock) and [`EntryTable::bind`] (the swap of an entry's memory, where the old one is let
//! go).
//!
//! Locks: the table is behind the runtime's mutex; a caller holding it may call
//! [`ContextMemory`] (which takes the registry's lock), never the reverse. Memory is made
//! without the table's lock ([`allocate`]).

use std::sync::Mutex;

use fastio_context::protocol::{AccessMode, EntryId, EventHandle, MemoryKind, ResourceId};
use fastio_context::registry::{ConnectionId, Grant, GrantRefusal, MemoryFailure, Pinned};
use fastio_context::service::ContextMemory;
use fastio_context::{CreateError, EntryError};
use fastio_meta::{Shape, TypedShape};

use crate::job::EntryPlan;

/// One entry: its plan, its memory now (a pinned resource with the entry's concrete
/// shape), and the interprocess CUDA event its producer attached to that memory.
#[derive(Debug)]
struct EntrySlot {
    plan: EntryPlan,
    bound: Option<(ResourceId, TypedShape)>,
    event: Option<EventHandle>,
    life: Life,
    // Bytes of the memory last bound, still known once it has gone (for reports).
    bytes: Option<usize>,
}

/// Where the memory of a pre-allocated host entry that the job writes is in its life
/// ([`make_deferred`], [`EntryTable::release`]); other entries stay `Made`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Life {
    /// Admitted (its bytes held in the registry), not made yet.
    Deferred,
    /// Being made, without the table's lock.
    Making,
    /// Made (or never deferred).
    Made,
    /// Let go: every reader has finished execute.
    Released,
}

/// The FastIO entries of one job. Entry `i` of the plan is `EntryId(i)`.
#[derive(Debug, Default)]
pub struct EntryTable {
    slots: Vec<EntrySlot>,
}

/// An entry's element type and dimensions as a typed shape, or why they are not one.
fn typed_shape(plan: &EntryPlan, dims: &[usize]) -> Result<TypedShape, EntryError> {
    let shape_error = |e: fastio_meta::MetaError| EntryError::Shape {
        name: plan.name.clone(),
        dims: dims.to_vec(),
        reason: e.to_string(),
    };
    TypedShape::new(
        plan.element_type,
        Shape::new(dims.to_vec()).map_err(shape_error)?,
    )
    .map_err(shape_error)
}

/// Why memory for an entry could not be made, as the entry's error: device memory names
/// the entry and its device.
fn make_error(name: &str, kind: MemoryKind, e: CreateError) -> EntryError {
    match (kind, e) {
        // The driver's own words, after the entry and its device.
        (MemoryKind::Cuda { .. }, e) => EntryError::Device {
            name: name.to_owned(),
            memory: kind,
            reason: match e {
                CreateError::Device { reason, .. } => reason,
                other => other.to_string(),
            },
        },
        (_, CreateError::OutOfMemory { size, message }) => {
            EntryError::OutOfMemory { size, message }
        }
        (_, CreateError::System { message }) => EntryError::System { message },
        (_, e @ CreateError::Device { .. }) => EntryError::System {
            message: e.to_string(),
        },
    }
}

impl EntryTable {
    /// Sets up a job's FastIO entries, making (zeroed) the memory of those whose shape is
    /// fully known. Host entry memory is always fresh, hence zero; device entries are made
    /// on their device, not zeroed, and take no host memory.
    ///
    /// The host memory of every pre-allocated entry is checked against what is available
    /// as a whole before any of it is made: a job that cannot fit fails at once, having
    /// taken nothing.
    pub fn define(memory: &ContextMemory<'_>, plans: &[EntryPlan]) -> Result<Self, EntryError> {
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
        memory.admit(total).map_err(|e| match e {
            MemoryFailure::OutOfMemory { message, .. } => EntryError::OutOfMemory {
                size: usize::try_from(total).unwrap_or(usize::MAX),
                message: format!(
                    "the job's pre-allocated FastIO entries need {total} bytes together; nothing was allocated: {message}"
                ),
            },
            other => other.into(),
        })?;
        let mut table = Self::default();
        for plan in plans {
            // Host memory that an operator of the job writes is made when that operator
            // opens it to write (`make_deferred`), and goes once its readers are done
            // (`release`): a chain holds two entries' memory at a time, and a later entry
            // reuses the pages an earlier one has just given back.
            let deferred =
                plan.is_preallocated() && plan.memory.is_host() && plan.producer.is_some();
            table.slots.push(EntrySlot {
                plan: plan.clone(),
                bound: None,
                event: None,
                life: if deferred { Life::Deferred } else { Life::Made },
                bytes: None,
            });
            if deferred {
                let dims: Vec<usize> = plan.declared.iter().map(|&d| d as usize).collect();
                memory.hold(typed_shape(plan, &dims)?.byte_size() as u64);
            } else if plan.is_preallocated() {
                let dims: Vec<usize> = plan.declared.iter().map(|&d| d as usize).collect();
                let index = table.slots.len() - 1;
                let typed = typed_shape(plan, &dims)?;
                let pinned = memory
                    .make_pinned(plan.memory, typed.byte_size(), &plan.name)
                    .map_err(|e| make_error(&plan.name, plan.memory, e))?;
                table.bind(memory, index, typed, pinned);
                if plan.producer.is_none() {
                    // Nothing in this job writes it: it stays zero for every reader.
                    memory.seal(pinned.id)?;
                }
            }
        }
        Ok(table)
    }

    fn slot(&self, entry: EntryId) -> Result<&EntrySlot, EntryError> {
        self.slots
            .get(entry.0 as usize)
            .ok_or(EntryError::UnknownEntry { id: entry.0 })
    }

    /// The entry's plan.
    pub fn plan(&self, entry: EntryId) -> Result<&EntryPlan, EntryError> {
        Ok(&self.slot(entry)?.plan)
    }

    /// Gives entry `entry` host memory of shape `dims` holding `bytes` (C order), before
    /// any operator runs: how a job of one operator gets its inputs from files. Fixed
    /// dimensions must be the declared ones.
    pub fn fill(
        &mut self,
        memory: &ContextMemory<'_>,
        entry: EntryId,
        dims: &[usize],
        bytes: &[u8],
    ) -> Result<(), EntryError> {
        let index = entry.0 as usize;
        let plan = self.plan(entry)?.clone();
        let mismatch = dims.len() != plan.declared.len()
            || dims
                .iter()
                .zip(&plan.declared)
                .any(|(&d, &declared)| declared > 0 && d as i64 != declared);
        if mismatch {
            return Err(EntryError::Shape {
                name: plan.name.clone(),
                dims: dims.to_vec(),
                reason: format!("it is declared {:?} (-1 or 0: any)", plan.declared),
            });
        }
        let typed = typed_shape(&plan, dims)?;
        let pinned = memory
            .make_pinned(MemoryKind::Host, typed.byte_size(), &plan.name)
            .map_err(|e| make_error(&plan.name, MemoryKind::Host, e))?;
        self.bind(memory, index, typed, pinned);
        if bytes.len() != pinned.size {
            return Err(EntryError::Shape {
                name: plan.name.clone(),
                dims: dims.to_vec(),
                reason: format!(
                    "they need {} bytes, the data has {}",
                    pinned.size,
                    bytes.len()
                ),
            });
        }
        memory.fill(pinned.id, bytes)?;
        // Fresh memory: what `define` gave an entry nobody in the job writes was already
        // sealed against writes; this memory is sealed once filled.
        if plan.producer.is_none() {
            memory.seal(pinned.id)?;
        }
        Ok(())
    }

    /// Binds entry `index` to `pinned` memory of shape `typed`, letting go of its previous
    /// memory (which lives on while handles to it remain) and of that memory's event.
    /// Returns whether the new memory was recycled (then its first writer zeroes it).
    pub fn bind(
        &mut self,
        memory: &ContextMemory<'_>,
        index: usize,
        typed: TypedShape,
        pinned: Pinned,
    ) -> bool {
        let slot = &mut self.slots[index];
        slot.event = None;
        slot.bytes = Some(typed.byte_size());
        if let Some((old, _)) = slot.bound.replace((pinned.id, typed)) {
            memory.unpin(old, &slot.plan.name);
        }
        pinned.recycled
    }

    /// The bytes, and memory kind, a dynamic entry of `dims` needs, or why it cannot be
    /// allocated so.
    pub fn check_allocate(
        &self,
        entry: EntryId,
        dims: &[usize],
    ) -> Result<(TypedShape, MemoryKind), EntryError> {
        let plan = self.plan(entry)?;
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
        Ok((typed_shape(plan, dims)?, plan.memory))
    }

    /// A handle for `conn` to the memory behind `entry`, with the entry's shape and its
    /// producer's event. [`EntryError::NotAllocated`] while it has none.
    pub fn open(
        &self,
        memory: &ContextMemory<'_>,
        conn: ConnectionId,
        entry: EntryId,
        access: AccessMode,
    ) -> Result<Grant, EntryError> {
        let slot = self.slot(entry)?;
        if slot.life == Life::Released {
            return Err(EntryError::Released {
                name: slot.plan.name.clone(),
            });
        }
        let Some((id, typed)) = slot.bound.clone() else {
            return Err(EntryError::NotAllocated {
                name: slot.plan.name.clone(),
            });
        };
        memory
            .grant(conn, id, access, typed, slot.event)
            .map_err(|e| match e {
                GrantRefusal::Sealed => EntryError::Sealed {
                    name: slot.plan.name.clone(),
                },
                GrantRefusal::Memory(e) => e.into(),
            })
    }

    /// Attaches `event` to the entry's current memory.
    pub fn set_event(&mut self, entry: EntryId, event: EventHandle) -> Result<(), EntryError> {
        let slot = self
            .slots
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

    /// Seals the memory of `entries` against writes, for good: their producer has
    /// finished execute, and from now on no descriptor in any process can write it, map it
    /// writable or punch holes in it. Entries without memory are skipped.
    pub fn seal(
        &self,
        memory: &ContextMemory<'_>,
        entries: &[EntryId],
    ) -> Result<(), MemoryFailure> {
        for entry in entries {
            let bound = self
                .slots
                .get(entry.0 as usize)
                .and_then(|slot| slot.bound.as_ref().map(|(id, _)| *id));
            if let Some(id) = bound {
                memory.seal(id)?;
            }
        }
        Ok(())
    }

    /// Lets the memory of `entry` go: every operator that reads it has finished execute,
    /// and the job does not keep it (the caller decides). It lives on while handles to it
    /// remain; its size stays known ([`EntryTable::bytes`]); later opens are refused with
    /// [`EntryError::Released`]. Memory never made gives back the bytes held for it.
    pub fn release(&mut self, memory: &ContextMemory<'_>, entry: EntryId) {
        let Some(slot) = self.slots.get_mut(entry.0 as usize) else {
            return;
        };
        match std::mem::replace(&mut slot.life, Life::Released) {
            Life::Released => return,
            Life::Deferred => {
                if let Ok(typed) = typed_shape(&slot.plan, &declared_dims(&slot.plan)) {
                    memory.release_held(typed.byte_size() as u64);
                }
            }
            Life::Making | Life::Made => {}
        }
        slot.event = None;
        if let Some((id, _)) = slot.bound.take() {
            memory.unpin(id, &slot.plan.name);
        }
    }

    /// Bytes of the entry's memory: now, or when it last had some.
    pub fn bytes(&self, entry: EntryId) -> Option<usize> {
        let slot = self.slots.get(entry.0 as usize)?;
        slot.bound
            .as_ref()
            .map(|(_, typed)| typed.byte_size())
            .or(slot.bytes)
    }

    /// The entry's memory now, if it has some: its resource, shape and bytes.
    pub fn bound(&self, entry: EntryId) -> Option<(ResourceId, Vec<usize>, usize)> {
        let slot = self.slots.get(entry.0 as usize)?;
        slot.bound
            .as_ref()
            .map(|(id, typed)| (*id, typed.shape.dims().to_vec(), typed.byte_size()))
    }
}

fn declared_dims(plan: &EntryPlan) -> Vec<usize> {
    plan.declared.iter().map(|&d| d as usize).collect()
}

/// Makes the memory of `entry` if it is a pre-allocated host entry still to be made: its
/// producer opens it to write, or ends execute without having done so (its readers then
/// find it zero). The bytes held for it since the job was admitted are given back just
/// before the segment is made (its own admission counts it then); the segment is made with
/// neither the table's lock nor the registry's held. Nothing to do for any other entry.
pub fn make_deferred(
    table: &Mutex<EntryTable>,
    memory: &ContextMemory<'_>,
    entry: EntryId,
) -> Result<(), EntryError> {
    let lock = || table.lock().unwrap_or_else(|p| p.into_inner());
    let (typed, name) = {
        let mut table = lock();
        let Some(slot) = table.slots.get_mut(entry.0 as usize) else {
            return Ok(());
        };
        if slot.life != Life::Deferred {
            return Ok(());
        }
        let typed = typed_shape(&slot.plan, &declared_dims(&slot.plan))?;
        slot.life = Life::Making;
        (typed, slot.plan.name.clone())
    };
    let bytes = typed.byte_size();
    memory.release_held(bytes as u64);
    let made = memory.make_pinned(MemoryKind::Host, bytes, &name);
    let mut table = lock();
    let slot = &mut table.slots[entry.0 as usize];
    match made {
        Err(e) => {
            // Still to be made (a later open tries again), unless it was let go meanwhile.
            if slot.life == Life::Making {
                slot.life = Life::Deferred;
                memory.hold(bytes as u64);
            }
            Err(make_error(&name, MemoryKind::Host, e))
        }
        Ok(pinned) if slot.life == Life::Making => {
            slot.life = Life::Made;
            table.bind(memory, entry.0 as usize, typed, pinned);
            Ok(())
        }
        Ok(pinned) => {
            // Let go while it was being made: so is this memory.
            memory.unpin(pinned.id, &name);
            Ok(())
        }
    }
}

/// Gives a dynamic entry memory for `dims` and a read-write handle to it for `conn`. An
/// earlier allocation of the entry is unbound (it lives on while handles to it remain).
///
/// Host memory is made with neither the table's lock nor the registry's held (it may be
/// gigabytes); device memory (an entry declared `device: cuda:N`) is made fresh on its
/// device through the CUDA driver, under the registry's lock as `Create` makes it. The
/// dimensions are checked before and again after. Memory that was recycled would be
/// zeroed by the producer as it maps it, not here under a lock.
pub fn allocate(
    table: &Mutex<EntryTable>,
    memory: &ContextMemory<'_>,
    conn: ConnectionId,
    entry: EntryId,
    dims: &[usize],
) -> Result<Grant, EntryError> {
    let lock = || table.lock().unwrap_or_else(|p| p.into_inner());
    let (typed, kind, name) = {
        let table = lock();
        let (typed, kind) = table.check_allocate(entry, dims)?;
        (typed, kind, table.plan(entry)?.name.clone())
    };
    let pinned = memory
        .make_pinned(kind, typed.byte_size(), &name)
        .map_err(|e| make_error(&name, kind, e))?;
    let mut table = lock();
    if let Err(e) = table.check_allocate(entry, dims) {
        memory.unpin(pinned.id, &name);
        return Err(e);
    }
    let recycled = table.bind(memory, entry.0 as usize, typed, pinned);
    let mut grant = table.open(memory, conn, entry, AccessMode::ReadWrite)?;
    grant.recycled = recycled;
    Ok(grant)
}

#[cfg(test)]
mod tests {
    //! The entry table over a real registry: a context server's, reached through its
    //! [`ContextMemory`], with sessions as the connections that hold handles.

    use super::*;
    use fastio_context::protocol::{PROTOCOL_VERSION, Request, Response};
    use fastio_context::registry::GrantedMemory;
    use fastio_context::server::Session;
    use fastio_context::{GetError, ReleaseError, RequestError, Server, ServerConfig, WriteError};
    use fastio_meta::ElementType;
    use std::os::fd::AsRawFd;

    fn server(pool_bytes: u64) -> Server {
        server_with(ServerConfig {
            pool_bytes,
            collapse: false,
            ..ServerConfig::default()
        })
    }

    pub(super) fn server_with(config: ServerConfig) -> Server {
        Server::start(config).unwrap()
    }

    /// A greeted connection of `server`.
    pub(super) fn client(server: &Server) -> Session {
        let mut session = server.session();
        assert!(matches!(
            call(
                &mut session,
                &Request::Hello {
                    version: PROTOCOL_VERSION
                }
            ),
            Response::Welcome { .. }
        ));
        session
    }

    pub(super) fn call(session: &mut Session, request: &Request) -> Response {
        let (body, _) = session.handle(&serde_json::to_vec(request).unwrap());
        serde_json::from_slice(&body).unwrap()
    }

    fn refusal(response: Response) -> RequestError {
        match response {
            Response::Refused(e) => e,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn dynamic_entry() -> EntryPlan {
        EntryPlan {
            memory: Default::default(),
            name: "slices".into(),
            producer: Some(0),
            element_type: ElementType::I32,
            declared: vec![-1],
        }
    }

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
        let server = server(0);
        let err = EntryTable::define(&server.memory(), &plans).unwrap_err();
        assert!(matches!(err, EntryError::OutOfMemory { .. }), "{err}");
        assert!(err.to_string().contains("nothing was allocated"), "{err}");
        let s = server.stats();
        assert_eq!((s.segments_created, s.resources, s.live_bytes), (0, 0, 0));
    }

    #[test]
    fn an_entrys_memory_cannot_be_freed_under_its_readers() {
        let server = server(0);
        let memory = server.memory();
        let table = Mutex::new(EntryTable::define(&memory, &[dynamic_entry()]).unwrap());
        let mut producer = client(&server);
        let g = allocate(&table, &memory, producer.connection(), EntryId(0), &[4]).unwrap();
        assert!(matches!(
            refusal(call(
                &mut producer,
                &Request::Free {
                    id: g.id,
                    handle: 0
                }
            )),
            RequestError::Release(ReleaseError::EntryMemory { .. })
        ));
        assert_eq!(
            call(
                &mut producer,
                &Request::Release {
                    id: g.id,
                    handle: 0
                }
            ),
            Response::Done
        );
        // The entry still holds it: a reader opens it.
        let reader = client(&server);
        let opened = table
            .lock()
            .unwrap()
            .open(
                &memory,
                reader.connection(),
                EntryId(0),
                AccessMode::ReadOnly,
            )
            .unwrap();
        assert_eq!(opened.id, g.id);
    }

    #[test]
    fn reallocating_an_entry_drops_the_old_memorys_event_and_never_takes_pooled_memory() {
        let server = server(1 << 20);
        let memory = server.memory();
        let table = Mutex::new(EntryTable::define(&memory, &[dynamic_entry()]).unwrap());
        let mut producer = client(&server);
        let c = producer.connection();
        // A pooled segment that a former holder may still map writable.
        let Response::Handle { id: private, .. } = call(
            &mut producer,
            &Request::Create {
                size: 4096,
                hugetlb: false,
                kind: MemoryKind::Host,
            },
        ) else {
            panic!("no handle")
        };
        call(
            &mut producer,
            &Request::Release {
                id: private,
                handle: 0,
            },
        );
        assert_eq!(server.stats().pooled_segments, 1);
        let first = allocate(&table, &memory, c, EntryId(0), &[1024]).unwrap();
        assert!(!first.recycled, "entry memory is always fresh");
        assert_eq!(server.stats().pooled_segments, 1);
        table
            .lock()
            .unwrap()
            .set_event(EntryId(0), EventHandle([1; 64]))
            .unwrap();
        call(
            &mut producer,
            &Request::Release {
                id: first.id,
                handle: 0,
            },
        );
        let second = allocate(&table, &memory, c, EntryId(0), &[1024]).unwrap();
        assert!(!second.recycled);
        let reader = client(&server);
        let opened = table
            .lock()
            .unwrap()
            .open(
                &memory,
                reader.connection(),
                EntryId(0),
                AccessMode::ReadOnly,
            )
            .unwrap();
        assert_eq!(opened.event, None, "the event belonged to the old memory");
    }

    #[test]
    fn a_sealed_entry_refuses_every_write_path_and_is_never_pooled() {
        let server = server(1 << 20);
        let memory = server.memory();
        let table = Mutex::new(EntryTable::define(&memory, &[entry(Some(0))]).unwrap());
        // Made as its producer, released to execute, opens it (the runtime does this).
        make_deferred(&table, &memory, EntryId(0)).unwrap();
        let table = table.into_inner().unwrap();
        let (mut producer, mut reader) = (client(&server), client(&server));
        let out = table
            .open(
                &memory,
                producer.connection(),
                EntryId(0),
                AccessMode::ReadWrite,
            )
            .unwrap();
        let publish = Request::Publish {
            id: out.id,
            name: "published-output".into(),
            typed: None,
            event: None,
            replace: false,
        };
        assert_eq!(call(&mut producer, &publish), Response::Done);
        table.seal(&memory, &[EntryId(0)]).unwrap();
        assert_eq!(
            table
                .open(
                    &memory,
                    producer.connection(),
                    EntryId(0),
                    AccessMode::ReadWrite
                )
                .unwrap_err(),
            EntryError::Sealed {
                name: "volume".into()
            }
        );
        assert_eq!(
            refusal(call(
                &mut reader,
                &Request::Get {
                    name: "published-output".into(),
                    access: AccessMode::ReadWrite
                }
            )),
            RequestError::Get(GetError::Sealed {
                name: "published-output".into(),
                id: out.id.0
            })
        );
        assert_eq!(
            refusal(call(
                &mut producer,
                &Request::AcquireWrite {
                    id: out.id,
                    handle: 1
                }
            )),
            RequestError::Write(WriteError::Sealed { id: out.id.0 })
        );
        // Descriptor tricks on a reader's descriptor: reopened for writing (as root, whom
        // the inode's mode does not stop), it still cannot write, punch or map writable.
        let input = table
            .open(
                &memory,
                reader.connection(),
                EntryId(0),
                AccessMode::ReadOnly,
            )
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
            let segment = fastio_shm::Segment::from_fd(fd).unwrap();
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
        let (body, granted) = reader.handle(
            &serde_json::to_vec(&Request::Create {
                size: 4096,
                hugetlb: false,
                kind: MemoryKind::Host,
            })
            .unwrap(),
        );
        let Response::Handle { id: private, .. } = serde_json::from_slice(&body).unwrap() else {
            panic!("no handle")
        };
        let Some(GrantedMemory::Host(segment)) = granted else {
            panic!("no segment")
        };
        segment.seal_writes().unwrap();
        call(
            &mut reader,
            &Request::Release {
                id: private,
                handle: 0,
            },
        );
        assert_eq!(server.stats().pooled_segments, 0);
    }

    #[test]
    fn a_device_entry_is_made_on_its_device_written_by_its_producer_and_read_only_after() {
        let server = server_with(ServerConfig {
            pool_bytes: 1 << 20,
            collapse: false,
            device_driver: Some(cuda_streams::Driver::fake(2)),
            ..ServerConfig::default()
        });
        let memory = server.memory();
        let cuda1 = MemoryKind::Cuda { device: 1 };
        let plan = EntryPlan {
            memory: cuda1,
            ..entry(Some(0))
        };
        let table = EntryTable::define(&memory, &[plan]).unwrap();
        // Device entries take no host memory.
        assert_eq!(server.stats().live_bytes, 0);
        assert_eq!(server.stats().device_live_bytes, 2 << 20);
        let (producer, reader) = (client(&server), client(&server));
        let out = table
            .open(
                &memory,
                producer.connection(),
                EntryId(0),
                AccessMode::ReadWrite,
            )
            .unwrap();
        assert_eq!(out.kind, cuda1);
        assert!(matches!(out.memory, GrantedMemory::Device(_)));
        assert_eq!(out.device_bytes, 2 << 20);
        table.seal(&memory, &[EntryId(0)]).unwrap();
        assert_eq!(
            table
                .open(
                    &memory,
                    producer.connection(),
                    EntryId(0),
                    AccessMode::ReadWrite
                )
                .unwrap_err(),
            EntryError::Sealed {
                name: "volume".into()
            }
        );
        let input = table
            .open(
                &memory,
                reader.connection(),
                EntryId(0),
                AccessMode::ReadOnly,
            )
            .unwrap();
        assert_eq!(input.kind, cuda1);
    }

    #[test]
    fn a_device_entry_without_its_device_fails_the_job_at_set_up() {
        let server = server_with(ServerConfig {
            pool_bytes: 0,
            collapse: false,
            device_driver: Some(cuda_streams::Driver::fake(1)),
            ..ServerConfig::default()
        });
        let plan = EntryPlan {
            memory: MemoryKind::Cuda { device: 4 },
            ..entry(Some(0))
        };
        let e = EntryTable::define(&server.memory(), &[plan]).unwrap_err();
        assert!(
            matches!(&e, EntryError::Device { name, .. } if name == "volume"),
            "{e}"
        );
        assert!(e.to_string().contains("cuda:4"), "{e}");
    }

    #[test]
    fn an_entry_nobody_produces_is_sealed_from_the_start() {
        let server = server(0);
        let memory = server.memory();
        let table = EntryTable::define(&memory, &[entry(None)]).unwrap();
        let c = client(&server);
        assert!(matches!(
            table.open(&memory, c.connection(), EntryId(0), AccessMode::ReadWrite),
            Err(EntryError::Sealed { .. })
        ));
    }

    #[test]
    fn unbound_entry_memory_dies_with_its_last_handle() {
        // An entry pins its memory like a publication: a re-allocation lets go of the old
        // memory, which lives while a handle remains and is freed with the last one.
        let server = server(0);
        let memory = server.memory();
        let table = Mutex::new(EntryTable::define(&memory, &[dynamic_entry()]).unwrap());
        let mut producer = client(&server);
        let first = allocate(&table, &memory, producer.connection(), EntryId(0), &[256]).unwrap();
        let second = allocate(&table, &memory, producer.connection(), EntryId(0), &[512]).unwrap();
        assert_ne!(first.id, second.id);
        assert_eq!(
            server.stats().resources,
            2,
            "the old memory still has a handle"
        );
        call(
            &mut producer,
            &Request::Release {
                id: first.id,
                handle: 0,
            },
        );
        assert_eq!(server.stats().resources, 1);
        assert_eq!(server.stats().live_bytes, 2048);
        call(
            &mut producer,
            &Request::Release {
                id: second.id,
                handle: 0,
            },
        );
        assert_eq!(server.stats().resources, 1, "the entry keeps its memory");
    }
}

#[cfg(test)]
mod device_tests {
    //! Dynamic device entries over a real registry, on cuda-streams' CPU fake.

    use super::tests::{call, client, server_with};
    use super::*;
    use fastio_context::protocol::{Request, Response};
    use fastio_context::registry::GrantedMemory;
    use fastio_context::{Server, ServerConfig};
    use fastio_meta::ElementType;

    fn dynamic_device_entry(device: i32) -> EntryPlan {
        EntryPlan {
            memory: MemoryKind::Cuda { device },
            name: "volume".into(),
            producer: Some(0),
            element_type: ElementType::U8,
            declared: vec![-1],
        }
    }

    fn server(devices: usize, pool_bytes: u64) -> Server {
        server_with(ServerConfig {
            pool_bytes,
            collapse: false,
            device_driver: Some(cuda_streams::Driver::fake(devices)),
            ..ServerConfig::default()
        })
    }

    #[test]
    fn a_dynamic_device_entry_gets_fresh_memory_on_its_device_when_its_producer_allocates_it() {
        let server = server(2, 64 << 20);
        let memory = server.memory();
        let cuda1 = MemoryKind::Cuda { device: 1 };
        let table = Mutex::new(EntryTable::define(&memory, &[dynamic_device_entry(1)]).unwrap());
        assert_eq!(
            server.stats().device_live_bytes,
            0,
            "nothing before the producer asks"
        );
        let (mut producer, mut reader) = (client(&server), client(&server));
        // A warm allocation of the same size on the same device, once another client's.
        let Response::Handle { id: warm, .. } = call(
            &mut reader,
            &Request::Create {
                size: 3 << 20,
                hugetlb: false,
                kind: cuda1,
            },
        ) else {
            panic!("no handle")
        };
        call(
            &mut reader,
            &Request::Release {
                id: warm,
                handle: 0,
            },
        );
        assert_eq!(server.stats().device_pooled, 1);

        let c = producer.connection();
        let first = allocate(&table, &memory, c, EntryId(0), &[3 << 20]).unwrap();
        assert_eq!(first.kind, cuda1);
        assert!(matches!(first.memory, GrantedMemory::Device(_)));
        assert_eq!((first.size, first.device_bytes), (3 << 20, 4 << 20));
        assert!(!first.recycled);
        assert_eq!(
            server.stats().device_pooled,
            1,
            "the warm allocation was not taken"
        );
        assert_eq!(server.stats().live_bytes, 0, "no host memory");
        table
            .lock()
            .unwrap()
            .set_event(EntryId(0), EventHandle([7; 64]))
            .unwrap();

        // A new shape: new memory, without the old memory's event; the old goes once
        // its last handle does.
        let second = allocate(&table, &memory, c, EntryId(0), &[1 << 20]).unwrap();
        assert_ne!(second.id, first.id);
        assert_eq!(second.kind, cuda1);
        assert_eq!(server.stats().device_live_bytes, (4 + 2) << 20);
        call(
            &mut producer,
            &Request::Release {
                id: first.id,
                handle: 0,
            },
        );
        assert_eq!(server.stats().device_live_bytes, 2 << 20);

        let table = table.into_inner().unwrap();
        table.seal(&memory, &[EntryId(0)]).unwrap();
        assert_eq!(
            table
                .open(&memory, c, EntryId(0), AccessMode::ReadWrite)
                .unwrap_err(),
            EntryError::Sealed {
                name: "volume".into()
            }
        );
        let input = table
            .open(
                &memory,
                reader.connection(),
                EntryId(0),
                AccessMode::ReadOnly,
            )
            .unwrap();
        assert_eq!(
            (input.id, input.kind, input.event),
            (second.id, cuda1, None)
        );
    }

    #[test]
    fn a_dynamic_device_entry_without_its_device_is_refused_naming_the_entry() {
        let server = server(1, 0);
        let memory = server.memory();
        let table = Mutex::new(EntryTable::define(&memory, &[dynamic_device_entry(3)]).unwrap());
        let c = client(&server);
        let e = allocate(&table, &memory, c.connection(), EntryId(0), &[16]).unwrap_err();
        assert!(
            matches!(&e, EntryError::Device { name, memory: MemoryKind::Cuda { device: 3 }, .. } if name == "volume"),
            "{e}"
        );
        assert!(
            e.to_string()
                .starts_with("FastIO entry \"volume\" cannot be allocated on cuda:3: "),
            "{e}"
        );
        assert_eq!(
            table.lock().unwrap().bound(EntryId(0)),
            None,
            "still unallocated"
        );
    }
}
