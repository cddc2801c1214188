//! The data-only pickle reader (`data::pickle::read`, used for CIFAR-FS, FC100 and
//! tieredImageNet's pickles) on arbitrary bytes: it must return a value or an error, never
//! panic, never run code and never allocate what the file merely claims.

#![no_main]

use libfuzzer_sys::fuzz_target;
use metaloop_engine::data::pickle;

fuzz_target!(|data: &[u8]| {
    let _ = pickle::read(data);
});
