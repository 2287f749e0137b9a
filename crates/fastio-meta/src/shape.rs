//! Shapes: concrete ones (every dimension known) and declared ones with dynamic dimensions.

use serde::{Deserialize, Serialize};

use crate::{ElementType, MetaError};

/// The most dimensions an array may have (numpy 2's limit).
pub const MAX_DIMENSIONS: usize = 64;

/// A concrete shape: one or more dimensions, each 0 or more.
///
/// A 0 makes an empty array of zero elements, as in numpy (`np.zeros((0, 3))`: "no lesion
/// found" is an ordinary result). Only in a pipeline *declaration* does 0 mean something
/// else, a dynamic dimension: that is [`DynamicShape`]'s business, never this type's.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "Vec<u64>", into = "Vec<u64>")]
pub struct Shape(Vec<usize>);

impl Shape {
    /// Checks and wraps the dimensions.
    pub fn new(dims: impl Into<Vec<usize>>) -> Result<Self, MetaError> {
        let dims = dims.into();
        if dims.is_empty() || dims.len() > MAX_DIMENSIONS {
            return Err(MetaError::DimensionCount { count: dims.len() });
        }
        let shape = Shape(dims);
        shape.element_count()?;
        Ok(shape)
    }

    /// The dimensions.
    pub fn dims(&self) -> &[usize] {
        &self.0
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.0.len()
    }

    /// Product of the dimensions, or an overflow error. A zero dimension makes it 0
    /// whatever the others are (numpy: `np.empty((2**62, 4, 0))` is valid).
    pub fn element_count(&self) -> Result<usize, MetaError> {
        if self.0.contains(&0) {
            return Ok(0);
        }
        self.0
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| MetaError::Overflow {
                dims: self.0.clone(),
                element_size: 1,
            })
    }

    /// Bytes needed for this shape of `element_type`, or an overflow error.
    pub fn byte_size(&self, element_type: ElementType) -> Result<usize, MetaError> {
        self.element_count()?
            .checked_mul(element_type.size())
            .ok_or_else(|| MetaError::Overflow {
                dims: self.0.clone(),
                element_size: element_type.size(),
            })
    }
}

impl TryFrom<Vec<u64>> for Shape {
    type Error = MetaError;
    fn try_from(dims: Vec<u64>) -> Result<Self, MetaError> {
        let dims = dims
            .into_iter()
            .map(|d| usize::try_from(d).map_err(|_| MetaError::DimensionTooLarge { value: d }))
            .collect::<Result<Vec<_>, _>>()?;
        Shape::new(dims)
    }
}

impl From<Shape> for Vec<u64> {
    fn from(shape: Shape) -> Self {
        shape.0.into_iter().map(|d| d as u64).collect()
    }
}

/// An element type with a concrete shape: what an allocation's metadata says it holds.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TypedShape {
    /// Element type.
    pub element_type: ElementType,
    /// Dimensions.
    pub shape: Shape,
}

impl TypedShape {
    /// Pairs a type and a shape, checking that their byte size does not overflow.
    pub fn new(element_type: ElementType, shape: Shape) -> Result<Self, MetaError> {
        shape.byte_size(element_type)?;
        Ok(Self {
            element_type,
            shape,
        })
    }

    /// Bytes this typed shape occupies.
    pub fn byte_size(&self) -> usize {
        // Checked in `new` and by deserialisation through `Shape`; recomputed here.
        self.shape
            .byte_size(self.element_type)
            .unwrap_or(usize::MAX)
    }
}

/// A shape as declared in a pipeline definition, where `-1` or `0` marks a dynamic
/// dimension that is fixed at run time (Clara's FastIO entries).
///
/// It keeps the declaration (which indices are dynamic never changes) and the current
/// values. Only dynamic indices can be updated; updates to other indices are ignored
/// without an error, as Clara's FastIO entry documentation says.
///
/// A dynamic dimension may be set to 0 at run time (an empty result): which dimensions
/// were set is kept apart from the values, so a set 0 is never mistaken for the marker.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DynamicShape {
    declared: Vec<i64>,
    current: Vec<i64>,
    // The dynamic indices set by `update` (always false for fixed ones).
    #[serde(default)]
    set: Vec<bool>,
}

