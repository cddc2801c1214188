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

use std::collections::HashMap;
use std::io::{BufRead, Read};
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
    fn item_size(dtype: &str) -> Option<usize> {
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

/// Reads one pickle from `input`. The error is a sentence saying what is wrong and where.
pub fn read(input: impl Read) -> Result<Value, String> {
    let mut m = Machine {
        input: std::io::BufReader::new(input),
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    m.run().map_err(|e| format!("pickle byte {}: {e}", m.pos))
}

/// At most this many stack entries or this memo index: far above what a dataset pickle holds,
/// low enough that a hostile count cannot exhaust memory by itself.
const MAX_MEMO: usize = 1 << 26;

struct Machine<R> {
    input: std::io::BufReader<R>,
    pos: u64,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<usize, Value>,
}

impl<R: Read> Machine<R> {
    fn byte(&mut self) -> Result<u8, String> {
        let mut b = [0u8; 1];
        self.input
            .read_exact(&mut b)
            .map_err(|_| "unexpected end of file".to_string())?;
        self.pos += 1;
        Ok(b[0])
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut b = [0u8; N];
        self.input
            .read_exact(&mut b)
            .map_err(|_| "unexpected end of file".to_string())?;
        self.pos += N as u64;
        Ok(b)
    }

    /// `len` bytes; the buffer grows as bytes arrive, so a false length cannot reserve memory.
    fn bytes(&mut self, len: u64) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        let got = (&mut self.input)
            .take(len)
            .read_to_end(&mut out)
            .map_err(|e| e.to_string())?;
        self.pos += got as u64;
        if (got as u64) < len {
            return Err(format!(
                "a string of {len} bytes, but the file ends after {got}"
            ));
        }
        Ok(out)
    }

    fn line(&mut self) -> Result<String, String> {
        let mut out = Vec::new();
        let got = (&mut self.input)
            .take(1 << 16)
            .read_until(b'\n', &mut out)
            .map_err(|e| e.to_string())?;
        self.pos += got as u64;
        if out.pop() != Some(b'\n') {
            return Err("a text argument without its end of line".into());
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    fn pop(&mut self) -> Result<Value, String> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err("stack underflow past a mark".into());
        }
        self.stack
            .pop()
            .ok_or_else(|| "stack underflow".to_string())
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let mark = self.marks.pop().ok_or("no mark on the stack")?;
        Ok(self.stack.split_off(mark))
    }

    fn push(&mut self, v: Value) -> Result<(), String> {
        if self.stack.len() >= MAX_MEMO {
            return Err("stack too deep".into());
        }
        self.stack.push(v);
        Ok(())
    }

    fn put(&mut self, index: usize) -> Result<(), String> {
        if index >= MAX_MEMO {
            return Err(format!("memo index {index} too large"));
        }
        let top = self
            .stack
            .last()
            .ok_or("memo put on an empty stack")?
            .clone();
        self.memo.insert(index, top);
        Ok(())
    }

    fn get(&mut self, index: usize) -> Result<(), String> {
        let v = self
            .memo
            .get(&index)
            .cloned()
            .ok_or_else(|| format!("memo index {index} was never set"))?;
        self.push(v)
    }

    fn run(&mut self) -> Result<Value, String> {
        loop {
            let op = self.byte()?;
            if op == b'.' {
                return self.pop();
            }
            self.step(op)?;
        }
    }

    fn step(&mut self, op: u8) -> Result<(), String> {
        match op {
            // PROTO, FRAME: nothing to do with their arguments.
            0x80 => {
                self.byte()?;
            }
            0x95 => {
                self.fixed::<8>()?;
            }
            b'(' => self.marks.push(self.stack.len()),
            b']' => self.push(Value::List(Vec::new()))?,
            b'}' => self.push(Value::Dict(Vec::new()))?,
            b')' => self.push(Value::Tuple(Vec::new()))?,
            b'N' => self.push(Value::None)?,
            0x88 => self.push(Value::Bool(true))?,
            0x89 => self.push(Value::Bool(false))?,
            b'l' => {
                let items = self.pop_mark()?;
                self.push(Value::List(items))?
            }
            b't' => {
                let items = self.pop_mark()?;
                self.push(Value::Tuple(items))?
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if self.stack.len() < n {
                    return Err("stack underflow".into());
                }
                let items = self.stack.split_off(self.stack.len() - n);
                self.push(Value::Tuple(items))?
            }
            b'd' => {
                let items = self.pop_mark()?;
                self.push(Value::Dict(Vec::new()))?;
                self.set_items(items)?
            }
            b'a' => {
                let v = self.pop()?;
                self.append(vec![v])?
            }
            b'e' => {
                let items = self.pop_mark()?;
                self.append(items)?
            }
            b's' => {
                let v = self.pop()?;
                let k = self.pop()?;
                self.set_items(vec![k, v])?
            }
            b'u' => {
                let items = self.pop_mark()?;
                self.set_items(items)?
            }
            _ => return self.step_scalar(op),
        }
        Ok(())
    }

    fn step_scalar(&mut self, op: u8) -> Result<(), String> {
        let v = match op {
            b'K' => Value::Int(i64::from(self.byte()?)),
            b'M' => Value::Int(i64::from(u16::from_le_bytes(self.fixed()?))),
            b'J' => Value::Int(i64::from(i32::from_le_bytes(self.fixed()?))),
            0x8a => {
                let n = self.byte()? as usize;
                let b = self.bytes(n as u64)?;
                if n > 8 {
                    return Err(format!("an integer of {n} bytes"));
                }
                let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) {
                    [0xff; 8]
                } else {
                    [0; 8]
                };
                buf[..n].copy_from_slice(&b);
                Value::Int(i64::from_le_bytes(buf))
            }
            b'I' | b'L' => {
                let line = self.line()?;
                match line.trim_end_matches('L') {
                    "00" => Value::Bool(false),
                    "01" => Value::Bool(true),
                    t => Value::Int(t.parse().map_err(|_| format!("integer {t:?}"))?),
                }
            }
            b'G' => Value::Float(f64::from_be_bytes(self.fixed()?)),
            b'U' | b'C' => {
                let n = self.byte()?;
                Value::Bytes(Rc::new(self.bytes(u64::from(n))?))
            }
            b'T' | b'B' => {
                let n = u32::from_le_bytes(self.fixed()?);
                Value::Bytes(Rc::new(self.bytes(u64::from(n))?))
            }
            0x8e | 0x96 => {
                let n = u64::from_le_bytes(self.fixed()?);
                Value::Bytes(Rc::new(self.bytes(n)?))
            }
            0x8c => {
                let n = self.byte()?;
                self.text(u64::from(n))?
            }
            b'X' => {
                let n = u32::from_le_bytes(self.fixed()?);
                self.text(u64::from(n))?
            }
            0x8d => {
                let n = u64::from_le_bytes(self.fixed()?);
                self.text(n)?
            }
            _ => return self.step_memo(op),
        };
        self.push(v)
    }

    fn text(&mut self, len: u64) -> Result<Value, String> {
        let b = self.bytes(len)?;
        String::from_utf8(b)
            .map(Value::Str)
            .map_err(|_| "a unicode string that is not UTF-8".into())
    }

    /// The memo index of a PUT (`q`, `r`, MEMOIZE, `p`) or GET (`h`, `j`, `g`) opcode: a byte,
    /// a little-endian u32, the next free index, or a decimal line.
    fn memo_index(&mut self, op: u8) -> Result<usize, String> {
        Ok(match op {
            b'q' | b'h' => self.byte()? as usize,
            b'r' | b'j' => u32::from_le_bytes(self.fixed()?) as usize,
            0x94 => self.memo.len(),
            b'p' => self.line()?.parse().map_err(|_| "a PUT index")?,
            _ => self.line()?.parse().map_err(|_| "a GET index")?,
        })
    }

    fn step_memo(&mut self, op: u8) -> Result<(), String> {
        match op {
            b'q' | b'r' | 0x94 | b'p' => {
                let i = self.memo_index(op)?;
                self.put(i)
            }
            b'h' | b'j' | b'g' => {
                let i = self.memo_index(op)?;
                self.get(i)
            }
            b'c' => {
                let module = self.line()?;
                let name = self.line()?;
                let g = global(&module, &name)?;
                self.push(g)
            }
            0x93 => {
                let name = self.pop()?.text().ok_or("STACK_GLOBAL without a name")?;
                let module = self.pop()?.text().ok_or("STACK_GLOBAL without a module")?;
                let g = global(&module, &name)?;
                self.push(g)
            }
            b'R' => {
                let args = self.pop()?;
                let f = self.pop()?;
                let v = reduce(f, args)?;
                self.push(v)
            }
            b'b' => {
                let state = self.pop()?;
                let obj = self.pop()?;
                let v = build(obj, state)?;
                self.push(v)
            }
            _ => Err(format!("unsupported opcode 0x{op:02x}")),
        }
    }

    fn append(&mut self, items: Vec<Value>) -> Result<(), String> {
        match self.stack.last_mut() {
            Some(Value::List(list)) => {
                list.extend(items);
                Ok(())
            }
            _ => Err("APPEND to something that is not a list".into()),
        }
    }

    fn set_items(&mut self, items: Vec<Value>) -> Result<(), String> {
        if items.len() % 2 != 0 {
            return Err("SETITEMS with an odd number of values".into());
        }
        let Some(Value::Dict(dict)) = self.stack.last_mut() else {
            return Err("SETITEM on something that is not a dict".into());
        };
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            dict.push((k, v));
        }
        Ok(())
    }
}

