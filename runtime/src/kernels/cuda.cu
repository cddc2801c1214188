// metaloop's fused optimizer steps in CUDA C, compiled at run time with NVRTC (runtime::kernels::cuda).
// Each element's arithmetic is the same as runtime/src/kernels/cpu.rs, operation for operation (the
// options are runtime flags here, uniform over a launch; the CPU code makes them const generics).
// The argument layout mirrors runtime::kernels::cuda::Args; MetaloopStepParams comes from
// runtime/csrc/step_params.h, which runtime::kernels::cuda puts in front of this source. On CUDA the shim never asks for partial
// sums: every gradient is one value per element (reduced by the shim with at::sum_to).

struct Args {
  const void* in[16];
  long long mode[16];  // 0 one value, 1 per element, 2 element i % row_len, 3 element i / row_len
  const void* grad_out[8];
  void* out[16];
  MetaloopStepParams p;
  long long numel;
  long long row_len;
  long long hp0;
};

// A hyperparameter value as runtime::optim's HValue: a constant in double (c), or a tensor's
// element in T.
template <typename T> struct Hv {
  bool c;
  double cv;
  T tv;
};

__device__ float ml_pow(float b, float e) { return powf(b, e); }
__device__ double ml_pow(double b, double e) { return pow(b, e); }
__device__ float ml_sqrt(float v) { return sqrtf(v); }
__device__ double ml_sqrt(double v) { return sqrt(v); }
template <typename T> __device__ T ml_abs(T v) { return v < T(0) ? -v : v; }

template <typename T> __device__ Hv<T> hc(double v) { Hv<T> h; h.c = true; h.cv = v; h.tv = T(0); return h; }
template <typename T> __device__ Hv<T> ht(T v) { Hv<T> h; h.c = false; h.cv = 0.0; h.tv = v; return h; }
template <typename T> __device__ T hval(Hv<T> a) { return a.c ? (T)a.cv : a.tv; }
template <typename T> __device__ Hv<T> hrsub(Hv<T> a, double c) { return a.c ? hc<T>(c - a.cv) : ht<T>(-a.tv + (T)c); }
template <typename T> __device__ Hv<T> hadd_scalar(Hv<T> a, double c) { return a.c ? hc<T>(a.cv + c) : ht<T>(a.tv + (T)c); }
template <typename T> __device__ Hv<T> hmul_scalar(Hv<T> a, double c) { return a.c ? hc<T>(a.cv * c) : ht<T>(a.tv * (T)c); }
template <typename T> __device__ Hv<T> hpow(Hv<T> a, double p) { return a.c ? hc<T>(pow(a.cv, p)) : ht<T>(ml_pow(a.tv, (T)p)); }
template <typename T> __device__ Hv<T> hmul(Hv<T> a, Hv<T> b) {
  if (a.c && b.c) return hc<T>(a.cv * b.cv);
  if (a.c) return ht<T>(b.tv * (T)a.cv);
  if (b.c) return ht<T>(a.tv * (T)b.cv);
  return ht<T>(a.tv * b.tv);
}
template <typename T> __device__ Hv<T> hdiv(Hv<T> a, Hv<T> b) {
  if (a.c && b.c) return hc<T>(a.cv / b.cv);
  if (a.c) return ht<T>(T(1) / b.tv * (T)a.cv);
  if (b.c) return ht<T>(a.tv / (T)b.cv);
  return ht<T>(a.tv / b.tv);
}

