// Attention's probabilities in bf16: exp of the shifted scores, rounded to bf16, with 1 / their sum.
#include "s2e/ops.hpp"

#include <cmath>
#include <cstring>
#include <type_traits>

#include "ops_internal.hpp"
#include "s2e/common.hpp"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define S2E_AVX512_BF16 1  // a hand-vectorized kernel for CPUs with AVX-512 BF16, picked at run time
#include <immintrin.h>
#endif

namespace s2e {
namespace ops {

// exp(x) for x <= 0, as exp_vec to ~2 ulp (the same reduction and polynomial) but with the rounding
// of x / ln 2 done by the 1.5 * 2^23 shift and no NaN or overflow handling, which the softmax's shifted
// scores (max subtracted) never need: its loop is half exp_vec's instructions. Below -87 it returns
// exp(-87) ~ 1.6e-38.
__attribute__((always_inline)) static inline float exp_nonpositive(float x) {
    x = x < -87.0f ? -87.0f : x;
    const float y = x * 1.44269504088896341f + 12582912.0f;  // 1.5 * 2^23 + round(x / ln 2): n in the low bits
    const int32_t ni = static_cast<int32_t>(float_to_bits(y)) - 0x4b400000;
    const float n = y - 12582912.0f;
    return exp_reduced(x, n, ni);
}

// bfloat16 bits of a finite float, ties to even (float_to_bf16 without its inf / NaN branch).
__attribute__((always_inline)) static inline uint16_t finite_to_bf16(float x) {
    const uint32_t u = float_to_bits(x);
    return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// exp(scale * s_j - scale * max s) of one row as bfloat16 bits, unnormalised, in one pass after the
// maximum; returns 1 / the sum of the exponentials (in float, before rounding), which the caller
// applies to P.v's output rows: n x d multiplications instead of a third pass over n x T probabilities.
template <class S>
__attribute__((always_inline)) static inline float exp_row_bf16(const S* s, int64_t cols, float scale, uint16_t* p) {
    S m = s[0];
#pragma omp simd reduction(max : m)
    for (int64_t j = 0; j < cols; ++j) m = s[j] > m ? s[j] : m;
    float sum = 0.0f;
    if constexpr (std::is_same<S, int32_t>::value) {  // s_j - max is exact in int32 and in float (|.| < 2^24)
#pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j < cols; ++j) {
            const float e = exp_nonpositive(static_cast<float>(s[j] - m) * scale);
            sum += e;
            p[j] = finite_to_bf16(e);
        }
    } else {
        const float ms = m * scale;
#pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j < cols; ++j) {
            const float e = exp_nonpositive(s[j] * scale - ms);
            sum += e;
            p[j] = finite_to_bf16(e);
        }
    }
    return 1.0f / sum;
}

S2E_CPU_CLONES static float exp_row_bf16_portable(const float* s, int64_t cols, float scale, uint16_t* p) {
    return exp_row_bf16(s, cols, scale, p);
}
S2E_CPU_CLONES static float exp_row_bf16_portable(const int32_t* s, int64_t cols, float scale, uint16_t* p) {
    return exp_row_bf16(s, cols, scale, p);
}

#ifdef S2E_AVX512_BF16
// exp_row_bf16 in AVX-512 with the BF16 extension, for CPUs that have it (chosen at run time). Why by
// hand: the multiversioned loop above is GCC's 256-bit code, with 2^n built from integer shifts and the
// bf16 rounding from integer ops; vscalefps and vcvtneps2bf16 do each in one instruction, and the
// loop runs on 512-bit registers. The same reduction and polynomial as exp_nonpositive.
#define S2E_AVX512_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
// GCC 12's AVX-512 intrinsics pass _mm512_undefined_ps() as the unused merge source, which its own
// uninitialised-value warnings flag inside these functions.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

S2E_AVX512_BF16_TARGET static inline __m512 exp_nonpositive16(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), x);
    r = _mm512_fmadd_ps(n, _mm512_set1_ps(kLn2Lo), r);
    __m512 p = _mm512_set1_ps(kExpPoly[0]);
    for (int i = 1; i < 6; ++i) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpPoly[i]));
    p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

// The sum of the 16 lanes, through memory (as row_max16's maximum).
S2E_AVX512_BF16_TARGET static inline float lanes_sum(__m512 v) {
    alignas(64) float t[16];
    _mm512_store_ps(t, v);
    float s = 0.0f;
    for (int i = 0; i < 16; ++i) s += t[i];
    return s;
}

// The scaled, max-shifted scores of 16 columns from j (the lanes of `mask`).
S2E_AVX512_BF16_TARGET static inline __m512 shifted16(const int32_t* s, int64_t j, __mmask16 mask, __m512i m,
                                                      __m512 scale) {
    const __m512i v = _mm512_maskz_loadu_epi32(mask, s + j);
    return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(v, m)), scale);
}
S2E_AVX512_BF16_TARGET static inline __m512 shifted16(const float* s, int64_t j, __mmask16 mask, __m512 ms,
                                                      __m512 scale) {
    return _mm512_fmsub_ps(_mm512_maskz_loadu_ps(mask, s + j), scale, ms);
}

// Masks of the 16-column chunks: whole ones, and the last (cols % 16) columns.
static inline __mmask16 tail_mask(int64_t n) { return static_cast<__mmask16>((1u << n) - 1u); }

