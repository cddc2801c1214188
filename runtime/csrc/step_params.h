// The constants of one fused optimizer step, shared by the C++ shim (fused_step.cpp) and the CUDA
// kernels (runtime/src/kernels/cuda.cu, which is compiled with this header in front of it). It
// mirrors runtime::kernels::ffi::StepParams field for field; both sides check its size.
#ifndef METALOOP_STEP_PARAMS_H
#define METALOOP_STEP_PARAMS_H

enum { METALOOP_MAX_HPARAMS = 8 };

struct MetaloopStepParams {
  // The constant of each hyperparameter slot, in the kernel's order (NaN where the slot holds a
  // tensor).
  double hparams[METALOOP_MAX_HPARAMS];
  // The step count t after this step (1 at the first step).
  long long step;
  // The first step: the state buffers start from their initial values.
  bool first;
  // SGD: Nesterov momentum.
  bool nesterov;
  // SGD, RMSprop: the momentum path.
  bool momentum;
  // Adam: decoupled weight decay (AdamW).
  bool decoupled;
  // Adam: AMSGrad.
  bool amsgrad;
  // RMSprop: centered.
  bool centered;
};

static_assert(sizeof(MetaloopStepParams) == 80, "MetaloopStepParams must match runtime::kernels::ffi::StepParams");

#endif
