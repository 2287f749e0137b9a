//! The Fast I/O context and its allocations, with Clara's semantics (as its C and Python documentation describe them).

use std::fmt;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use fastio_meta::{Element, ElementType, Shape, TypedShape};
use fastio_shm::{Access, Mapping, Prefault};
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

use crate::ContextError;
use crate::protocol::{
    AccessMode, EntryId, EventHandle, MemoryKind, Phase, ReclaimedHandle, Request, ResourceId,
    Response, StageInfo, Stats,
};
use crate::registry::GrantedMemory;
use crate::registry::{DEFAULT_POOL_BYTES, Registry};
use crate::server::CONTEXT_ENV;
use crate::service::JobService;

/// The abstract socket name of a job that operators join ([`Context::attach_from_env`]).
pub const JOB_SOCKET_ENV: &str = "FASTIO_JOB_SOCKET";
/// The job's secret that a joining operator presents.
pub const JOB_SECRET_ENV: &str = "FASTIO_JOB_SECRET";
/// The operator's name in the pipeline (also what the pipeline driver sets for operators).
pub const JOB_STAGE_ENV: &str = "FASTIO_STAGE";
use crate::transport::{LocalTransport, Shared, SocketTransport, Transport};

/// How [`Context::create_with`] prepares a new allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CreateOptions {
    /// Zero the bytes of a recycled segment (fresh segments are zero already). Turn off
    /// when every byte will be overwritten: zeroing a recycled segment costs a full write.
    pub zeroed: bool,
    /// Map every page now rather than at first touch, when a new mapping is made (a kept
    /// mapping has its pages already). The default for writers: a producer that fills its
    /// allocation pays 57 ms per 256 MiB this way against 122 ms in page faults.
    pub prefault: Prefault,
    /// Ask for huge pages from the hugetlb pool (`MFD_HUGETLB`) when a new segment is
    /// made. Where the pool cannot hold it the segment is made of ordinary shared memory
    /// (with transparent huge pages where the kernel gives them); `Context::stats` shows
    /// which segments are hugetlb.
    pub hugetlb: bool,
}

impl Default for CreateOptions {
    fn default() -> Self {
        Self {
            zeroed: true,
            prefault: Prefault::Populate,
            hugetlb: false,
        }
    }
}

/// A Fast I/O context: the memory resources shared by the operators of one job.
///
/// Clones share one connection. A context is in-process ([`Context::in_process`]) or a
/// client of a context server ([`Context::connect`], [`Context::from_env`]); both behave
/// the same.
#[derive(Clone, Debug)]
pub struct Context {
    transport: Arc<dyn Transport>,
}

impl Context {
    /// A private context in this process, with the default warm pool.
    pub fn in_process() -> Self {
        Self::in_process_with_pool(DEFAULT_POOL_BYTES)
    }

    /// A private context in this process whose warm pool keeps at most `pool_bytes`.
    pub fn in_process_with_pool(pool_bytes: u64) -> Self {
        let mut registry = Registry::new(pool_bytes);
        registry.collapse_pooled(true);
        Self::over_shared(Shared::new(registry, None), None)
    }

    /// A private context in this process that makes device memory through `driver`
    /// (cuda-streams' CPU fake in tests; by default the machine's CUDA driver is found on
    /// the first device create).
    pub fn in_process_with_device_driver(driver: cuda_streams::Driver) -> Self {
        let mut registry = Registry::new(DEFAULT_POOL_BYTES);
        registry.set_device_driver(driver);
        Self::over_shared(Shared::new(registry, None), None)
    }

    /// A private context in this process that hosts `job` and acts as its stage `stage`:
    /// how an operator runs alone, without a driver (the fastio-job crate's `in_process`).
    /// The job sets up what it needs first, as in a server ([`JobService::set_up`]).
    pub fn in_process_with_job(
        job: Arc<dyn JobService>,
        stage: usize,
    ) -> Result<Self, ContextError> {
        let shared = Shared::new(Registry::new(DEFAULT_POOL_BYTES), Some(job));
        shared.set_up_job()?;
        Ok(Self::over_shared(shared, Some(stage)))
    }

    pub(crate) fn over_shared(shared: Arc<Shared>, stage: Option<usize>) -> Self {
        Self {
            transport: Arc::new(LocalTransport::new(shared, stage)),
        }
    }

