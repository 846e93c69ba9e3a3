//! Running plain Rust loops with the wide vector instructions the CPU has.
//!
//! The default x86-64 target allows only 4-wide SSE2 (no FMA, no AVX), so a row loop compiled
//! normally converts, subtracts and sums two f64 or four f32 at a time even on an AVX-512 CPU.
//! [`wide`] runs a closure through a copy compiled for AVX2+FMA when the CPU has them; the
//! closure and the row functions it calls must be `#[inline(always)]` so that their bodies are
//! compiled into that copy. The retrieval kernels have their own AVX-512 dispatch
//! (`retrieval::cpu`, which also instantiates const-generic tile sizes per instruction set);
//! this is for every other row loop (softmax rows and their gradient, LayerNorm statistics, the
//! finiteness scan, the retrieval's output scaling).

/// `f()`, compiled for AVX2+FMA where the CPU has them (checked once per process), else as is.
#[inline(always)]
pub(crate) fn wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let has = *HAS.get_or_init(|| {
            std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
        });
        if has {
            // SAFETY: the features were detected on this CPU.
            return unsafe { avx2(f) };
        }
    }
    f()
}

#[cfg(test)]
mod tests {
    #[test]
    fn wide_runs_the_closure_once_and_returns_its_value() {
        let mut calls = 0;
        let v = super::wide(|| {
            calls += 1;
            (0..100).map(|i| i as f64 * 0.5).sum::<f64>()
        });
        assert_eq!((v, calls), (2475.0, 1));
    }
}