template <typename T> struct S {
  const Args& a;
  __device__ S(const Args& a) : a(a) {}
  __device__ long long at(int k, long long i) const {
    long long m = a.mode[k];
    return m == 0 ? 0 : m == 1 ? i : m == 2 ? i % a.row_len : i / a.row_len;
  }
  // Input k at element i (0 for an absent input).
  __device__ T x(int k, long long i) const { return a.in[k] ? ((const T*)a.in[k])[at(k, i)] : T(0); }
  // Hyperparameter k: its tensor, or its constant.
  __device__ T h(int k, long long i) const {
    int slot = (int)a.hp0 + k;
    return a.in[slot] ? x(slot, i) : (T)a.p.hparams[k];
  }
  __device__ Hv<T> hv(int k, long long i) const {
    int slot = (int)a.hp0 + k;
    return a.in[slot] ? ht<T>(x(slot, i)) : hc<T>(a.p.hparams[k]);
  }
  __device__ T dy(int j, long long i) const { return a.grad_out[j] ? ((const T*)a.grad_out[j])[i] : T(0); }
  __device__ void put(int k, long long i, T v) const { if (a.out[k]) ((T*)a.out[k])[i] = v; }
};

template <typename T> __device__ T ml_lerp(T start, T end, T w) {
  T diff = end - start;
  return ml_abs(w) < T(0.5) ? start + w * diff : end - diff * (T(1) - w);
}
// The derivative of the masked square root r = √x: 0 where x is exactly 0.
template <typename T> __device__ T d_sqrt(T x, T root, T d_root) { return x == T(0) ? T(0) : d_root / (T(2) * root); }
// torch.maximum's backward: to the larger side, halves at a tie.
template <typename T> __device__ void d_max(T a, T b, T d, T* da, T* db) {
  if (a == b) { *da = d * T(0.5); *db = d * T(0.5); }
  else if (a > b) { *da = d; *db = T(0); }
  else { *da = T(0); *db = d; }
}
template <typename T> __device__ T ml_sign(T x) { return x > T(0) ? T(1) : (x < T(0) ? T(-1) : T(0)); }

// ---- SGD: inputs θ, g, buf, lr, momentum, dampening, weight_decay; params first, nesterov,
// momentum (path).
template <typename T> __device__ void sgd_forward(const S<T>& s, long long i) {
  bool momentum_path = s.a.p.momentum, nesterov = s.a.p.nesterov, first = s.a.p.first;
  T theta = s.x(0, i), lr = s.h(0, i), mu = s.h(1, i), wd = s.h(3, i);
  T keep = hval(hrsub(s.hv(2, i), 1.0));
  T g = s.x(1, i) + wd * theta;
  T buf = first ? g : s.x(2, i) * mu + keep * g;
  T dir = !momentum_path ? g : (nesterov ? g + buf * mu : buf);
  s.put(0, i, theta - dir * lr);
  if (momentum_path) s.put(1, i, buf);
}

template <typename T> __device__ void sgd_backward(const S<T>& s, long long i) {
  bool momentum_path = s.a.p.momentum, nesterov = s.a.p.nesterov, first = s.a.p.first;
  T zero = T(0);
  T theta = s.x(0, i), prev = s.x(2, i), lr = s.h(0, i), mu = s.h(1, i), wd = s.h(3, i);
  T keep = hval(hrsub(s.hv(2, i), 1.0));
  T g = s.x(1, i) + wd * theta;
  T buf = first ? g : prev * mu + keep * g;
  T dir = !momentum_path ? g : (nesterov ? g + buf * mu : buf);
  T d_new = s.dy(0, i);
  T d_dir = -(lr * d_new);
  T d_lr = -(dir * d_new);
  T d_g = d_dir, d_mu = zero, d_prev = zero, d_damp = zero;
  if (momentum_path) {
    T d_buf = s.dy(1, i) + (nesterov ? mu * d_dir : d_dir);
    d_g = nesterov ? d_dir : zero;
    if (nesterov) d_mu = buf * d_dir;
    if (first) {
      d_g = d_g + d_buf;
    } else {
      d_mu = d_mu + prev * d_buf;
      d_prev = mu * d_buf;
      d_g = d_g + keep * d_buf;
      d_damp = -(g * d_buf);
    }
  }
  s.put(0, i, d_new + wd * d_g);
  s.put(1, i, d_g);
  s.put(2, i, d_prev);
  s.put(3, i, d_lr);
  s.put(4, i, d_mu);
  s.put(5, i, d_damp);
  s.put(6, i, theta * d_g);
}