    /// Joins the context server at `address`: `@name` (abstract socket, as printed by
    /// `fastio serve`) or `fd:N` (an inherited connected socket).
    ///
    /// `fd:N` is taken once per process: the first successful connect adopts descriptor N
    /// for the life of the process, and later connects to `fd:N` share that connection
    /// (one conversation per socket). A connect that fails leaves descriptor N as it
    /// found it, open; it never closes what it does not own. A child made by `fork()`
    /// cannot use its parent's `fd:N`; it connects to the server's `@name` address.
    pub fn connect(address: &str) -> Result<Self, ContextError> {
        let fail = |reason: String| ContextError::Connect {
            address: address.to_owned(),
            reason,
        };
        let socket = if let Some(fd) = address.strip_prefix("fd:") {
            let fd: i32 = fd
                .parse()
                .map_err(|_| fail("fd: must be followed by a descriptor number".into()))?;
            return Ok(Self {
                transport: inherited_connection(fd, &fail)?,
            });
        } else if let Some(name) = address.strip_prefix('@') {
            let socket = rustix::net::socket_with(
                AddressFamily::UNIX,
                SocketType::SEQPACKET,
                SocketFlags::CLOEXEC,
                None,
            )
            .map_err(|e| fail(e.to_string()))?;
            let addr = SocketAddrUnix::new_abstract_name(name.as_bytes())
                .map_err(|e| fail(e.to_string()))?;
            rustix::net::connect(&socket, &addr).map_err(|e| fail(e.to_string()))?;
            socket
        } else {
            return Err(fail("expected @name or fd:N".into()));
        };
        Ok(Self {
            transport: Arc::new(SocketTransport::new(socket)?),
        })
    }

    /// A connected socket becomes a context (the pipeline driver's operators use this).
    pub fn from_socket(socket: OwnedFd) -> Result<Self, ContextError> {
        Ok(Self {
            transport: Arc::new(SocketTransport::new(socket)?),
        })
    }

    /// [`Context::from_socket`], waiting at most `timeout` for each answer (rather than
    /// `FASTIO_REQUEST_TIMEOUT_S`, default 60 s); waiting for inputs is not limited.
    pub fn from_socket_with_timeout(
        socket: OwnedFd,
        timeout: std::time::Duration,
    ) -> Result<Self, ContextError> {
        let transport = SocketTransport::wrap_with_timeout(socket, timeout);
        transport.hello()?;
        Ok(Self {
            transport: Arc::new(transport),
        })
    }

