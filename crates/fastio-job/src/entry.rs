//! FastIO entries (Clara's typed pipelines): the typed shared memory inputs and outputs that a pipeline
//! definition declares, as one operator sees them during execute.

use std::fmt;

use fastio_meta::{DynamicShape, Element, ElementType};

use fastio_context::protocol::{AccessMode, EntryInfo};
use fastio_context::{Allocation, Context, ContextError, EntryError, EventHandle, RequestError};

/// A FastIO entry: an output of one operator, read by the operators that name it in
/// `from`, over the same memory.
///
/// Outputs are read-write. Inputs are read-only, and enforced so: their descriptor and
/// mapping are read-only, so a write through a raw pointer faults instead of changing a
/// neighbour's input. An entry whose declared shape is fully positive was pre-allocated
/// by the driver and cannot be reshaped; a dynamic one (some dimension `-1` or `0`, or a
/// `string`) gets memory once [`FastIoEntry::update_shape`] has made every dimension
/// positive.
pub struct FastIoEntry {
    context: Context,
    info: EntryInfo,
    shape: DynamicShape,
    allocation: Option<Allocation>,
    // An output of this operator (it stays one after `finish` makes it read-only).
    output: bool,
}

impl fmt::Debug for FastIoEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FastIoEntry")
            .field("name", &self.info.name)
            .field("access", &self.info.access)
            .field("shape", &self.shape.current())
            .field("allocated", &self.allocation.is_some())
            .finish()
    }
}

impl FastIoEntry {
    /// Opens the entry described by `info` in `context`: maps its memory when it has some
    /// (pre-allocated, or allocated by an upstream operator), read-only for inputs.
    pub fn open(context: &Context, info: EntryInfo) -> Result<Self, ContextError> {
        let mut shape = DynamicShape::new(info.declared.clone())?;
        let opened = context.open_entry(info.id, info.access);
        let allocation = match opened {
            Ok(mut allocation) => {
                allocation.unmap_on_release();
                Some(allocation)
            }
            Err(ContextError::Refused(RequestError::Entry(EntryError::NotAllocated {
                ..
            }))) => None,
            Err(e) => return Err(e),
        };
        if let Some(dims) = allocation.as_ref().and_then(Allocation::dimensions) {
            // The producer fixed the dynamic dimensions: the input shows them.
            let indices = shape.dynamic_indices();
            let values: Vec<i64> = indices.iter().map(|&i| dims[i] as i64).collect();
            shape.update(&indices, &values)?;
        }
        Ok(Self {
            context: context.clone(),
            output: info.access == AccessMode::ReadWrite,
            info,
            shape,
            allocation,
        })
    }

    /// Catches up with memory that another handle of this operator gave this output (the
    /// Python and C layers open entries of their own, so that their views can outlive
    /// this one): when this handle has no memory but the entry has, this handle now holds
    /// it read-only, with its shape, so that [`FastIoEntry::set_event`] and the memory's
    /// kind reach it. Nothing changes for an input or an output with memory.
    pub fn refresh(&mut self) -> Result<(), ContextError> {
        if !self.output || self.allocation.is_some() {
            return Ok(());
        }
        let opened = self.context.open_entry(self.info.id, AccessMode::ReadOnly);
        let allocation = match opened {
            Ok(allocation) => allocation,
            Err(ContextError::Refused(RequestError::Entry(EntryError::NotAllocated {
                ..
            }))) => return Ok(()),
            Err(e) => return Err(e),
        };
        if let Some(dims) = allocation.dimensions() {
            let indices = self.shape.dynamic_indices();
            let values: Vec<i64> = indices.iter().map(|&i| dims[i] as i64).collect();
            self.shape.update(&indices, &values)?;
        }
        self.allocation = Some(allocation);
        Ok(())
    }

    /// The entry's name in the pipeline definition.
    pub fn name(&self) -> &str {
        &self.info.name
    }

    /// The driver allocated it before the operator started (its declared shape is fully
    /// positive).
    pub fn is_preallocated(&self) -> bool {
        self.info.preallocated
    }

    /// It has memory now.
    pub fn is_allocated(&self) -> bool {
        self.allocation.is_some()
    }

