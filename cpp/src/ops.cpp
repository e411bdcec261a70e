#include "s2e/ops.hpp"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "s2e/common.hpp"
#include "s2e/onednn.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define S2E_AVX512_BF16 1  // a hand-vectorized kernel for CPUs with AVX-512 BF16, picked at run time
#include <immintrin.h>
#endif

// GEMM goes through OpenBLAS (the scipy-openblas32 wheel: symbols prefixed scipy_cblas_). Why a
// BLAS and not our own kernels: >95% of the FLOPs are dense fp32 GEMMs, and a well-kept BLAS has
// per-microarchitecture kernels (AVX2/AVX-512/NEON) selected at run time, multi-threading and
// cache blocking that a small engine cannot match or maintain; the wheel ships a ready,
// relocatable build for every platform pip supports, so the extension needs no system BLAS.
#ifdef S2E_BLAS_SCIPY_PREFIX
#include <cblas.h>
#define S2E_SGEMM scipy_cblas_sgemm
#else
#include <cblas.h>
#define S2E_SGEMM cblas_sgemm
#endif

namespace s2e {
namespace ops {

int num_threads() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

static int checked_int(int64_t v, const char* what) {
    if (v < 0 || v > INT_MAX) throw UnsupportedError(std::string("GEMM dimension ") + what + " exceeds the BLAS int range");
    return static_cast<int>(v);
}

static void sgemm_serial(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                         int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
    S2E_SGEMM(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
              checked_int(M, "M"), checked_int(N, "N"), checked_int(K, "K"), alpha, A, checked_int(lda, "lda"), B,
              checked_int(ldb, "ldb"), beta, C, checked_int(ldc, "ldc"));
}

// One thread pool: BLAS runs single-threaded and the engine splits each GEMM over its OpenMP
// threads (rows of C, or columns when C is wide). Two pools (OpenMP for the element-wise kernels
// and OpenBLAS's pthreads for GEMMs) spin against each other and were 2-3x slower on few cores.
static void blas_single_thread() {
#ifdef S2E_BLAS_SCIPY_PREFIX
    static const bool once = [] {
        scipy_openblas_set_num_threads(1);
        return true;
    }();
    (void)once;
#endif
}

void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
           const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
    if (M == 0 || N == 0) return;
    blas_single_thread();
    // The split depends on the shape only, never on the thread count, so results are bit-identical
    // however many threads run (and from whichever thread the engine is called). Parts are handed
    // out dynamically: a thread that the OS parks (a busy machine) does not hold the others up.
    const bool split_rows = M >= N;
    const int64_t extent = split_rows ? M : N, grain = 16;
    const int64_t parts = M * N * std::max<int64_t>(K, 1) < (1 << 18) ? 1 : std::min<int64_t>(8, extent / (4 * grain));
    if (parts <= 1) {
        sgemm_serial(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    const int64_t step = ((extent + parts - 1) / parts + grain - 1) / grain * grain;
#pragma omp parallel for schedule(dynamic, 1) if (!omp_in_parallel())
    for (int64_t p = 0; p < parts; ++p) {
        const int64_t lo = p * step, n = std::min(extent, lo + step) - lo;
        if (n <= 0) continue;
        if (split_rows)
            sgemm_serial(trans_a, trans_b, n, N, K, alpha, trans_a ? A + lo : A + lo * lda, lda, B, ldb, beta,
                         C + lo * ldc, ldc);
        else
            sgemm_serial(trans_a, trans_b, M, n, K, alpha, A, lda, trans_b ? B + lo * ldb : B + lo, ldb, beta,
                         C + lo, ldc);
    }
}

void gemm(Gemm how, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
    if (how == Gemm::onednn_bf16)
        onednn::gemm_bf16(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    else if (how == Gemm::onednn_f32)
        onednn::gemm_f32(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    else
        sgemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void linear(const float* x, int64_t M, int64_t K, const float* W, const float* b, int64_t N, float* y, int64_t ldy) {
    if (b) {
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < M; ++i) std::memcpy(y + i * ldy, b, sizeof(float) * N);
    }
    sgemm(false, true, M, N, K, 1.0f, x, K, W, K, b ? 1.0f : 0.0f, y, ldy);
}

S2E_CPU_CLONES static void rms_norm_row(const float* xr, float* yr, int64_t dim, const float* w, float eps) {
    double ss = 0.0;
#pragma omp simd reduction(+ : ss)
    for (int64_t i = 0; i < dim; ++i) ss += static_cast<double>(xr[i]) * xr[i];
    float inv = static_cast<float>(1.0 / std::sqrt(ss / dim + eps));
    for (int64_t i = 0; i < dim; ++i) yr[i] = xr[i] * inv * w[i];
}

void rms_norm(const float* x, float* y, int64_t rows, int64_t dim, int64_t stride, const float* w, float eps) {
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) rms_norm_row(x + r * stride, y + r * stride, dim, w, eps);
}

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

S2E_CPU_CLONES static void silu_span(float* x, int64_t n) {
    for (int64_t i = 0; i < n; ++i) x[i] = x[i] / (1.0f + exp_vec(-x[i]));
}

void silu_inplace(float* x, int64_t n) {
    const int64_t parts = n > 65536 ? 64 : 1, step = (n + parts - 1) / parts;
#pragma omp parallel for schedule(static) if (parts > 1)
    for (int64_t p = 0; p < parts; ++p) {
        const int64_t lo = p * step, hi = std::min(n, lo + step);
        if (hi > lo) silu_span(x + lo, hi - lo);
    }
}

S2E_CPU_CLONES static void swiglu_row(const float* u, float* a, int64_t hid) {
    for (int64_t j = 0; j < hid; ++j) a[j] = u[j] / (1.0f + exp_vec(-u[j])) * u[hid + j];
}

void swiglu(const float* u, float* a, int64_t rows, int64_t hid) {
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) swiglu_row(u + r * 2 * hid, a + r * hid, hid);
}

// softmax(scale * s) of one row in one read of the scores for the maximum and one for the
// exponentials: max(fl(scale * s_j)) = fl(scale * max s_j) for scale > 0, so the values are those
// of scaling first. The probabilities go back into s.
S2E_CPU_CLONES static void softmax_row_scaled(float* s, int64_t cols, float scale) {
    float m = -INFINITY;
#pragma omp simd reduction(max : m)
    for (int64_t j = 0; j < cols; ++j) m = s[j] > m ? s[j] : m;
    m *= scale;
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < cols; ++j) {
        s[j] = exp_vec(s[j] * scale - m);
        sum += s[j];
    }
    const float inv = 1.0f / sum;
    for (int64_t j = 0; j < cols; ++j) s[j] *= inv;
}

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

// The unscaled softmax: scale 1 multiplies exactly, so the values are the plain softmax's.
static void softmax_row(float* s, int64_t cols) { softmax_row_scaled(s, cols, 1.0f); }

void softmax_rows(float* s, int64_t rows, int64_t cols, int64_t ld) {
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) softmax_row(s + r * ld, cols);
}

void softmax_rows_scaled(float* s, int64_t rows, int64_t cols, int64_t ld, float scale) {
    for (int64_t r = 0; r < rows; ++r) softmax_row_scaled(s + r * ld, cols, scale);
}

S2E_CPU_CLONES static float quantize_row_int8(const float* x, int64_t n, float scale, int8_t* q) {
    if (!(scale > 0.0f)) {  // dynamic: absmax / 127, as the torch reference (1e-12 for a zero row)
        float m = 0.0f;
#pragma omp simd reduction(max : m)
        for (int64_t i = 0; i < n; ++i) {
            const float a = x[i] < 0.0f ? -x[i] : x[i];
            m = a > m ? a : m;
        }
        scale = m / 127.0f;
        scale = scale > 0.0f ? scale : 1e-12f;
    }
    for (int64_t i = 0; i < n; ++i) {
        float v = x[i] / scale;
        v = v < -127.0f ? -127.0f : v;  // clamped before rounding: the same integers, since the
        v = v > 127.0f ? 127.0f : v;    // bounds are integers (round(-127.5) = -128 clamps to -127)
        // round half to even (the FPU's mode) by the 1.5 * 2^23 shift, exact for |v| <= 2^22
        const float r = (v + 12582912.0f) - 12582912.0f;
        q[i] = static_cast<int8_t>(static_cast<int32_t>(r));
    }
    return scale;
}

void quantize_rows_int8(const float* x, int64_t rows, int64_t K, float* scales, int8_t* q) {
#pragma omp parallel for schedule(static)
    for (int64_t m = 0; m < rows; ++m) scales[m] = quantize_row_int8(x + m * K, K, scales[m], q + m * K);
}

S2E_CPU_CLONES static void round_span_int8(float* x, int64_t n, float scale, float out_scale) {
    for (int64_t i = 0; i < n; ++i) {
        float v = x[i] / scale;
        v = v < -127.0f ? -127.0f : v;
        v = v > 127.0f ? 127.0f : v;
        x[i] = ((v + 12582912.0f) - 12582912.0f) * out_scale;  // round half to even, as quantize_row_int8
    }
}

static void round_int8_to(float* x, int64_t n, float scale, float out_scale) {
    const int64_t chunk = 1 << 14;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i += chunk) round_span_int8(x + i, std::min(chunk, n - i), scale, out_scale);
}