fn global(module: &str, name: &str) -> Result<Value, String> {
    let numpy = matches!(
        module,
        "numpy.core.multiarray"
            | "numpy._core.multiarray"
            | "numpy"
            | "numpy.core.numeric"
            | "numpy._core.numeric"
    );
    let c = match (module, name) {
        (_, "_reconstruct") if numpy => Callable::Reconstruct,
        (_, "_frombuffer") if numpy => Callable::FromBuffer,
        ("numpy", "ndarray") => Callable::Ndarray,
        ("numpy", "dtype") => Callable::Dtype,
        ("_codecs", "encode") => Callable::CodecsEncode,
        _ => {
            return Err(format!(
                "the pickle names {module}.{name}, which a dataset file should not"
            ))
        }
    };
    Ok(Value::Global(c))
}

fn reduce(f: Value, args: Value) -> Result<Value, String> {
    let args = args
        .items()
        .ok_or("REDUCE without an argument tuple")?
        .to_vec();
    match (f, args.as_slice()) {
        (Value::Global(Callable::Reconstruct), [Value::Global(Callable::Ndarray), ..]) => {
            Ok(Value::Array(Array {
                dtype: "u1".into(),
                shape: Vec::new(),
                data: Rc::new(Vec::new()),
            }))
        }
        (Value::Global(Callable::Dtype), [code, ..]) => Ok(Value::Dtype(
            code.text().ok_or("numpy.dtype without a type code")?,
        )),
        (Value::Global(Callable::CodecsEncode), [Value::Str(s), enc])
            if enc.text().as_deref() == Some("latin1") =>
        {
            let bytes: Option<Vec<u8>> =
                s.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect();
            Ok(Value::Bytes(Rc::new(
                bytes.ok_or("_codecs.encode of a non-latin1 string")?,
            )))
        }
        (
            Value::Global(Callable::FromBuffer),
            [Value::Bytes(data), Value::Dtype(code), shape, order],
        ) => {
            if order.text().as_deref() != Some("C") {
                return Err("a Fortran-order array".into());
            }
            array(code, shape, data.clone())
        }
        (f, _) => Err(format!("unsupported call of {f:?}")),
    }
}

