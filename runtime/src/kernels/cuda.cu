// metaloop's fused optimizer steps in CUDA C, compiled at run time with NVRTC (runtime::kernels::cuda).
// Each element's arithmetic is the same as runtime/src/kernels/cpu.rs, operation for operation.
// The argument layout mirrors runtime::kernels::cuda::Args.

struct Args {
  const void* in[16];
  long long stride[16];
  const void* grad_out[8];
  void* out[16];
  double consts[16];
  long long numel;
  long long hp0;
};

template <typename T> struct S {
  const Args& a;
  __device__ S(const Args& a) : a(a) {}
  __device__ T x(int k, long long i) const { return ((const T*)a.in[k])[i * a.stride[k]]; }
  __device__ T x_or_zero(int k, long long i) const { return a.in[k] ? x(k, i) : T(0); }
  __device__ T h(int k, long long i) const {
    int slot = (int)a.hp0 + k;
    return a.in[slot] ? x(slot, i) : (T)a.consts[k];
  }
  // A quantity derived from hyperparameter k alone: from a constant in double, rounded once; from
  // a tensor in T (as cpu.rs and the tensor-op path).
  template <typename C, typename F> __device__ T hf(int k, long long i, C c, F f) const {
    int slot = (int)a.hp0 + k;
    return a.in[slot] ? f(x(slot, i)) : (T)c(a.consts[k]);
  }
  __device__ bool is_const(int k) const { return a.in[(int)a.hp0 + k] == 0; }
  __device__ T dy(int j, long long i) const { return a.grad_out[j] ? ((const T*)a.grad_out[j])[i] : T(0); }
  __device__ void put(int k, long long i, T v) const { if (a.out[k]) ((T*)a.out[k])[i] = v; }
  __device__ bool flag(int k) const { return a.consts[k] != 0.0; }
};

template <typename T> __device__ T ml_abs(T v) { return v < T(0) ? -v : v; }
__device__ float ml_pow(float b, float e) { return powf(b, e); }
__device__ double ml_pow(double b, double e) { return pow(b, e); }
__device__ float ml_sqrt(float v) { return sqrtf(v); }
__device__ double ml_sqrt(double v) { return sqrt(v); }

template <typename T> __device__ T ml_lerp(T start, T end, T w) {
  return ml_abs(w) < T(0.5) ? start + w * (end - start) : end - (end - start) * (T(1) - w);
}

template <typename T> __device__ void sgd_forward(const S<T>& s, long long i) {
  T theta = s.x(0, i);
  T lr = s.h(0, i);
  T g = s.x(1, i);
  if (!s.flag(8)) g = g + s.h(3, i) * theta;
  if (s.flag(6)) {
    T momentum = s.h(1, i);
    T buf;
    if (s.a.consts[4] == 0.0) {
      buf = g;
    } else {
      T fresh = s.flag(7) ? g : s.hf(2, i, [](double d) { return 1.0 - d; }, [](T d) { return T(1) - d; }) * g;
      buf = s.x_or_zero(2, i) * momentum + fresh;
    }
    g = s.flag(5) ? g + buf * momentum : buf;
    s.put(1, i, buf);
  }
  s.put(0, i, theta - g * lr);
}