void fake_quant_int8(float* x, int64_t n, float scale) { round_int8_to(x, n, scale, scale); }

static inline int8_t to_int8(float v) {
    v = v < -127.0f ? -127.0f : v;
    v = v > 127.0f ? 127.0f : v;
    return static_cast<int8_t>((v + 12582912.0f) - 12582912.0f);  // round half to even, as round_int8
}

S2E_CPU_CLONES static void quantize_span_int8(const float* x, int64_t n, float scale, int8_t* q) {
    for (int64_t i = 0; i < n; ++i) q[i] = to_int8(x[i] / scale);
}

S2E_CPU_CLONES static void quantize_span_int8(const uint16_t* x, int64_t n, float scale, int8_t* q) {
    for (int64_t i = 0; i < n; ++i) q[i] = to_int8(bf16_to_float(x[i]) / scale);
}

template <class E>
static void quantize_int8_as(const E* x, int64_t n, float scale, int8_t* q) {
    const int64_t chunk = 1 << 14;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i += chunk) quantize_span_int8(x + i, std::min(chunk, n - i), scale, q + i);
}

void quantize_int8(const float* x, int64_t n, float scale, int8_t* q) { quantize_int8_as(x, n, scale, q); }

void quantize_int8(const uint16_t* x, int64_t n, float scale, int8_t* q) { quantize_int8_as(x, n, scale, q); }