    /// Joins, as operator `stage`, the job whose context server listens at `address`
    /// (`@name`) and was started for operators that join it ([`crate::Server::start_with_job_at`]),
    /// proving with the job's `secret` that it belongs. Until the server is up (nothing
    /// listens at the name yet) it retries for at most `wait`; a refusal (wrong secret,
    /// unknown stage, another uid) is returned at once. Then [`Context::join`] follows.
    pub fn attach(
        address: &str,
        stage: &str,
        secret: &str,
        wait: std::time::Duration,
    ) -> Result<Self, ContextError> {
        let fail = |reason: String| ContextError::Connect {
            address: address.to_owned(),
            reason,
        };
        let name = address
            .strip_prefix('@')
            .ok_or_else(|| fail("a job's socket is an abstract name, @name".into()))?;
        let addr =
            SocketAddrUnix::new_abstract_name(name.as_bytes()).map_err(|e| fail(e.to_string()))?;
        let deadline = std::time::Instant::now() + wait;
        let mut pause = std::time::Duration::from_millis(10);
        let socket = loop {
            let socket = rustix::net::socket_with(
                AddressFamily::UNIX,
                SocketType::SEQPACKET,
                SocketFlags::CLOEXEC,
                None,
            )
            .map_err(|e| fail(e.to_string()))?;
            match rustix::net::connect(&socket, &addr) {
                Ok(()) => break socket,
                // Nothing listens there (yet): the server's container may still be starting.
                Err(rustix::io::Errno::CONNREFUSED) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(pause.min(deadline - std::time::Instant::now()));
                    pause = (pause * 2).min(std::time::Duration::from_millis(500));
                }
                Err(rustix::io::Errno::CONNREFUSED) => {
                    return Err(fail(format!(
                        "no context server listens there after {wait:?} (it is not up, or it \
                         is in another network namespace: another Pod, or the host)"
                    )));
                }
                Err(e) => return Err(fail(e.to_string())),
            }
        };
        let transport = SocketTransport::wrap(socket);
        match transport.call(&Request::Attach {
            version: crate::protocol::PROTOCOL_VERSION,
            stage: stage.to_owned(),
            secret: crate::protocol::JobSecret(secret.to_owned()),
        })? {
            (Response::Welcome { .. }, _) => Ok(Self {
                transport: Arc::new(transport),
            }),
            (Response::Refused(e), _) => Err(e.into()),
            (other, _) => Err(ContextError::Protocol(format!(
                "expected a welcome, got {other:?}"
            ))),
        }
    }

    /// [`Context::attach`] with what a container of a job's Pod finds in its environment:
    /// `FASTIO_JOB_SOCKET` (the abstract name, with or without its `@`),
    /// `FASTIO_JOB_SECRET` and `FASTIO_STAGE`.
    pub fn attach_from_env(wait: std::time::Duration) -> Result<Self, ContextError> {
        let var = |var: &'static str| match std::env::var(var) {
            Ok(value) if !value.is_empty() => Ok(value),
            _ => Err(ContextError::Connect {
                address: format!("${JOB_SOCKET_ENV}"),
                reason: format!(
                    "{var} is not set: an operator joins a job with {JOB_SOCKET_ENV}, \
                     {JOB_SECRET_ENV} and {JOB_STAGE_ENV} (the rendered Pod sets them)"
                ),
            }),
        };
        let socket = var(JOB_SOCKET_ENV)?;
        let address = if socket.starts_with('@') {
            socket
        } else {
            format!("@{socket}")
        };
        Self::attach(&address, &var(JOB_STAGE_ENV)?, &var(JOB_SECRET_ENV)?, wait)
    }

    /// Joins the context named by the `FASTIO_CONTEXT` environment variable.
    ///
    /// In a child made by `fork()` from a process whose `fd:N` connection it cannot share,
    /// it connects to the server's address in `FASTIO_CONTEXT_ADDRESS` instead, when set
    /// (the pipeline driver sets it for its operators); without it the `Forked` error stays.
    pub fn from_env() -> Result<Self, ContextError> {
        match std::env::var(CONTEXT_ENV) {
            Ok(address) if !address.is_empty() => match Self::connect(&address) {
                Err(forked @ ContextError::Forked { .. }) => {
                    match std::env::var(crate::server::CONTEXT_ADDRESS_ENV) {
                        Ok(own) if own.starts_with('@') => Self::connect(&own),
                        _ => Err(forked),
                    }
                }
                other => other,
            },
            _ => Err(ContextError::NoContextInEnvironment { var: CONTEXT_ENV }),
        }
    }

    pub(crate) fn call(
        &self,
        request: Request,
    ) -> Result<(Response, Option<GrantedMemory>), ContextError> {
        match self.transport.call(&request)? {
            (Response::Refused(e), _) => Err(e.into()),
            answer => Ok(answer),
        }
    }

    pub(crate) fn handle(
        &self,
        request: Request,
        access: Access,
        options: CreateOptions,
    ) -> Result<Allocation, ContextError> {
        let (response, memory) = self.call(request)?;
        let (
            Response::Handle {
                id,
                size,
                typed,
                recycled,
                event,
                kind,
                device_bytes,
            },
            Some(memory),
        ) = (response, memory)
        else {
            return Err(ContextError::Protocol("expected a handle".into()));
        };
        let segment = match memory {
            GrantedMemory::Host(segment) => segment,
            // Device memory is mapped by cuda-streams when the caller asks for its device
            // pointer (`Allocation::map_device`): a process without CUDA may still hold it.
            GrantedMemory::Device(fd) => {
                return Ok(Allocation {
                    context: self.clone(),
                    id,
                    handle: next_handle(),
                    mapping: None,
                    device: Some(DeviceHandle {
                        fd,
                        bytes: device_bytes,
                        mapped: Mutex::new(DeviceMaps::default()),
                    }),
                    kind,
                    size,
                    typed,
                    access,
                    event,
                    live: true,
                    unmap_on_release: false,
                    gpu: Mutex::default(),
                });
            }
        };
        let mapped = crate::mapcache::map(&segment, access, options.prefault).and_then(|mapping| {
            if recycled && options.zeroed {
                mapping.zero()?;
            }
            Ok(mapping)
        });
        match mapped {
            Ok(mapping) => Ok(Allocation {
                context: self.clone(),
                id,
                handle: next_handle(),
                mapping: Some(mapping),
                device: None,
                kind: MemoryKind::Host,
                size,
                typed,
                access,
                event,
                live: true,
                unmap_on_release: false,
                gpu: Mutex::default(),
            }),
            Err(e) => {
                // The context counted the handle; give it back before reporting.
                let _ = self.call(Request::Release { id, handle: 0 });
                Err(e.into())
            }
        }
    }

    /// A new allocation of `size` bytes, zeroed, reachable only through the returned
    /// handle until it is published.
    pub fn create(&self, size: usize) -> Result<Allocation, ContextError> {
        self.create_with(size, CreateOptions::default())
    }

    /// [`Context::create`] with options.
    pub fn create_with(
        &self,
        size: usize,
        options: CreateOptions,
    ) -> Result<Allocation, ContextError> {
        self.handle(
            Request::Create {
                size,
                hugetlb: options.hugetlb,
                kind: MemoryKind::Host,
            },
            Access::ReadWrite,
            options,
        )
    }

    /// A new allocation of `size` bytes in memory of `kind`: host memory as
    /// [`Context::create`] makes it, or memory of a CUDA device (a VMM allocation the
    /// context makes, or takes from that device's warm pool: its bytes are then not zeroed).
    /// Refused with [`CreateError::Device`](crate::CreateError::Device) where there is no
    /// CUDA driver or no such device.
    pub fn create_in(&self, kind: MemoryKind, size: usize) -> Result<Allocation, ContextError> {
        match kind {
            MemoryKind::Host => self.create(size),
            MemoryKind::Cuda { .. } => self.handle(
                Request::Create {
                    size,
                    hugetlb: false,
                    kind,
                },
                Access::ReadWrite,
                CreateOptions::default(),
            ),
        }
    }

    /// A new read-write handle to the allocation published as `name`, with a copy of the
    /// published metadata (Clara's `get`, which puts no restriction on its result).
    pub fn get(&self, name: &str) -> Result<Allocation, ContextError> {
        self.get_with(name, AccessMode::ReadWrite)
    }

    /// A new handle with the given access. A read-only handle's descriptor and mapping
    /// are read-only: writes through it fault.
    pub fn get_with(&self, name: &str, access: AccessMode) -> Result<Allocation, ContextError> {
        self.get_with_options(name, access, Prefault::Lazy)
    }

    /// [`Context::get_with`], choosing whether to map every page now
    /// ([`Prefault::Populate`]: one call instead of a fault per 4 KiB page, for a reader
    /// that will touch all of it) or at first touch.
    pub fn get_with_options(
        &self,
        name: &str,
        access: AccessMode,
        prefault: Prefault,
    ) -> Result<Allocation, ContextError> {
        let local = match access {
            AccessMode::ReadOnly => Access::ReadOnly,
            AccessMode::ReadWrite => Access::ReadWrite,
        };
        self.handle(
            Request::Get {
                name: name.to_owned(),
                access,
            },
            local,
            CreateOptions {
                zeroed: false,
                prefault,
                hugetlb: false,
            },
        )
    }

    /// Copies `data` into a new allocation typed `T` with `shape`, and publishes it as
    /// `name` (Clara's `publish_array`). The handle is released afterwards; the
    /// publication keeps the memory until it is freed.
    pub fn publish_slice<T: Element>(
        &self,
        data: &[T],
        shape: &[usize],
        name: &str,
    ) -> Result<(), ContextError> {
        let bytes = fastio_meta::as_bytes(data);
        let mut allocation = self.create_with(
            bytes.len(),
            CreateOptions {
                zeroed: false,
                prefault: Prefault::Populate,
                hugetlb: false,
            },
        )?;
        allocation.set_type_and_dimensions(T::TYPE, shape)?;
        allocation.write_bytes(0, bytes)?;
        allocation.publish(name)?;
        allocation.release()
    }

    /// Withdraws the name `name`, whether it names a live publication or one whose
    /// resource was freed, so that it can be published again. Handles already got stay
    /// valid; the memory goes when nothing else keeps it. Fails with
    /// [`UnpublishError::UnknownName`](crate::UnpublishError::UnknownName) when no
    /// publication has the name, and with
    /// [`UnpublishError::NotPublisher`](crate::UnpublishError::NotPublisher) when this client
    /// neither published it nor holds its memory read-write (a reader may not take it from
    /// the others).
    pub fn unpublish(&self, name: &str) -> Result<(), ContextError> {
        self.call(Request::Unpublish {
            name: name.to_owned(),
        })
        .map(drop)
    }

    /// The context's accounting.
    pub fn stats(&self) -> Result<Stats, ContextError> {
        match self.call(Request::Stats)? {
            (Response::Stats(stats), _) => Ok(stats),
            (other, _) => Err(ContextError::Protocol(format!(
                "expected stats, got {other:?}"
            ))),
        }
    }

    /// A listing of the context: its job's operators, its FastIO entries and
    /// publications with their sizes and holders (what `fastio ls` shows).
    pub fn inspect(&self) -> Result<crate::listing::Listing, ContextError> {
        match self.call(Request::Inspect)? {
            (Response::Listing(listing), _) => Ok(*listing),
            (other, _) => Err(ContextError::Protocol(format!(
                "expected a listing, got {other:?}"
            ))),
        }
    }

    // The job life-cycle, as the operator API drives it.

    /// Joins the job as the operator this connection was made for, and learns its
    /// entries. Refused with [`JobError::NotInJob`](crate::JobError::NotInJob)
    /// outside a job.
    pub fn join(&self) -> Result<StageInfo, ContextError> {
        match self.call(Request::Join)? {
            (Response::Joined(info), _) => Ok(*info),
            (other, _) => Err(ContextError::Protocol(format!(
                "expected the stage, got {other:?}"
            ))),
        }
    }

    /// Blocks until every upstream operator has finished execute; fails with
    /// [`JobError::Aborted`](crate::JobError::Aborted) if the job fails first.
    pub fn await_inputs(&self) -> Result<(), ContextError> {
        self.call(Request::AwaitInputs).map(drop)
    }

    /// Reports the end of a phase. After execute, the handles this connection still held
    /// are dropped by the context and returned (Clara: none should remain).
    pub fn finished(
        &self,
        phase: Phase,
        failure: Option<String>,
    ) -> Result<Vec<ReclaimedHandle>, ContextError> {
        match self.call(Request::Finished { phase, failure })? {
            (Response::Reclaimed { handles }, _) => Ok(handles),
            (_, _) => Ok(Vec::new()),
        }
    }
}

