// metaloop's fused optimizer step as a libtorch autograd function.
//
// The shim owns the autograd bookkeeping only: it checks and lays out the tensors (contiguous; a
// hyperparameter passed as one element, one per row ([T, 1]), one per element of a row ([P] for θ
// [T, P]) or expanded to θ's shape), allocates the outputs, saves the inputs for backward, and
// reduces each hyperparameter's hypergradient to the hyperparameter's shape: on the CPU the
// kernels sum the gradient of a one-value or per-row hyperparameter themselves (f64 partial sums
// per chunk, added up here); otherwise a per-element buffer goes through at::sum_to. The arithmetic of every step,
// forward and backward, is done by the kernel function that Rust passes in (runtime::kernels):
// Rust CPU loops, or CUDA kernels compiled with NVRTC and launched by Rust on the stream given
// here. It never computes an update itself and never keeps a tensor between calls.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <dlfcn.h>

#include "message.h"
#include "step_params.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#ifdef METALOOP_CUDA_STREAM
#include <c10/cuda/CUDAStream.h>
#endif

extern "C" {

enum { METALOOP_MAX_IN = 16, METALOOP_MAX_OUT = 8 };
// A bit of the op code given to metaloop_fused_step: the gradient of θ is the gradient of θ' (no
// weight decay), so the backward passes it on instead of having the kernel write a copy.
enum { METALOOP_THETA_GRAD_PASSES = 1 << 8 };

// One kernel launch, forward (pass 0) or backward (pass 1). Mirrored by runtime::kernels::ffi.
struct MetaloopKernelCall {
  int32_t op;
  int32_t pass;
  int32_t dtype;   // 0: f32, 1: f64
  int32_t device;  // -1: CPU, else the CUDA device index
  void* stream;    // the CUDA stream (null: the legacy default stream)
  int64_t numel;
  int64_t row_len;  // θ's last dimension (1 for a 0-d θ)
  // CPU: the element range [begin, end) this call covers, chunk `chunk` of kGrain elements
  // (libtorch's intra-op threads split the chunks with at::parallel_for, so the kernels share
  // libtorch's thread pool instead of competing with it). CUDA: 0, numel and 0.
  int64_t begin;
  int64_t end;
  int64_t chunk;
  int32_t n_in;
  int32_t n_out;
  // Inputs: θ, g, the state buffers, the hyperparameter slots (null: undefined / a constant).
  const void* in[METALOOP_MAX_IN];
  // 0: one value for all (a tensor with one element); 1: one value per element, laid out like θ;
  // 2: one per element of a row (element i % row_len); 3: one per row (element i / row_len).
  int64_t in_mode[METALOOP_MAX_IN];
  // Backward: the gradient of each forward output (null: none was produced).
  const void* grad_out[METALOOP_MAX_OUT];
  // Forward: the outputs (θ' and the new state). Backward: the gradient of each input, one value
  // per element, or f64 partial sums where out_reduced (null: not needed).
  void* out[METALOOP_MAX_IN];
  // Backward, CPU: 1 where out is a zeroed f64 [chunks, 1] (layout 0) or [chunks, rows] (layout 3)
  // buffer of partial sums, each chunk adding into its own row.
  int64_t out_reduced[METALOOP_MAX_IN];
  // The step's constants: the constant hyperparameters and the options.
  MetaloopStepParams params;
};

// Returns 0 on success; otherwise writes a message (NUL-terminated) into err.
typedef int32_t (*metaloop_kernel_fn)(const MetaloopKernelCall*, char* err, size_t err_len);
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct Prepared {
  std::vector<at::Tensor> tensors;  // what the kernel reads (kept alive during the call)
  MetaloopKernelCall call;
  int64_t rows = 1;
  int64_t n_chunks = 1;
};

// Elements per chunk (one at::parallel_for task) on the CPU: buffers below it run on one thread.
constexpr int64_t kGrain = 1 << 15;

void* stream_for(const at::Tensor& theta) {
#ifdef METALOOP_CUDA_STREAM
  if (theta.is_cuda()) {
    return reinterpret_cast<void*>(c10::cuda::getCurrentCUDAStream(theta.get_device()).stream());
  }
#endif
  (void)theta;
  return nullptr;
}

// Lays out the inputs for the kernel: θ's dtype and device, contiguous, without expanding what
// the kernel can index directly: a one-element tensor stays one element (layout 0), a tensor of
// one value per row ([T, 1]) or one per element of a row ([P], [1, P]) stays as it is (layouts 3
// and 2); anything else is expanded to θ's shape (layout 1).
Prepared prepare(int64_t op, int32_t pass, const variable_list& inputs, const std::vector<int64_t>& params) {
  TORCH_CHECK(inputs.size() >= 2 && inputs.size() <= METALOOP_MAX_IN,
              "fused optimizer step: between 2 and ", METALOOP_MAX_IN, " inputs, got ", inputs.size());
  TORCH_CHECK(params.size() * sizeof(int64_t) == sizeof(MetaloopStepParams),
              "fused optimizer step: the step's constants have the wrong size");
  const at::Tensor& theta = inputs[0];
  TORCH_CHECK(theta.defined(), "fused optimizer step: θ is undefined");
  auto dtype = theta.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble,
              "fused optimizer step: θ must be f32 or f64, got ", dtype);
  TORCH_CHECK(theta.is_cpu() || theta.is_cuda(), "fused optimizer step: θ must be on the CPU or CUDA, got ",
              theta.device());
  Prepared p;
  std::memset(&p.call, 0, sizeof(p.call));
  p.call.op = static_cast<int32_t>(op & 0xff);
  p.call.pass = pass;
  p.call.dtype = dtype == at::kFloat ? 0 : 1;
  p.call.device = theta.is_cuda() ? theta.get_device() : -1;
  p.call.stream = stream_for(theta);
  p.call.numel = theta.numel();
  p.call.row_len = theta.dim() > 0 ? theta.size(-1) : 1;
  if (p.call.row_len == 0) p.call.row_len = 1;
  p.rows = p.call.numel / p.call.row_len;
  if (p.call.device < 0) p.n_chunks = std::max<int64_t>(1, (p.call.numel + kGrain - 1) / kGrain);
  std::vector<int64_t> per_row(theta.sizes().begin(), theta.sizes().end());
  if (!per_row.empty()) per_row.back() = 1;
  p.call.n_in = static_cast<int32_t>(inputs.size());
  std::memcpy(&p.call.params, params.data(), sizeof(MetaloopStepParams));
  for (size_t i = 0; i < inputs.size(); ++i) {
    const at::Tensor& t = inputs[i];
    if (!t.defined()) {
      p.tensors.emplace_back();
      continue;
    }
    TORCH_CHECK(t.device() == theta.device(), "fused optimizer step: input ", i, " is on ", t.device(),
                ", θ on ", theta.device());
    TORCH_CHECK(t.scalar_type() == dtype, "fused optimizer step: input ", i, " is ", t.scalar_type(),
                ", θ is ", dtype);
    at::Tensor laid;
    if (t.numel() == 1 && theta.numel() != 1) {
      laid = t.reshape({1}).contiguous();
      p.call.in_mode[i] = 0;
    } else if (t.sizes() == theta.sizes()) {
      laid = t.contiguous();
      p.call.in_mode[i] = 1;
    } else if (p.rows > 1 && t.dim() <= theta.dim() && t.numel() == p.call.row_len &&
               t.size(-1) == p.call.row_len) {
      laid = t.contiguous();
      p.call.in_mode[i] = 2;
    } else if (p.rows > 1 && t.sizes() == at::IntArrayRef(per_row)) {
      laid = t.contiguous();
      p.call.in_mode[i] = 3;
    } else {
      laid = t.expand(theta.sizes()).contiguous();
      p.call.in_mode[i] = 1;
    }
    p.call.in[i] = laid.data_ptr();
    p.tensors.push_back(std::move(laid));
  }
  return p;
}

