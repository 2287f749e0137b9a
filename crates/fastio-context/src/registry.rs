//! The context's state: resources, publications, handles per connection, the warm pool.
//!
//! Pure bookkeeping, no sockets: the server and the in-process context both drive it.
//!
//! Architecture Invariant: a resource lives while some connection holds a handle to it,
//! or while it is published and not freed. When neither is true its segment goes to the
//! bounded warm pool or is closed; no other path releases memory.

use std::collections::HashMap;

use fastio_meta::{Shape, TypedShape, validate_name};
use fastio_shm::{Segment, SegmentBuilder};

use crate::RequestError;
use crate::job::{EntryId, EntryPlan, ReclaimedHandle};
use crate::protocol::{AccessMode, EventHandle, ResourceId, Stats};

/// Identifies a connection (a client, or an in-process context) to the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnectionId(pub u64);

/// Default bound of the warm pool: 1 GiB of segments kept for reuse.
pub const DEFAULT_POOL_BYTES: u64 = 1 << 30;

#[derive(Debug)]
struct Resource {
    segment: Segment,
    size: usize,
    deleted: bool,
    // Live publications and FastIO entries bound to it: each keeps it alive.
    pins: usize,
    handles: u64,
    // The connection holding the write mapping, and how many times it took it.
    writer: Option<(ConnectionId, u32)>,
}