// ---- Adam / AdamW: inputs θ, g, m, v, v̂, lr, β1, β2, eps, wd; params step, decoupled, amsgrad.
template <typename T> struct AdamD {
  T w1, omb2, bc1, step, bc2s, decay;
};
template <typename T> __device__ AdamD<T> adam_derived(const S<T>& s, long long i) {
  double t = (double)s.a.p.step;
  Hv<T> lr = s.hv(0, i), beta1 = s.hv(1, i), beta2 = s.hv(2, i), wd = s.hv(4, i);
  Hv<T> bc1 = hrsub(hpow(beta1, t), 1.0);
  AdamD<T> d;
  d.w1 = hval(hrsub(beta1, 1.0));
  d.omb2 = hval(hrsub(beta2, 1.0));
  d.bc1 = hval(bc1);
  d.step = hval(hdiv(lr, bc1));
  d.bc2s = hval(hpow(hrsub(hpow(beta2, t), 1.0), 0.5));
  d.decay = hval(hrsub(hmul(lr, wd), 1.0));
  return d;
}

template <typename T> __device__ void adam_forward(const S<T>& s, long long i) {
  bool decoupled = s.a.p.decoupled, amsgrad = s.a.p.amsgrad;
  AdamD<T> d = adam_derived(s, i);
  T theta = s.x(0, i), g0 = s.x(1, i), m = s.x(2, i), v = s.x(3, i), vmax = s.x(4, i);
  T beta2 = s.h(2, i), eps = s.h(3, i), wd = s.h(4, i);
  T decayed = decoupled ? d.decay * theta : theta;
  T g = decoupled ? g0 : g0 + wd * theta;
  T exp_avg = ml_lerp(m, g, d.w1);
  T exp_avg_sq = v * beta2 + d.omb2 * (g * g);
  T second = (amsgrad && vmax > exp_avg_sq) ? vmax : exp_avg_sq;
  T denom = ml_sqrt(second) / d.bc2s + eps;
  s.put(0, i, decayed - d.step * (exp_avg / denom));
  s.put(1, i, exp_avg);
  s.put(2, i, exp_avg_sq);
  if (amsgrad) s.put(3, i, second);
}

