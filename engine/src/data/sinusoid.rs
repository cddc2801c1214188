//! Sinusoid regression tasks of the MAML paper (Finn et al. 2017, sec. 5.1).
//!
//! A task is `y = A sin(x − φ)` with amplitude `A ~ U[0.1, 5.0]`, phase `φ ~ U[0, π]`; its support
//! and query points are `x ~ U[−5, 5]`, drawn independently. Each task is a pure function of
//! `(seed, split, iteration, task)`; the draw order from the task's stream is amplitude, phase,
//! the support x's, then the query x's. This module must not touch files or devices.

use std::f64::consts::PI;
use std::ops::Range;
use std::sync::Arc;

use tch::{Kind, Tensor};

use super::{MetaBatch, Split, TaskRng, TaskSource};
use crate::{Error, Result};

/// Amplitude range `[low, high)` (MAML: 0.1 to 5.0).
pub const AMPLITUDE: (f64, f64) = (0.1, 5.0);
/// Phase range `[low, high)` (MAML: 0 to π).
pub const PHASE: (f64, f64) = (0.0, PI);
/// Input range `[low, high)` (MAML: −5 to 5).
pub const INPUT: (f64, f64) = (-5.0, 5.0);

/// One sinusoid: `y = amplitude · sin(x − phase)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SinusoidTask {
    pub amplitude: f64,
    pub phase: f64,
}

impl SinusoidTask {
    /// The function's value at `x`.
    pub fn eval(&self, x: f64) -> f64 {
        self.amplitude * (x - self.phase).sin()
    }

    /// `points` evenly spaced x's over the input range [−5, 5] (both ends included) and the true
    /// y's there, each as `[points, 1]` of `kind`: for plots and for the true curve in evaluation.
    pub fn grid(&self, points: usize, kind: Kind) -> Result<(Tensor, Tensor)> {
        let (lo, hi) = INPUT;
        let xs: Vec<f64> = (0..points)
            .map(|i| {
                if points == 1 {
                    lo
                } else {
                    lo + (hi - lo) * i as f64 / (points - 1) as f64
                }
            })
            .collect();
        let ys: Vec<f64> = xs.iter().map(|&x| self.eval(x)).collect();
        let n = points as i64;
        Ok((
            Tensor::f_from_slice(&xs)?.f_view([n, 1])?.f_to_kind(kind)?,
            Tensor::f_from_slice(&ys)?.f_view([n, 1])?.f_to_kind(kind)?,
        ))
    }
}

/// The sinusoid task distribution, with `support` points to adapt on and `query` points to
/// evaluate on per task. Tensors are `[K, 1]` per task, `[T, K, 1]` per meta-batch, of `kind`
/// (default f32; values are computed in f64 and then converted).
#[derive(Debug, Clone)]
pub struct Sinusoid {
    support: usize,
    query: usize,
    kind: Kind,
}

impl Sinusoid {
    /// `support` and `query` points per task (MAML: K = 5 or 10 for both). Both must be > 0.
    pub fn new(support: usize, query: usize) -> Result<Sinusoid> {
        if support == 0 || query == 0 {
            return Err(Error::InvalidSetting {
                what: "sinusoid",
                reason: format!("support ({support}) and query ({query}) points must be > 0"),
            });
        }
        Ok(Sinusoid {
            support,
            query,
            kind: Kind::Float,
        })
    }

    /// The element kind of the tensors (f32 by default; f64 for reference comparisons).
    pub fn with_kind(mut self, kind: Kind) -> Sinusoid {
        self.kind = kind;
        self
    }

    /// The true function of a task, drawn exactly as [`TaskSource::meta_batch`] draws it.
    pub fn task_function(
        &self,
        seed: u64,
        iteration: u64,
        task: usize,
        split: Split,
    ) -> SinusoidTask {
        let mut rng = TaskRng::for_task(seed, split, iteration, task);
        SinusoidTask {
            amplitude: rng.uniform(AMPLITUDE.0, AMPLITUDE.1),
            phase: rng.uniform(PHASE.0, PHASE.1),
        }
    }

    /// Draws one task's function and points into the four output vectors.
    fn draw(&self, seed: u64, iteration: u64, task: usize, split: Split, out: &mut [Vec<f64>; 4]) {
        let mut rng = TaskRng::for_task(seed, split, iteration, task);
        let f = SinusoidTask {
            amplitude: rng.uniform(AMPLITUDE.0, AMPLITUDE.1),
            phase: rng.uniform(PHASE.0, PHASE.1),
        };
        for (count, xi, yi) in [(self.support, 0, 1), (self.query, 2, 3)] {
            for _ in 0..count {
                let x = rng.uniform(INPUT.0, INPUT.1);
                out[xi].push(x);
                out[yi].push(f.eval(x));
            }
        }
    }
}

impl TaskSource for Sinusoid {
    fn meta_batch(
        &self,
        seed: u64,
        iteration: u64,
        tasks: Range<usize>,
        split: Split,
    ) -> Result<MetaBatch> {
        let t = tasks.len();
        let mut out: [Vec<f64>; 4] = [
            Vec::with_capacity(t * self.support),
            Vec::with_capacity(t * self.support),
            Vec::with_capacity(t * self.query),
            Vec::with_capacity(t * self.query),
        ];
        for task in tasks.clone() {
            self.draw(seed, iteration, task, split, &mut out);
        }
        let tensor = |v: &[f64], k: usize| -> Result<Tensor> {
            Ok(Tensor::f_from_slice(v)?
                .f_view([t as i64, k as i64, 1])?
                .f_to_kind(self.kind)?)
        };
        Ok(MetaBatch {
            support_x: tensor(&out[0], self.support)?,
            support_y: tensor(&out[1], self.support)?,
            query_x: tensor(&out[2], self.query)?,
            query_y: tensor(&out[3], self.query)?,
            iteration,
            tasks,
        })
    }

    fn input_shape(&self) -> Vec<i64> {
        vec![1]
    }

    fn num_outputs(&self) -> usize {
        1
    }

    /// `shots` support points and the same query points; `ways` must be 1 (one output).
    fn reshaped(&self, ways: usize, shots: usize) -> Result<Arc<dyn TaskSource>> {
        if ways != 1 {
            return Err(Error::InvalidSetting {
                what: "sinusoid",
                reason: format!("regression tasks have one output, not {ways} ways"),
            });
        }
        Ok(Arc::new(
            Sinusoid::new(shots, self.query)?.with_kind(self.kind),
        ))
    }
}
