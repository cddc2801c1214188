//! The pickle machine: opcodes read one by one onto a stack and a memo, with bounds on both.

use std::collections::HashMap;
use std::io::{BufRead, Read};
use std::rc::Rc;

use super::numpy::{build, global, reduce};
use super::value::Value;

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
        if mark > self.stack.len() {
            return Err("stack underflow past a mark".into());
        }
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
                // Like CPython's unpickler, TUPLE1..3 take only what lies above the last mark.
                let floor = self.marks.last().copied().unwrap_or(0);
                if self.stack.len() < floor + n {
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