// 16 lanes of scores: int32 or float.
struct Int32Lanes {
    using V = __m512i;
    S2E_AVX512_BF16_TARGET static V lowest() { return _mm512_set1_epi32(INT32_MIN); }
    S2E_AVX512_BF16_TARGET static V load(const int32_t* p, __mmask16 k) { return _mm512_mask_loadu_epi32(lowest(), k, p); }
    S2E_AVX512_BF16_TARGET static V max(V a, V b) { return _mm512_max_epi32(a, b); }
    S2E_AVX512_BF16_TARGET static V splat_scaled(int32_t m, float) { return _mm512_set1_epi32(m); }
};
struct FloatLanes {
    using V = __m512;
    S2E_AVX512_BF16_TARGET static V lowest() { return _mm512_set1_ps(-INFINITY); }
    S2E_AVX512_BF16_TARGET static V load(const float* p, __mmask16 k) { return _mm512_mask_loadu_ps(lowest(), k, p); }
    S2E_AVX512_BF16_TARGET static V max(V a, V b) { return _mm512_max_ps(a, b); }
    S2E_AVX512_BF16_TARGET static V splat_scaled(float m, float scale) { return _mm512_set1_ps(m * scale); }
};

// The row's maximum in every lane (times `scale` for float scores: what shifted16 subtracts).
template <class L, class S>
S2E_AVX512_BF16_TARGET static inline typename L::V row_max16(const S* s, int64_t cols, float scale) {
    typename L::V m0 = L::lowest(), m1 = m0;
    int64_t j = 0;
    for (; j + 32 <= cols; j += 32) {
        m0 = L::max(m0, L::load(s + j, 0xffff));
        m1 = L::max(m1, L::load(s + j + 16, 0xffff));
    }
    for (; j < cols; j += 16) m0 = L::max(m0, L::load(s + j, cols - j >= 16 ? __mmask16(0xffff) : tail_mask(cols - j)));
    const typename L::V lanes = L::max(m0, m1);
    S t[16];  // the lanes through memory (GCC 12's _mm512_reduce_* intrinsics warn of uninitialised values)
    std::memcpy(t, &lanes, sizeof t);
    S m = t[0];
    for (int i = 1; i < 16; ++i) m = t[i] > m ? t[i] : m;
    return L::splat_scaled(m, scale);
}

template <class S>
S2E_AVX512_BF16_TARGET static float exp_row_bf16_avx512(const S* s, int64_t cols, float scale, uint16_t* p) {
    using Lanes = typename std::conditional<std::is_same<S, int32_t>::value, Int32Lanes, FloatLanes>::type;
    const auto m = row_max16<Lanes>(s, cols, scale);
    const __m512 vs = _mm512_set1_ps(scale);
    __m512 sum0 = _mm512_setzero_ps(), sum1 = sum0;
    int64_t j = 0;
    for (; j + 32 <= cols; j += 32) {
        const __m512 e0 = exp_nonpositive16(shifted16(s, j, 0xffff, m, vs));
        const __m512 e1 = exp_nonpositive16(shifted16(s, j + 16, 0xffff, m, vs));
        sum0 = _mm512_add_ps(sum0, e0);
        sum1 = _mm512_add_ps(sum1, e1);
        _mm512_storeu_si512(p + j, (__m512i)_mm512_cvtne2ps_pbh(e1, e0));
    }
    for (; j < cols; j += 16) {
        const __mmask16 k = cols - j >= 16 ? __mmask16(0xffff) : tail_mask(cols - j);
        const __m512 e = exp_nonpositive16(shifted16(s, j, k, m, vs));
        sum0 = _mm512_mask_add_ps(sum0, k, sum0, e);
        _mm256_mask_storeu_epi16(p + j, k, (__m256i)_mm512_cvtneps_pbh(e));
    }
    return 1.0f / lanes_sum(_mm512_add_ps(sum0, sum1));
}

#pragma GCC diagnostic pop

static bool has_avx512_bf16() {
    static const bool has = __builtin_cpu_supports("avx512bf16");
    return has;
}
#else
static bool has_avx512_bf16() { return false; }
#endif

bool exp_rows_bf16_vectorized() { return has_avx512_bf16(); }

template <class S>
static void exp_rows_bf16_of(const S* s, int64_t rows, int64_t cols, float scale, uint16_t* p, float* inv_sum,
                             bool vectorized) {
#ifdef S2E_AVX512_BF16
    if (vectorized && has_avx512_bf16()) {
        for (int64_t r = 0; r < rows; ++r) inv_sum[r] = exp_row_bf16_avx512(s + r * cols, cols, scale, p + r * cols);
        return;
    }
#else
    (void)vectorized;
#endif
    for (int64_t r = 0; r < rows; ++r) inv_sum[r] = exp_row_bf16_portable(s + r * cols, cols, scale, p + r * cols);
}

void exp_rows_bf16(const float* s, int64_t rows, int64_t cols, float scale, uint16_t* p, float* inv_sum,
                   bool vectorized) {
    exp_rows_bf16_of(s, rows, cols, scale, p, inv_sum, vectorized);
}

void exp_rows_bf16(const int32_t* s, int64_t rows, int64_t cols, float scale, uint16_t* p, float* inv_sum,
                   bool vectorized) {
    exp_rows_bf16_of(s, rows, cols, scale, p, inv_sum, vectorized);
}


}  // namespace ops
}  // namespace s2e
