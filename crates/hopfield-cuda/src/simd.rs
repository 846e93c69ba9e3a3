//! Which vector instructions the kernels run with, and running plain Rust loops with them.
//!
//! The default x86-64 target allows only 4-wide SSE2 (no FMA, no AVX), so a row loop compiled
//! normally converts, subtracts and sums two f64 or four f32 at a time even on an AVX-512 CPU.
//! [`isa`] is the one place the CPU's instruction set is detected (and forced, in tests), for
//! every kernel that has builds per instruction set (the retrieval's tiles, the sparse
//! product's register slabs). [`wide`] runs a closure through a copy compiled for AVX2+FMA when
//! the CPU has them; the closure and the row functions it calls must be `#[inline(always)]` so
//! that their bodies are compiled into that copy. It is for every other row loop (softmax rows
//! and their gradient, LayerNorm statistics, the finiteness scan, the retrieval's output
//! scaling).

/// Which instruction set the kernels run with, detected once.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Isa {
    Generic,
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

/// Tests force each instruction set in turn (0 = detect); any forced set is correct for every
/// other test running meanwhile, only slower.
#[cfg(test)]
pub(crate) static FORCE_ISA: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// The instruction sets this CPU can run, for tests: 1 = generic, 2 = AVX2+FMA, 3 = AVX-512.
#[cfg(test)]
pub(crate) fn available_isas() -> Vec<u8> {
    let best = match detected_isa() {
        Isa::Generic => 1,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => 2,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => 3,
    };
    (1..=best).collect()
}

/// The instruction set to run with: the best this CPU has (AVX-512F with FMA, AVX2 with FMA,
/// or neither), unless a test forces one.
pub(crate) fn isa() -> Isa {
    #[cfg(test)]
    {
        match FORCE_ISA.load(std::sync::atomic::Ordering::Relaxed) {
            1 => return Isa::Generic,
            #[cfg(target_arch = "x86_64")]
            2 => return Isa::Avx2Fma,
            #[cfg(target_arch = "x86_64")]
            3 => return Isa::Avx512,
            _ => {}
        }
    }
    detected_isa()
}

/// The best set this CPU has, lowered to `HOPFIELD_ISA` (`generic`, `avx2` or `avx512`) when
/// that is set, so that the kernels' builds can be timed against each other on one machine (an
/// unknown value, or one above what the CPU has, changes nothing).
fn detected_isa() -> Isa {
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(|| capped(std::env::var("HOPFIELD_ISA").ok().as_deref()))
}

fn capped(cap: Option<&str>) -> Isa {
    const NAMES: [&str; 3] = ["generic", "avx2", "avx512"];
    let rank = |n: &str| NAMES.iter().position(|&r| r == n);
    let allows = |name: &str| match cap.and_then(rank) {
        Some(c) => rank(name) <= Some(c),
        None => true,
    };
    #[cfg(target_arch = "x86_64")]
    {
        // Every AVX-512 build also enables AVX2 and FMA (`wide`, the retrieval's dispatch), so
        // it needs all three detected, not just implied by every CPU sold so far.
        let avx2 = std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
        if allows("avx512") && avx2 && std::is_x86_feature_detected!("avx512f") {
            return Isa::Avx512;
        }
        if allows("avx2") && avx2 {
            return Isa::Avx2Fma;
        }
    }
    let _ = allows;
    Isa::Generic
}

/// The instruction set the CPU kernels run with: `"avx512"` (AVX-512F and FMA), `"avx2"`
/// (AVX2 and FMA) or `"generic"`; the best this CPU has unless the environment variable
/// `HOPFIELD_ISA` names a lower one (read once, at the first kernel call). For benchmarks, to
/// record which build ran and to time the builds against each other.
///
/// ```
/// let isa = hopfield_cuda::instruction_set();
/// assert!(["avx512", "avx2", "generic"].contains(&isa));
/// ```
pub fn instruction_set() -> &'static str {
    match isa() {
        Isa::Generic => "generic",
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => "avx2",
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => "avx512",
    }
}

/// `f()`, compiled for AVX2+FMA where [`isa`] has them, else as is.
#[inline(always)]
pub(crate) fn wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if isa() != Isa::Generic {
            // SAFETY: both sets other than Generic are chosen only where AVX2 and FMA were
            // detected.
            return unsafe { avx2(f) };
        }
    }
    f()
}

#[cfg(test)]
mod tests {
    #[test]
    fn hopfield_isa_lowers_the_set_and_never_raises_it() {
        use super::{capped, Isa};
        let best = capped(None);
        assert_eq!(capped(Some("generic")), Isa::Generic);
        assert_eq!(capped(Some("avx512")), best);
        assert_eq!(capped(Some("unknown")), best);
        #[cfg(target_arch = "x86_64")]
        if best != Isa::Generic {
            assert_eq!(capped(Some("avx2")), Isa::Avx2Fma);
        }
    }

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
