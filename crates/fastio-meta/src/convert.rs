//! Element-type conversion, as numpy's `astype` does it: C casts between the eleven types
//! (floats to integers truncate toward zero and saturate, integers wrap to narrower ones).

use crate::{ElementType, MetaError};

/// One element read out, wide enough to hold any of the eleven types exactly.
#[derive(Clone, Copy)]
enum Scalar {
    Unsigned(u64),
    Signed(i64),
    Float(f64),
}

macro_rules! read_as {
    ($bytes:expr, $t:ty) => {
        <$t>::from_ne_bytes($bytes.try_into().expect("chunk of the element's size"))
    };
}

fn read(element_type: ElementType, bytes: &[u8]) -> Scalar {
    use ElementType::*;
    match element_type {
        U8 => Scalar::Unsigned(read_as!(bytes, u8).into()),
        U16 => Scalar::Unsigned(read_as!(bytes, u16).into()),
        U32 => Scalar::Unsigned(read_as!(bytes, u32).into()),
        U64 => Scalar::Unsigned(read_as!(bytes, u64)),
        I8 => Scalar::Signed(read_as!(bytes, i8).into()),
        I16 => Scalar::Signed(read_as!(bytes, i16).into()),
        I32 => Scalar::Signed(read_as!(bytes, i32).into()),
        I64 => Scalar::Signed(read_as!(bytes, i64)),
        F16 => Scalar::Float(half::f16::from_bits(read_as!(bytes, u16)).to_f64()),
        F32 => Scalar::Float(read_as!(bytes, f32).into()),
        F64 => Scalar::Float(read_as!(bytes, f64)),
    }
}

macro_rules! cast {
    ($value:expr, $t:ty) => {
        match $value {
            Scalar::Unsigned(v) => v as $t,
            Scalar::Signed(v) => v as $t,
            Scalar::Float(v) => v as $t,
        }
    };
}

fn write(value: Scalar, element_type: ElementType, out: &mut Vec<u8>) {
    use ElementType::*;
    match element_type {
        U8 => out.extend_from_slice(&cast!(value, u8).to_ne_bytes()),
        U16 => out.extend_from_slice(&cast!(value, u16).to_ne_bytes()),
        U32 => out.extend_from_slice(&cast!(value, u32).to_ne_bytes()),
        U64 => out.extend_from_slice(&cast!(value, u64).to_ne_bytes()),
        I8 => out.extend_from_slice(&cast!(value, i8).to_ne_bytes()),
        I16 => out.extend_from_slice(&cast!(value, i16).to_ne_bytes()),
        I32 => out.extend_from_slice(&cast!(value, i32).to_ne_bytes()),
        I64 => out.extend_from_slice(&cast!(value, i64).to_ne_bytes()),
        F16 => out.extend_from_slice(&half::f16::from_f64(cast!(value, f64)).to_ne_bytes()),
        F32 => out.extend_from_slice(&cast!(value, f32).to_ne_bytes()),
        F64 => out.extend_from_slice(&cast!(value, f64).to_ne_bytes()),
    }
}

/// Converts `bytes`, elements of type `from` in native byte order, to elements of type
/// `to`. The same type is a plain copy.
pub fn convert(from: ElementType, bytes: &[u8], to: ElementType) -> Result<Vec<u8>, MetaError> {
    let size = from.size();
    if !bytes.len().is_multiple_of(size) {
        return Err(MetaError::RaggedBuffer {
            len: bytes.len(),
            element_type: from,
        });
    }
    if from == to {
        return Ok(bytes.to_vec());
    }
    let mut out = Vec::with_capacity(bytes.len() / size * to.size());
    for chunk in bytes.chunks_exact(size) {
        write(read(from, chunk), to, &mut out);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Element, as_bytes, as_bytes_mut};

    fn back<T: Element>(bytes: &[u8]) -> Vec<T> {
        let mut out = vec![T::zeroed(); bytes.len() / std::mem::size_of::<T>()];
        as_bytes_mut(&mut out).copy_from_slice(bytes);
        out
    }

    #[test]
    fn floats_become_integers_by_truncation() {
        let out = convert(
            ElementType::F64,
            as_bytes(&[3.9f64, -2.5, 300.0]),
            ElementType::I16,
        );
        let out: Vec<i16> = back(&out.unwrap());
        assert_eq!(out, [3, -2, 300]);
    }

    #[test]
    fn integers_become_half_floats() {
        let out = convert(ElementType::U8, &[1, 2, 255], ElementType::F16).unwrap();
        let out: Vec<half::f16> = back(&out);
        assert_eq!(out, [1.0, 2.0, 255.0].map(half::f16::from_f32));
    }

    #[test]
    fn wide_integers_keep_every_bit() {
        let big = [u64::MAX - 1];
        let out = convert(ElementType::U64, as_bytes(&big), ElementType::I64).unwrap();
        assert_eq!(back::<i64>(&out), [-2]);
    }

    #[test]
    fn a_ragged_buffer_is_refused() {
        assert_eq!(
            convert(ElementType::F32, &[0; 6], ElementType::F64),
            Err(MetaError::RaggedBuffer {
                len: 6,
                element_type: ElementType::F32
            })
        );
    }
}