void fake_quant_int8(uint16_t* x, int64_t n, float scale) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; ++i) x[i] = float_to_bf16(static_cast<float>(to_int8(bf16_to_float(x[i]) / scale)) * scale);
}

void round_int8(float* x, int64_t n, float scale) { round_int8_to(x, n, scale, 1.0f); }

S2E_CPU_CLONES static void dequantize_row_int32(float* y, int64_t N, float rs, const float* cs, const float* b) {
    for (int64_t n = 0; n < N; ++n) {
        int32_t a;
        std::memcpy(&a, y + n, sizeof a);
        const float v = static_cast<float>(a) * (rs * cs[n]);
        y[n] = b ? v + b[n] : v;
    }
}

void dequantize_rows_int32(float* y, int64_t rows, int64_t N, const float* row_scale, const float* col_scale,
                           const float* b) {
#pragma omp parallel for schedule(static)
    for (int64_t m = 0; m < rows; ++m) dequantize_row_int32(y + m * N, N, row_scale[m], col_scale, b);
}

void swiglu_int8(const int32_t* acc, int64_t rows, int64_t hid, const float* row_scale, const float* col_scale,
                 const float* b, float* out_scale, int8_t* q) {
#pragma omp parallel
    {
        thread_local std::vector<float> row;  // one row's gate | up | SwiGLU, in cache between the steps
        row.resize(static_cast<size_t>(3 * hid));
        float *gu = row.data(), *a = gu + 2 * hid;
#pragma omp for schedule(static)
        for (int64_t m = 0; m < rows; ++m) {
            std::memcpy(gu, acc + m * 2 * hid, sizeof(float) * 2 * hid);
            dequantize_row_int32(gu, 2 * hid, row_scale[m], col_scale, b);
            swiglu_row(gu, a, hid);
            out_scale[m] = quantize_row_int8(a, hid, out_scale[m], q + m * hid);
        }
    }
}

S2E_CPU_CLONES static void normalize_plane(float* p, int64_t HW, float eps, bool silu) {
    double sum = 0.0;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < HW; ++i) sum += p[i];
    double mean = sum / HW, var = 0.0;
#pragma omp simd reduction(+ : var)
    for (int64_t i = 0; i < HW; ++i) var += (p[i] - mean) * (p[i] - mean);
    var /= HW;
    float inv = static_cast<float>(1.0 / std::sqrt(var + eps)), m = static_cast<float>(mean);
    if (silu) {  // the head's SiLU in the same pass (z / (1 + e^-z), as silu_inplace)
        for (int64_t i = 0; i < HW; ++i) {
            const float z = (p[i] - m) * inv;
            p[i] = z / (1.0f + exp_vec(-z));
        }
    } else {
        for (int64_t i = 0; i < HW; ++i) p[i] = (p[i] - m) * inv;
    }
}

void instance_norm(float* x, int64_t C, int64_t HW, float eps, bool silu) {
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < C; ++c) normalize_plane(x + c * HW, HW, eps, silu);
}

