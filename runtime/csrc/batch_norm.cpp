// BatchNorm with batch statistics as a libtorch autograd function whose backward is itself an
// autograd function with a hand-derived double backward (runtime::kernels::batch_norm).
//
// Second-order MAML differentiates every inner step's backward pass, so BatchNorm's backward is
// differentiated once more per inner step. libtorch's generic formula for that (FunctionsManual's
// batchnorm_double_backward) runs about forty tensor ops per call (what that cost a Conv-4
// meta-iteration is in benches/README.md). Here the forward and the first backward are libtorch's fused kernels
// (native_batch_norm, native_batch_norm_backward), and the double backward is the closed form
// below: five per-channel sums, then two elementwise expressions.
//
// Per channel, with N elements, r = 1/sqrt(var + eps), x^ = (x - mean) r, and the backward
//   db = sum dy,  dw = sum dy x^,  dx = w r (dy - mean(dy) - x^ mean(dy x^)),
// given the gradients a (of dx), p (of dw), q (of db), the double backward is
//   A = mean(a x^),  M = mean(dy x^),  L = w r N (mean(a dy) - mean(a) mean(dy) - M A)  (= sum a dx)
//   g_dy = w r (a - mean(a) - x^ A) + p x^ + q
//   g_w  = L / w  (computed as r N (...))
//   G    = (p - w r A) dy - w r M a
//   g_x  = r (G - mean(G) - x^ mean(G x^)) - (L r / N) x^
// (mean(G) and mean(G x^) come with libtorch's fused backward kernel applied to G). The derivation
// uses d x^_j / d x_i = r (delta_ij - 1/N - x^_i x^_j / N) and d r / d x_i = -r^2 x^_i / N.

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include "message.h"

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::Function;
using torch::autograd::variable_list;

// [C] -> [1, C, 1, ...] to broadcast over [B, C, ...].
at::Tensor per_channel(const at::Tensor& v, int64_t dims) {
  std::vector<int64_t> shape(static_cast<size_t>(dims), 1);
  shape[1] = -1;
  return v.view(shape);
}

std::vector<int64_t> reduced_dims(const at::Tensor& x) {
  std::vector<int64_t> dims{0};
  for (int64_t d = 2; d < x.dim(); ++d) dims.push_back(d);
  return dims;
}

struct BatchNormBackward : public Function<BatchNormBackward> {
  static variable_list forward(AutogradContext* ctx, at::Tensor dy_in, at::Tensor x, at::Tensor weight,
                               at::Tensor mean, at::Tensor invstd, double eps) {
    // libtorch's fused CPU kernels need the gradient in x's memory layout (else a serial
    // fallback loop runs; benches/README.md): one copy is cheaper.
    at::Tensor dy = dy_in.contiguous(x.suggest_memory_format());
    auto out = at::native_batch_norm_backward(dy, x, weight, at::Tensor(), at::Tensor(), mean, invstd,
                                              /*train=*/true, eps, {true, true, true});
    ctx->save_for_backward({dy, x, weight});
    ctx->saved_data["mean"] = mean;
    ctx->saved_data["invstd"] = invstd;
    ctx->saved_data["eps"] = eps;
    // sum dy x^ and sum dy, which the double backward needs again.
    ctx->saved_data["sum_dy_xhat"] = std::get<1>(out).detach();
    ctx->saved_data["sum_dy"] = std::get<2>(out).detach();
    return {std::get<0>(out), std::get<1>(out), std::get<2>(out)};
  }

