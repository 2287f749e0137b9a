//! Fast I/O allocations: `nvidia_clara_fastio__*`.

use std::ffi::{c_char, c_void};
use std::sync::{Arc, LazyLock};

use fastio_context::{Access, AccessMode, Allocation, Context, CreateOptions};
use fastio_meta::ElementType;

use crate::context::CONTEXTS;
use crate::error::{Error, guard};
use crate::handles::{Table, lock};
use crate::ptr::{non_null, slice_arg, str_arg, write_out, write_slice};
use crate::types::*;

/// What C's `nvidia_clara_fastio_alloc*` stands for.
pub(crate) struct AllocState {
    // `None` once released or freed (seen only by a thread that raced the release).
    allocation: Option<Allocation>,
    // The context handle it came from.
    context: u64,
    // How the handle is mapped now, if it is.
    mapped: Option<Access>,
}

/// The live allocation handles.
static ALLOCS: LazyLock<Table<AllocState>> =
    LazyLock::new(|| Table::new("nvidia_clara_fastio_alloc"));

fn context_of(context: *const nvidia_clara_fastio_context) -> Result<(Context, u64), Error> {
    let (entry, token) = CONTEXTS.get(context)?;
    let context = lock(&entry).context.clone();
    Ok((context, token))
}

fn hand_out(
    allocation: Allocation,
    context: u64,
    alloc_out: *mut *mut nvidia_clara_fastio_alloc,
) -> Result<(), Error> {
    let (handle, _) = ALLOCS.insert(AllocState {
        allocation: Some(allocation),
        context,
        mapped: None,
    });
    // SAFETY: `alloc_out` was checked non-NULL before the allocation was made and is
    // writable by the C caller's contract.
    unsafe { write_out(alloc_out, handle, "alloc_out") }
}

/// A live handle, as the body of a function sees it.
pub(crate) struct Live<'a> {
    pub(crate) allocation: &'a mut Allocation,
    mapped: &'a mut Option<Access>,
    context: u64,
}

/// Runs `f` on the live allocation behind `alloc`, holding its lock.
pub(crate) fn with_alloc<R>(
    alloc: *const nvidia_clara_fastio_alloc,
    f: impl FnOnce(Live<'_>) -> Result<R, Error>,
) -> Result<R, Error> {
    let (entry, _) = ALLOCS.get(alloc)?;
    let mut state = lock(&entry);
    let AllocState {
        allocation,
        context,
        mapped,
    } = &mut *state;
    // A release on another thread may have won the race for this handle.
    let allocation = allocation
        .as_mut()
        .ok_or_else(|| Error::new(NVIDIA_CLARA_RESULT_INVALID_HANDLE, "`alloc` was released"))?;
    f(Live {
        allocation,
        mapped,
        context: *context,
    })
}

/// Runs `f` on the live allocations behind two distinct handles, holding both locks (taken
/// in address order, so two threads passing the same pair in either order cannot deadlock).
pub(crate) fn with_two_allocs<R>(
    (a, a_name): (*const nvidia_clara_fastio_alloc, &str),
    (b, b_name): (*const nvidia_clara_fastio_alloc, &str),
    f: impl FnOnce(&Allocation, &Allocation) -> Result<R, Error>,
) -> Result<R, Error> {
    let (first, a_token) = ALLOCS.get(a)?;
    let (second, b_token) = ALLOCS.get(b)?;
    if a_token == b_token {
        return Err(Error::invalid(format!(
            "`{a_name}` and `{b_name}` are the same handle"
        )));
    }
    let a_first = Arc::as_ptr(&first) < Arc::as_ptr(&second);
    let (mut one, mut two) = if a_first {
        let one = lock(&first);
        (one, lock(&second))
    } else {
        let two = lock(&second);
        (lock(&first), two)
    };
    let released = |name: &str| {
        Error::new(
            NVIDIA_CLARA_RESULT_INVALID_HANDLE,
            format!("`{name}` was released"),
        )
    };
    // A release on another thread may have won the race for either handle.
    let a_live = one.allocation.as_mut().ok_or_else(|| released(a_name))?;
    let b_live = two.allocation.as_mut().ok_or_else(|| released(b_name))?;
    f(a_live, b_live)
}

fn access_arg(access: nvidia_clara_fastio_access) -> Result<AccessMode, Error> {
    match access {
        NVIDIA_CLARA_FASTIO_ACCESS_READ_ONLY => Ok(AccessMode::ReadOnly),
        NVIDIA_CLARA_FASTIO_ACCESS_READ_WRITE => Ok(AccessMode::ReadWrite),
        other => Err(Error::invalid(format!(
            "`access` is {other}; expected NVIDIA_CLARA_FASTIO_ACCESS_READ_ONLY (0) or \
             NVIDIA_CLARA_FASTIO_ACCESS_READ_WRITE (1)"
        ))),
    }
}

fn access_code(access: Access) -> nvidia_clara_fastio_access {
    match access {
        Access::ReadOnly => NVIDIA_CLARA_FASTIO_ACCESS_READ_ONLY,
        Access::ReadWrite => NVIDIA_CLARA_FASTIO_ACCESS_READ_WRITE,
    }
}

/// Allocates a Fast I/O memory resource of `size` bytes, zeroed, and returns a handle to
/// it in `*alloc_out`. Only this handle reaches it until it is published. Release or free
/// the handle before returning from the execute callback. [Clara: Fast I/O Context]
///
/// A size of 0 is valid: the memory of an empty array (type it with a 0 dimension).
/// Fails (`*alloc_out` unchanged) for a size the machine cannot hold.
///
/// # Safety
/// `alloc_out` is NULL or valid for writing one pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvidia_clara_fastio__create(
    context: *mut nvidia_clara_fastio_context,
    size: usize,
    alloc_out: *mut *mut nvidia_clara_fastio_alloc,
) -> result {
    guard("nvidia_clara_fastio__create", || {
        non_null(alloc_out, "alloc_out")?;
        let (context, token) = context_of(context)?;
        hand_out(context.create(size)?, token, alloc_out)
    })
}