template <typename T> __device__ void sgd_backward(const S<T>& s, long long i) {
  T theta = s.x(0, i);
  T lr = s.h(0, i);
  T momentum = s.h(1, i);
  T weight_decay = s.h(3, i);
  bool first = s.a.consts[4] == 0.0;
  bool nesterov = s.flag(5), momentum_path = s.flag(6);
  T g = s.x(1, i);
  if (!s.flag(8)) g = g + weight_decay * theta;
  T fresh_scale = s.flag(7) ? T(1) : s.hf(2, i, [](double d) { return 1.0 - d; }, [](T d) { return T(1) - d; });
  T prev = (momentum_path && !first) ? s.x_or_zero(2, i) : T(0);
  T buf = first ? g : prev * momentum + fresh_scale * g;
  T step_dir = !momentum_path ? g : (nesterov ? g + buf * momentum : buf);
  T d_theta_new = s.dy(0, i);
  T d_dir = -(lr * d_theta_new);
  T d_lr = -(step_dir * d_theta_new);
  T d_theta = d_theta_new, d_g, d_momentum = T(0), d_prev = T(0), d_dampening = T(0);
  if (momentum_path) {
    T d_buf = s.dy(1, i) + (nesterov ? momentum * d_dir : d_dir);
    d_g = nesterov ? d_dir : T(0);
    if (nesterov) d_momentum = buf * d_dir;
    if (first) {
      d_g = d_g + d_buf;
    } else {
      d_momentum = d_momentum + prev * d_buf;
      d_prev = momentum * d_buf;
      d_g = d_g + fresh_scale * d_buf;
      d_dampening = -(g * d_buf);
    }
  } else {
    d_g = d_dir;
  }
  T d_weight_decay = T(0);
  if (!s.flag(8)) {
    d_theta = d_theta + weight_decay * d_g;
    d_weight_decay = theta * d_g;
  }
  s.put(0, i, d_theta);
  s.put(1, i, d_g);
  s.put(2, i, d_prev);
  s.put(3, i, d_lr);
  s.put(4, i, d_momentum);
  s.put(5, i, d_dampening);
  s.put(6, i, d_weight_decay);
}

// (1 − β1, 1 − β2, 1 − β1ᵗ, lr/(1 − β1ᵗ), √(1 − β2ᵗ), 1 − lr·wd), as adam_derived in cpu.rs.
template <typename T> __device__ void adam_derived(const S<T>& s, long long i, T* d) {
  T one = T(1);
  double t64 = s.a.consts[5];
  T t = (T)t64;
  d[0] = s.hf(1, i, [](double b) { return 1.0 - b; }, [](T b) { return T(1) - b; });
  d[1] = s.hf(2, i, [](double b) { return 1.0 - b; }, [](T b) { return T(1) - b; });
  d[2] = s.hf(1, i, [=](double b) { return 1.0 - pow(b, t64); }, [=](T b) { return one - ml_pow(b, t); });
  d[3] = (s.is_const(0) && s.is_const(1)) ? (T)(s.a.consts[0] / (1.0 - pow(s.a.consts[1], t64)))
                                          : s.h(0, i) / d[2];
  d[4] = s.hf(2, i, [=](double b) { return pow(1.0 - pow(b, t64), 0.5); },
              [=](T b) { return ml_pow(one - ml_pow(b, t), T(0.5)); });
  d[5] = (s.is_const(0) && s.is_const(4)) ? (T)(1.0 - s.a.consts[0] * s.a.consts[4])
                                          : one - s.h(0, i) * s.h(4, i);
}

template <typename T> __device__ void adam_forward(const S<T>& s, long long i) {
  T theta = s.x(0, i);
  T beta2 = s.h(2, i), eps = s.h(3, i);
  T d[6];
  adam_derived(s, i, d);
  T step_size = d[3], bias_correction2_sqrt = d[4];
  T decayed = theta;
  T g = s.x(1, i);
  if (!s.flag(8)) {
    if (s.flag(6)) decayed = d[5] * theta;
    else g = g + s.h(4, i) * theta;
  }
  T exp_avg = ml_lerp(s.x(2, i), g, d[0]);
  T exp_avg_sq = s.x(3, i) * beta2 + d[1] * (g * g);
  T second_moment = exp_avg_sq;
  if (s.flag(7)) {
    T prev = s.x(4, i);
    second_moment = prev > exp_avg_sq ? prev : exp_avg_sq;
    s.put(3, i, second_moment);
  }
  T denom = ml_sqrt(second_moment) / bias_correction2_sqrt + eps;
  s.put(0, i, decayed - step_size * (exp_avg / denom));
  s.put(1, i, exp_avg);
  s.put(2, i, exp_avg_sq);
}