S2E_CPU_CLONES static void shifted_sums_row(const float* row, const float* shift, int64_t C, double* sum,
                                             double* sq) {
    for (int64_t c = 0; c < C; ++c) {
        const double d = static_cast<double>(row[c]) - shift[c];
        sum[c] += d;
        sq[c] += d * d;
    }
}

template <class E>
__attribute__((always_inline)) inline E stored_as(float z);
template <>
__attribute__((always_inline)) inline float stored_as<float>(float z) { return z; }
template <>
__attribute__((always_inline)) inline uint16_t stored_as<uint16_t>(float z) { return float_to_bf16(z); }

template <class E>
__attribute__((always_inline)) inline void normalize_row_as(const float* row, const float* mean, const float* inv,
                                                            int64_t C, bool silu, E* out) {
    if (silu) {
        for (int64_t c = 0; c < C; ++c) {
            const float z = (row[c] - mean[c]) * inv[c];
            out[c] = stored_as<E>(z / (1.0f + exp_vec(-z)));
        }
    } else {
        for (int64_t c = 0; c < C; ++c) out[c] = stored_as<E>((row[c] - mean[c]) * inv[c]);
    }
}

S2E_CPU_CLONES static void normalize_row(const float* row, const float* mean, const float* inv, int64_t C, bool silu,
                                         uint16_t* out) {
    normalize_row_as(row, mean, inv, C, silu, out);
}

S2E_CPU_CLONES static void normalize_row(const float* row, const float* mean, const float* inv, int64_t C, bool silu,
                                         float* out) {
    normalize_row_as(row, mean, inv, C, silu, out);
}

// Per-channel mean and 1 / sqrt(var + eps) (biased variance) of y (HW, C * group) channels last, the
// `group` adjacent columns of each channel pooled (a PixelShuffle's sub-pixels before the shuffle).
// One pass of float64 sums shifted by the channel's first value (no cancellation for channels far from
// zero), each thread's over its static share of pixels, added in thread order: the same bits every run.
static void channel_stats(const float* y, int64_t HW, int64_t C, int64_t group, float eps, float* mean, float* inv) {
    const int64_t cols = C * group;
    int threads = 1;
#ifdef _OPENMP
    threads = omp_get_max_threads();
#endif
    std::vector<double> part(static_cast<size_t>(2 * threads * cols), 0.0);
    std::vector<float> shift(static_cast<size_t>(cols));
    for (int64_t j = 0; j < cols; ++j) shift[j] = y[j - j % group];
#pragma omp parallel num_threads(threads)
    {
        int t = 0, n = 1;
#ifdef _OPENMP
        t = omp_get_thread_num();
        n = omp_get_num_threads();
#endif
        double* sum = part.data() + static_cast<size_t>(2 * t * cols);
        const int64_t lo = HW * t / n, hi = HW * (t + 1) / n;
        for (int64_t p = lo; p < hi; ++p) shifted_sums_row(y + p * cols, shift.data(), cols, sum, sum + cols);
    }
    const double count = static_cast<double>(HW * group);
    for (int64_t c = 0; c < C; ++c) {
        double s = 0.0, q = 0.0;
        for (int t = 0; t < threads; ++t)
            for (int64_t g = 0; g < group; ++g) {
                s += part[static_cast<size_t>(2 * t * cols + c * group + g)];
                q += part[static_cast<size_t>((2 * t + 1) * cols + c * group + g)];
            }
        const double m = s / count, var = std::max(0.0, q / count - m * m);
        mean[c] = static_cast<float>(shift[c * group] + m);
        inv[c] = static_cast<float>(1.0 / std::sqrt(var + eps));
    }
}

template <class E>
static void instance_norm_nhwc_as(const float* y, int64_t HW, int64_t C, float eps, bool silu, E* out) {
    if (HW == 0 || C == 0) return;
    std::vector<float> mean(static_cast<size_t>(C)), inv(static_cast<size_t>(C));
    channel_stats(y, HW, C, 1, eps, mean.data(), inv.data());
#pragma omp parallel for schedule(static)
    for (int64_t p = 0; p < HW; ++p) normalize_row(y + p * C, mean.data(), inv.data(), C, silu, out + p * C);
}

void instance_norm_nhwc(const float* y, int64_t HW, int64_t C, float eps, bool silu, uint16_t* out) {
    instance_norm_nhwc_as(y, HW, C, eps, silu, out);
}

void instance_norm_nhwc(const float* y, int64_t HW, int64_t C, float eps, bool silu, float* out) {
    instance_norm_nhwc_as(y, HW, C, eps, silu, out);
}

