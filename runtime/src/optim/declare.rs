//! `optimizer!`: declares an optimizer once. From the list of its hyperparameters (with torch's
//! defaults), its options, its state buffers and, optionally, its fused kernel it makes the public
//! options struct, `new(lr)`, one setter per hyperparameter and option, `fused`, the typed
//! per-step values, and the `Optimizer` impl; the optimizer's file then writes only its
//! arithmetic (`initial_state`, `tensor_step`, and `fused_plan` when it names a kernel).
//!
//! Without `kernel:` and `restart:` the optimizer has no fused path: `fused(true)` is accepted
//! and every step takes the tensor-op path.
//!
//! It generates code; it holds no state and computes nothing itself.

/// The number of identifiers given.
macro_rules! count {
    () => { 0usize };
    ($head:ident $($rest:ident)*) => { 1usize + count!($($rest)*) };
}

/// See the module documentation. `hparams` lists the hyperparameters after `lr`, in torch's
/// order, which is also the fused kernel's slot order; `options` the boolean options.
macro_rules! optimizer {
    (
        $(#[$meta:meta])*
        pub struct $ty:ident ($torch:literal) {
            hparams { $($(#[$hdoc:meta])* $h:ident: $hdef:expr,)* }
            options { $($(#[$odoc:meta])* $o:ident: $odef:expr,)* }
            buffers: [$($buf:ident),* $(,)?],
            $(kernel: $kernel:ident,
            restart: [$($rbuf:ident),* $(,)?],)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $ty {
            /// The learning rate.
            pub lr: f64,
            $($(#[$hdoc])* pub $h: f64,)*
            $($(#[$odoc])* pub $o: bool,)*
            /// Take each step with one fused kernel (see the `fused` setter).
            pub fused: bool,
        }

        impl $ty {
            /// The hyperparameter names, torch.optim's with tuples split, in the fused kernel's
            /// slot order.
            const NAMES: &'static [&'static str] = &["lr", $(stringify!($h)),*];

            /// The state buffers a step may keep, in the fused kernel's slot order.
            const BUFFERS: &'static [$crate::optim::Buffer] = &[$($crate::optim::Buffer::$buf),*];

            /// Learning rate `lr`; every other hyperparameter and option at torch.optim's default.
            pub fn new(lr: f64) -> $ty {
                $ty { lr, $($h: $hdef,)* $($o: $odef,)* fused: false }
            }

            $(
                $(#[$hdoc])*
                pub fn $h(mut self, $h: f64) -> $ty {
                    self.$h = $h;
                    self
                }
            )*

            $(
                $(#[$odoc])*
                pub fn $o(mut self, $o: bool) -> $ty {
                    self.$o = $o;
                    self
                }
            )*

            /// Take each step with one fused kernel (runtime::kernels) where it supports θ
            /// (f32/f64 on the CPU or CUDA): one pass over the buffers forward and one backward
            /// instead of several tensor ops each, equal to the tensor-op path to rounding
            /// (tests/fused_optim.rs; benches/README.md compares their speed). Off by default:
            /// the fused backward cannot itself be differentiated (`create_graph` through a
            /// step's backward: third-order derivatives), which the tensor-op path, the
            /// reference, can. An optimizer without a kernel (see
            /// [`Optimizer::fused_kernel`](crate::optim::Optimizer::fused_kernel))
            /// takes the tensor-op path either way.
            pub fn fused(mut self, fused: bool) -> $ty {
                self.fused = fused;
                self
            }

            /// Every hyperparameter's value for a step on `theta`, in `NAMES` order: the
            /// resolved override, or the builder's value.
            fn values(
                &self,
                hp: &$crate::optim::HParams,
                theta: &tch::Tensor,
            ) -> $crate::Result<[$crate::optim::HValue; 1 + count!($($h)*)]> {
                Ok([
                    hp.value("lr", self.lr, theta)?,
                    $(hp.value(stringify!($h), self.$h, theta)?,)*
                ])
            }
        }

        $(
        impl $ty {
            /// The fused path's view of this optimizer.
            const DESCRIPTOR: $crate::optim::fused::Descriptor = $crate::optim::fused::Descriptor {
                kernel: $crate::kernels::StepKernel::$kernel,
                buffers: Self::BUFFERS,
                restart: &[$($crate::optim::Buffer::$rbuf),*],
            };
        }

        // The descriptor fits the kernel: one buffer per state slot, one name per hyperparameter
        // slot (checked when the crate compiles).
        const _: () = assert!(
            $ty::DESCRIPTOR.buffers.len() == $ty::DESCRIPTOR.kernel.state_slots()
                && $ty::NAMES.len() == $ty::DESCRIPTOR.kernel.hparam_count()
        );
        )?

        impl $crate::optim::Optimizer for $ty {
            fn name(&self) -> &'static str {
                $torch
            }

            fn hparam_names(&self) -> &'static [&'static str] {
                Self::NAMES
            }

            fn hparam_default(&self, name: &str) -> Option<f64> {
                match name {
                    "lr" => Some(self.lr),
                    $(stringify!($h) => Some(self.$h),)*
                    _ => None,
                }
            }

            fn init_state(&self, theta: &tch::Tensor) -> $crate::Result<$crate::optim::OptState> {
                self.initial_state(theta)
            }

            fn update(
                &self,
                theta: &tch::Tensor,
                grad: &tch::Tensor,
                state: &$crate::optim::OptState,
                hp: &$crate::optim::HParams,
            ) -> $crate::Result<(tch::Tensor, $crate::optim::OptState)> {
                $crate::optim::check_shapes(concat!($torch, ".update"), theta, grad)?;
                state.check($torch, Self::BUFFERS)?;
                #[allow(unused_mut)]
                let mut values = self.values(hp, theta)?;
                $(
                if self.fused && $crate::kernels::supports(theta) {
                    let _ = $crate::kernels::StepKernel::$kernel;
                    let plan = self.fused_plan(&mut values, state)?;
                    return Self::DESCRIPTOR.run(theta, grad, state, &values, plan);
                }
                )?
                self.tensor_step($crate::optim::StepInput {
                    theta,
                    grad,
                    state,
                    v: &values,
                })
            }

            fn fused_kernel(&self) -> Option<$crate::kernels::StepKernel> {
                const KERNEL: &[$crate::kernels::StepKernel] = &[$($crate::kernels::StepKernel::$kernel)?];
                KERNEL.first().copied()
            }

            fn box_clone(&self) -> Box<dyn $crate::optim::Optimizer> {
                Box::new(self.clone())
            }
        }
    };
}