void launch_range(metaloop_kernel_fn kernel, MetaloopKernelCall call, int64_t begin, int64_t end,
                  int64_t chunk) {
  call.begin = begin;
  call.end = end;
  call.chunk = chunk;
  char err[1024];
  err[0] = 0;
  int32_t rc = kernel(&call, err, sizeof(err));
  TORCH_CHECK(rc == 0, "fused optimizer step (op ", call.op, ", pass ", call.pass, "): ", err);
}

void launch(metaloop_kernel_fn kernel, const Prepared& p) {
  const MetaloopKernelCall& call = p.call;
  if (call.device >= 0 || p.n_chunks == 1) {
    launch_range(kernel, call, 0, call.numel, 0);
  } else {
    at::parallel_for(0, p.n_chunks, 1, [&](int64_t first, int64_t last) {
      for (int64_t c = first; c < last; ++c) {
        launch_range(kernel, call, c * kGrain, std::min(call.numel, (c + 1) * kGrain), c);
      }
    });
  }
}

struct FusedStep : public torch::autograd::Function<FusedStep> {
  // `present` comes first so that its indices are the autograd edge indices: the defined inputs
  // only (autograd cannot take an undefined tensor as an input), in slot order; `slots` gives each
  // one's slot, `n_slots` the number of slots. It is a TensorList: autograd's argument walk takes
  // each element of a TensorList as an input (a std::vector would count as one non-tensor
  // argument, and nothing would be tracked).
  static variable_list forward(AutogradContext* ctx, at::TensorList present, std::vector<int64_t> slots,
                               int64_t n_slots, int64_t op, std::vector<int64_t> params, int64_t n_out,
                               int64_t kernel_addr) {
    auto kernel = reinterpret_cast<metaloop_kernel_fn>(kernel_addr);
    variable_list inputs(static_cast<size_t>(n_slots));
    for (size_t k = 0; k < slots.size(); ++k) inputs[slots[k]] = present[k];
    TORCH_CHECK(n_out >= 1 && n_out <= METALOOP_MAX_OUT, "fused optimizer step: 1 to ",
                METALOOP_MAX_OUT, " outputs, got ", n_out);
    Prepared p = prepare(op, 0, inputs, params);
    const at::Tensor& theta = inputs[0];
    variable_list outputs;
    for (int64_t j = 0; j < n_out; ++j) {
      outputs.push_back(at::empty(theta.sizes(), theta.options()));
      p.call.out[j] = outputs.back().data_ptr();
    }
    p.call.n_out = static_cast<int32_t>(n_out);
    launch(kernel, p);
    ctx->save_for_backward(present.vec());
    ctx->saved_data["slots"] = slots;
    ctx->saved_data["n_slots"] = n_slots;
    ctx->saved_data["op"] = op;
    ctx->saved_data["params"] = params;
    ctx->saved_data["n_out"] = n_out;
    ctx->saved_data["kernel"] = kernel_addr;
    return outputs;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    variable_list present = ctx->get_saved_variables();
    std::vector<int64_t> slots = ctx->saved_data["slots"].toIntVector();
    variable_list inputs(static_cast<size_t>(ctx->saved_data["n_slots"].toInt()));
    for (size_t k = 0; k < slots.size(); ++k) inputs[slots[k]] = present[k];
    int64_t op = ctx->saved_data["op"].toInt();
    std::vector<int64_t> params = ctx->saved_data["params"].toIntVector();
    int64_t n_out = ctx->saved_data["n_out"].toInt();
    auto kernel = reinterpret_cast<metaloop_kernel_fn>(ctx->saved_data["kernel"].toInt());
    if (at::GradMode::is_enabled()) {
      bool tracked = false;
      for (const auto& g : grad_outputs) tracked = tracked || (g.defined() && g.requires_grad());
      for (const auto& t : inputs) tracked = tracked || (t.defined() && t.requires_grad());
      TORCH_CHECK(!tracked,
                  "the fused optimizer step's backward is not itself differentiable (create_graph "
                  "through an optimizer step); build the optimizer with .fused(false) for that");
    }
    Prepared p = prepare(op, 1, inputs, params);
    const at::Tensor& theta = inputs[0];
    TORCH_CHECK(static_cast<int64_t>(grad_outputs.size()) == n_out, "fused optimizer step: ",
                grad_outputs.size(), " output gradients for ", n_out, " outputs");
    std::vector<at::Tensor> gouts;
    for (int64_t j = 0; j < n_out; ++j) {
      at::Tensor g = grad_outputs[j];
      if (g.defined()) {
        g = g.to(theta.scalar_type()).expand(theta.sizes()).contiguous();
        p.call.grad_out[j] = g.data_ptr();
      }
      gouts.push_back(g);
    }
    p.call.n_out = static_cast<int32_t>(n_out);
    std::vector<at::Tensor> per_element(slots.size());
    std::vector<at::Tensor> partial(slots.size());
    const bool theta_passes = (op & METALOOP_THETA_GRAD_PASSES) != 0;
    for (size_t k = 0; k < slots.size(); ++k) {
      if (!ctx->needs_input_grad(k)) continue;
      if (slots[k] == 0 && theta_passes) continue;
      int64_t slot = slots[k];
      int64_t mode = p.call.in_mode[slot];
      if (p.call.device < 0 && (mode == 0 || mode == 3)) {
        partial[k] = at::zeros({p.n_chunks, mode == 0 ? 1 : p.rows}, theta.options().dtype(at::kDouble));
        p.call.out[slot] = partial[k].data_ptr();
        p.call.out_reduced[slot] = 1;
      } else {
        per_element[k] = at::empty(theta.sizes(), theta.options());
        p.call.out[slot] = per_element[k].data_ptr();
      }
    }
    launch(kernel, p);
    // One gradient per forward argument: each present input, then the 6 non-tensor arguments.
    variable_list grads;
    for (size_t k = 0; k < slots.size(); ++k) {
      if (slots[k] == 0 && theta_passes && ctx->needs_input_grad(k)) {
        grads.push_back(grad_outputs[0]);
      } else if (partial[k].defined()) {
        grads.push_back(partial[k].sum(0).to(theta.scalar_type()).reshape(present[k].sizes()));
      } else if (!per_element[k].defined()) {
        grads.emplace_back();
      } else if (present[k].sizes() == theta.sizes()) {
        grads.push_back(per_element[k]);
      } else {
        grads.push_back(at::sum_to(per_element[k], present[k].sizes()));
      }
    }
    for (int k = 0; k < 6; ++k) grads.emplace_back();
    return grads;
  }
};

}  // namespace