template <class E>
__attribute__((always_inline)) inline void rms_normalize_row_as(const float* row, const float* w, int64_t C, float eps,
                                                                bool silu, E* out) {
    double ss = 0.0;
    for (int64_t c = 0; c < C; ++c) ss += static_cast<double>(row[c]) * row[c];
    const float inv = static_cast<float>(1.0 / std::sqrt(ss / C + eps));
    if (silu) {
        for (int64_t c = 0; c < C; ++c) {
            const float z = row[c] * inv * w[c];
            out[c] = stored_as<E>(z / (1.0f + exp_vec(-z)));
        }
    } else {
        for (int64_t c = 0; c < C; ++c) out[c] = stored_as<E>(row[c] * inv * w[c]);
    }
}

S2E_CPU_CLONES static void rms_normalize_row(const float* row, const float* w, int64_t C, float eps, bool silu,
                                             uint16_t* out) {
    rms_normalize_row_as(row, w, C, eps, silu, out);
}

S2E_CPU_CLONES static void rms_normalize_row(const float* row, const float* w, int64_t C, float eps, bool silu,
                                             float* out) {
    rms_normalize_row_as(row, w, C, eps, silu, out);
}

void rms_norm_nhwc(const float* y, int64_t HW, int64_t C, const float* w, float eps, bool silu, uint16_t* out) {
#pragma omp parallel for schedule(static)
    for (int64_t p = 0; p < HW; ++p) rms_normalize_row(y + p * C, w, C, eps, silu, out + p * C);
}

void rms_norm_nhwc(const float* y, int64_t HW, int64_t C, const float* w, float eps, bool silu, float* out) {
#pragma omp parallel for schedule(static)
    for (int64_t p = 0; p < HW; ++p) rms_normalize_row(y + p * C, w, C, eps, silu, out + p * C);
}

template <class E>
static void pixel_shuffle2_norm_nhwc_as(const float* y, int64_t c, int64_t H, int64_t W, const float* rms_w, float eps,
                                        bool silu, E* out) {
    if (H == 0 || W == 0 || c == 0) return;
    std::vector<float> mean, inv;
    if (!rms_w) {  // InstanceNorm: each output channel's statistics pool its 4 sub-pixel columns
        mean.resize(static_cast<size_t>(c));
        inv.resize(static_cast<size_t>(c));
        channel_stats(y, H * W, c, 4, eps, mean.data(), inv.data());
    }
    const int64_t Wo = 2 * W;
#pragma omp parallel
    {
        std::vector<float> row(static_cast<size_t>(c));  // one output pixel's channels, gathered
#pragma omp for schedule(static)
        for (int64_t ho = 0; ho < 2 * H; ++ho) {
            const int64_t h = ho / 2, i = ho % 2;
            for (int64_t wo = 0; wo < Wo; ++wo) {
                const float* src = y + (h * W + wo / 2) * 4 * c + i * 2 + wo % 2;  // channel ch * 4 + i * 2 + j
                for (int64_t ch = 0; ch < c; ++ch) row[ch] = src[ch * 4];
                E* dst = out + (ho * Wo + wo) * c;
                if (rms_w)
                    rms_normalize_row(row.data(), rms_w, c, eps, silu, dst);
                else
                    normalize_row(row.data(), mean.data(), inv.data(), c, silu, dst);
            }
        }
    }
}

void pixel_shuffle2_norm_nhwc(const float* y, int64_t c, int64_t H, int64_t W, const float* rms_w, float eps, bool silu,
                              uint16_t* out) {
    pixel_shuffle2_norm_nhwc_as(y, c, H, W, rms_w, eps, silu, out);
}

void pixel_shuffle2_norm_nhwc(const float* y, int64_t c, int64_t H, int64_t W, const float* rms_w, float eps, bool silu,
                              float* out) {
    pixel_shuffle2_norm_nhwc_as(y, c, H, W, rms_w, eps, silu, out);
}

S2E_CPU_CLONES static void scale_silu_row(float* row, int64_t n, const float* inv, float w) {
    for (int64_t i = 0; i < n; ++i) {
        const float z = row[i] * inv[i] * w;
        row[i] = z / (1.0f + exp_vec(-z));
    }
}

