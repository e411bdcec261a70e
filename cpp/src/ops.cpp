#include "s2e/ops.hpp"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "s2e/common.hpp"
#include "ops_internal.hpp"
#include "s2e/onednn.hpp"

#ifdef _OPENMP
#include <omp.h>
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

S2E_CPU_CLONES void swiglu_row(const float* u, float* a, int64_t hid) {
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

// The unscaled softmax: scale 1 multiplies exactly, so the values are the plain softmax's.
static void softmax_row(float* s, int64_t cols) { softmax_row_scaled(s, cols, 1.0f); }

void softmax_rows(float* s, int64_t rows, int64_t cols, int64_t ld) {
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) softmax_row(s + r * ld, cols);
}

void softmax_rows_scaled(float* s, int64_t rows, int64_t cols, int64_t ld, float scale) {
    for (int64_t r = 0; r < rows; ++r) softmax_row_scaled(s + r * ld, cols, scale);
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