template <typename T> __device__ void adam_backward(const S<T>& s, long long i) {
  T zero = T(0), one = T(1), half = T(0.5);
  T theta = s.x(0, i);
  T lr = s.h(0, i), beta1 = s.h(1, i), beta2 = s.h(2, i), eps = s.h(3, i);
  T weight_decay = s.h(4, i);
  T t = (T)s.a.consts[5];
  bool decoupled = s.flag(6), amsgrad = s.flag(7), no_decay = s.flag(8);
  T g = s.x(1, i);
  if (!no_decay && !decoupled) g = g + weight_decay * theta;
  T m_prev = s.x(2, i), v_prev = s.x(3, i);
  T d[6];
  adam_derived(s, i, d);
  T w = d[0], one_minus_beta2 = d[1], bias_correction1 = d[2], step_size = d[3];
  T bias_correction2_sqrt = d[4], decay_factor = d[5];
  T exp_avg = ml_lerp(m_prev, g, w);
  T exp_avg_sq = v_prev * beta2 + one_minus_beta2 * (g * g);
  T bias_correction2 = one - ml_pow(beta2, t);
  T max_prev = amsgrad ? s.x(4, i) : zero;
  T second_moment = (amsgrad && max_prev > exp_avg_sq) ? max_prev : exp_avg_sq;
  T root = ml_sqrt(second_moment);
  T scaled_root = root / bias_correction2_sqrt;
  T denom = scaled_root + eps;
  T ratio = exp_avg / denom;

  T d_theta_new = s.dy(0, i);
  T d_decayed = d_theta_new;
  T d_step_size = -(ratio * d_theta_new);
  T d_ratio = -(step_size * d_theta_new);
  T d_exp_avg = s.dy(1, i) + d_ratio / denom;
  T d_denom = -(d_ratio * ratio / denom);
  T d_eps = d_denom;
  T d_root = d_denom / bias_correction2_sqrt;
  T d_bc2_sqrt = -(d_denom * scaled_root / bias_correction2_sqrt);
  T d_second = second_moment == zero ? zero : d_root / (T(2) * root);
  T d_exp_avg_sq = s.dy(2, i);
  T d_max_prev = zero;
  if (amsgrad) {
    d_second = d_second + s.dy(3, i);
    if (max_prev == exp_avg_sq) {
      d_max_prev = d_second * half;
      d_exp_avg_sq = d_exp_avg_sq + d_second * half;
    } else if (max_prev > exp_avg_sq) {
      d_max_prev = d_second;
    } else {
      d_exp_avg_sq = d_exp_avg_sq + d_second;
    }
  } else {
    d_exp_avg_sq = d_exp_avg_sq + d_second;
  }
  T d_bc2 = d_bc2_sqrt * half * ml_pow(bias_correction2, -half);
  T d_beta2 = -(d_bc2 * t * ml_pow(beta2, t - one));
  T d_lr = d_step_size / bias_correction1;
  T d_bc1 = -(d_step_size * step_size / bias_correction1);
  T d_beta1 = -(d_bc1 * t * ml_pow(beta1, t - one));
  d_beta2 = d_beta2 + d_exp_avg_sq * v_prev - d_exp_avg_sq * (g * g);
  T d_v_prev = beta2 * d_exp_avg_sq;
  T d_g = T(2) * g * (one_minus_beta2 * d_exp_avg_sq);
  T d_m_prev = d_exp_avg * (one - w);
  d_g = d_g + d_exp_avg * w;
  d_beta1 = d_beta1 - d_exp_avg * (g - m_prev);
  T d_theta = d_decayed;
  T d_weight_decay = zero;
  if (!no_decay) {
    if (decoupled) {
      d_theta = decay_factor * d_decayed;
      T d_factor = theta * d_decayed;
      d_lr = d_lr - weight_decay * d_factor;
      d_weight_decay = -(lr * d_factor);
    } else {
      d_theta = d_theta + weight_decay * d_g;
      d_weight_decay = theta * d_g;
    }
  }
  s.put(0, i, d_theta);
  s.put(1, i, d_g);
  s.put(2, i, d_m_prev);
  s.put(3, i, d_v_prev);
  s.put(4, i, d_max_prev);
  s.put(5, i, d_lr);
  s.put(6, i, d_beta1);
  s.put(7, i, d_beta2);
  s.put(8, i, d_eps);
  s.put(9, i, d_weight_decay);
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