fn build(obj: Value, state: Value) -> Result<Value, String> {
    match (obj, state.items()) {
        // (version, shape, dtype, is_fortran, data)
        (Value::Array(_), Some([_, shape, Value::Dtype(code), fortran, Value::Bytes(data)])) => {
            if *fortran == Value::Bool(true) {
                return Err("a Fortran-order array".into());
            }
            array(code, shape, data.clone())
        }
        (Value::Array(_), _) => {
            Err("an array whose data is not raw bytes (an object array?)".into())
        }
        // (version, byte order, ...): only little-endian or not applicable.
        (Value::Dtype(code), Some([_, order, ..])) => match order.text().as_deref() {
            Some(">") => Err(format!("big-endian dtype {code}")),
            _ => Ok(Value::Dtype(code)),
        },
        (obj, _) => Err(format!("BUILD of {obj:?}")),
    }
}

fn array(code: &str, shape: &Value, data: Rc<Vec<u8>>) -> Result<Value, String> {
    let shape: Vec<usize> = shape
        .ints()
        .ok_or("an array shape that is not a tuple of ints")?
        .into_iter()
        .map(usize::try_from)
        .collect::<Result<_, _>>()
        .map_err(|_| "a negative array dimension")?;
    let size = Array::item_size(code).ok_or_else(|| format!("unsupported dtype {code}"))?;
    let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if numel.and_then(|n| n.checked_mul(size)) != Some(data.len()) {
        return Err(format!(
            "an array of shape {shape:?} and dtype {code} with {} bytes",
            data.len()
        ));
    }
    Ok(Value::Array(Array {
        dtype: code.to_string(),
        shape,
        data,
    }))
}