template <typename T> __device__ void adam_backward(const S<T>& s, long long i) {
  bool decoupled = s.a.p.decoupled, amsgrad = s.a.p.amsgrad;
  T zero = T(0), one = T(1);
  AdamD<T> d = adam_derived(s, i);
  T t = (T)(double)s.a.p.step;
  T theta = s.x(0, i), g0 = s.x(1, i), m = s.x(2, i), v = s.x(3, i), vmax = s.x(4, i);
  T lr = s.h(0, i), beta1 = s.h(1, i), beta2 = s.h(2, i), eps = s.h(3, i), wd = s.h(4, i);
  T g = decoupled ? g0 : g0 + wd * theta;
  T exp_avg = ml_lerp(m, g, d.w1);
  T exp_avg_sq = v * beta2 + d.omb2 * (g * g);
  T second = (amsgrad && vmax > exp_avg_sq) ? vmax : exp_avg_sq;
  T root = ml_sqrt(second);
  T scaled_root = root / d.bc2s;
  T denom = scaled_root + eps;
  T ratio = exp_avg / denom;
  T d_new = s.dy(0, i);
  T d_step = -(ratio * d_new);
  T d_ratio = -(d.step * d_new);
  T d_exp_avg = s.dy(1, i) + d_ratio / denom;
  T d_denom = -(d_ratio * ratio / denom);
  T d_eps = d_denom;
  T d_root = d_denom / d.bc2s;
  T d_bc2s = -(d_denom * scaled_root / d.bc2s);
  T d_second = d_sqrt(second, root, d_root);
  T d_vmax = zero, d_exp_avg_sq;
  if (amsgrad) {
    T a, b;
    d_max(vmax, exp_avg_sq, d_second + s.dy(3, i), &a, &b);
    d_vmax = a;
    d_exp_avg_sq = s.dy(2, i) + b;
  } else {
    d_exp_avg_sq = s.dy(2, i) + d_second;
  }
  T d_lr = d_step / d.bc1;
  T d_bc1 = -(d_step * d.step / d.bc1);
  T d_beta1 = -(d_bc1 * t * ml_pow(beta1, t - one));
  T d_bc2 = d_bc2s * (ml_pow(one - ml_pow(beta2, t), T(-0.5)) * T(0.5));
  T d_beta2 = -(d_bc2 * t * ml_pow(beta2, t - one));
  d_beta2 = d_beta2 + d_exp_avg_sq * v - d_exp_avg_sq * (g * g);
  T d_v = beta2 * d_exp_avg_sq;
  T d_g = T(2) * g * (d.omb2 * d_exp_avg_sq);
  T d_m = d_exp_avg * (one - d.w1);
  d_g = d_g + d_exp_avg * d.w1;
  d_beta1 = d_beta1 - d_exp_avg * (g - m);
  T d_theta, d_wd;
  if (decoupled) {
    T d_factor = theta * d_new;
    d_lr = d_lr - wd * d_factor;
    d_theta = d.decay * d_new;
    d_wd = -(lr * d_factor);
  } else {
    d_theta = d_new + wd * d_g;
    d_wd = theta * d_g;
  }
  s.put(0, i, d_theta);
  s.put(1, i, d_g);
  s.put(2, i, d_m);
  s.put(3, i, d_v);
  s.put(4, i, d_vmax);
  s.put(5, i, d_lr);
  s.put(6, i, d_beta1);
  s.put(7, i, d_beta2);
  s.put(8, i, d_eps);
  s.put(9, i, d_wd);
}

// ---- Adamax: inputs θ, g, m, u, lr, β1, β2, eps, wd; params step.
template <typename T> __device__ void adamax_forward(const S<T>& s, long long i) {
  double t = (double)s.a.p.step;
  Hv<T> beta1 = s.hv(1, i);
  T w1 = hval(hrsub(beta1, 1.0));
  T clr = hval(hdiv(s.hv(0, i), hrsub(hpow(beta1, t), 1.0)));
  T theta = s.x(0, i), m = s.x(2, i), u = s.x(3, i);
  T beta2 = s.h(2, i), eps = s.h(3, i), wd = s.h(4, i);
  T g = s.x(1, i) + wd * theta;
  T exp_avg = ml_lerp(m, g, w1);
  T a = u * beta2, b = ml_abs(g) + eps;
  T exp_inf = a > b ? a : b;
  s.put(0, i, theta - (exp_avg / exp_inf) * clr);
  s.put(1, i, exp_avg);
  s.put(2, i, exp_inf);
}

