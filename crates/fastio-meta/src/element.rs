//! Element types: the eleven numeric types of Clara's typed pipelines.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::MetaError;

/// The element type of a typed array.
///
/// The order, and so [`ElementType::code`], follows Clara's documented type list
/// (uint8 ... uint64, int8 ... int64, float16, float32, float64). Clara's `string`
/// is not an element type of its own: it is an array of `uint8` with shape `[-1]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum ElementType {
    /// Unsigned 8-bit integer.
    U8 = 0,
    /// Unsigned 16-bit integer.
    U16 = 1,
    /// Unsigned 32-bit integer.
    U32 = 2,
    /// Unsigned 64-bit integer.
    U64 = 3,
    /// Signed 8-bit integer.
    I8 = 4,
    /// Signed 16-bit integer.
    I16 = 5,
    /// Signed 32-bit integer.
    I32 = 6,
    /// Signed 64-bit integer.
    I64 = 7,
    /// IEEE 754 half precision float (`half::f16`, numpy `float16`).
    F16 = 8,
    /// IEEE 754 single precision float.
    F32 = 9,
    /// IEEE 754 double precision float.
    F64 = 10,
}

/// Per-type facts, in the order of the enum: (type, long name, short name, numpy dtype, size).
const TABLE: [(ElementType, &str, &str, &str, usize); 11] = [
    (ElementType::U8, "uint8", "u8", "|u1", 1),
    (ElementType::U16, "uint16", "u16", "<u2", 2),
    (ElementType::U32, "uint32", "u32", "<u4", 4),
    (ElementType::U64, "uint64", "u64", "<u8", 8),
    (ElementType::I8, "int8", "i8", "|i1", 1),
    (ElementType::I16, "int16", "i16", "<i2", 2),
    (ElementType::I32, "int32", "i32", "<i4", 4),
    (ElementType::I64, "int64", "i64", "<i8", 8),
    (ElementType::F16, "float16", "f16", "<f2", 2),
    (ElementType::F32, "float32", "f32", "<f4", 4),
    (ElementType::F64, "float64", "f64", "<f8", 8),
];

impl ElementType {
    /// Every element type, in code order.
    pub const ALL: [ElementType; 11] = [
        ElementType::U8,
        ElementType::U16,
        ElementType::U32,
        ElementType::U64,
        ElementType::I8,
        ElementType::I16,
        ElementType::I32,
        ElementType::I64,
        ElementType::F16,
        ElementType::F32,
        ElementType::F64,
    ];

    fn row(self) -> &'static (ElementType, &'static str, &'static str, &'static str, usize) {
        &TABLE[self as usize]
    }

    /// Size of one element in bytes.
    pub fn size(self) -> usize {
        self.row().4
    }

    /// The long spelling used by Clara pipeline definitions and numpy (`"uint8"`, `"float16"`).
    pub fn name(self) -> &'static str {
        self.row().1
    }

    /// The short spelling of Clara pipeline definitions (`"u8"`, `"f16"`).
    pub fn short_name(self) -> &'static str {
        self.row().2
    }

    /// The numpy array-interface type string, little-endian (`"<i2"`, `"|u1"`).
    pub fn numpy_dtype(self) -> &'static str {
        self.row().3
    }

    /// Stable numeric code (0 = uint8 ... 10 = float64), as used by the C API.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// The type with the given numeric code.
    pub fn from_code(code: u32) -> Result<Self, MetaError> {
        Self::ALL
            .get(code as usize)
            .copied()
            .ok_or(MetaError::UnknownElementCode { code })
    }

    /// Parses any accepted spelling: the long name (`uint8`), the short name (`u8`), or a
    /// numpy type string (`<u1`, `|u1`, `=f2`, or bare `u1`, `f4`). Case is ignored. Where a
    /// bare numpy code collides with a Clara short name (`u8`, `i8`), Clara's meaning wins:
    /// `u8` is uint8, and numpy's uint64 must be written `<u8`.
    pub fn parse(text: &str) -> Result<Self, MetaError> {
        let unknown = || MetaError::UnknownElementType {
            text: text.to_owned(),
        };
        let lower = text.trim().to_ascii_lowercase();
        if let Some(row) = TABLE.iter().find(|r| r.1 == lower || r.2 == lower) {
            return Ok(row.0);
        }
        // numpy type strings: optional byte-order mark, kind letter, byte count.
        let body = match lower.as_bytes().first() {
            Some(b'<' | b'=' | b'|') => &lower[1..],
            Some(b'>') if lower.len() == 3 && &lower[2..] == "1" => &lower[1..],
            _ => lower.as_str(),
        };
        TABLE
            .iter()
            .find(|r| &r.3[1..] == body)
            .map(|r| r.0)
            .ok_or_else(unknown)
    }
}