impl Resource {
    /// `conn` stops writing, if it was the writer.
    fn drop_writer(&mut self, conn: ConnectionId) {
        if self.writer.is_some_and(|(w, _)| w == conn) {
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
    },
    Freed,
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
    /// A descriptor for the client (read-only when the access asked was read-only).
    pub segment: Segment,
}

/// The registry of one context.
#[derive(Debug)]
pub struct Registry {
    resources: HashMap<ResourceId, Resource>,
    names: HashMap<String, NameState>,
    entries: Vec<EntrySlot>,
    connections: HashMap<ConnectionId, HashMap<ResourceId, u64>>,
    pool: Vec<Segment>,
    pool_bytes: u64,
    pool_limit: u64,
    next_id: u64,
    next_connection: u64,
    created: u64,
    recycled: u64,
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
            pool_bytes: 0,
            pool_limit,
            next_id: 1,
            next_connection: 1,
            created: 0,
            recycled: 0,
        }
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
        for (id, count) in held {
            if let Some(resource) = self.resources.get_mut(&id) {
                resource.handles -= count;
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
            .map(|m| m.iter().map(|(k, v)| (*k, *v)).collect())
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

    /// A new private resource of `size` bytes, held once by `conn`.
    pub fn create(&mut self, conn: ConnectionId, size: usize) -> Result<Grant, RequestError> {
        let grant = self.new_resource(size)?;
        self.add_handle(conn, grant.id);
        Ok(grant)
    }

    /// A new resource held by nobody (its caller pins it at once).
    fn new_resource(&mut self, size: usize) -> Result<Grant, RequestError> {
        if size == 0 {
            return Err(RequestError::ZeroSize);
        }
        let (segment, recycled) = match self.take_pooled(size) {
            Some(segment) => (segment, true),
            None => {
                let segment = SegmentBuilder::new(size)
                    .label("fastio")
                    .create()
                    .map_err(RequestError::from_segment)?;
                self.created += 1;
                (segment, false)
            }
        };
        let client_copy = segment.try_clone().map_err(RequestError::from_segment)?;
        let id = ResourceId(self.next_id);
        self.next_id += 1;
        self.resources.insert(
            id,
            Resource {
                segment,
                size,
                deleted: false,
                pins: 0,
                handles: 0,
                writer: None,
            },
        );
        Ok(Grant {
            id,
            size,
            typed: None,
            recycled,
            event: None,
            segment: client_copy,
        })
    }

    /// Publishes a resource `conn` holds under `name`.
    pub fn publish(
        &mut self,
        conn: ConnectionId,
        id: ResourceId,
        name: &str,
        typed: Option<TypedShape>,
        event: Option<EventHandle>,
    ) -> Result<(), RequestError> {
        validate_name(name).map_err(|e| RequestError::InvalidName {
            message: e.to_string(),
        })?;
        self.check_held(conn, id)?;
        let resource = &self.resources[&id];
        if resource.deleted {
            return Err(RequestError::Deleted { id: id.0 });
        }
        if let Some(t) = &typed {
            let need = t.byte_size();
            if need > resource.size {
                return Err(RequestError::MetadataTooLarge {
                    needed: need,
                    size: resource.size,
                });
            }
        }
        match self.names.get(name) {
            Some(NameState::Live { .. }) => {
                return Err(RequestError::AlreadyPublished {
                    name: name.to_owned(),
                });
            }
            Some(NameState::Freed) => {
                return Err(RequestError::NameFreed {
                    name: name.to_owned(),
                });
            }
            None => {}
        }
        self.names
            .insert(name.to_owned(), NameState::Live { id, typed, event });
        if let Some(resource) = self.resources.get_mut(&id) {
            resource.pins += 1;
        }
        Ok(())
    }

    /// A new handle to the resource published as `name`.
    pub fn get(
        &mut self,
        conn: ConnectionId,
        name: &str,
        access: AccessMode,
    ) -> Result<Grant, RequestError> {
        let (id, typed, event) = match self.names.get(name) {
            Some(NameState::Live { id, typed, event }) => (*id, typed.clone(), *event),
            Some(NameState::Freed) => {
                return Err(RequestError::NameFreed {
                    name: name.to_owned(),
                });
            }
            None => {
                return Err(RequestError::UnknownName {
                    name: name.to_owned(),
                });
            }
        };
        let mut grant = self.grant(conn, id, access, typed)?;
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
    ) -> Result<Grant, RequestError> {
        let resource = &self.resources[&id];
        let segment = match access {
            AccessMode::ReadOnly => resource.segment.read_only(),
            AccessMode::ReadWrite => resource.segment.try_clone(),
        }
        .map_err(RequestError::from_segment)?;
        let size = resource.size;
        self.add_handle(conn, id);
        Ok(Grant {
            id,
            size,
            typed,
            recycled: false,
            event: None,
            segment,
        })
    }

    /// Sets up a job's FastIO entries, allocating (zeroed) those whose shape is fully
    /// known. Entry `i` of `plans` becomes `EntryId(i)`.
    pub fn define_entries(&mut self, plans: &[EntryPlan]) -> Result<(), RequestError> {
        for plan in plans {
            self.entries.push(EntrySlot {
                plan: plan.clone(),
                bound: None,
                event: None,
            });
            if plan.is_preallocated() {
                let dims: Vec<usize> = plan.declared.iter().map(|&d| d as usize).collect();
                let index = self.entries.len() - 1;
                let (id, _, recycled) = self.bind_entry(index, &dims)?;
                if recycled {
                    // Readers open pre-allocated entries as they are: zero them here (a
                    // new job's pool is empty, so this is the rare case).
                    let mapping = fastio_shm::Mapping::new(
                        &self.resources[&id].segment,
                        fastio_shm::Access::ReadWrite,
                        fastio_shm::Prefault::Lazy,
                    )
                    .map_err(RequestError::from_segment)?;
                    mapping.zero().map_err(RequestError::from_segment)?;
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
    ) -> Result<(), RequestError> {
        let index = entry.0 as usize;
        let slot = self.entry_slot(entry)?;
        let mismatch = dims.len() != slot.plan.declared.len()
            || dims
                .iter()
                .zip(&slot.plan.declared)
                .any(|(&d, &declared)| declared > 0 && d as i64 != declared);
        if mismatch {
            return Err(RequestError::EntryShape {
                message: format!(
                    "{} is declared {:?} (-1 or 0: any), the data has shape {dims:?}",
                    slot.plan.name, slot.plan.declared
                ),
            });
        }
        let id = match &slot.bound {
            Some((id, typed)) if typed.shape.dims() == dims => *id,
            _ => self.bind_entry(index, dims)?.0,
        };
        let resource = &self.resources[&id];
        if bytes.len() != resource.size {
            return Err(RequestError::EntryShape {
                message: format!(
                    "{} needs {} bytes for shape {dims:?}, the data has {}",
                    self.entries[index].plan.name,
                    resource.size,
                    bytes.len()
                ),
            });
        }
        let mapping = fastio_shm::Mapping::new(
            &resource.segment,
            fastio_shm::Access::ReadWrite,
            fastio_shm::Prefault::Lazy,
        )
        .map_err(RequestError::from_segment)?;
        mapping
            .write_at(0, bytes)
            .map_err(RequestError::from_segment)
    }

    fn entry_slot(&self, entry: EntryId) -> Result<&EntrySlot, RequestError> {
        self.entries
            .get(entry.0 as usize)
            .ok_or(RequestError::UnknownEntry { id: entry.0 })
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
    ) -> Result<Grant, RequestError> {
        let slot = self.entry_slot(entry)?;
        let Some((id, typed)) = slot.bound.clone() else {
            return Err(RequestError::EntryNotAllocated {
                name: slot.plan.name.clone(),
            });
        };
        let event = slot.event;
        let mut grant = self.grant(conn, id, access, Some(typed))?;
        grant.event = event;
        Ok(grant)
    }

    /// Attaches `event` to the entry's current memory.
    pub fn set_entry_event(
        &mut self,
        entry: EntryId,
        event: EventHandle,
    ) -> Result<(), RequestError> {
        let slot = self
            .entries
            .get_mut(entry.0 as usize)
            .ok_or(RequestError::UnknownEntry { id: entry.0 })?;
        if slot.bound.is_none() {
            return Err(RequestError::EntryNotAllocated {
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
    ) -> Result<Grant, RequestError> {
        let slot = self.entry_slot(entry)?;
        let plan = &slot.plan;
        if plan.is_preallocated() {
            return Err(RequestError::EntryShape {
                message: format!(
                    "FastIO entry {:?} was pre-allocated with its declared shape; it cannot be allocated again",
                    plan.name
                ),
            });
        }
        let fits = dims.len() == plan.declared.len()
            && dims
                .iter()
                .zip(&plan.declared)
                .all(|(&d, &declared)| d > 0 && (declared <= 0 || d as i64 == declared));
        if !fits {
            return Err(RequestError::EntryShape {
                message: format!(
                    "dimensions {dims:?} do not fit FastIO entry {:?} declared as {:?}: every dimension must be positive and equal the declaration where it is not dynamic",
                    plan.name, plan.declared
                ),
            });
        }
        let (id, typed, recycled) = self.bind_entry(entry.0 as usize, dims)?;
        let mut grant = self.grant(conn, id, AccessMode::ReadWrite, Some(typed))?;
        // The producer zeroes a recycled segment as it maps it (as for `create`), rather
        // than the server holding the registry while it clears possibly gigabytes.
        grant.recycled = recycled;
        Ok(grant)
    }

    /// Gives entry `index` a fresh resource of `dims`, unpinning its previous one (and
    /// dropping the previous memory's event). Returns whether the segment was recycled:
    /// entries start zeroed, so whoever maps it first must zero it then.
    fn bind_entry(
        &mut self,
        index: usize,
        dims: &[usize],
    ) -> Result<(ResourceId, TypedShape, bool), RequestError> {
        let element_type = self.entries[index].plan.element_type;
        let shape_error = |e: fastio_meta::MetaError| RequestError::EntryShape {
            message: e.to_string(),
        };
        let typed = TypedShape::new(
            element_type,
            Shape::new(dims.to_vec()).map_err(shape_error)?,
        )
        .map_err(shape_error)?;
        let grant = self.new_resource(typed.byte_size())?;
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

    /// Drops one handle `conn` holds.
    pub fn release(&mut self, conn: ConnectionId, id: ResourceId) -> Result<(), RequestError> {
        self.check_held(conn, id)?;
        let held = self
            .connections
            .get_mut(&conn)
            .and_then(|m| m.get_mut(&id))
            .expect("checked above");
        *held -= 1;
        if *held == 0 {
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

    /// Takes the write mapping of a resource `conn` holds: refused while another
    /// connection has it.
    pub fn acquire_write(
        &mut self,
        conn: ConnectionId,
        id: ResourceId,
    ) -> Result<(), RequestError> {
        self.check_held(conn, id)?;
        let resource = self.resources.get_mut(&id).expect("held resources exist");
        match &mut resource.writer {
            Some((w, count)) if *w == conn => *count += 1,
            Some(_) => return Err(RequestError::WriterBusy { id: id.0 }),
            None => resource.writer = Some((conn, 1)),
        }
        Ok(())
    }

    /// Gives back one write mapping `conn` took.
    pub fn release_write(
        &mut self,
        conn: ConnectionId,
        id: ResourceId,
    ) -> Result<(), RequestError> {
        self.check_held(conn, id)?;
        let resource = self.resources.get_mut(&id).expect("held resources exist");
        match &mut resource.writer {
            Some((w, count)) if *w == conn => {
                *count -= 1;
                if *count == 0 {
                    resource.writer = None;
                }
                Ok(())
            }
            _ => Err(RequestError::BadRequest {
                message: format!("resource {id} is not mapped for writing by this client"),
            }),
        }
    }

    /// Marks a held resource deleted, so that its names stop resolving, and drops the handle.
    pub fn free(&mut self, conn: ConnectionId, id: ResourceId) -> Result<(), RequestError> {
        self.check_held(conn, id)?;
        // A bound entry must keep its memory for the readers still to come.
        if let Some(slot) = self
            .entries
            .iter()
            .find(|e| e.bound.as_ref().is_some_and(|(b, _)| *b == id))
        {
            return Err(RequestError::EntryAccess {
                message: format!(
                    "resource {id} is the memory of FastIO entry {:?}, which the job manages: it cannot be freed; release the handle instead",
                    slot.plan.name
                ),
            });
        }
        let resource = self.resources.get_mut(&id).expect("held resources exist");
        resource.deleted = true;
        for state in self.names.values_mut() {
            if matches!(state, NameState::Live { id: live, .. } if *live == id) {
                *state = NameState::Freed;
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
                NameState::Freed => None,
            })
            .collect();
        let handles = self
            .connections
            .iter()
            .flat_map(|(conn, held)| held.iter().map(|(id, count)| (*conn, *id, *count)))
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
                .map(|r| r.segment.len() as u64)
                .sum(),
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
        }
    }

    fn add_handle(&mut self, conn: ConnectionId, id: ResourceId) {
        *self
            .connections
            .entry(conn)
            .or_default()
            .entry(id)
            .or_insert(0) += 1;
        if let Some(resource) = self.resources.get_mut(&id) {
            resource.handles += 1;
        }
    }

    fn check_held(&self, conn: ConnectionId, id: ResourceId) -> Result<(), RequestError> {
        let held = self
            .connections
            .get(&conn)
            .and_then(|m| m.get(&id))
            .copied()
            .unwrap_or(0);
        if held == 0 {
            return Err(RequestError::NotHeld { id: id.0 });
        }
        Ok(())
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
        let len = resource.segment.len() as u64;
        if self.pool_bytes + len <= self.pool_limit {
            self.pool_bytes += len;
            self.pool.push(resource.segment);
        }
        // Otherwise the segment is dropped here: its memory goes with the last mapping.
    }

    /// The smallest pooled segment that holds `size` bytes without wasting more than a
    /// quarter of itself.
    fn take_pooled(&mut self, size: usize) -> Option<Segment> {
        let index = self
            .pool
            .iter()
            .enumerate()
            .filter(|(_, s)| s.len() >= size && s.len() - size <= s.len() / 4)
            .min_by_key(|(_, s)| s.len())
            .map(|(i, _)| i)?;
        let segment = self.pool.swap_remove(index);
        self.pool_bytes -= segment.len() as u64;
        self.recycled += 1;
        Some(segment)
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
        assert!(!h.segment.is_writable());
        r.free(b, h.id).unwrap();
        assert_eq!(r.stats().resources, 0);
        assert!(matches!(
            r.get(a, "buf", AccessMode::ReadOnly),
            Err(RequestError::NameFreed { .. })
        ));
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
            Err(RequestError::AlreadyPublished { .. })
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
            Err(RequestError::NotHeld { .. })
        ));
        assert!(matches!(
            r.release(b, g.id),
            Err(RequestError::NotHeld { .. })
        ));
        assert!(matches!(r.free(b, g.id), Err(RequestError::NotHeld { .. })));
        r.release(a, g.id).unwrap();
        assert!(matches!(
            r.release(a, g.id),
            Err(RequestError::NotHeld { .. })
        ));
    }

    #[test]
    fn metadata_larger_than_the_allocation_is_refused() {
        let mut r = Registry::new(0);
        let c = r.connect();
        let g = r.create(c, 10).unwrap();
        assert!(matches!(
            r.publish(c, g.id, "n", typed(&[11]), None),
            Err(RequestError::MetadataTooLarge {
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
mod writer_tests {
    use super::*;

    #[test]
    fn one_connection_writes_at_a_time_until_it_lets_go() {
        let mut r = Registry::new(0);
        let (a, b) = (r.connect(), r.connect());
        let g = r.create(a, 64).unwrap();
        r.publish(a, g.id, "w", None, None).unwrap();
        r.get(b, "w", AccessMode::ReadWrite).unwrap();
        r.acquire_write(a, g.id).unwrap();
        r.acquire_write(a, g.id).unwrap();
        assert_eq!(
            r.acquire_write(b, g.id),
            Err(RequestError::WriterBusy { id: g.id.0 })
        );
        r.release_write(a, g.id).unwrap();
        assert!(r.acquire_write(b, g.id).is_err(), "a still holds one");
        r.release_write(a, g.id).unwrap();
        r.acquire_write(b, g.id).unwrap();
        // A writer that goes away, by release or disconnect, lets the next one in.
        r.disconnect(b);
        r.acquire_write(a, g.id).unwrap();
        r.release(a, g.id).unwrap();
        let c = r.connect();
        r.get(c, "w", AccessMode::ReadWrite).unwrap();
        r.acquire_write(c, g.id).unwrap();
    }
}

#[cfg(test)]
mod entry_tests {
    use super::*;
    use fastio_meta::ElementType;

    fn dynamic_entry() -> EntryPlan {
        EntryPlan {
            name: "slices".into(),
            producer: Some(0),
            element_type: ElementType::I32,
            declared: vec![-1],
        }
    }

    #[test]
    fn an_entrys_memory_cannot_be_freed_under_its_readers() {
        let mut r = Registry::new(0);
        r.define_entries(&[dynamic_entry()]).unwrap();
        let c = r.connect();
        let g = r.allocate_entry(c, EntryId(0), &[4]).unwrap();
        assert!(matches!(
            r.free(c, g.id),
            Err(RequestError::EntryAccess { .. })
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
    fn reallocating_an_entry_drops_the_old_memorys_event_and_leaves_zeroing_to_the_producer() {
        let mut r = Registry::new(1 << 20);
        r.define_entries(&[dynamic_entry()]).unwrap();
        let c = r.connect();
        let first = r.allocate_entry(c, EntryId(0), &[1024]).unwrap();
        r.release(c, first.id).unwrap();
        // Replaced, the first memory goes to the pool.
        let second = r.allocate_entry(c, EntryId(0), &[1024]).unwrap();
        assert!(!second.recycled);
        r.set_entry_event(EntryId(0), EventHandle([1; 64])).unwrap();
        r.release(c, second.id).unwrap();
        // The first segment comes back from the pool, not yet zeroed.
        let third = r.allocate_entry(c, EntryId(0), &[1024]).unwrap();
        assert!(third.recycled, "the producer is told to zero it");
        let reader = r.connect();
        let opened = r
            .open_entry(reader, EntryId(0), AccessMode::ReadOnly)
            .unwrap();
        assert_eq!(opened.event, None, "the event belonged to the old memory");
    }
}
