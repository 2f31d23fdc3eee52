//! The machine's measured f32 multiply-add peak, the yardstick for the bench's
//! matrix-product GFLOP/s: a loop of independent vector FMAs on register-resident
//! values (no memory traffic), on one core and on every bench thread at once.

use std::hint::black_box;
use std::sync::Barrier;
use std::time::Instant;

use serde::Serialize;

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Peak {
    /// The widest vector FMA the loop used: "avx512f", "avx2+fma" or "scalar".
    pub isa: &'static str,
    pub one_thread_gflops: f64,
    pub threads: usize,
    /// All `threads` running the loop at once (total floating-point operations / wall time).
    pub all_threads_gflops: f64,
}

/// Iterations of the FMA loop per timing (1.6 GFLOP with AVX-512: about 8 ms at
/// 200 GFLOP/s, long against a thread's start-up).
const ITERATIONS: usize = 1 << 22;

/// Best of a few timings on one thread, then all threads together.
pub fn measure(threads: usize) -> Peak {
    let (isa, flops_per_iteration) = loop_kind();
    let one = (0..5).map(|_| run_loop(ITERATIONS)).fold(f64::INFINITY, f64::min);
    let flops = (flops_per_iteration * ITERATIONS) as f64;
    let threads = threads.max(1);
    let barrier = Barrier::new(threads);
    // Each worker times its own loop from the common start (after the barrier, so thread
    // start-up is not counted); the slowest one is the wall time of the whole.
    let all = (0..3)
        .map(|_| {
            std::thread::scope(|s| {
                let workers: Vec<_> = (0..threads)
                    .map(|_| {
                        s.spawn(|| {
                            barrier.wait();
                            run_loop(ITERATIONS)
                        })
                    })
                    .collect();
                workers.into_iter().map(|w| w.join().expect("the FMA loop does not panic")).fold(0.0, f64::max)
            })
        })
        .fold(f64::INFINITY, f64::min);
    Peak {
        isa,
        one_thread_gflops: flops / one / 1e9,
        threads,
        all_threads_gflops: flops * threads as f64 / all / 1e9,
    }
}

/// Which loop `run_loop` runs here, and its floating-point operations per iteration
/// (`CHAINS` FMAs of the vector width, two operations per lane).
fn loop_kind() -> (&'static str, usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return ("avx512f", CHAINS * 16 * 2);
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return ("avx2+fma", CHAINS * 8 * 2);
        }
    }
    ("scalar", CHAINS * 2)
}

/// Independent accumulators: enough to cover the FMA latency on two ports.
const CHAINS: usize = 12;

/// Seconds for `iterations` rounds of `CHAINS` FMAs.
fn run_loop(iterations: usize) -> f64 {
    let start = Instant::now();
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F was detected.
            unsafe { simd::avx512(iterations) };
            return start.elapsed().as_secs_f64();
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: AVX2 and FMA were detected.
            unsafe { simd::avx2(iterations) };
            return start.elapsed().as_secs_f64();
        }
    }
    let mut acc = [0.0f32; CHAINS];
    let (a, b) = (black_box(0.999_f32), black_box(1e-3_f32));
    for _ in 0..iterations {
        for x in acc.iter_mut() {
            *x = x.mul_add(a, b);
        }
    }
    black_box(acc);
    start.elapsed().as_secs_f64()
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use super::CHAINS;
    use std::arch::x86_64::*;
    use std::hint::black_box;

    /// # Safety
    /// AVX-512F must be present.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn avx512(iterations: usize) {
        let (a, b) = (_mm512_set1_ps(black_box(0.999)), _mm512_set1_ps(black_box(1e-3)));
        let mut acc = [_mm512_setzero_ps(); CHAINS];
        for _ in 0..iterations {
            for x in acc.iter_mut() {
                *x = _mm512_fmadd_ps(*x, a, b);
            }
        }
        black_box(acc);
    }

    /// # Safety
    /// AVX2 and FMA must be present.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn avx2(iterations: usize) {
        let (a, b) = (_mm256_set1_ps(black_box(0.999)), _mm256_set1_ps(black_box(1e-3)));
        let mut acc = [_mm256_setzero_ps(); CHAINS];
        for _ in 0..iterations {
            for x in acc.iter_mut() {
                *x = _mm256_fmadd_ps(*x, a, b);
            }
        }
        black_box(acc);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_peak_is_a_positive_finite_rate() {
        let p = super::measure(2);
        assert!(p.one_thread_gflops.is_finite() && p.one_thread_gflops > 0.1, "{p:?}");
        assert!(p.all_threads_gflops.is_finite() && p.all_threads_gflops > 0.1, "{p:?}");
        assert_eq!(p.threads, 2);
    }
}