/// nvidia_clara_fastio__create with options: `flags` is 0 or an OR of the
/// `NVIDIA_CLARA_FASTIO_CREATE_*` bits (an unknown bit fails with
/// NVIDIA_CLARA_RESULT_INVALID_ARGUMENT). With NVIDIA_CLARA_FASTIO_CREATE_HUGETLB the
/// memory comes from the machine's hugetlb pool where the pool can hold it, and is
/// ordinary shared memory otherwise: the create succeeds either way and
/// nvidia_clara_fastio__is_hugetlb says which. [fastio extension]
///
/// # Safety
/// `alloc_out` is NULL or valid for writing one pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvidia_clara_fastio__create_with_flags(
    context: *mut nvidia_clara_fastio_context,
    size: usize,
    flags: nvidia_clara_fastio_create_flags,
    alloc_out: *mut *mut nvidia_clara_fastio_alloc,
) -> result {
    guard("nvidia_clara_fastio__create_with_flags", || {
        non_null(alloc_out, "alloc_out")?;
        let unknown = flags & !NVIDIA_CLARA_FASTIO_CREATE_HUGETLB;
        if unknown != 0 {
            return Err(Error::invalid(format!(
                "`flags` has unknown bits {unknown:#x}; known: NVIDIA_CLARA_FASTIO_CREATE_HUGETLB (1)"
            )));
        }
        let (context, token) = context_of(context)?;
        let options = CreateOptions {
            hugetlb: flags & NVIDIA_CLARA_FASTIO_CREATE_HUGETLB != 0,
            ..CreateOptions::default()
        };
        hand_out(context.create_with(size, options)?, token, alloc_out)
    })
}

/// Allocates `size` bytes of memory on CUDA device `device` (a CUDA VMM allocation the
/// context makes, or takes from that device's warm pool: its bytes are not zeroed) and
/// returns a handle to it in `*alloc_out`, as nvidia_clara_fastio__create does for host
/// memory. It has no host address: `nvidia_clara_fastio__device_pointer` gives its device
/// pointer, and `nvidia_clara_fastio__copy_to_device` / `__copy_from_device` copy between
/// it and host allocations. Fails (`*alloc_out` unchanged) with NVIDIA_CLARA_RESULT_FAILED
/// and a message where the context has no CUDA driver, no such device, or the device is
/// full. [fastio extension]
///
/// # Safety
/// `alloc_out` is NULL or valid for writing one pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvidia_clara_fastio__create_on_device(
    context: *mut nvidia_clara_fastio_context,
    size: usize,
    device: i32,
    alloc_out: *mut *mut nvidia_clara_fastio_alloc,
) -> result {
    guard("nvidia_clara_fastio__create_on_device", || {
        non_null(alloc_out, "alloc_out")?;
        let (context, token) = context_of(context)?;
        let memory = fastio_context::MemoryKind::Cuda { device };
        hand_out(context.create_in(memory, size)?, token, alloc_out)
    })
}

