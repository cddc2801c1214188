//! The safetensors reader that checkpoints use (`checkpoint::parse_tensors`) on arbitrary bytes:
//! a length-prefixed JSON header and the data it describes. It must return the tensors or an
//! error, never panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use metaloop_engine::checkpoint;

fuzz_target!(|data: &[u8]| {
    if let Ok(tensors) = checkpoint::parse_tensors(data) {
        for (_, t) in tensors {
            let _ = t.numel();
        }
    }
});
