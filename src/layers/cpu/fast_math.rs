//! Vectorisable f32 math for the CPU fast paths (softmax, GELU).
//!
//! candle's CPU kernels call the scalar `exp`/`tanh` per element; the functions
//! here are branch-free polynomials that the compiler turns into vector code.
//! [`simd_kernel!`] compiles a kernel for AVX-512, for AVX2 + FMA and for no
//! extension at all, and picks at run time what the processor has.

/// `e^x` within a few f32 ulps: `2^n * e^r` with `n = round(x / ln 2)` (taken
/// with the 1.5 * 2^23 shifter, so no float-to-int conversion), `r = x - n ln 2`
/// in two parts (Cody-Waite) so large `|x|` keeps full precision, and `e^r` from
/// a degree-7 polynomial on `|r| <= ln(2) / 2`. Below -87 the result is 0
/// (masked softmax entries are -inf); above 88 it saturates near 1.7e38.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    let underflow = x < -87.0;
    let x = x.clamp(-87.0, 88.0);
    const SHIFTER: f32 = 12_582_912.0; // 1.5 * 2^23
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let shifted = x * std::f32::consts::LOG2_E + SHIFTER;
    let n = shifted - SHIFTER;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    const C: [f32; 8] = [
        1.0,
        1.0,
        0.5,
        1.0 / 6.0,
        1.0 / 24.0,
        1.0 / 120.0,
        1.0 / 720.0,
        1.0 / 5040.0,
    ];
    let p = C[0]
        + r * (C[1] + r * (C[2] + r * (C[3] + r * (C[4] + r * (C[5] + r * (C[6] + r * C[7]))))));
    // The shifter's low mantissa bits hold n; move n + 127 into the exponent.
    let bits = shifted
        .to_bits()
        .wrapping_sub(SHIFTER.to_bits())
        .wrapping_add(127)
        << 23;
    if underflow {
        0.0
    } else {
        p * f32::from_bits(bits)
    }
}

/// GELU with the tanh approximation, `0.5 x (1 + tanh(u))` written as
/// `x / (1 + e^(-2u))`, `u = sqrt(2 / pi) (x + 0.044715 x^3)`.
#[inline(always)]
pub(crate) fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let u = SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x);
    x / (1.0 + exp(-2.0 * u))
}

/// Defines `fn name(args)` from a body compiled three times (AVX-512, AVX2 +
/// FMA, plain) and dispatched on what the processor supports.
macro_rules! simd_kernel {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn portable($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn avx512($($arg: $ty),*) $(-> $ret)? {
                    portable($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    portable($($arg),*)
                }
                if std::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the feature the function is compiled for was just detected.
                    return unsafe { avx512($($arg),*) };
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: as above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            portable($($arg),*)
        }
    };
}
pub(crate) use simd_kernel;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate() {
        for i in 0..40_000 {
            let x = 87.0 - (i as f32) * 0.0043;
            let (a, b) = (exp(x), x.exp());
            assert!((a - b).abs() <= 3e-7 * b, "x={x}: {a} vs {b}");
        }
        assert_eq!(exp(-1000.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert!(exp(1000.0).is_finite() && exp(1000.0) > 1e38);
    }

    #[test]
    fn gelu_matches_the_tanh_formula() {
        for i in 0..20_000 {
            let x = -50.0 + (i as f32) * 0.005;
            let want = 0.5 * x * (1.0 + (0.797_884_6 * (x + 0.044_715 * x * x * x)).tanh());
            let got = gelu_tanh(x);
            assert!(
                (got - want).abs() <= 1e-6 * (1.0 + x.abs()),
                "x={x}: {got} vs {want}"
            );
        }
    }
}
