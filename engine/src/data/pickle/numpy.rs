//! The only globals a data pickle may call: NumPy's array and dtype constructors and
//! `_codecs.encode`. Anything else is refused.

use std::rc::Rc;

use super::value::{Array, Callable, Value};

pub(super) fn global(module: &str, name: &str) -> Result<Value, String> {
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

pub(super) fn reduce(f: Value, args: Value) -> Result<Value, String> {
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

pub(super) fn build(obj: Value, state: Value) -> Result<Value, String> {
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