/// Writes 1 to `*hugetlb_out` when the allocation's memory comes from the machine's
/// hugetlb pool, 0 otherwise. [fastio extension]
///
/// # Safety
/// `hugetlb_out` is NULL or valid for one write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvidia_clara_fastio__is_hugetlb(
    alloc: *mut nvidia_clara_fastio_alloc,
    hugetlb_out: *mut i32,
) -> result {
    guard("nvidia_clara_fastio__is_hugetlb", || {
        non_null(hugetlb_out, "hugetlb_out")?;
        let hugetlb = with_alloc(alloc, |live| Ok(live.allocation.is_hugetlb()))?;
        // SAFETY: checked non-NULL; writable by the C caller's contract.
        unsafe { write_out(hugetlb_out, i32::from(hugetlb), "hugetlb_out") }
    })
}

/// Publishes the allocation under `name` (1 to 255 characters of `A-Z a-z 0-9 - _`, and
/// as a fastio extension `.`, `/` and `:`, with `/` only between non-empty parts other
/// than `.` and `..`) with a copy of the handle's current type and dimensions. A name is
/// published once per context; publishing it again fails (see
/// nvidia_clara_fastio__publish_replace and nvidia_clara_fastio__unpublish). The handle
/// stays valid and must still be released. [Clara: Fast I/O Context]
///
/// # Safety
/// `name` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvidia_clara_fastio__publish(
    context: *mut nvidia_clara_fastio_context,
    alloc: *mut nvidia_clara_fastio_alloc,
    name: *const c_char,
) -> result {
    guard("nvidia_clara_fastio__publish", || {
        // SAFETY: forwarded: the same contract as this function's.
        unsafe { publish(context, alloc, name, Publish::Once) }
    })
}

/// Publishes the allocation under `name` as nvidia_clara_fastio__publish does, but
/// replaces the publication (or freed name) that already has `name` instead of failing,
/// in one step: a get sees the old allocation or this one. Handles already got from the
/// old publication stay valid; its memory goes when nothing else keeps it. [fastio
/// extension]
///
/// # Safety
/// `name` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvidia_clara_fastio__publish_replace(
    context: *mut nvidia_clara_fastio_context,
    alloc: *mut nvidia_clara_fastio_alloc,
    name: *const c_char,
) -> result {
    guard("nvidia_clara_fastio__publish_replace", || {
        // SAFETY: forwarded: the same contract as this function's.
        unsafe { publish(context, alloc, name, Publish::Replacing) }
    })
}

/// Whether a publish may replace a publication that has the name.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Publish {
    Once,
    Replacing,
}

/// The body of both publish functions.
///
/// # Safety
/// `name` is NULL or a NUL-terminated string.
unsafe fn publish(
    context: *mut nvidia_clara_fastio_context,
    alloc: *mut nvidia_clara_fastio_alloc,
    name: *const c_char,
    how: Publish,
) -> Result<(), Error> {
    // SAFETY: NULL or NUL-terminated by the C caller's contract.
    let name = unsafe { str_arg(name, "name") }?;
    let (_, context_token) = context_of(context)?;
    with_alloc(alloc, |live| {
        if live.context != context_token {
            return Err(Error::invalid(
                "`alloc` belongs to another context than `context`",
            ));
        }
        Ok(match how {
            Publish::Once => live.allocation.publish(name),
            Publish::Replacing => live.allocation.publish_replacing(name),
        }?)
    })
}

/// Withdraws the name `name` from the context, whether it names a live publication or
/// one whose allocation was freed, so that it can be published again. Handles already
/// got stay valid; the memory goes when nothing else keeps it. Fails when no publication
/// has that name. [fastio extension]
///
/// # Safety
/// `name` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvidia_clara_fastio__unpublish(
    context: *mut nvidia_clara_fastio_context,
    name: *const c_char,
) -> result {
    guard("nvidia_clara_fastio__unpublish", || {
        // SAFETY: NULL or NUL-terminated by the C caller's contract.
        let name = unsafe { str_arg(name, "name") }?;
        let (context, _) = context_of(context)?;
        Ok(context.unpublish(name)?)
    })
}