void rms_norm2d(float* x, int64_t C, int64_t HW, const float* w, float eps, bool silu) {
    const int64_t block = 256;
#pragma omp parallel for schedule(static)
    for (int64_t p0 = 0; p0 < HW; p0 += block) {
        int64_t n = std::min(block, HW - p0);
        double ss[256];
        for (int64_t i = 0; i < n; ++i) ss[i] = 0.0;
        for (int64_t c = 0; c < C; ++c) {
            const float* row = x + c * HW + p0;
            for (int64_t i = 0; i < n; ++i) ss[i] += static_cast<double>(row[i]) * row[i];
        }
        float inv[256];
        for (int64_t i = 0; i < n; ++i) inv[i] = static_cast<float>(1.0 / std::sqrt(ss[i] / C + eps));
        for (int64_t c = 0; c < C; ++c) {
            float* row = x + c * HW + p0;
            if (silu)
                scale_silu_row(row, n, inv, w[c]);
            else
                for (int64_t i = 0; i < n; ++i) row[i] = row[i] * inv[i] * w[c];
        }
    }
}

// Rows of output computed per im2col tile: keeps the column buffer near 4M floats (16 MB), large
// enough for efficient GEMMs and small next to the activations.
static int64_t tile_rows(int64_t per_row, int64_t rows) {
    const int64_t budget = 4ll << 20;
    return std::max<int64_t>(1, std::min<int64_t>(rows, budget / std::max<int64_t>(1, per_row)));
}

void conv2d(const float* x, int64_t cin, int64_t H, int64_t W, const float* w, const float* b, int64_t cout, int64_t k,
            int64_t stride, int64_t pad, float* y, std::vector<float>& scratch, Gemm how) {
    const int64_t Ho = conv_out(H, k, stride, pad), Wo = conv_out(W, k, stride, pad), HWo = Ho * Wo;
    const int64_t kdim = cin * k * k;
    // The bias is added after the GEMMs, in one pass: oneDNN's GEMMs take no beta, so a bias written
    // first would cost a fill, a scratch product and an addition.
    auto add_bias = [&] {
        if (!b) return;
#pragma omp parallel for schedule(static)
        for (int64_t c = 0; c < cout; ++c) {
            float* yc = y + c * HWo;
            for (int64_t i = 0; i < HWo; ++i) yc[i] += b[c];
        }
    };
    if (k == 1 && stride == 1 && pad == 0) {
        gemm(how, false, false, cout, HWo, cin, 1.0f, w, cin, x, H * W, 0.0f, y, HWo);
        add_bias();
        return;
    }
    const int64_t rows = tile_rows(kdim * Wo, Ho);
    scratch.resize(static_cast<size_t>(kdim * rows * Wo));
    float* cols = scratch.data();
    for (int64_t r0 = 0; r0 < Ho; r0 += rows) {
        const int64_t nr = std::min(rows, Ho - r0), ncols = nr * Wo;
#pragma omp parallel for schedule(static)
        for (int64_t kk = 0; kk < kdim; ++kk) {
            const int64_t ci = kk / (k * k), ky = (kk / k) % k, kx = kk % k;
            float* dst = cols + kk * ncols;
            const float* src = x + ci * H * W;
            for (int64_t r = 0; r < nr; ++r) {
                const int64_t iy = (r0 + r) * stride - pad + ky;
                float* d = dst + r * Wo;
                if (iy < 0 || iy >= H) {
                    std::fill(d, d + Wo, 0.0f);
                    continue;
                }
                const float* s = src + iy * W;
                for (int64_t c = 0; c < Wo; ++c) {
                    const int64_t ix = c * stride - pad + kx;
                    d[c] = (ix >= 0 && ix < W) ? s[ix] : 0.0f;
                }
            }
        }
        gemm(how, false, false, cout, ncols, kdim, 1.0f, w, kdim, cols, ncols, 0.0f, y + r0 * Wo, HWo);
    }
    add_bias();
}

// One output row of a stride-2, kernel-4, padding-1 transposed convolution from the four column rows
// of one kernel row (kx = 0..3) of one input row: ox = 2 ix - 1 + kx, so an even ox = 2j takes kx 1
// (ix j) and kx 3 (ix j - 1), an odd 2j + 1 takes kx 2 (ix j) and kx 0 (ix j + 1). Each output is
// written once, in order, in place of four scattered read-modify-writes a row; `add`: added to the
// row, else written over it.
S2E_CPU_CLONES static void col2im_row_s2(const float* c0, const float* c1, const float* c2, const float* c3, int64_t W,
                                         float* orow, bool add) {
    auto put = [&](int64_t i, float v) { orow[i] = add ? orow[i] + v : v; };
    put(0, c1[0]);
    if (W == 1) {
        put(1, c2[0]);
        return;
    }
    put(1, c2[0] + c0[1]);
    if (add) {
        for (int64_t j = 1; j + 1 < W; ++j) {
            orow[2 * j] += c1[j] + c3[j - 1];
            orow[2 * j + 1] += c2[j] + c0[j + 1];
        }
    } else {
        for (int64_t j = 1; j + 1 < W; ++j) {
            orow[2 * j] = c1[j] + c3[j - 1];
            orow[2 * j + 1] = c2[j] + c0[j + 1];
        }
    }
    put(2 * W - 2, c1[W - 1] + c3[W - 2]);
    put(2 * W - 1, c2[W - 1]);
}