template <typename T> __device__ void adamax_backward(const S<T>& s, long long i) {
  double t64 = (double)s.a.p.step;
  T t = (T)t64;
  Hv<T> beta1 = s.hv(1, i);
  T w1 = hval(hrsub(beta1, 1.0));
  Hv<T> bch = hrsub(hpow(beta1, t64), 1.0);
  T bc = hval(bch);
  T clr = hval(hdiv(s.hv(0, i), bch));
  T theta = s.x(0, i), m = s.x(2, i), u = s.x(3, i);
  T beta2 = s.h(2, i), wd = s.h(4, i), eps = s.h(3, i);
  T g = s.x(1, i) + wd * theta;
  T exp_avg = ml_lerp(m, g, w1);
  T a = u * beta2, b = ml_abs(g) + eps;
  T exp_inf = a > b ? a : b;
  T r = exp_avg / exp_inf;
  T d_new = s.dy(0, i);
  T d_clr = -(r * d_new);
  T d_r = -(clr * d_new);
  T d_exp_avg = s.dy(1, i) + d_r / exp_inf;
  T d_exp_inf = s.dy(2, i) - d_r * r / exp_inf;
  T d_a, d_b;
  d_max(a, b, d_exp_inf, &d_a, &d_b);
  T d_g = ml_sign(g) * d_b;
  T d_m = d_exp_avg * (T(1) - w1);
  d_g = d_g + d_exp_avg * w1;
  T d_lr = d_clr / bc;
  T d_bc = -(d_clr * clr / bc);
  T d_beta1 = d_bc * (-(t * ml_pow(hval(beta1), t - T(1)))) - d_exp_avg * (g - m);
  s.put(0, i, d_new + wd * d_g);
  s.put(1, i, d_g);
  s.put(2, i, d_m);
  s.put(3, i, beta2 * d_a);
  s.put(4, i, d_lr);
  s.put(5, i, d_beta1);
  s.put(6, i, u * d_a);
  s.put(7, i, d_b);
  s.put(8, i, theta * d_g);
}

// ---- Adagrad: inputs θ, g, sum, lr, lr_decay, wd, initial_accumulator_value, eps; params step,
// first.
template <typename T> __device__ void adagrad_forward(const S<T>& s, long long i) {
  bool first = s.a.p.first;
  Hv<T> den = hadd_scalar(hmul_scalar(s.hv(1, i), (double)s.a.p.step - 1.0), 1.0);
  T clr = hval(hdiv(s.hv(0, i), den));
  T theta = s.x(0, i), wd = s.h(2, i), eps = s.h(4, i);
  T g = s.x(1, i) + wd * theta;
  T sum = (first ? s.h(3, i) : s.x(2, i)) + g * g;
  T std = ml_sqrt(sum) + eps;
  s.put(0, i, theta - (g / std) * clr);
  s.put(1, i, sum);
}

template <typename T> __device__ void adagrad_backward(const S<T>& s, long long i) {
  bool first = s.a.p.first;
  T zero = T(0);
  Hv<T> denh = hadd_scalar(hmul_scalar(s.hv(1, i), (double)s.a.p.step - 1.0), 1.0);
  T den = hval(denh);
  T clr = hval(hdiv(s.hv(0, i), denh));
  T theta = s.x(0, i), wd = s.h(2, i), eps = s.h(4, i);
  T g = s.x(1, i) + wd * theta;
  T sum = (first ? s.h(3, i) : s.x(2, i)) + g * g;
  T root = ml_sqrt(sum);
  T std = root + eps;
  T q = g / std;
  T d_new = s.dy(0, i);
  T d_clr = -(q * d_new);
  T d_q = -(clr * d_new);
  T d_g = d_q / std;
  T d_std = -(d_q * q / std);
  T d_sum = s.dy(1, i) + d_sqrt(sum, root, d_std);
  d_g = d_g + T(2) * g * d_sum;
  T d_den = -(d_clr * clr / den);
  s.put(0, i, d_new + wd * d_g);
  s.put(1, i, d_g);
  s.put(2, i, first ? zero : d_sum);
  s.put(3, i, d_clr / den);
  s.put(4, i, d_den * (T)((double)s.a.p.step - 1.0));
  s.put(5, i, theta * d_g);
  s.put(6, i, first ? d_sum : zero);
  s.put(7, i, d_std);
}

