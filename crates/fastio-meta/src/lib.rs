//! Typed metadata for fastio: element types, shapes with dynamic dimensions, byte sizes
//! with overflow checks, names, and their serde models.
//!
//! Architecture Invariant: this crate knows nothing of memory, processes or the context.
//! It is pure data and arithmetic, with no `unsafe`.

#![forbid(unsafe_code)]

mod convert;
mod element;
mod name;
mod shape;

pub use convert::convert;
pub use element::{Element, ElementType, as_bytes, as_bytes_mut};
pub use name::{MAX_NAME_LEN, validate_name, validate_publication_name};
pub use shape::{DynamicShape, MAX_DIMENSIONS, Shape, TypedShape};

/// Everything that can be wrong with typed metadata.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    /// The text names no element type.
    #[error(
        "unknown element type {text:?}; expected one of uint8..uint64, int8..int64, float16, float32, float64, their short forms u8..f64, or a numpy type string such as <f4"
    )]
    UnknownElementType {
        /// The text given.
        text: String,
    },
    /// The numeric code names no element type.
    #[error("unknown element type code {code}; codes run from 0 (uint8) to 10 (float64)")]
    UnknownElementCode {
        /// The code given.
        code: u32,
    },
    /// Too few or too many dimensions.
    #[error("an array needs 1 to {MAX_DIMENSIONS} dimensions, not {count}")]
    DimensionCount {
        /// The number given.
        count: usize,
    },
    /// A declared dimension is below -1.
    #[error(
        "dimension {index} is {value}; a declared dimension is positive, or -1 or 0 for dynamic"
    )]
    NegativeDimension {
        /// Its index.
        index: usize,
        /// Its value.
        value: i64,
    },
    /// A dimension does not fit this machine's address size.
    #[error("dimension {value} does not fit in this machine's address space")]
    DimensionTooLarge {
        /// The value.
        value: u64,
    },
    /// The element count or byte size overflows.
    #[error("shape {dims:?} of {element_size}-byte elements overflows the address space")]
    Overflow {
        /// The dimensions.
        dims: Vec<usize>,
        /// Element size in bytes.
        element_size: usize,
    },
    /// `update` got lists of different lengths.
    #[error("update_shape got {indices} indices but {values} values")]
    UpdateLengthMismatch {
        /// Number of indices.
        indices: usize,
        /// Number of values.
        values: usize,
    },
    /// `update` named an index beyond the shape's rank.
    #[error("index {index} is out of range for a shape of {rank} dimensions")]
    IndexOutOfRange {
        /// The index.
        index: usize,
        /// The shape's rank.
        rank: usize,
    },
    /// `update` gave a dynamic dimension a negative value.
    #[error("dimension {index} cannot be set to {value}; a dimension is 0 (empty) or more")]
    NegativeValue {
        /// The index.
        index: usize,
        /// The value.
        value: i64,
    },
    /// A byte buffer is not a whole number of elements.
    #[error("{len} bytes are not a whole number of {element_type} elements")]
    RaggedBuffer {
        /// Bytes given.
        len: usize,
        /// The element type.
        element_type: ElementType,
    },
    /// A name breaks the naming rule.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
}