impl fmt::Display for ElementType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ElementType {
    type Err = MetaError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for ElementType {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for ElementType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A Rust type that is one of the eleven element types.
///
/// Implemented for the primitive integers, `f32`, `f64` and `half::f16`. Every value of
/// every bit pattern is valid for these types, which is what lets shared memory be read
/// as them.
pub trait Element: bytemuck::Pod + Send + Sync + sealed::Sealed {
    /// The element type this Rust type stands for.
    const TYPE: ElementType;
}

/// The bytes of a slice of elements.
pub fn as_bytes<T: Element>(data: &[T]) -> &[u8] {
    bytemuck::cast_slice(data)
}

/// The bytes of a mutable slice of elements.
pub fn as_bytes_mut<T: Element>(data: &mut [T]) -> &mut [u8] {
    bytemuck::cast_slice_mut(data)
}

mod sealed {
    pub trait Sealed {}
}

macro_rules! element {
    ($($t:ty => $e:ident),* $(,)?) => {$(
        impl sealed::Sealed for $t {}
        impl Element for $t {
            const TYPE: ElementType = ElementType::$e;
        }
    )*};
}

element!(
    u8 => U8, u16 => U16, u32 => U32, u64 => U64,
    i8 => I8, i16 => I16, i32 => I32, i64 => I64,
    half::f16 => F16, f32 => F32, f64 => F64,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_parses_to_the_same_type() {
        for t in ElementType::ALL {
            assert_eq!(ElementType::parse(t.name()).unwrap(), t);
            assert_eq!(ElementType::parse(t.short_name()).unwrap(), t);
            assert_eq!(ElementType::parse(t.numpy_dtype()).unwrap(), t);
            let bare = &t.numpy_dtype()[1..];
            if ElementType::ALL.iter().all(|o| o.short_name() != bare) {
                assert_eq!(ElementType::parse(bare).unwrap(), t);
            }
            assert_eq!(ElementType::parse(&t.name().to_uppercase()).unwrap(), t);
            assert_eq!(ElementType::from_code(t.code()).unwrap(), t);
        }
    }

    #[test]
    fn clara_short_names_win_over_bare_numpy_codes() {
        // numpy reads "u8" as uint64; Clara pipelines read it as uint8.
        assert_eq!(ElementType::parse("u8").unwrap(), ElementType::U8);
        assert_eq!(ElementType::parse("i8").unwrap(), ElementType::I8);
        assert_eq!(ElementType::parse("<u8").unwrap(), ElementType::U64);
        assert_eq!(ElementType::parse("<i8").unwrap(), ElementType::I64);
    }

    #[test]
    fn sizes_match_rust_types() {
        assert_eq!(ElementType::F16.size(), std::mem::size_of::<half::f16>());
        assert_eq!(ElementType::I64.size(), std::mem::size_of::<i64>());
        assert_eq!(<f32 as Element>::TYPE, ElementType::F32);
    }

    #[test]
    fn unknown_spellings_are_rejected_with_the_text() {
        for bad in ["", "string", "float128", "<f16", ">i2", "bool", "uint"] {
            let err = ElementType::parse(bad).unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        assert!(ElementType::from_code(11).is_err());
    }

    #[test]
    fn serde_uses_the_long_name_and_accepts_aliases() {
        assert_eq!(
            serde_json::to_string(&ElementType::F16).unwrap(),
            "\"float16\""
        );
        let t: ElementType = serde_json::from_str("\"i16\"").unwrap();
        assert_eq!(t, ElementType::I16);
    }
}