// ---- RMSprop: inputs θ, g, v, b, ḡ, lr, α, eps, wd, μ; params centered, momentum (path).
// Outputs θ', v', then b' (momentum path), then ḡ' (centered).
template <typename T> __device__ void rmsprop_forward(const S<T>& s, long long i) {
  bool centered = s.a.p.centered, momentum_path = s.a.p.momentum;
  T w = hval(hrsub(s.hv(1, i), 1.0));
  T theta = s.x(0, i), v = s.x(2, i), b = s.x(3, i), avg_prev = s.x(4, i);
  T lr = s.h(0, i), alpha = s.h(1, i), eps = s.h(2, i), wd = s.h(3, i), mu = s.h(4, i);
  T g = s.x(1, i) + wd * theta;
  T square_avg = v * alpha + (g * g) * w;
  T grad_avg = ml_lerp(avg_prev, g, w);
  T var = centered ? square_avg - grad_avg * grad_avg : square_avg;
  T avg = ml_sqrt(var) + eps;
  T q = g / avg;
  T buf = b * mu + q;
  T dir = momentum_path ? buf : q;
  s.put(0, i, theta - dir * lr);
  s.put(1, i, square_avg);
  if (momentum_path) s.put(2, i, buf);
  if (centered) s.put(momentum_path ? 3 : 2, i, grad_avg);
}

template <typename T> __device__ void rmsprop_backward(const S<T>& s, long long i) {
  bool centered = s.a.p.centered, momentum_path = s.a.p.momentum;
  T zero = T(0);
  T w = hval(hrsub(s.hv(1, i), 1.0));
  T theta = s.x(0, i), v = s.x(2, i), b = s.x(3, i), avg_prev = s.x(4, i);
  T lr = s.h(0, i), alpha = s.h(1, i), eps = s.h(2, i), wd = s.h(3, i), mu = s.h(4, i);
  T g = s.x(1, i) + wd * theta;
  T square_avg = v * alpha + (g * g) * w;
  T grad_avg = ml_lerp(avg_prev, g, w);
  T var = centered ? square_avg - grad_avg * grad_avg : square_avg;
  T root = ml_sqrt(var);
  T avg = root + eps;
  T q = g / avg;
  T buf = b * mu + q;
  T dir = momentum_path ? buf : q;
  T d_new = s.dy(0, i);
  T d_dir = -(lr * d_new);
  T d_lr = -(dir * d_new);
  T d_q = d_dir, d_b = zero, d_mu = zero;
  if (momentum_path) {
    T d_buf = s.dy(2, i) + d_dir;
    d_q = d_buf;
    d_b = mu * d_buf;
    d_mu = b * d_buf;
  }
  T d_g = d_q / avg;
  T d_avg = -(d_q * q / avg);
  T d_var = d_sqrt(var, root, d_avg);
  T d_alpha = zero;
  T d_square_avg = s.dy(1, i) + d_var;
  T d_grad_avg_in = zero;
  if (centered) {
    T d_grad_avg = s.dy(momentum_path ? 3 : 2, i) - T(2) * grad_avg * d_var;
    d_g = d_g + d_grad_avg * w;
    d_alpha = d_alpha - d_grad_avg * (g - avg_prev);
    d_grad_avg_in = d_grad_avg * (T(1) - w);
  }
  T d_v = alpha * d_square_avg;
  d_alpha = d_alpha + v * d_square_avg - (g * g) * d_square_avg;
  d_g = d_g + T(2) * g * (w * d_square_avg);
  s.put(0, i, d_new + wd * d_g);
  s.put(1, i, d_g);
  s.put(2, i, d_v);
  s.put(3, i, d_b);
  s.put(4, i, d_grad_avg_in);
  s.put(5, i, d_lr);
  s.put(6, i, d_alpha);
  s.put(7, i, d_avg);
  s.put(8, i, theta * d_g);
  s.put(9, i, d_mu);
}

