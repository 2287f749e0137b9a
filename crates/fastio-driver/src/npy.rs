//! Arrays as numpy `.npy` files: the header through `npyz`, the data copied straight
//! between shared memory and the file in bounded chunks (a 1 GiB entry never needs a
//! second gigabyte of memory).

use std::io::{Read, Write};
use std::path::Path;

use fastio_context::Allocation;
use fastio_meta::ElementType;
use npyz::WriterBuilder;

/// Bytes copied per step.
const CHUNK: usize = 8 << 20;

/// Why an array could not be written or read as `.npy`.
#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    /// The file system refused.
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: String,
        /// What the system said (in the message, so not the error's `source()`).
        cause: std::io::Error,
    },
    /// The context refused a copy.
    #[error("{path}: {cause}")]
    Context {
        /// The file.
        path: String,
        /// What the context said (in the message, so not the error's `source()`).
        cause: fastio_context::ContextError,
    },
    /// The file is not an array fastio can read.
    #[error("{path}: {reason}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Writes `len` bytes of `allocation` as a new `.npy` file (never over an existing one)
/// of `element_type` and `dims`, C order.
pub fn write(
    path: &Path,
    allocation: &Allocation,
    element_type: ElementType,
    dims: &[usize],
) -> Result<u64, NpyError> {
    let io = |cause| NpyError::Io {
        path: path.display().to_string(),
        cause,
    };
    let file = std::fs::File::create_new(path).map_err(io)?;
    let dtype = npyz::DType::Plain(
        element_type
            .numpy_dtype()
            .parse()
            .expect("fastio's numpy type strings are valid"),
    );
    let shape: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
    let mut out = npyz::WriteOptions::new_header_only()
        .dtype(dtype)
        .shape(&shape)
        .writer(std::io::BufWriter::new(file))
        .write_header_only()
        .map_err(io)?;
    let len = dims.iter().product::<usize>() * element_type.size();
    let mut offset = 0;
    while offset < len {
        let step = CHUNK.min(len - offset);
        let bytes = allocation
            .read_bytes(offset, step)
            .map_err(|cause| NpyError::Context {
                path: path.display().to_string(),
                cause,
            })?;
        out.write_all(&bytes).map_err(io)?;
        offset += step;
    }
    out.flush().map_err(io)?;
    std::fs::metadata(path).map(|m| m.len()).map_err(io)
}

/// An array read from a `.npy` file.
#[derive(Debug)]
pub struct NpyArray {
    /// Its element type.
    pub element_type: ElementType,
    /// Its dimensions.
    pub dims: Vec<usize>,
    /// Its bytes, C order, little-endian.
    pub bytes: Vec<u8>,
}

/// Reads a `.npy` file of one of fastio's element types, little-endian (or
/// single-byte), C order.
pub fn read(path: &Path) -> Result<NpyArray, NpyError> {
    let name = path.display().to_string();
    let io = |cause| NpyError::Io {
        path: name.clone(),
        cause,
    };
    let format = |reason: String| NpyError::Format {
        path: name.clone(),
        reason,
    };
    let mut file = std::io::BufReader::new(std::fs::File::open(path).map_err(io)?);
    let header = npyz::NpyHeader::from_reader(&mut file)
        .map_err(|e| format(format!("not a .npy file: {e}")))?;
    let npyz::DType::Plain(type_str) = header.dtype() else {
        return Err(format(
            "structured arrays are not supported: only plain numeric arrays".into(),
        ));
    };
    let text = type_str.to_string();
    let element_type = ElementType::parse(&text)
        .ok()
        .filter(|t| t.numpy_dtype() == text)
        .ok_or_else(|| {
            format(format!(
                "element type {text:?} is not one fastio shares (little-endian u8..u64, i8..i64, f16, f32, f64)"
            ))
        })?;
    if header.order() != npyz::Order::C && header.shape().len() > 1 {
        return Err(format(
            "Fortran-ordered arrays are not supported: save with numpy.ascontiguousarray".into(),
        ));
    }
    let dims: Vec<usize> = header.shape().iter().map(|&d| d as usize).collect();
    let len = dims
        .iter()
        .try_fold(element_type.size(), |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format("its size overflows".into()))?;
    let mut bytes = Vec::new();
    file.take(len as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() != len {
        return Err(format(format!(
            "holds {} bytes of data, its header says {len}",
            bytes.len()
        )));
    }
    Ok(NpyArray {
        element_type,
        dims,
        bytes,
    })
}