impl Context {
    // A job's FastIO entries, as the fastio-job crate's `FastIoEntry` uses them.

    /// A handle to the memory of FastIO entry `entry` of this operator's job: read-write
    /// for its producer during its execute, read-only for its readers once the producer's
    /// execute has finished. [`EntryError::NotAllocated`](crate::EntryError::NotAllocated)
    /// while it has no memory.
    pub fn open_entry(
        &self,
        entry: EntryId,
        access: AccessMode,
    ) -> Result<Allocation, ContextError> {
        let (mapped, prefault) = match access {
            // Outputs are written whole: populated mapping. Inputs gain nothing from it.
            AccessMode::ReadWrite => (Access::ReadWrite, Prefault::Populate),
            AccessMode::ReadOnly => (Access::ReadOnly, Prefault::Lazy),
        };
        self.handle(
            Request::OpenEntry { entry, access },
            mapped,
            CreateOptions {
                zeroed: false,
                prefault,
                ..CreateOptions::default()
            },
        )
    }

    /// New memory of shape `dims` for the dynamic output `entry` of this operator, and a
    /// read-write handle to it; the entry's earlier memory, if any, is unbound (it lives
    /// on while handles to it remain).
    pub fn allocate_entry(
        &self,
        entry: EntryId,
        dims: Vec<usize>,
    ) -> Result<Allocation, ContextError> {
        self.handle(
            Request::AllocateEntry { entry, dims },
            Access::ReadWrite,
            CreateOptions::default(),
        )
    }