// ---- Adadelta: inputs θ, g, v, a, lr, ρ, eps, wd.
template <typename T> __device__ void adadelta_forward(const S<T>& s, long long i) {
  T w = hval(hrsub(s.hv(1, i), 1.0));
  T theta = s.x(0, i), v = s.x(2, i), a = s.x(3, i);
  T lr = s.h(0, i), rho = s.h(1, i), eps = s.h(2, i), wd = s.h(3, i);
  T g = s.x(1, i) + wd * theta;
  T square_avg = v * rho + (g * g) * w;
  T std = ml_sqrt(square_avg + eps);
  T delta = ml_sqrt(a + eps) / std * g;
  T acc_delta = a * rho + (delta * delta) * w;
  s.put(0, i, theta - delta * lr);
  s.put(1, i, square_avg);
  s.put(2, i, acc_delta);
}

template <typename T> __device__ void adadelta_backward(const S<T>& s, long long i) {
  T w = hval(hrsub(s.hv(1, i), 1.0));
  T theta = s.x(0, i), v = s.x(2, i), a = s.x(3, i);
  T lr = s.h(0, i), rho = s.h(1, i), eps = s.h(2, i), wd = s.h(3, i);
  T g = s.x(1, i) + wd * theta;
  T square_avg = v * rho + (g * g) * w;
  T sq_eps = square_avg + eps, a_eps = a + eps;
  T std = ml_sqrt(sq_eps);
  T num = ml_sqrt(a_eps);
  T ratio = num / std;
  T delta = ratio * g;
  T d_new = s.dy(0, i), d_a_out = s.dy(2, i);
  T d_lr = -(delta * d_new);
  T d_a = rho * d_a_out;
  T d_rho = a * d_a_out - (delta * delta) * d_a_out;
  T d_delta = -(lr * d_new) + T(2) * delta * (w * d_a_out);
  T d_ratio = d_delta * g;
  T d_g = d_delta * ratio;
  T d_num = d_ratio / std;
  T d_std = -(d_ratio * ratio / std);
  T d_a_eps = d_sqrt(a_eps, num, d_num);
  T d_sq_eps = d_sqrt(sq_eps, std, d_std);
  d_a = d_a + d_a_eps;
  T d_square_avg = s.dy(1, i) + d_sq_eps;
  d_rho = d_rho + v * d_square_avg - (g * g) * d_square_avg;
  d_g = d_g + T(2) * g * (w * d_square_avg);
  s.put(0, i, d_new + wd * d_g);
  s.put(1, i, d_g);
  s.put(2, i, rho * d_square_avg);
  s.put(3, i, d_a);
  s.put(4, i, d_lr);
  s.put(5, i, d_rho);
  s.put(6, i, d_a_eps + d_sq_eps);
  s.put(7, i, theta * d_g);
}

// ---- Rprop: inputs θ, g, prev, step_size, lr, η−, η+, min, max; params first.
template <typename T> struct RpropF {
  bool flipped, grew;
  T factor, s_prev, scaled, lower, step_size, g_kept, theta_new;
};
template <typename T> __device__ RpropF<T> rprop_values(const S<T>& s, long long i) {
  T zero = T(0);
  RpropF<T> r;
  T g = s.x(1, i);
  T product = g * s.x(2, i);
  r.flipped = product < zero;
  r.grew = product > zero;
  r.factor = r.flipped ? s.h(1, i) : (r.grew ? s.h(2, i) : T(1));
  r.s_prev = s.a.p.first ? s.h(0, i) : s.x(3, i);
  r.scaled = r.s_prev * r.factor;
  T lo = s.h(3, i), hi = s.h(4, i);
  r.lower = r.scaled < lo ? lo : r.scaled;
  r.step_size = r.lower > hi ? hi : r.lower;
  r.g_kept = r.flipped ? zero : g;
  r.theta_new = s.x(0, i) - ml_sign(r.g_kept) * r.step_size;
  return r;
}

template <typename T> __device__ void rprop_forward(const S<T>& s, long long i) {
  RpropF<T> r = rprop_values(s, i);
  s.put(0, i, r.theta_new);
  s.put(1, i, r.g_kept);
  s.put(2, i, r.step_size);
}