    /// ReadWrite for an output, ReadOnly for an input.
    pub fn access(&self) -> AccessMode {
        self.info.access
    }

    /// The current shape: the declaration, with dynamic dimensions as set so far (an unset
    /// one reads as its marker, `-1` or `0`).
    pub fn shape(&self) -> &[i64] {
        self.shape.current()
    }

    /// The element type (`string` entries are `u8`).
    pub fn element_type(&self) -> ElementType {
        self.info.element_type
    }

    /// Indices of the dynamic dimensions, the same before and after updates.
    pub fn dynamic_shape_indices(&self) -> Vec<usize> {
        self.shape.dynamic_indices()
    }

    /// Some dimension was declared `-1` or `0`.
    pub fn is_dynamic(&self) -> bool {
        self.shape.is_dynamic()
    }

    /// Size of the allocation in bytes, once allocated.
    pub fn size_in_bytes(&self) -> Option<usize> {
        self.allocation
            .as_ref()
            .and_then(|a| a.typed_shape().map(|t| t.byte_size()))
    }

    /// Fails unless the entry is an output still being produced: the same refusals the
    /// context gives, made here without a round trip.
    fn check_writable(&self) -> Result<(), EntryError> {
        let name = self.info.name.clone();
        match (self.output, self.info.access) {
            (_, AccessMode::ReadWrite) => Ok(()),
            (true, AccessMode::ReadOnly) => Err(EntryError::OutputFinal { name }),
            (false, AccessMode::ReadOnly) => Err(EntryError::InputReadOnly { name }),
        }
    }

    /// Sets dynamic dimensions (`values[k]` at index `dimensions[k]`; other indices are
    /// left as declared, without an error, as in Clara) and returns the new shape.
    /// Once every dynamic dimension is set (0, an empty dimension, included) the entry
    /// gets memory of that shape, replacing
    /// memory it had before. Fails, changing nothing, on a pre-allocated entry or an input.
    pub fn update_shape(
        &mut self,
        dimensions: &[usize],
        values: &[i64],
    ) -> Result<Vec<i64>, ContextError> {
        self.check_writable()?;
        if self.info.preallocated {
            return Err(EntryError::Preallocated {
                name: self.info.name.clone(),
            }
            .into());
        }
        let mut next = self.shape.clone();
        next.update(dimensions, values)?;
        if next != self.shape || self.allocation.is_none() {
            self.allocate_for(&next)?;
            self.shape = next;
        }
        Ok(self.shape.current().to_vec())
    }

    /// Gives the entry memory of its current shape. Fails when the entry is pre-allocated,
    /// an input, or still has a dynamic dimension unset.
    pub fn allocate(&mut self) -> Result<(), ContextError> {
        self.check_writable()?;
        if self.info.preallocated {
            return Err(EntryError::Preallocated {
                name: self.info.name.clone(),
            }
            .into());
        }
        if self.shape.to_shape().is_none() {
            return Err(EntryError::ShapeUnset {
                name: self.info.name.clone(),
                shape: self.shape.current().to_vec(),
                dynamic: self.shape.dynamic_indices(),
            }
            .into());
        }
        self.allocate_for(&self.shape.clone())
    }

    /// Allocates memory for `shape` once every dimension is set (nothing to do before).
    fn allocate_for(&mut self, shape: &DynamicShape) -> Result<(), ContextError> {
        let dims = match shape.to_shape() {
            Some(shape) => shape?.dims().to_vec(),
            None => return Ok(()),
        };
        // The old memory, if any, stays mapped until the new is in hand: a failure changes
        // nothing, and our handle keeps the old segment from being recycled meanwhile.
        let mut allocation = self.context.allocate_entry(self.info.id, dims)?;
        allocation.unmap_on_release();
        self.allocation = Some(allocation);
        Ok(())
    }