    /// Attaches an interprocess CUDA event to the current memory of this operator's output
    /// `entry`, for its readers.
    pub fn set_entry_event(&self, entry: EntryId, event: EventHandle) -> Result<(), ContextError> {
        self.call(Request::SetEntryEvent { entry, event }).map(drop)
    }
}

/// The connections adopted from inherited descriptors (`fd:N`), each for the life of
/// the process.
static INHERITED: std::sync::Mutex<Vec<(i32, Arc<SocketTransport>)>> =
    std::sync::Mutex::new(Vec::new());

/// The connection over inherited descriptor `fd`: the one adopted before, or a new one.
fn inherited_connection(
    fd: i32,
    fail: &dyn Fn(String) -> ContextError,
) -> Result<Arc<dyn Transport>, ContextError> {
    let mut table = INHERITED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, transport)) = table.iter().find(|(n, _)| *n == fd) {
        // A forked child finds its parent's entry here; its calls fail with `Forked`.
        transport.check_owner()?;
        return Ok(transport.clone());
    }
    let socket = crate::sys::borrow_inherited_socket(fd).map_err(|e| fail(e.to_string()))?;
    let transport = SocketTransport::wrap(socket);
    if let Err(e) = transport.hello() {
        // Not ours to close: give the descriptor back as it was.
        crate::sys::give_back(transport.into_socket());
        return Err(match e {
            ContextError::ServerGone(_) | ContextError::Protocol(_) => {
                fail(format!("no context server answers on descriptor {fd}: {e}"))
            }
            other => other,
        });
    }
    crate::sys::keep_from_children(fd).map_err(|e| fail(e.to_string()))?;
    let transport = Arc::new(transport);
    table.push((fd, transport.clone()));
    Ok(transport)
}

/// A handle to a Fast I/O memory resource, with its own local metadata.
///
/// Obtained from [`Context::create`] or [`Context::get`]. Dropping it releases the handle
/// (the same as [`Allocation::release`], with errors only logged). In Rust, using a handle
/// after `release` or `free` does not compile, since both consume it:
///
/// ```compile_fail
/// let ctx = fastio_context::Context::in_process();
/// let a = ctx.create(16).unwrap();
/// a.release().unwrap();
/// a.release().unwrap(); // error: use of moved value
/// ```
pub struct Allocation {
    context: Context,
    id: ResourceId,
    // This process's number for the handle, which the context knows its write mapping by.
    handle: u64,
    // `Some` while a handle of host memory is live: it is unmapped as it is given up.
    mapping: Option<Mapping>,
    // The descriptor (and, once asked for, the mapping) of device memory.
    device: Option<DeviceHandle>,
    kind: MemoryKind,
    size: usize,
    typed: Option<TypedShape>,
    access: Access,
    event: Option<EventHandle>,
    // False once released or freed (only `Drop` then sees the handle).
    live: bool,
    // Unmapped rather than parked as it is given up (see `Allocation::unmap_on_release`).
    unmap_on_release: bool,
    // Streams with copies of this handle's memory queued, and the host registration made
    // for them (see gpucopy.rs).
    pub(crate) gpu: Mutex<crate::gpucopy::GpuUse>,
}

impl fmt::Debug for Allocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Allocation")
            .field("id", &self.id)
            .field("size", &self.size)
            .field("typed", &self.typed)
            .field("access", &self.access)
            .finish()
    }
}

impl Allocation {
    pub(crate) fn mapping(&self) -> Result<&Mapping, ContextError> {
        self.mapping
            .as_ref()
            .ok_or(ContextError::NotHostMemory { kind: self.kind })
    }

    /// Where the memory lives.
    pub fn kind(&self) -> MemoryKind {
        self.kind
    }

    /// Maps device memory on its device through `driver` (once; later calls return the
    /// same mapping) and returns its device pointer, device and size. Read-only handles
    /// ask the driver for a read-only mapping (where it cannot enforce one,
    /// [`DeviceView::read_only_enforced`] says so). The mapping goes when the handle is
    /// released: the pointer must not be used after.
    ///
    /// # Errors
    /// [`ContextError::NotDeviceMemory`] for host memory; [`ContextError::Device`] when
    /// the driver cannot import or map it.
    pub fn map_device(&self, driver: &cuda_streams::Driver) -> Result<DeviceView, ContextError> {
        let MemoryKind::Cuda { device } = self.kind else {
            return Err(ContextError::NotDeviceMemory);
        };
        self.map_device_on(driver, device)
    }