/// A new read-write handle, in `*alloc_out`, to the allocation published as `name`, with
/// a copy of the published type and dimensions. Fails (`*alloc_out` unchanged) when no
/// publication has that name or its resource was freed. [Clara: Fast I/O Context]
///
/// # Safety
/// `name` is NULL or a NUL-terminated string; `alloc_out` is NULL or valid for writing
/// one pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvidia_clara_fastio__get(
    context: *mut nvidia_clara_fastio_context,
    name: *const c_char,
    alloc_out: *mut *mut nvidia_clara_fastio_alloc,
) -> result {
    guard("nvidia_clara_fastio__get", || {
        // SAFETY: forwarded: the same contract as this function's.
        unsafe { get(context, name, AccessMode::ReadWrite, alloc_out) }
    })
}

/// As `nvidia_clara_fastio__get`, with the handle's access chosen. A read-only handle's
/// memory is mapped read-only by the kernel: a write through it faults, and mapping it
/// for writing fails. fastio extension.
///
/// # Safety
/// `name` is NULL or a NUL-terminated string; `alloc_out` is NULL or valid for writing
/// one pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvidia_clara_fastio__get_with_access(
    context: *mut nvidia_clara_fastio_context,
    name: *const c_char,
    access: nvidia_clara_fastio_access,
    alloc_out: *mut *mut nvidia_clara_fastio_alloc,
) -> result {
    guard("nvidia_clara_fastio__get_with_access", || {
        let access = access_arg(access)?;
        // SAFETY: forwarded: the same contract as this function's.
        unsafe { get(context, name, access, alloc_out) }
    })
}

/// # Safety
/// As `nvidia_clara_fastio__get`.
unsafe fn get(
    context: *mut nvidia_clara_fastio_context,
    name: *const c_char,
    access: AccessMode,
    alloc_out: *mut *mut nvidia_clara_fastio_alloc,
) -> Result<(), Error> {
    non_null(alloc_out, "alloc_out")?;
    // SAFETY: NULL or NUL-terminated by the C caller's contract.
    let name = unsafe { str_arg(name, "name") }?;
    let (context, token) = context_of(context)?;
    hand_out(context.get_with(name, access)?, token, alloc_out)
}

/// Takes every allocation handle obtained through context handle `context` out of the
/// table (they become invalid for C) and returns their allocations, to be dropped by the
/// caller when it is right to.
pub(crate) fn retire_context_allocations(context: u64) -> Vec<Allocation> {
    ALLOCS
        .remove_where(|state| state.context == context)
        .into_iter()
        .filter_map(|entry| {
            // Its write mapping, if any, goes with the handle (the context's rule).
            let mut state = lock(&entry);
            state.mapped = None;
            state.allocation.take()
        })
        .collect()
}

fn give_up(alloc: *mut nvidia_clara_fastio_alloc, free: bool) -> Result<(), Error> {
    let (entry, _) = ALLOCS.remove(alloc)?;
    let mut state = lock(&entry);
    let Some(allocation) = state.allocation.take() else {
        return Err(Error::new(
            NVIDIA_CLARA_RESULT_INVALID_HANDLE,
            "`alloc` was released",
        ));
    };
    // The context gives up the handle's write mapping, if it has one, with the handle.
    state.mapped = None;
    if free {
        allocation.free()?;
    } else {
        allocation.release()?;
    }
    Ok(())
}

/// Releases the handle: its mapping goes, and the memory stays for other handles and for
/// publications. The handle is invalid afterwards, even if the context reports an error;
/// releasing it again fails with NVIDIA_CLARA_RESULT_INVALID_HANDLE. [Clara: Fast I/O Context]
#[unsafe(no_mangle)]
pub extern "C" fn nvidia_clara_fastio__release(alloc: *mut nvidia_clara_fastio_alloc) -> result {
    guard("nvidia_clara_fastio__release", || give_up(alloc, false))
}

/// Marks the resource deleted, so that later gets of any of its names fail, and releases
/// the handle. Other handles, in this process or others, and their mappings stay valid
/// until they are released. [Clara: Fast I/O Context]
#[unsafe(no_mangle)]
pub extern "C" fn nvidia_clara_fastio__free(alloc: *mut nvidia_clara_fastio_alloc) -> result {
    guard("nvidia_clara_fastio__free", || give_up(alloc, true))
}

