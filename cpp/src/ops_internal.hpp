// What the parts of ops (ops*.cpp) share: exp in float32 for their element-wise kernels (inlined into each
// multiversioned caller) and row kernels used by more than one part; not installed.
#pragma once

#include <cstdint>

#include "s2e/common.hpp"

namespace s2e {
namespace ops {

// e^x = 2^n e^r for n = ni (as a float and as an int) near x / ln 2: r by a two-constant Cody-Waite
// reduction (ln 2 = kLn2Hi - kLn2Lo), e^r = 1 + r + r^2 P(r) with P's coefficients kExpPoly (highest
// first) on [-ln2/2, ln2/2], 2^n through the float's exponent bits. The AVX-512 kernel uses the same.
constexpr float kLn2Hi = 0.693359375f, kLn2Lo = 2.12194440e-4f;
constexpr float kExpPoly[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                               4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};

__attribute__((always_inline)) static inline float exp_reduced(float x, float n, int32_t ni) {
    const float r = (x - n * kLn2Hi) + n * kLn2Lo;
    float p = kExpPoly[0];
    for (int i = 1; i < 6; ++i) p = p * r + kExpPoly[i];
    p = p * r * r + r + 1.0f;
    return p * bits_to_float(static_cast<uint32_t>(ni + 127) << 23);
}

// exp(x) in float32 to ~2 ulp (Cody-Waite reduction by ln 2, a degree-6 polynomial on
// [-ln2/2, ln2/2], the exponent added through the float's bits), without branches so that loops
// calling it vectorize; libm's expf is one call per element. NaN stays NaN; below -87.3 it returns
// exp(-87.3) ~ 1e-38 in place of a denormal or zero.
// always_inline: inlined into each multiversioned caller, so it is compiled for that caller's ISA.
__attribute__((always_inline)) static inline float exp_vec(float x) {
    x = x < -87.3f ? -87.3f : x;  // comparisons, not std::min/max: those stay out-of-line calls in the
    x = x > 88.7f ? 88.7f : x;    // multiversioned callers (NaN passes both unchanged)
    // n = floor(t) without libm's floorf, which the multiversioned loops called once per element
    // (GCC does not expand it inline there), so they did not vectorize: truncate, then step down
    // where truncation rounded a negative t up. t lies in [-126, 129]; a NaN x takes n = 0 and
    // stays NaN through r.
    const float t = x * 1.44269504088896341f + 0.5f;
    const float tt = t == t ? t : 0.0f;
    const int32_t ti = static_cast<int32_t>(tt);
    const int32_t ni = ti - (static_cast<float>(ti) > tt ? 1 : 0);
    const float n = static_cast<float>(ni);
    return exp_reduced(x, n, ni);
}

// a[j] = silu(u[j]) * u[hid + j] for one row of the FFN's gate | up (multiversioned, in ops.cpp).
void swiglu_row(const float* u, float* a, int64_t hid);

}  // namespace ops
}  // namespace s2e