impl DynamicShape {
    /// Checks a declared shape: 1 to [`MAX_DIMENSIONS`] dimensions, each positive, `0` or `-1`.
    pub fn new(declared: impl Into<Vec<i64>>) -> Result<Self, MetaError> {
        let declared = declared.into();
        if declared.is_empty() || declared.len() > MAX_DIMENSIONS {
            return Err(MetaError::DimensionCount {
                count: declared.len(),
            });
        }
        if let Some(index) = declared.iter().position(|&d| d < -1) {
            return Err(MetaError::NegativeDimension {
                index,
                value: declared[index],
            });
        }
        let shape = Self {
            current: declared.clone(),
            set: vec![false; declared.len()],
            declared,
        };
        if let Some(concrete) = shape.to_shape() {
            concrete?;
        }
        Ok(shape)
    }

    /// The shape as declared.
    pub fn declared(&self) -> &[i64] {
        &self.declared
    }

    /// The current dimensions: declared ones, with dynamic ones as updated so far (a dynamic
    /// dimension not yet updated reads as its marker, `-1` or `0`; [`DynamicShape::is_set`]
    /// tells a marker `0` from a dimension set to 0).
    pub fn current(&self) -> &[i64] {
        &self.current
    }

    /// Indices of the dynamic dimensions; the same before and after updates.
    pub fn dynamic_indices(&self) -> Vec<usize> {
        self.declared
            .iter()
            .enumerate()
            .filter(|(_, d)| **d <= 0)
            .map(|(i, _)| i)
            .collect()
    }

    /// Whether any dimension was declared dynamic.
    pub fn is_dynamic(&self) -> bool {
        self.declared.iter().any(|&d| d <= 0)
    }

    /// Whether dimension `index` has a value: declared fixed, or dynamic and set.
    pub fn is_set(&self, index: usize) -> bool {
        self.declared.get(index).is_some_and(|&d| d > 0) || self.set.get(index) == Some(&true)
    }

    /// Sets dynamic dimensions: `values[k]` goes to index `indices[k]`. Indices that are not
    /// dynamic are left unchanged without an error (as in Clara). Fails, changing nothing, when
    /// the lists differ in length, an index is out of range, or a value for a dynamic index
    /// is negative or makes the byte size overflow. A value of 0 sets an empty dimension
    /// (numpy's semantics), it does not unset the dimension.
    pub fn update(&mut self, indices: &[usize], values: &[i64]) -> Result<(), MetaError> {
        if indices.len() != values.len() {
            return Err(MetaError::UpdateLengthMismatch {
                indices: indices.len(),
                values: values.len(),
            });
        }
        let mut next = self.current.clone();
        let mut set = self.set.clone();
        set.resize(self.declared.len(), false);
        for (&index, &value) in indices.iter().zip(values) {
            let declared = *self.declared.get(index).ok_or(MetaError::IndexOutOfRange {
                index,
                rank: self.declared.len(),
            })?;
            if declared > 0 {
                continue;
            }
            if value < 0 {
                return Err(MetaError::NegativeValue { index, value });
            }
            next[index] = value;
            set[index] = true;
        }
        let candidate = Self {
            declared: self.declared.clone(),
            current: next,
            set,
        };
        if let Some(concrete) = candidate.to_shape() {
            concrete?;
        }
        *self = candidate;
        Ok(())
    }