/// Sets the handle's local element type and dimensions (`dimension_count` values, 1 to
/// NVIDIA_CLARA_FASTIO_MAX_DIMENSIONS, each 0 or more: a 0 makes an empty array). Fails,
/// changing nothing, for an unknown type, a bad count, an overflowing product, or metadata that
/// needs more bytes than the allocation has. Publications made before keep their
/// metadata. [Clara: Fast I/O Context; signature inferred]
///
/// # Safety
/// `dimensions` is NULL or valid for reading `dimension_count` values.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvidia_clara_fastio__set_type_and_dimensions(
    alloc: *mut nvidia_clara_fastio_alloc,
    element_type: nvidia_clara_element_type,
    dimensions: *const usize,
    dimension_count: usize,
) -> result {
    guard("nvidia_clara_fastio__set_type_and_dimensions", || {
        let element_type = u32::try_from(element_type)
            .ok()
            .and_then(|code| ElementType::from_code(code).ok())
            .ok_or_else(|| {
                Error::invalid(format!(
                    "`element_type` is {element_type}; expected an NVIDIA_CLARA_ELEMENT_TYPE_* \
                     value from 0 (UINT8) to 10 (FLOAT64)"
                ))
            })?;
        if dimension_count == 0 || dimension_count > NVIDIA_CLARA_FASTIO_MAX_DIMENSIONS {
            return Err(Error::invalid(format!(
                "`dimension_count` is {dimension_count}; expected 1 to \
                 {NVIDIA_CLARA_FASTIO_MAX_DIMENSIONS}"
            )));
        }
        // SAFETY: NULL or readable for `dimension_count` values by the C caller's contract.
        let dims = unsafe { slice_arg(dimensions, dimension_count, "dimensions") }?;
        with_alloc(alloc, |live| {
            Ok(live
                .allocation
                .set_type_and_dimensions(element_type, &dims)?)
        })
    })
}

/// Reads the handle's local element type and dimensions. `*dimension_count_out` is always
/// set to the number of dimensions when the handle is typed; if `dimensions_out` is NULL
/// or holds fewer than that many values (`capacity`), the call fails with
/// NVIDIA_CLARA_RESULT_BUFFER_TOO_SMALL (query the count with NULL, 0). Fails with
/// NVIDIA_CLARA_RESULT_NOT_FOUND when no type and dimensions were set or published.
/// `element_type_out` may be NULL. [inferred; name chosen by fastio]
///
/// # Safety
/// `element_type_out` and `dimension_count_out` are NULL or valid for one write;
/// `dimensions_out` is NULL or valid for `capacity` writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvidia_clara_fastio__get_type_and_dimensions(
    alloc: *mut nvidia_clara_fastio_alloc,
    element_type_out: *mut nvidia_clara_element_type,
    dimensions_out: *mut usize,
    capacity: usize,
    dimension_count_out: *mut usize,
) -> result {
    guard("nvidia_clara_fastio__get_type_and_dimensions", || {
        non_null(dimension_count_out, "dimension_count_out")?;
        let typed = with_alloc(alloc, |live| {
            live.allocation.typed_shape().cloned().ok_or_else(|| {
                Error::new(
                    NVIDIA_CLARA_RESULT_NOT_FOUND,
                    "the allocation has no type and dimensions; set them with \
                     nvidia_clara_fastio__set_type_and_dimensions",
                )
            })
        })?;
        let dims = typed.shape.dims();
        // SAFETY: checked non-NULL above; writable by the C caller's contract.
        unsafe { write_out(dimension_count_out, dims.len(), "dimension_count_out") }?;
        if dimensions_out.is_null() {
            return Err(Error::new(
                NVIDIA_CLARA_RESULT_BUFFER_TOO_SMALL,
                format!(
                    "`dimensions_out` is NULL; {} values are needed (written to \
                     `dimension_count_out`)",
                    dims.len()
                ),
            ));
        }
        // SAFETY: writable for `capacity` values by the C caller's contract.
        unsafe { write_slice(dimensions_out, capacity, dims, "dimensions_out") }?;
        if !element_type_out.is_null() {
            let code = typed.element_type.code() as nvidia_clara_element_type;
            // SAFETY: not NULL; writable by the C caller's contract.
            unsafe { write_out(element_type_out, code, "element_type_out") }?;
        }
        Ok(())
    })
}

/// Writes the allocation's size in bytes to `*size_out`. [inferred; name chosen by fastio]
///
/// # Safety
/// `size_out` is NULL or valid for one write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvidia_clara_fastio__size(
    alloc: *mut nvidia_clara_fastio_alloc,
    size_out: *mut usize,
) -> result {
    guard("nvidia_clara_fastio__size", || {
        non_null(size_out, "size_out")?;
        let size = with_alloc(alloc, |live| Ok(live.allocation.size()))?;
        // SAFETY: checked non-NULL; writable by the C caller's contract.
        unsafe { write_out(size_out, size, "size_out") }
    })
}

