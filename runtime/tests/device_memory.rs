//! runtime::device_memory: the CUDA caching allocator's counters through the C++ shim. On the CPU
//! (and for a CUDA index this process does not see) every call answers "no counter"; on CUDA a
//! 64 MiB tensor moves the peak by 64 MiB, and a reset brings the peak back to what is allocated.

use metaloop_runtime::device_memory;
use tch::{Device, Kind, Tensor};

#[test]
fn no_counters_without_a_cuda_device() {
    assert_eq!(device_memory::stats(Device::Cpu).unwrap(), None);
    assert_eq!(device_memory::peak_bytes(Device::Cpu), None);
    assert!(!device_memory::reset_peak(Device::Cpu));
    let unseen = Device::Cuda(tch::Cuda::device_count() as usize);
    assert_eq!(device_memory::stats(unseen).unwrap(), None);
    assert_eq!(device_memory::peak_mib(unseen), None);
    assert!(!device_memory::reset_peak(unseen));
}

/// NOT YET RUN ON CUDA.
#[test]
fn a_tensor_moves_the_peak_on_cuda() {
    if !tch::Cuda::is_available() {
        return;
    }
    let cuda = Device::Cuda(0);
    const MIB64: u64 = 64 << 20;
    // CUDA is initialised by the first allocation; the counters exist from then on.
    let warm = Tensor::zeros([1], (Kind::Float, cuda));
    assert!(device_memory::reset_peak(cuda));
    let before = device_memory::stats(cuda)
        .unwrap()
        .expect("counters on CUDA");
    assert_eq!(before.peak_allocated, before.allocated);
    let big = Tensor::zeros([(MIB64 / 4) as i64], (Kind::Float, cuda));
    let during = device_memory::stats(cuda).unwrap().unwrap();
    assert!(during.allocated >= before.allocated + MIB64, "{during:?}");
    assert!(during.reserved >= during.allocated, "{during:?}");
    drop(big);
    let after = device_memory::stats(cuda).unwrap().unwrap();
    assert_eq!(after.allocated, before.allocated, "{after:?}");
    assert!(
        after.peak_allocated >= before.allocated + MIB64,
        "{after:?}"
    );
    assert_eq!(device_memory::peak_bytes(cuda), Some(after.peak_allocated));
    assert!(device_memory::reset_peak(cuda));
    let reset = device_memory::stats(cuda).unwrap().unwrap();
    assert_eq!(reset.peak_allocated, reset.allocated, "{reset:?}");
    drop(warm);
}