    /// The concrete shape once every dimension has a value (0 included), or `None` while
    /// some dynamic dimension is still unset.
    pub fn to_shape(&self) -> Option<Result<Shape, MetaError>> {
        if !(0..self.declared.len()).all(|i| self.is_set(i)) {
            return None;
        }
        let dims = self
            .current
            .iter()
            .map(|&d| {
                usize::try_from(d).map_err(|_| MetaError::DimensionTooLarge { value: d as u64 })
            })
            .collect::<Result<Vec<_>, _>>();
        Some(dims.and_then(Shape::new))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_size_multiplies_dims_and_element_size() {
        let shape = Shape::new(vec![2, 3]).unwrap();
        assert_eq!(shape.byte_size(ElementType::F16).unwrap(), 12);
        assert_eq!(shape.byte_size(ElementType::F64).unwrap(), 48);
    }

    #[test]
    fn overflowing_products_are_errors() {
        let big = Shape::new(vec![usize::MAX / 2, 1]).unwrap();
        assert!(matches!(
            big.byte_size(ElementType::U32),
            Err(MetaError::Overflow {
                element_size: 4,
                ..
            })
        ));
        assert!(matches!(
            Shape::new(vec![usize::MAX, 2]),
            Err(MetaError::Overflow { .. })
        ));
    }

    #[test]
    fn zero_dimensions_make_empty_shapes_of_zero_bytes() {
        let empty = Shape::new(vec![0, 3]).unwrap();
        assert_eq!(empty.element_count().unwrap(), 0);
        assert_eq!(empty.byte_size(ElementType::F64).unwrap(), 0);
        // A zero anywhere keeps even huge other dimensions from overflowing.
        assert_eq!(
            Shape::new(vec![usize::MAX, 2, 0])
                .unwrap()
                .element_count()
                .unwrap(),
            0
        );
    }

    #[test]
    fn empty_and_too_many_dimensions_are_refused() {
        assert!(Shape::new(Vec::<usize>::new()).is_err());
        assert!(Shape::new(vec![1; MAX_DIMENSIONS + 1]).is_err());
        assert!(Shape::new(vec![1; MAX_DIMENSIONS]).is_ok());
    }

    #[test]
    fn only_dynamic_indices_change() {
        for marker in [-1, 0] {
            let mut s = DynamicShape::new(vec![3, marker, 224, marker]).unwrap();
            assert!(s.is_dynamic());
            assert_eq!(s.dynamic_indices(), vec![1, 3]);
            s.update(&[1], &[5]).unwrap();
            assert!(s.to_shape().is_none(), "index 3 is still dynamic");
            s.update(&[0], &[4]).unwrap();
            assert_eq!(s.current()[0], 3, "non-dynamic index must not change");
            s.update(&[1, 3], &[5, 7]).unwrap();
            assert_eq!(s.to_shape().unwrap().unwrap().dims(), &[3, 5, 224, 7]);
            assert_eq!(s.dynamic_indices(), vec![1, 3]);
            // Dynamic dimensions may change again.
            s.update(&[3], &[9]).unwrap();
            assert_eq!(s.current(), &[3, 5, 224, 9]);
        }
    }

    #[test]
    fn bad_updates_fail_and_change_nothing() {
        let mut s = DynamicShape::new(vec![3, -1]).unwrap();
        let before = s.clone();
        assert!(s.update(&[1], &[-4]).is_err());
        assert!(s.update(&[2], &[4]).is_err());
        assert!(s.update(&[1, 1], &[4]).is_err());
        assert!(s.update(&[1], &[i64::MAX]).is_err(), "byte size overflows");
        assert_eq!(s, before);
    }

    #[test]
    fn declared_shapes_reject_values_below_minus_one() {
        assert!(matches!(
            DynamicShape::new(vec![2, -2]),
            Err(MetaError::NegativeDimension {
                index: 1,
                value: -2
            })
        ));
        let fixed = DynamicShape::new(vec![3, 224, 224]).unwrap();
        assert!(!fixed.is_dynamic());
        assert!(fixed.dynamic_indices().is_empty());
    }

    #[test]
    fn shapes_round_trip_through_serde_and_are_checked_on_the_way_in() {
        let t = TypedShape::new(ElementType::I16, Shape::new(vec![4, 5]).unwrap()).unwrap();
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, r#"{"element_type":"int16","shape":[4,5]}"#);
        assert_eq!(serde_json::from_str::<TypedShape>(&json).unwrap(), t);
        assert!(
            serde_json::from_str::<TypedShape>(r#"{"element_type":"int16","shape":[]}"#).is_err()
        );
        let empty = serde_json::from_str::<TypedShape>(r#"{"element_type":"int16","shape":[0]}"#);
        assert_eq!(empty.unwrap().byte_size(), 0);
    }

    #[test]
    fn a_dynamic_dimension_set_to_zero_is_set_and_the_markers_keep_their_meaning() {
        for marker in [-1, 0] {
            let mut s = DynamicShape::new(vec![marker, 3]).unwrap();
            assert!(s.to_shape().is_none(), "a marker is unset, whichever it is");
            assert!(!s.is_set(0) && s.is_set(1));
            s.update(&[0], &[0]).unwrap();
            assert!(s.is_set(0));
            assert_eq!(s.current(), &[0, 3]);
            let shape = s.to_shape().unwrap().unwrap();
            assert_eq!(shape.dims(), &[0, 3]);
            assert_eq!(shape.byte_size(ElementType::F32).unwrap(), 0);
            assert!(s.is_dynamic() && s.dynamic_indices() == vec![0]);
            s.update(&[0], &[2]).unwrap();
            assert_eq!(s.to_shape().unwrap().unwrap().dims(), &[2, 3]);
        }
        // A declared 0 is a marker, not an empty dimension: nothing is pre-allocated.
        let declared_zero = DynamicShape::new(vec![0]).unwrap();
        assert!(declared_zero.is_dynamic() && declared_zero.to_shape().is_none());
    }
}
