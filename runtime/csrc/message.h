// The shims' error messages: a malloc'd, NUL-terminated copy that Rust reads and hands back to
// metaloop_free_message (fused_step.cpp) exactly once (runtime::kernels::shim_message).
#pragma once

#include <cstdlib>
#include <cstring>

inline char* metaloop_copy_message(const char* msg) {
  size_t n = std::strlen(msg);
  char* out = static_cast<char*>(std::malloc(n + 1));
  if (out) std::memcpy(out, msg, n + 1);
  return out;
}
