// A caching allocator for libtorch's CPU tensors (runtime::kernels::host_memory).
//
// libtorch's default CPU allocator hands every tensor to malloc and every freed tensor back to
// free. A meta-iteration allocates and frees the same sizes over and over (activations, their
// gradients, the optimizer's temporaries), so this allocator keeps freed blocks in free lists
// per size class and hands them out again: no malloc bookkeeping, no page faults of fresh
// pages. Size classes are 64-byte steps up to 512 bytes, then four per power of two (at most
// 25% slack). Blocks are never returned to the system while the process runs (unless
// metaloop_host_cache_empty is called): the cache holds, for each size class, at most the most
// blocks of that class the process ever had in use at once. A fixed-shape training loop reuses the
// same classes every iteration; a process whose shapes change (say, a meta-test with other batch
// sizes) can hold the peaks of both phases, and may call empty_host_cache in between.
//
// Each block starts with a 64-byte header holding its size class, so the data pointer keeps the
// 64-byte alignment of c10's allocator and is also the DataPtr's context (libtorch's raw
// allocate/deallocate need that).

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace {

constexpr size_t kHeader = 64;

size_t size_class(size_t n) {
  if (n <= 512) {
    return (n + 63) & ~size_t(63);
  }
  // The largest power of two below n, then steps of a quarter of it.
  int k = 63 - __builtin_clzll(static_cast<unsigned long long>(n - 1));
  size_t step = size_t(1) << (k - 2);
  return (n + step - 1) & ~(step - 1);
}

class CachingHostAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    size_t cls = size_class(n == 0 ? 1 : n);
    void* base = nullptr;
    {
      std::lock_guard<std::mutex> guard(mutex_);
      auto it = free_.find(cls);
      if (it != free_.end() && !it->second.empty()) {
        base = it->second.back();
        it->second.pop_back();
        cached_bytes_ -= cls;
      }
    }
    if (base == nullptr) {
      base = fresh(cls + kHeader);
    }
    *static_cast<size_t*>(base) = cls;
    void* data = static_cast<char*>(base) + kHeader;
    return {data, data, &CachingHostAllocator::release, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override {
    return &CachingHostAllocator::release;
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  static CachingHostAllocator& instance() {
    // Never destroyed: tensors may be freed during static destruction at exit.
    static CachingHostAllocator* one = new CachingHostAllocator();
    return *one;
  }

  int64_t cached_bytes() {
    std::lock_guard<std::mutex> guard(mutex_);
    return static_cast<int64_t>(cached_bytes_);
  }

  // Frees every cached block back to the system.
  void empty_cache() {
    std::unordered_map<size_t, std::vector<void*>> blocks;
    {
      std::lock_guard<std::mutex> guard(mutex_);
      blocks.swap(free_);
      cached_bytes_ = 0;
    }
    for (auto& entry : blocks) {
      for (void* base : entry.second) {
        c10::free_cpu(base);
      }
    }
  }

 private:
  // A new block from the system. When the system refuses (a memory limit), the cached blocks
  // of every size class go back first, so their memory can serve this request, and the
  // allocation is tried once more; a second refusal is libtorch's "can't allocate memory".
  void* fresh(size_t bytes) {
    try {
      return c10::alloc_cpu(bytes);
    } catch (const c10::Error&) {
      empty_cache();
      return c10::alloc_cpu(bytes);
    }
  }

  static void release(void* data) {
    if (data == nullptr) {
      return;
    }
    void* base = static_cast<char*>(data) - kHeader;
    size_t cls = *static_cast<size_t*>(base);
    CachingHostAllocator& self = instance();
    std::lock_guard<std::mutex> guard(self.mutex_);
    self.free_[cls].push_back(base);
    self.cached_bytes_ += cls;
  }

  std::mutex mutex_;
  std::unordered_map<size_t, std::vector<void*>> free_;
  size_t cached_bytes_ = 0;
};

}  // namespace

extern "C" {

// Makes the caching allocator libtorch's CPU allocator (priority above the default's). Tensors
// allocated before keep their own deleter. Returns 1.
int metaloop_install_caching_host_allocator() {
  c10::SetCPUAllocator(&CachingHostAllocator::instance(), /*priority=*/10);
  return 1;
}

// Bytes held in the free lists (not in use by any tensor).
int64_t metaloop_host_cache_bytes() {
  return CachingHostAllocator::instance().cached_bytes();
}

// Returns every cached block to the system.
void metaloop_host_cache_empty() {
  CachingHostAllocator::instance().empty_cache();
}

}  // extern "C"