    /// Attaches an interprocess CUDA event, recorded on the stream that wrote this output,
    /// to its current memory: an operator that reads the entry gets it from
    /// [`FastIoEntry::event`] and makes its own stream wait on it (cuda-streams'
    /// `InterprocessEvent`), so GPU work is ordered across processes without the host
    /// waiting. Outputs only, once allocated; a new allocation drops the event.
    pub fn set_event(&mut self, event: EventHandle) -> Result<(), ContextError> {
        self.check_writable()?;
        self.allocated()?;
        self.context.set_entry_event(self.info.id, event)
    }

    /// The interprocess CUDA event the producer attached, as this operator opened the
    /// entry (inputs: at the start of execute).
    pub fn event(&self) -> Option<EventHandle> {
        self.allocation.as_ref().and_then(Allocation::event)
    }

    /// Ends the producer's write access at the end of its execute: an output's mapping
    /// becomes read-only in place, so a pointer or view kept past execute faults on a
    /// write instead of changing memory that downstream operators read. Later writes
    /// through this entry's API fail. Inputs are read-only already.
    pub fn finish(&mut self) -> Result<(), ContextError> {
        if self.info.access == AccessMode::ReadWrite {
            self.info.access = AccessMode::ReadOnly;
            if let Some(allocation) = &mut self.allocation {
                allocation.make_read_only()?;
            }
        }
        Ok(())
    }

    /// The allocation behind the entry, once it has one.
    pub fn allocation(&self) -> Option<&Allocation> {
        self.allocation.as_ref()
    }

    fn allocated(&self) -> Result<&Allocation, ContextError> {
        self.allocation.as_ref().ok_or_else(|| {
            EntryError::NotAllocated {
                name: self.info.name.clone(),
            }
            .into()
        })
    }

    fn allocated_mut(&mut self) -> Result<&mut Allocation, ContextError> {
        self.check_writable()?;
        let name = self.info.name.clone();
        self.allocation
            .as_mut()
            .ok_or_else(|| EntryError::NotAllocated { name }.into())
    }

    /// A copy of the entry's bytes.
    pub fn get_bytes(&self) -> Result<Vec<u8>, ContextError> {
        let allocation = self.allocated()?;
        let len = self.size_in_bytes().unwrap_or(0);
        allocation.read_bytes(0, len)
    }

    /// A copy of the entry's values (its element type must be `T`).
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>, ContextError> {
        self.allocated()?.to_vec()
    }

    /// Writes `values`, converted to the entry's element type as numpy's `astype` would;
    /// there must be exactly as many as the entry has elements.
    pub fn set_values<T: Element>(&mut self, values: &[T]) -> Result<(), ContextError> {
        let bytes =
            fastio_meta::convert(T::TYPE, fastio_meta::as_bytes(values), self.element_type())?;
        self.set_bytes(&bytes)
    }

    /// Writes raw bytes, unconverted: exactly the entry's size.
    pub fn set_bytes(&mut self, bytes: &[u8]) -> Result<(), ContextError> {
        let expected = self.size_in_bytes();
        let allocation = self.allocated_mut()?;
        let expected = expected.unwrap_or(0);
        if bytes.len() != expected {
            return Err(ContextError::LengthMismatch {
                expected,
                actual: bytes.len(),
            });
        }
        allocation.write_bytes(0, bytes)
    }

    /// A zero-copy view of the entry's values.
    ///
    /// # Safety
    /// Nobody may write the memory while the view lives. For an input this holds once its
    /// producer's execute has finished, which is when inputs become available.
    #[allow(unsafe_code)]
    pub unsafe fn view<T: Element>(&self) -> Result<ndarray::ArrayViewD<'_, T>, ContextError> {
        // SAFETY: forwarded to the caller.
        unsafe { self.allocated()?.view() }
    }

    /// A writable zero-copy view of an output's values: compute straight into the shared
    /// memory that downstream operators will read.
    ///
    /// # Safety
    /// Nobody else may read or write the memory while the view lives; for an output during
    /// its producer's execute, nobody else maps it.
    #[allow(unsafe_code)]
    pub unsafe fn view_mut<T: Element>(
        &mut self,
    ) -> Result<ndarray::ArrayViewMutD<'_, T>, ContextError> {
        // SAFETY: forwarded to the caller.
        unsafe { self.allocated_mut()?.view_mut() }
    }
}
