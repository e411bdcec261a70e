// The heads' maps: norms over channels (CHW and channels last), PixelShuffle, and the im2col convolutions.
#include "s2e/ops.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "ops_internal.hpp"
#include "s2e/common.hpp"
#include "s2e/onednn.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace s2e {
namespace ops {

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


}  // namespace ops
}  // namespace s2e
