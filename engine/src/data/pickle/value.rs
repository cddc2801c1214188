//! The values a data pickle holds, NumPy arrays included.

use std::rc::Rc;

/// A value of the pickle.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Rc<Vec<u8>>),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Array(Array),
    /// An intermediate: a global the machine knows, not called yet.
    Global(Callable),
    /// An intermediate: a NumPy dtype (its type code, e.g. "u1", "i8").
    Dtype(String),
}

/// The globals a pickle may name.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Callable {
    Reconstruct,
    FromBuffer,
    Ndarray,
    Dtype,
    CodecsEncode,
}

/// A NumPy array: element type code ("u1", "i8", "f4", ...), shape and little-endian bytes in
/// C order (an empty array until BUILD gives it its state).
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    pub dtype: String,
    pub shape: Vec<usize>,
    pub data: Rc<Vec<u8>>,
}

impl Array {
    /// Bytes per element of the type code ("u1" -> 1, "i8" -> 8), `None` for other kinds.
    pub(super) fn item_size(dtype: &str) -> Option<usize> {
        let (kind, size) = (dtype.get(..1)?, dtype.get(1..)?);
        matches!(kind, "u" | "i" | "f" | "b").then(|| size.parse().ok())?
    }

    /// The elements as i64 (integer or boolean arrays).
    pub fn to_i64(&self) -> Option<Vec<i64>> {
        let size = Array::item_size(&self.dtype)?;
        let signed = self.dtype.starts_with('i');
        if self.dtype.starts_with('f') || size > 8 {
            return None;
        }
        Some(
            self.data
                .chunks_exact(size)
                .map(|c| {
                    let mut b = [0u8; 8];
                    b[..size].copy_from_slice(c);
                    let v = u64::from_le_bytes(b);
                    let shift = 64 - 8 * size as u32;
                    if signed {
                        ((v << shift) as i64) >> shift
                    } else {
                        v as i64
                    }
                })
                .collect(),
        )
    }
}

impl Value {
    /// The value for `key` of a dict whose keys are strings (Python 3) or byte strings (Python 2).
    pub fn get(&self, key: &str) -> Option<&Value> {
        let Value::Dict(items) = self else {
            return None;
        };
        items.iter().find_map(|(k, v)| match k {
            Value::Str(s) if s == key => Some(v),
            Value::Bytes(b) if b.as_slice() == key.as_bytes() => Some(v),
            _ => None,
        })
    }

    /// The items of a list or tuple.
    pub fn items(&self) -> Option<&[Value]> {
        match self {
            Value::List(v) | Value::Tuple(v) => Some(v),
            _ => None,
        }
    }

    /// A string or a byte string (decoded as UTF-8, lossily).
    pub fn text(&self) -> Option<String> {
        match self {
            Value::Str(s) => Some(s.clone()),
            Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }

    /// Integers of a list/tuple of ints or of an integer array.
    pub fn ints(&self) -> Option<Vec<i64>> {
        match self {
            Value::Array(a) => a.to_i64(),
            _ => self
                .items()?
                .iter()
                .map(|v| match v {
                    Value::Int(i) => Some(*i),
                    Value::Bool(b) => Some(i64::from(*b)),
                    _ => None,
                })
                .collect(),
        }
    }
}