    /// [`Allocation::map_device`] for device `on_device` of the host: the memory's own
    /// device, or another GPU that has peer access to it (mapped through the driver's
    /// peer access; once per device, the same mapping after). The memory is imported once
    /// for all the devices it is mapped on.
    ///
    /// # Errors
    /// As [`Allocation::map_device`]; a device without peer access to the memory's
    /// device gives [`ContextError::Device`] naming both (the driver's `NoPeerAccess`).
    pub fn map_device_on(
        &self,
        driver: &cuda_streams::Driver,
        on_device: i32,
    ) -> Result<DeviceView, ContextError> {
        self.with_device_mapping(driver, on_device, |mapping| DeviceView {
            device_ptr: mapping.device_ptr(),
            device: mapping.device(),
            size: self.size,
            read_only: self.access == Access::ReadOnly,
            read_only_enforced: mapping.read_only_enforced(),
        })
    }

    /// Runs `f` on this handle's mapping of its device memory on `on_device`, made first
    /// if needed.
    pub(crate) fn with_device_mapping<R>(
        &self,
        driver: &cuda_streams::Driver,
        on_device: i32,
        f: impl FnOnce(&cuda_streams::DeviceMapping) -> R,
    ) -> Result<R, ContextError> {
        let Some(device) = &self.device else {
            return Err(ContextError::NotDeviceMemory);
        };
        let MemoryKind::Cuda { device: ordinal } = self.kind else {
            return Err(ContextError::NotDeviceMemory);
        };
        let failed = |e: cuda_streams::CudaError| ContextError::Device {
            kind: self.kind,
            reason: e.to_string(),
        };
        let mut maps = device.mapped.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mapping) = maps.on.iter().find(|m| m.device() == on_device) {
            return Ok(f(mapping));
        }
        if maps.memory.is_none() {
            maps.memory = Some(
                cuda_streams::DeviceMemory::import(
                    driver,
                    std::os::fd::AsFd::as_fd(&device.fd),
                    ordinal,
                    device.bytes,
                )
                .map_err(failed)?,
            );
        }
        let access = match self.access {
            Access::ReadOnly => cuda_streams::DeviceAccess::ReadOnly,
            Access::ReadWrite => cuda_streams::DeviceAccess::ReadWrite,
        };
        let memory = maps.memory.as_ref().expect("imported above");
        let mapping = memory.map(on_device, access).map_err(failed)?;
        let out = f(&mapping);
        maps.on.push(mapping);
        Ok(out)
    }

    /// The resource this handle refers to.
    pub fn id(&self) -> ResourceId {
        self.id
    }

    /// Size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// How this handle may touch the memory.
    pub fn access(&self) -> Access {
        self.access
    }

    /// Whether the memory comes from the hugetlb pool: what a create with
    /// [`CreateOptions::hugetlb`] got (ordinary memory where the pool could not hold it).
    pub fn is_hugetlb(&self) -> bool {
        self.mapping.as_ref().is_some_and(Mapping::is_hugetlb)
    }

    /// Local type and dimensions, if set.
    pub fn typed_shape(&self) -> Option<&TypedShape> {
        self.typed.as_ref()
    }

    /// Local element type, if set.
    pub fn element_type(&self) -> Option<ElementType> {
        self.typed.as_ref().map(|t| t.element_type)
    }

    /// Local dimensions, if set.
    pub fn dimensions(&self) -> Option<&[usize]> {
        self.typed.as_ref().map(|t| t.shape.dims())
    }

    /// Sets this handle's local type and dimensions. Fails, changing nothing, when they
    /// need more bytes than the allocation has or are malformed. Publications made before
    /// keep the metadata they were published with.
    pub fn set_type_and_dimensions(
        &mut self,
        element_type: ElementType,
        dims: &[usize],
    ) -> Result<(), ContextError> {
        let typed = TypedShape::new(element_type, Shape::new(dims.to_vec())?)?;
        let needed = typed.byte_size();
        if needed > self.size {
            return Err(ContextError::MetadataTooLarge {
                needed,
                size: self.size,
            });
        }
        self.typed = Some(typed);
        Ok(())
    }

    /// Publishes the resource under `name` with a copy of this handle's current metadata.
    /// The handle stays valid and must still be released.
    ///
    /// A name is published once (Clara): a taken or freed name is refused. Publication
    /// names are Clara's characters plus `.`, `/` and `:`
    /// ([`fastio_meta::validate_publication_name`]).
    pub fn publish(&self, name: &str) -> Result<(), ContextError> {
        self.publish_inner(name, None, false)
    }

    /// [`Allocation::publish`], replacing whatever publication (or freed name) has `name`,
    /// in one step: a `get` sees the old resource or this one, never no publication.
    /// Handles already got from the old publication stay valid; its memory goes when
    /// nothing else keeps it. The deliberate way to publish a name again (a notebook
    /// cell run twice, a result recomputed). Replacing another client's publication needs
    /// its memory held read-write
    /// ([`RequestError::NotPublisher`](crate::RequestError::NotPublisher) otherwise).
    pub fn publish_replacing(&self, name: &str) -> Result<(), ContextError> {
        self.publish_inner(name, None, true)
    }

    /// [`Allocation::publish`], with an interprocess CUDA event that the producer recorded
    /// on the stream that wrote the data: a consumer's `get` receives it (see
    /// [`Allocation::event`]) and makes its own stream wait on it, so GPU work is ordered
    /// across processes without blocking a host thread.
    pub fn publish_with_event(&self, name: &str, event: EventHandle) -> Result<(), ContextError> {
        self.publish_inner(name, Some(event), false)
    }

    fn publish_inner(
        &self,
        name: &str,
        event: Option<EventHandle>,
        replace: bool,
    ) -> Result<(), ContextError> {
        self.context
            .call(Request::Publish {
                id: self.id,
                name: name.to_owned(),
                typed: self.typed.clone(),
                event,
                replace,
            })
            .map(drop)
    }

    /// The interprocess CUDA event the publication this handle was got from carries, if any.
    pub fn event(&self) -> Option<EventHandle> {
        self.event
    }

    /// Takes the resource's write mapping for this handle (Clara's writer exclusivity:
    /// a second writer fails to map): fails with
    /// [`WriteError::WriterBusy`](crate::WriteError::WriterBusy) while another handle,
    /// in this process or any other of the context, holds it. Readers are not excluded
    /// (dirty reads are allowed, as in Clara). Counted: a handle may take it more than
    /// once. Given back by [`Allocation::release_write`], or when this handle is
    /// released, freed or dropped, or its process's connection closes (even by SIGKILL).
    /// Advisory: it orders cooperating writers; the memory itself stays writable through
    /// this handle.
    pub fn acquire_write(&self) -> Result<(), ContextError> {
        if self.access == Access::ReadOnly {
            return Err(ContextError::ReadOnly);
        }
        self.context
            .call(Request::AcquireWrite {
                id: self.id,
                handle: self.handle,
            })
            .map(drop)
    }

    /// Gives back one [`Allocation::acquire_write`] of this handle.
    pub fn release_write(&self) -> Result<(), ContextError> {
        self.context
            .call(Request::ReleaseWrite {
                id: self.id,
                handle: self.handle,
            })
            .map(drop)
    }

    /// Drops this handle. The memory stays for other handles and for its publications.
    pub fn release(mut self) -> Result<(), ContextError> {
        self.give_up(false)
    }

    /// Marks the resource deleted, so that later gets of any of its names fail, and drops
    /// this handle. Other handles and their mappings stay valid until released. A client
    /// that only reads the resource (every handle it got was read-only, and it did not
    /// publish it) is refused: freeing would take it from the others.
    pub fn free(mut self) -> Result<(), ContextError> {
        self.give_up(true)
    }

    fn give_up(&mut self, free: bool) -> Result<(), ContextError> {
        if !std::mem::replace(&mut self.live, false) {
            return Ok(());
        }
        // Copies queued on streams must be done before the memory may go, and a host
        // mapping is unregistered from CUDA before it is parked (a registration pins its
        // pages and must not outlive its access).
        self.finish_gpu_use();
        // Park (make inaccessible) before telling the context, so that a recycled segment
        // is never reachable through this handle's pointers while someone else is handed
        // it; the parked mapping is kept for the next time this process gets the segment.
        if let Some(mapping) = self.mapping.take()
            && !self.unmap_on_release
        {
            crate::mapcache::park(mapping);
        }
        // A device mapping goes with the handle, before the context may pool the memory.
        drop(self.device.take());
        let (id, handle) = (self.id, self.handle);
        let request = if free {
            Request::Free { id, handle }
        } else {
            Request::Release { id, handle }
        };
        self.context.call(request).map(drop)
    }

    /// Unmaps this handle's mapping when it is given up instead of keeping it parked for the
    /// next handle to the same memory: for memory this process will not be handed again,
    /// whose pages a parked mapping would keep alive after the context has let them go
    /// (FastIO entry memory: sealed at the end of its producer's execute, so the context
    /// cannot punch it, and freed once its readers are done, for later entries to reuse).
    pub fn unmap_on_release(&mut self) {
        self.unmap_on_release = true;
    }

    /// Makes this handle's mapping read-only in place: pointers and views taken before keep
    /// reading the same memory, and a write through them faults. (A FastIO output at the
    /// end of its producer's execute.)
    pub fn make_read_only(&mut self) -> Result<(), ContextError> {
        if let Some(mapping) = &mut self.mapping {
            mapping.unpark(Access::ReadOnly)?;
        }
        self.access = Access::ReadOnly;
        Ok(())
    }

    /// Start of the memory in this process. Other processes may be writing to it. Null
    /// for device memory, which has no host address (see [`Allocation::map_device`]).
    pub fn as_ptr(&self) -> *const u8 {
        self.mapping().map_or(std::ptr::null(), Mapping::as_ptr)
    }

    /// Start of the memory for writing, or [`ContextError::ReadOnly`] (or
    /// [`ContextError::NotHostMemory`] for device memory).
    pub fn as_mut_ptr(&mut self) -> Result<*mut u8, ContextError> {
        self.mapping()?
            .as_mut_ptr()
            .map_err(|_| ContextError::ReadOnly)
    }

    /// Copies `len` bytes starting at `offset` out of the allocation.
    pub fn read_bytes(&self, offset: usize, len: usize) -> Result<Vec<u8>, ContextError> {
        let mut out = vec![0u8; len];
        self.check_range(offset, len)?;
        self.mapping()?.read_at(offset, &mut out)?;
        Ok(out)
    }

    /// Copies `data` into the allocation at `offset`.
    pub fn write_bytes(&mut self, offset: usize, data: &[u8]) -> Result<(), ContextError> {
        if self.access == Access::ReadOnly {
            return Err(ContextError::ReadOnly);
        }
        self.check_range(offset, data.len())?;
        self.mapping()?.write_at(offset, data)?;
        Ok(())
    }

    fn check_range(&self, offset: usize, len: usize) -> Result<(), ContextError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(fastio_shm::SegmentError::OutOfBounds {
                offset,
                len,
                size: self.size,
            }
            .into()),
        }
    }

    fn typed_as<T: Element>(&self) -> Result<&TypedShape, ContextError> {
        let typed = self.typed.as_ref().ok_or(ContextError::Untyped)?;
        if typed.element_type != T::TYPE {
            return Err(ContextError::WrongElementType {
                requested: T::TYPE,
                actual: typed.element_type,
            });
        }
        Ok(typed)
    }

    /// Copies the typed contents out (the element type must be `T`).
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>, ContextError> {
        let count = self.typed_as::<T>()?.shape.element_count()?;
        let mut out = vec![T::zeroed(); count];
        self.mapping()?
            .read_at(0, fastio_meta::as_bytes_mut(&mut out))?;
        Ok(out)
    }

    /// Copies `data` in as the typed contents (the element type must be `T` and the
    /// lengths must match).
    pub fn copy_from_slice<T: Element>(&mut self, data: &[T]) -> Result<(), ContextError> {
        let count = self.typed_as::<T>()?.shape.element_count()?;
        if count != data.len() {
            return Err(ContextError::LengthMismatch {
                expected: count * T::TYPE.size(),
                actual: std::mem::size_of_val(data),
            });
        }
        self.write_bytes(0, fastio_meta::as_bytes(data))
    }

    /// A zero-copy typed view of the memory, shaped by the local metadata.
    ///
    /// # Safety
    /// No process may write to the allocation while the view lives (for example: the
    /// producer published it and has finished writing). Shared memory written under a
    /// live `&T` is undefined behaviour.
    #[allow(unsafe_code)]
    pub unsafe fn view<T: Element>(&self) -> Result<ndarray::ArrayViewD<'_, T>, ContextError> {
        let typed = self.typed_as::<T>()?;
        // SAFETY: forwarded to the caller; the mapping is page-aligned and holds at least
        // the typed shape's bytes (checked by set_type_and_dimensions / the publication).
        Ok(unsafe { crate::sys::view(self.mapping()?.as_ptr().cast(), typed.shape.dims()) })
    }

    /// A zero-copy writable typed view, shaped by the local metadata.
    ///
    /// # Safety
    /// No other process may read or write the allocation while the view lives.
    #[allow(unsafe_code)]
    pub unsafe fn view_mut<T: Element>(
        &mut self,
    ) -> Result<ndarray::ArrayViewMutD<'_, T>, ContextError> {
        let dims = self.typed_as::<T>()?.shape.dims().to_vec();
        let ptr = self.as_mut_ptr()?;
        // SAFETY: as in `view`, plus the mapping is writable (checked by `as_mut_ptr`).
        Ok(unsafe { crate::sys::view_mut(ptr.cast(), &dims) })
    }
}

