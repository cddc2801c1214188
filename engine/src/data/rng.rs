//! Counter-based task randomness: one independent, portable stream per
//! `(seed, split, iteration, task)`.
//!
//! A task's seed is a hash (splitmix64's finalizer, chained) of the four values; the stream is
//! xoshiro256** seeded from it through splitmix64, as its authors recommend. Both are fixed
//! integer arithmetic, so the same key gives the same numbers on every machine, thread and rank.
//! Nothing here may read the clock, the rank or any global state.

use super::Split;

/// splitmix64's output function: a bijective 64-bit mixer.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// The seed of task `task` of meta-iteration `iteration` on `split` under the run seed `seed`.
pub fn task_seed(seed: u64, split: Split, iteration: u64, task: usize) -> u64 {
    let mut h = mix64(seed.wrapping_add(GOLDEN));
    for word in [split.index() as u64 + 1, iteration, task as u64] {
        h = mix64(h.wrapping_add(GOLDEN) ^ mix64(word.wrapping_add(GOLDEN)));
    }
    h
}

/// A small, fast, portable random stream (xoshiro256**).
#[derive(Debug, Clone)]
pub struct TaskRng {
    s: [u64; 4],
}

impl TaskRng {
    /// A stream seeded from one 64-bit value (expanded with splitmix64).
    pub fn from_seed(seed: u64) -> TaskRng {
        let mut state = seed;
        let mut next = || {
            state = state.wrapping_add(GOLDEN);
            mix64(state)
        };
        TaskRng {
            s: [next(), next(), next(), next()],
        }
    }

    /// The stream of one task: `from_seed(task_seed(..))`.
    pub fn for_task(seed: u64, split: Split, iteration: u64, task: usize) -> TaskRng {
        TaskRng::from_seed(task_seed(seed, split, iteration, task))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[low, high)`.
    pub fn uniform(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.next_f64()
    }

    /// Uniform in `0..n` without modulo bias (Lemire's multiply-and-reject). `n` must be > 0.
    pub fn below(&mut self, n: usize) -> usize {
        let n = n as u64;
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = (self.next_u64() as u128) * (n as u128);
            if (m as u64) >= threshold {
                return (m >> 64) as usize;
            }
        }
    }

    /// `k` distinct values of `0..n` in random order (a partial Fisher–Yates shuffle of the
    /// virtual array `0..n`, O(k) time and memory). Requires `k <= n`.
    pub fn choose_distinct(&mut self, n: usize, k: usize) -> Vec<usize> {
        let mut moved = std::collections::HashMap::with_capacity(2 * k);
        let mut out = Vec::with_capacity(k);
        for i in 0..k.min(n) {
            let j = i + self.below(n - i);
            let at_j = *moved.get(&j).unwrap_or(&j);
            let at_i = *moved.get(&i).unwrap_or(&i);
            moved.insert(j, at_i);
            out.push(at_j);
        }
        out
    }

    /// Shuffles `items` in place (Fisher–Yates, from the last element down).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}