template <typename T> __device__ void rprop_backward(const S<T>& s, long long i) {
  T zero = T(0);
  bool first = s.a.p.first;
  RpropF<T> r = rprop_values(s, i);
  T lo = s.h(3, i), hi = s.h(4, i);
  T d_new = s.dy(0, i);
  T d_step = s.dy(2, i) - ml_sign(r.g_kept) * d_new;
  T d_lower = r.lower <= hi ? d_step : zero;
  T d_hi = r.lower > hi ? d_step : zero;
  T d_scaled = r.scaled >= lo ? d_lower : zero;
  T d_lo = r.scaled < lo ? d_lower : zero;
  T d_s_prev = r.factor * d_scaled;
  T d_factor = r.s_prev * d_scaled;
  s.put(0, i, d_new);
  s.put(1, i, r.flipped ? zero : s.dy(1, i));
  s.put(2, i, zero);
  s.put(3, i, first ? zero : d_s_prev);
  s.put(4, i, first ? d_s_prev : zero);
  s.put(5, i, r.flipped ? d_factor : zero);
  s.put(6, i, (!r.flipped && r.grew) ? d_factor : zero);
  s.put(7, i, d_lo);
  s.put(8, i, d_hi);
}

#define ML_KERNEL(name, fn, T)                                                         \
  extern "C" __global__ void name(Args a) {                                            \
    S<T> s(a);                                                                         \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < a.numel; \
         i += (long long)gridDim.x * blockDim.x)                                       \
      fn<T>(s, i);                                                                     \
  }

ML_KERNEL(metaloop_sgd_forward_f32, sgd_forward, float)
ML_KERNEL(metaloop_sgd_forward_f64, sgd_forward, double)
ML_KERNEL(metaloop_sgd_backward_f32, sgd_backward, float)
ML_KERNEL(metaloop_sgd_backward_f64, sgd_backward, double)
ML_KERNEL(metaloop_adam_forward_f32, adam_forward, float)
ML_KERNEL(metaloop_adam_forward_f64, adam_forward, double)
ML_KERNEL(metaloop_adam_backward_f32, adam_backward, float)
ML_KERNEL(metaloop_adam_backward_f64, adam_backward, double)
ML_KERNEL(metaloop_adamax_forward_f32, adamax_forward, float)
ML_KERNEL(metaloop_adamax_forward_f64, adamax_forward, double)
ML_KERNEL(metaloop_adamax_backward_f32, adamax_backward, float)
ML_KERNEL(metaloop_adamax_backward_f64, adamax_backward, double)
ML_KERNEL(metaloop_adagrad_forward_f32, adagrad_forward, float)
ML_KERNEL(metaloop_adagrad_forward_f64, adagrad_forward, double)
ML_KERNEL(metaloop_adagrad_backward_f32, adagrad_backward, float)
ML_KERNEL(metaloop_adagrad_backward_f64, adagrad_backward, double)
ML_KERNEL(metaloop_rmsprop_forward_f32, rmsprop_forward, float)
ML_KERNEL(metaloop_rmsprop_forward_f64, rmsprop_forward, double)
ML_KERNEL(metaloop_rmsprop_backward_f32, rmsprop_backward, float)
ML_KERNEL(metaloop_rmsprop_backward_f64, rmsprop_backward, double)
ML_KERNEL(metaloop_adadelta_forward_f32, adadelta_forward, float)
ML_KERNEL(metaloop_adadelta_forward_f64, adadelta_forward, double)
ML_KERNEL(metaloop_adadelta_backward_f32, adadelta_backward, float)
ML_KERNEL(metaloop_adadelta_backward_f64, adadelta_backward, double)
ML_KERNEL(metaloop_rprop_forward_f32, rprop_forward, float)
ML_KERNEL(metaloop_rprop_forward_f64, rprop_forward, double)
ML_KERNEL(metaloop_rprop_backward_f32, rprop_backward, float)
ML_KERNEL(metaloop_rprop_backward_f64, rprop_backward, double)
