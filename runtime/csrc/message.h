// The shims' error messages: a malloc'd, NUL-terminated copy that Rust reads and hands back to
// metaloop_free_message (fused_step.cpp) exactly once (runtime::kernels::shim_message).
#pragma once

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

inline char* metaloop_copy_message(const char* msg) {
  size_t n = std::strlen(msg);
  char* out = static_cast<char*>(std::malloc(n + 1));
  if (out) std::memcpy(out, msg, n + 1);
  return out;
}

// Runs `body` (a shim's work, returning null on success) and turns any exception it throws into a
// message: libtorch's without its backtrace, or "<op>: unknown C++ exception". No exception
// crosses the C boundary.
template <typename Body>
char* metaloop_catch(const char* op, Body&& body) {
  try {
    return body();
  } catch (const c10::Error& e) {
    return metaloop_copy_message(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return metaloop_copy_message(e.what());
  } catch (...) {
    return metaloop_copy_message((std::string(op) + ": unknown C++ exception").c_str());
  }
}