void conv_transpose4x4s2(const float* x, int64_t cin, int64_t H, int64_t W, const float* w, int64_t cout, float* y,
                         std::vector<float>& scratch, Gemm how) {
    const int64_t Ho = 2 * H, Wo = 2 * W, kdim = cout * 16;
    const int64_t rows = tile_rows(kdim * W, H);
    scratch.resize(static_cast<size_t>(kdim * rows * W));
    float* cols = scratch.data();
    // bf16 GEMMs over several tiles: the weights rounded once for all of them, not once per tile
    const bool rounded_once = how == Gemm::onednn_bf16 && rows < H;
    thread_local std::vector<uint16_t> wb;
    if (rounded_once) {
        wb.resize(static_cast<size_t>(cin * kdim));
        onednn::to_bf16(w, cin, kdim, kdim, wb.data());
    }
    for (int64_t i0 = 0; i0 < H; i0 += rows) {
        const int64_t nr = std::min(rows, H - i0), ncols = nr * W;
        // cols (cout*16, ncols) = W^T (cout*16, cin) @ X (cin, ncols)
        if (rounded_once)
            onednn::gemm_bf16_rounded_a(true, false, kdim, ncols, cin, 1.0f, wb.data(), x + i0 * W, H * W, 0.0f, cols,
                                        ncols);
        else
            gemm(how, true, false, kdim, ncols, cin, 1.0f, w, kdim, x + i0 * W, H * W, 0.0f, cols, ncols);
        // col2im: output (oy, ox) = (2*iy - 1 + ky, 2*ix - 1 + kx); each channel owns its plane. Output
        // row 2m takes ky 3 of input row m - 1, then ky 1 of row m; row 2m + 1 ky 2 of row m, then ky 0 of
        // row m + 1. Input rows in ascending order (tiles too): ky 2 and 3 write a row first (no zero fill;
        // ky 1 of row 0 alone writes row 0), ky 0 and 1 add to it.
#pragma omp parallel for schedule(static)
        for (int64_t co = 0; co < cout; ++co) {
            float* out = y + co * Ho * Wo;
            for (int64_t r = 0; r < nr; ++r) {
                const int64_t iy = i0 + r, at = r * W;
                for (int64_t ky = 0; ky < 4; ++ky) {
                    const int64_t oy = 2 * iy - 1 + ky;
                    if (oy < 0 || oy >= Ho) continue;
                    const float* c = cols + (co * 16 + ky * 4) * ncols + at;
                    const bool add = ky < 2 && !(ky == 1 && iy == 0);
                    col2im_row_s2(c, c + ncols, c + 2 * ncols, c + 3 * ncols, W, out + oy * Wo, add);
                }
            }
        }
    }
}

void pixel_shuffle2(const float* x, int64_t c, int64_t H, int64_t W, float* y) {
    const int64_t Wo = 2 * W;
#pragma omp parallel for schedule(static)
    for (int64_t ch = 0; ch < c; ++ch) {
        for (int64_t i = 0; i < 2; ++i) {
            for (int64_t j = 0; j < 2; ++j) {
                const float* src = x + (ch * 4 + i * 2 + j) * H * W;
                for (int64_t h = 0; h < H; ++h) {
                    float* dst = y + ch * 4 * H * W + (2 * h + i) * Wo + j;
                    const float* s = src + h * W;
                    for (int64_t w = 0; w < W; ++w) dst[2 * w] = s[w];
                }
            }
        }
    }
}

