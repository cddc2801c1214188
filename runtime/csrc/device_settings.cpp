// Device-wide settings and statistics of libtorch that tch does not expose
// (runtime::device_memory and runtime::precision).
//
// Memory: the statistics of the CUDA caching allocator (what torch.cuda.max_memory_allocated
// reads). They are reached through c10's device-generic allocator interface
// (c10/core/CachingDeviceAllocator.h: c10::getDeviceAllocator(kCUDA) is the same object as
// c10::cuda::CUDACachingAllocator::get()), so this file needs no CUDA header and compiles in
// every build. When libtorch has no CUDA allocator (a CPU-only libtorch) or CUDA was never
// initialised (no device), the calls answer "unavailable" instead of touching it.
//
// Precision: libtorch's process-wide TF32 switches (at::globalContext()): cuDNN's (convolutions),
// cuBLAS's (matrix products) and oneDNN's (CPU).
//
// Every function catches libtorch's exceptions and returns a status; none of them throws.
#include <ATen/Context.h>
#include <c10/core/CachingDeviceAllocator.h>

#include <cstdint>
#include <cstring>
#include <exception>

extern "C" {

// The CUDA caching allocator's byte counters of one device. Mirrored by
// runtime::kernels::device_ffi::DeviceMemoryStats.
struct MetaloopDeviceMemoryStats {
  int64_t allocated;       // bytes in tensors now
  int64_t peak_allocated;  // most bytes in tensors at once since the last reset
  int64_t reserved;        // bytes held from the driver now (in tensors or cached)
  int64_t peak_reserved;   // most bytes held from the driver since the last reset
};

}  // extern "C"

namespace {

void write_message(const char* text, char* err, size_t err_len) {
  if (err == nullptr || err_len == 0) {
    return;
  }
  std::strncpy(err, text, err_len - 1);
  err[err_len - 1] = '\0';
}

// The CUDA device allocator when it exists and is initialised; else null.
c10::DeviceAllocator* cuda_allocator() {
  c10::Allocator* any = c10::GetAllocator(c10::DeviceType::CUDA);
  auto* device = dynamic_cast<c10::DeviceAllocator*>(any);
  if (device == nullptr || !device->initialized()) {
    return nullptr;
  }
  return device;
}

}  // namespace

extern "C" {

// 1: `out` holds device `device`'s counters. 0: unavailable (no CUDA allocator, or CUDA not
// initialised). -1: libtorch refused (message in err; e.g. a device index out of range).
int32_t metaloop_cuda_memory_stats(int32_t device, MetaloopDeviceMemoryStats* out, char* err,
                                   size_t err_len) {
  try {
    c10::DeviceAllocator* alloc = cuda_allocator();
    if (alloc == nullptr) {
      return 0;
    }
    const auto stats = alloc->getDeviceStats(static_cast<c10::DeviceIndex>(device));
    const auto all = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    out->allocated = stats.allocated_bytes[all].current;
    out->peak_allocated = stats.allocated_bytes[all].peak;
    out->reserved = stats.reserved_bytes[all].current;
    out->peak_reserved = stats.reserved_bytes[all].peak;
    return 1;
  } catch (const std::exception& e) {
    write_message(e.what(), err, err_len);
    return -1;
  }
}

// Sets device `device`'s peaks to the current values. Same return codes as above.
int32_t metaloop_cuda_memory_reset_peak(int32_t device, char* err, size_t err_len) {
  try {
    c10::DeviceAllocator* alloc = cuda_allocator();
    if (alloc == nullptr) {
      return 0;
    }
    alloc->resetPeakStats(static_cast<c10::DeviceIndex>(device));
    return 1;
  } catch (const std::exception& e) {
    write_message(e.what(), err, err_len);
    return -1;
  }
}

// The driver's free and total bytes of device `device` (cudaMemGetInfo, as
// torch.cuda.mem_get_info). Same return codes as above.
int32_t metaloop_cuda_memory_info(int32_t device, int64_t* free_bytes, int64_t* total_bytes,
                                  char* err, size_t err_len) {
  try {
    c10::DeviceAllocator* alloc = cuda_allocator();
    if (alloc == nullptr) {
      return 0;
    }
    const auto info = alloc->getMemoryInfo(static_cast<c10::DeviceIndex>(device));
    *free_bytes = static_cast<int64_t>(info.first);
    *total_bytes = static_cast<int64_t>(info.second);
    return 1;
  } catch (const std::exception& e) {
    write_message(e.what(), err, err_len);
    return -1;
  }
}

// TF32 switches, each -1 (leave as is), 0 (off) or 1 (on). Returns the switches as they are
// afterwards, as bits: 1 cuDNN, 2 cuBLAS, 4 oneDNN; -1 when libtorch refused (message in err).
int32_t metaloop_set_tf32(int32_t cudnn, int32_t cublas, int32_t onednn, char* err,
                          size_t err_len) {
  try {
    auto& ctx = at::globalContext();
    if (cudnn >= 0) {
      ctx.setAllowTF32CuDNN(cudnn != 0);
    }
    if (cublas >= 0) {
      ctx.setAllowTF32CuBLAS(cublas != 0);
    }
    if (onednn >= 0) {
      ctx.setAllowTF32OneDNN(onednn != 0);
    }
    return (ctx.allowTF32CuDNN() ? 1 : 0) | (ctx.allowTF32CuBLAS() ? 2 : 0) |
           (ctx.allowTF32OneDNN() ? 4 : 0);
  } catch (const std::exception& e) {
    write_message(e.what(), err, err_len);
    return -1;
  }
}

}  // extern "C"