  // The closed form of the file's header. libtorch's fused backward kernel computes the two
  // projections r (v - mean(v) - x^ mean(v x^)) (times w for v = a) and, for v = a, the sums
  // sum a x^ and sum a: two fused calls instead of a dozen elementwise ops and reductions.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor& dy = saved[0];
    const at::Tensor& x = saved[1];
    const at::Tensor& w = saved[2];
    at::Tensor mean = ctx->saved_data["mean"].toTensor();
    at::Tensor r = ctx->saved_data["invstd"].toTensor();
    const double eps = ctx->saved_data["eps"].toDouble();
    const auto layout = x.suggest_memory_format();
    const at::Tensor a = grads[0].defined() ? grads[0].contiguous(layout) : grads[0];
    const at::Tensor& p = grads[1];
    const at::Tensor& q = grads[2];
    const int64_t dims = x.dim();
    const auto red = reduced_dims(x);
    const double n = static_cast<double>(x.numel() / x.size(1));
    auto bc = [dims](const at::Tensor& v) { return per_channel(v, dims); };
    at::Tensor m = ctx->saved_data["sum_dy_xhat"].toTensor() / n;
    at::Tensor dy_mean = ctx->saved_data["sum_dy"].toTensor() / n;
    at::Tensor xhat;
    auto get_xhat = [&]() -> const at::Tensor& {
      if (!xhat.defined()) xhat = (x - bc(mean)) * bc(r);
      return xhat;
    };

    at::Tensor g_dy, g_x, g_w, l;
    // G = c1 dy + c2 a.
    at::Tensor c1 = p.defined() ? p : at::zeros_like(m);
    at::Tensor g;
    if (a.defined()) {
      auto nb = at::native_batch_norm_backward(a, x, w, at::Tensor(), at::Tensor(), mean, r,
                                               /*train=*/true, eps, {true, true, true});
      g_dy = std::get<0>(nb);  // w r (a - mean(a) - x^ A)
      at::Tensor big_a = std::get<1>(nb) / n;
      at::Tensor a_mean = std::get<2>(nb) / n;
      at::Tensor ady = (a * dy).mean(red);
      at::Tensor l_over_w = r * n * (ady - a_mean * dy_mean - m * big_a);
      g_w = l_over_w;
      l = w * l_over_w;
      at::Tensor wr = w * r;
      c1 = c1 - wr * big_a;
      g = (bc(c1) * dy + bc(-wr * m) * a).contiguous(layout);
    } else if (p.defined()) {
      g = (bc(c1) * dy).contiguous(layout);
    }
    if (g.defined()) {
      auto nb = at::native_batch_norm_backward(g, x, at::ones_like(w), at::Tensor(), at::Tensor(), mean, r,
                                               /*train=*/true, eps, {true, false, false});
      g_x = std::get<0>(nb);  // r (G - mean(G) - x^ mean(G x^))
      if (l.defined()) g_x = g_x - get_xhat() * bc(l * r / n);
    }
    if (p.defined()) {
      at::Tensor t = bc(p) * get_xhat();
      g_dy = g_dy.defined() ? g_dy + t : t;
    }
    if (q.defined()) {
      g_dy = g_dy.defined() ? g_dy + bc(q) : bc(q).expand_as(dy).clone();
    }
    return {g_dy, g_x, g_w, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

struct BatchNormTrain : public Function<BatchNormTrain> {
  static at::Tensor forward(AutogradContext* ctx, at::Tensor x, at::Tensor weight, at::Tensor bias, double eps) {
    auto out = at::native_batch_norm(x, weight, bias, at::Tensor(), at::Tensor(), /*training=*/true,
                                     /*momentum=*/0.0, eps);
    ctx->save_for_backward({x, weight});
    ctx->saved_data["mean"] = std::get<1>(out);
    ctx->saved_data["invstd"] = std::get<2>(out);
    ctx->saved_data["eps"] = eps;
    return std::get<0>(out);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    auto out = BatchNormBackward::apply(grads[0], saved[0], saved[1], ctx->saved_data["mean"].toTensor(),
                                        ctx->saved_data["invstd"].toTensor(), ctx->saved_data["eps"].toDouble());
    return {out[0], out[1], out[2], at::Tensor()};
  }
};

}  // namespace

extern "C" {

// y = batch_norm(x, weight, bias) with batch statistics, differentiable twice. On success writes
// a new tensor (owned by the caller) into *out and returns null; otherwise returns a message to
// free with metaloop_free_message (fused_step.cpp).
char* metaloop_batch_norm_train(const at::Tensor* x, const at::Tensor* weight, const at::Tensor* bias,
                                double eps, at::Tensor** out) {
  return metaloop_catch("batch_norm", [&]() -> char* {
    *out = new at::Tensor(BatchNormTrain::apply(*x, *weight, *bias, eps));
    return nullptr;
  });
}

}  // extern "C"