void rope_tables(const float* periods, int64_t quarter, int64_t hp, int64_t wp, bool bf16, float* sin_t,
                 float* cos_t) {
    auto r = [bf16](float v) { return bf16 ? round_bf16(v) : v; };
    const float two_pi = static_cast<float>(2.0 * M_PI);
    auto coords = [&](int64_t n) {
        std::vector<float> c(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) {
            float v = r(static_cast<float>(i) + 0.5f);
            v = r(v / static_cast<float>(n));
            v = r(2.0f * v);
            c[i] = r(v - 1.0f);
        }
        return c;
    };
    std::vector<float> cy = coords(hp), cx = coords(wp);
    std::vector<float> ay(static_cast<size_t>(hp * quarter)), ax(static_cast<size_t>(wp * quarter));
    for (int64_t i = 0; i < hp; ++i)
        for (int64_t k = 0; k < quarter; ++k) ay[i * quarter + k] = r(r(two_pi * cy[i]) / periods[k]);
    for (int64_t j = 0; j < wp; ++j)
        for (int64_t k = 0; k < quarter; ++k) ax[j * quarter + k] = r(r(two_pi * cx[j]) / periods[k]);
    const int64_t d = 4 * quarter;
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < hp * wp; ++t) {
        const int64_t i = t / wp, j = t % wp;
        for (int64_t rep = 0; rep < 2; ++rep) {
            for (int64_t k = 0; k < quarter; ++k) {
                const float a[2] = {ay[i * quarter + k], ax[j * quarter + k]};
                for (int64_t s = 0; s < 2; ++s) {
                    const int64_t idx = t * d + rep * 2 * quarter + s * quarter + k;
                    sin_t[idx] = r(static_cast<float>(std::sin(static_cast<double>(a[s]))));
                    cos_t[idx] = r(static_cast<float>(std::cos(static_cast<double>(a[s]))));
                }
            }
        }
    }
}

// One head's rotation: element j of the first half pairs with j + half, both read before either
// is written, so there is no copy and no branch and the loop vectorizes (in each clone).
template <bool BF16>
S2E_CPU_CLONES static void rope_rotate_head(float* v, int64_t d, const float* sin_r, const float* cos_r) {
    const int64_t half = d / 2;
    for (int64_t j = 0; j < half; ++j) {
        const float a = BF16 ? round_bf16(v[j]) : v[j], b = BF16 ? round_bf16(v[j + half]) : v[j + half];
        const float rot_a = -b, rot_b = a;
        const int64_t i = j + half;
        v[j] = BF16 ? round_bf16(round_bf16(a * cos_r[j]) + round_bf16(rot_a * sin_r[j])) : a * cos_r[j] + rot_a * sin_r[j];
        v[i] = BF16 ? round_bf16(round_bf16(b * cos_r[i]) + round_bf16(rot_b * sin_r[i])) : b * cos_r[i] + rot_b * sin_r[i];
    }
}

void rope_rotate(float* v, int64_t d, const float* sin_r, const float* cos_r, bool bf16) {
    if (bf16)
        rope_rotate_head<true>(v, d, sin_r, cos_r);
    else
        rope_rotate_head<false>(v, d, sin_r, cos_r);
}

void attention_head(const float* q, int64_t ldq, const float* k, const float* v, int64_t ldkv, float* o, int64_t ldo,
                    int64_t T, int64_t d, float scale, std::vector<float>& scratch) {
    // Query rows per chunk: the score block stays under ~16M floats.
    const int64_t rows = std::max<int64_t>(1, std::min<int64_t>(T, (16ll << 20) / std::max<int64_t>(1, T)));
    scratch.resize(static_cast<size_t>(rows * T));
    float* s = scratch.data();
    for (int64_t r0 = 0; r0 < T; r0 += rows) {
        const int64_t nr = std::min(rows, T - r0);
        sgemm(false, true, nr, T, d, scale, q + r0 * ldq, ldq, k, ldkv, 0.0f, s, T);
        softmax_rows(s, nr, T, T);
        sgemm(false, false, nr, d, T, 1.0f, s, T, v, ldkv, 0.0f, o + r0 * ldo, ldo);
    }
}

void attention_head_small(const float* q, int64_t ldq, const float* k, const float* v, int64_t ldkv, float* o,
                          int64_t ldo, int64_t T, int64_t d, float scale, float* s) {
    for (int64_t i = 0; i < T; ++i) {
        const float* qi = q + i * ldq;
        float* si = s + i * T;
        for (int64_t j = 0; j < T; ++j) {
            const float* kj = k + j * ldkv;
            float acc = 0.0f;
            for (int64_t c = 0; c < d; ++c) acc += qi[c] * kj[c];
            si[j] = acc * scale;
        }
        softmax_row(si, T);
        float* oi = o + i * ldo;
        for (int64_t c = 0; c < d; ++c) oi[c] = 0.0f;
        for (int64_t j = 0; j < T; ++j) {
            const float* vj = v + j * ldkv;
            const float p = si[j];
            for (int64_t c = 0; c < d; ++c) oi[c] += p * vj[c];
        }
    }
}

}  // namespace ops
}  // namespace s2e