/// Writes the handle's access to `*access_out`: READ_WRITE for handles from `create` and
/// `get`, READ_ONLY for read-only gets. fastio extension.
///
/// # Safety
/// `access_out` is NULL or valid for one write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvidia_clara_fastio__access(
    alloc: *mut nvidia_clara_fastio_alloc,
    access_out: *mut nvidia_clara_fastio_access,
) -> result {
    guard("nvidia_clara_fastio__access", || {
        non_null(access_out, "access_out")?;
        let access = with_alloc(alloc, |live| Ok(live.allocation.access()))?;
        // SAFETY: checked non-NULL; writable by the C caller's contract.
        unsafe { write_out(access_out, access_code(access), "access_out") }
    })
}

/// Maps the allocation and writes the address of its first byte to `*data_out`.
///
/// - READ_WRITE fails with NVIDIA_CLARA_RESULT_READ_ONLY on a read-only handle, and with
///   NVIDIA_CLARA_RESULT_BUSY while another handle holds a write mapping of the same
///   resource, in this process or in any other process of the context (Clara's writer
///   exclusivity, kept by the context server; readers and one writer may coexist: dirty
///   reads are allowed, as in Clara). A writer that exits, even by SIGKILL, lets go.
/// - A handle is mapped at most once at a time: mapping it again before
///   `nvidia_clara_fastio__unmap` fails with NVIDIA_CLARA_RESULT_BUSY.
/// - On a read-only handle the memory is mapped read-only by the kernel: a write faults.
///   On a read-write handle a READ_ONLY mapping is the same memory; not writing through it
///   is the caller's promise.
///
/// The address is valid until `unmap`, `release` or `free` of this handle.
/// [concept found in Clara's docs; signature inferred]
///
/// # Safety
/// `data_out` is NULL or valid for one write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvidia_clara_fastio__map(
    alloc: *mut nvidia_clara_fastio_alloc,
    access: nvidia_clara_fastio_access,
    data_out: *mut *mut c_void,
) -> result {
    guard("nvidia_clara_fastio__map", || {
        non_null(data_out, "data_out")?;
        let access = access_arg(access)?;
        let data = with_alloc(alloc, |live| {
            let Live {
                allocation, mapped, ..
            } = live;
            // Device memory has no host address to hand out.
            if !allocation.kind().is_host() {
                return Err(fastio_context::ContextError::NotHostMemory {
                    kind: allocation.kind(),
                }
                .into());
            }
            if let Some(mapped) = *mapped {
                return Err(Error::new(
                    NVIDIA_CLARA_RESULT_BUSY,
                    format!(
                        "the handle is already mapped ({}); unmap it first",
                        if mapped == Access::ReadWrite {
                            "read-write"
                        } else {
                            "read-only"
                        }
                    ),
                ));
            }
            match access {
                AccessMode::ReadOnly => {
                    *mapped = Some(Access::ReadOnly);
                    Ok(allocation.as_ptr().cast_mut())
                }
                AccessMode::ReadWrite => {
                    // The context's own refusal (`ContextError::ReadOnly`, READ_ONLY), so C
                    // says what Rust and Python say, and any other failure keeps its code.
                    let data = allocation.as_mut_ptr()?;
                    // One writer at a time, among this process's handles and every
                    // other process's: the context keeps it.
                    allocation.acquire_write()?;
                    *mapped = Some(Access::ReadWrite);
                    Ok(data)
                }
            }
        })?;
        // SAFETY: checked non-NULL; writable by the C caller's contract.
        unsafe { write_out(data_out, data.cast::<c_void>(), "data_out") }
    })
}

/// Ends the mapping made by `nvidia_clara_fastio__map`, giving up write exclusivity.
/// Fails if the handle is not mapped. The pages stay in the process until the handle is
/// released (a later `map` returns the same address); the caller must not use the
/// address after unmap. [concept found in Clara's docs; signature inferred]
#[unsafe(no_mangle)]
pub extern "C" fn nvidia_clara_fastio__unmap(alloc: *mut nvidia_clara_fastio_alloc) -> result {
    guard("nvidia_clara_fastio__unmap", || {
        with_alloc(alloc, |live| match live.mapped.take() {
            None => Err(Error::invalid("the handle is not mapped")),
            Some(Access::ReadWrite) => live.allocation.release_write().map_err(Error::from),
            Some(Access::ReadOnly) => Ok(()),
        })
    })
}
