//! A bounded reader of the Python pickles that few-shot datasets ship in: CIFAR-100's python
//! version (Python 2 pickles of dicts, lists and a NumPy array) and tieredImageNet's
//! `*_images_png.pkl` / `*_labels.pkl` (Ren et al. 2018: lists of NumPy arrays).
//!
//! It runs the pickle machine for protocols 0 to 5 on data only: None, booleans, integers,
//! floats, (byte) strings, lists, tuples and dicts, plus the three constructors such files use,
//! NumPy arrays (`numpy.core.multiarray._reconstruct` + BUILD, or `_frombuffer`), NumPy dtypes
//! and Python 3's `_codecs.encode` for bytes in protocol 2. Anything else (other globals, object
//! arrays) is an error: no code from the file is ever run. Sizes read from the file are never
//! trusted for allocation: strings grow as their bytes actually arrive, and an array's shape
//! must match the bytes it has. The memo keeps a copy of a value as it was when memoized (byte
//! strings and arrays shared), which is all that data pickles need.

mod machine;
mod numpy;
mod value;

pub use machine::read;
pub use value::{Array, Callable, Value};