/// A number for a new handle, unique in this process (so within each of its connections):
/// the context knows which handle holds a write mapping by it. Never 0, which on the wire
/// means "not said".
fn next_handle() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The descriptor of a device allocation a handle holds, and its mapping once made.
struct DeviceHandle {
    fd: std::os::fd::OwnedFd,
    // The allocation's size, as the exporter made it.
    bytes: usize,
    mapped: Mutex<DeviceMaps>,
}

/// A device handle's import (made once) and its mappings, one per device it is mapped on.
#[derive(Default)]
struct DeviceMaps {
    memory: Option<cuda_streams::DeviceMemory>,
    on: Vec<cuda_streams::DeviceMapping>,
}

impl fmt::Debug for DeviceHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeviceHandle")
    }
}

/// Device memory as one process sees it ([`Allocation::map_device`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceView {
    /// The device pointer (`CUdeviceptr`) of the first byte.
    pub device_ptr: u64,
    /// The device it is mapped for.
    pub device: i32,
    /// Usable bytes.
    pub size: usize,
    /// The handle is read-only.
    pub read_only: bool,
    /// The driver enforces read-only access (not every driver takes the flag).
    pub read_only_enforced: bool,
}

impl Drop for Allocation {
    fn drop(&mut self) {
        if let Err(e) = self.give_up(false) {
            tracing::debug!("releasing {} on drop failed: {e}", self.id);
        }
    }
}