extern "C" {

// Runs one fused optimizer step through the autograd function. `inputs[i]` may be null (an
// undefined tensor: an absent state buffer or a constant hyperparameter). On success writes
// `n_out` new tensors (owned by the caller, freed by tch) into `outputs` and returns null; on
// failure returns a message to free with metaloop_free_message.
char* metaloop_fused_step(int32_t op, const at::Tensor* const* inputs, int32_t n_in,
                          const MetaloopStepParams* params, int32_t n_out, metaloop_kernel_fn kernel,
                          at::Tensor** outputs) {
  return metaloop_catch("fused optimizer step", [&]() -> char* {
    variable_list present;
    std::vector<int64_t> slots;
    for (int32_t i = 0; i < n_in; ++i) {
      if (inputs[i] && inputs[i]->defined()) {
        present.push_back(*inputs[i]);
        slots.push_back(i);
      }
    }
    // Saved for the backward as 64-bit words (an autograd context keeps IValues), bit for bit.
    static_assert(sizeof(MetaloopStepParams) % sizeof(int64_t) == 0, "whole words");
    std::vector<int64_t> words(sizeof(MetaloopStepParams) / sizeof(int64_t));
    std::memcpy(words.data(), params, sizeof(MetaloopStepParams));
    variable_list out = FusedStep::apply(at::TensorList(present), slots, static_cast<int64_t>(n_in),
                                         static_cast<int64_t>(op), words, static_cast<int64_t>(n_out),
                                         reinterpret_cast<int64_t>(kernel));
    TORCH_CHECK(static_cast<int32_t>(out.size()) == n_out, "fused optimizer step: ", out.size(),
                " outputs for ", n_out);
    for (int32_t j = 0; j < n_out; ++j) outputs[j] = new at::Tensor(out[j]);
    return nullptr;
  });
}

void metaloop_free_message(char* msg) { std::free(msg); }

// Loads a shared library by path, globally, so that a later dlopen by its soname (cudarc's
// loader asking for libnvrtc.so.13) finds it. Returns 0 on success.
int32_t metaloop_preload_library(const char* path) {
  return dlopen(path, RTLD_NOW | RTLD_GLOBAL) ? 0 : 1;
}

// 1 when the shim was built with the CUDA headers and launches on libtorch's current stream;
// 0 when it passes the legacy default stream.
int32_t metaloop_shim_current_stream() {
#ifdef METALOOP_CUDA_STREAM
  return 1;
#else
  return 0;
#endif
}

}  // extern "C"
