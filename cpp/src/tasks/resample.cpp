// OpenCV-compatible resampling: cv2.resize (LINEAR, CUBIC, AREA), cv2.warpAffine, cv2.GaussianBlur.
//
// The uint8 paths follow OpenCV's fixed-point scheme (11-bit resize coefficients, the SIMD
// rounding of the vertical pass), so results are identical to cv2 for almost every pixel and
// never more than one grey level apart (tests/test_native_tasks.py measures it).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "s2e/tasks.hpp"

namespace s2e {
namespace tasks {
namespace {

constexpr int kCoefBits = 11;  // INTER_RESIZE_COEF_BITS
constexpr int kCoefScale = 1 << kCoefBits;

inline int clampi(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }
inline uint8_t sat_u8(int v) { return uint8_t(clampi(v, 0, 255)); }
inline short round_short(float v) { return short(std::lrint(v)); }  // saturate_cast<short>(float)

void check_dims(int h, int w, int c, int out_h, int out_w) {
    if (h < 1 || w < 1 || c < 1)
        throw InvalidImageError("cannot resize an empty image (H x W = " + std::to_string(h) + " x " +
                                std::to_string(w) + "); expected at least 1 x 1 pixels");
    if (out_h < 1 || out_w < 1)
        throw ConfigError("resize target must be at least 1 x 1, got " + std::to_string(out_h) + " x " +
                          std::to_string(out_w));
}

void cubic_coeffs(float x, float* c) {  // OpenCV interpolateCubic, A = -0.75
    const float A = -0.75f;
    c[0] = ((A * (x + 1) - 5 * A) * (x + 1) + 8 * A) * (x + 1) - 4 * A;
    c[1] = ((A + 2) * x - (A + 3)) * x * x + 1;
    c[2] = ((A + 2) * (1 - x) - (A + 3)) * (1 - x) * (1 - x) + 1;
    c[3] = 1.f - c[0] - c[1] - c[2];
}

// One axis of a linear/cubic resize: source index of tap 0 and the fixed-point weights.
struct Taps {
    int ksize = 2;
    std::vector<int> first;    // index of the first tap (may be out of range: clamp when reading)
    std::vector<short> alpha;  // ksize weights per output
    std::vector<float> falpha;
};

Taps make_taps(int in, int out, Interp interp, bool area_mode) {
    Taps t;
    t.ksize = interp == Interp::Cubic ? 4 : 2;
    t.first.resize(out);
    t.alpha.resize(size_t(out) * t.ksize);
    t.falpha.resize(size_t(out) * t.ksize);
    const double inv_scale = double(out) / in, scale = 1.0 / inv_scale;
    for (int d = 0; d < out; ++d) {
        float f;
        int s;
        if (!area_mode) {
            f = float((d + 0.5) * scale - 0.5);
            s = int(std::floor(f));
            f -= float(s);
        } else {
            s = int(std::floor(d * scale));
            f = float((d + 1) - (s + 1) * inv_scale);
            f = f <= 0 ? 0.f : f - std::floor(f);
        }
        float c[4];
        if (interp == Interp::Cubic) {
            cubic_coeffs(f, c);
            t.first[d] = s - 1;
        } else {
            if (s < 0) f = 0, s = 0;
            if (s >= in - 1) f = 0, s = in - 1;
            c[0] = 1.f - f;
            c[1] = f;
            t.first[d] = s;
        }
        for (int k = 0; k < t.ksize; ++k) {
            t.alpha[size_t(d) * t.ksize + k] = round_short(c[k] * kCoefScale);
            t.falpha[size_t(d) * t.ksize + k] = c[k];
        }
    }
    return t;
}

// Separable resize of uint8, as cv::resize's generic path: linear in 11-bit fixed point with the
// rounding of OpenCV's SIMD vertical pass; cubic in float32 (what OpenCV 5 computes: identical for
// downscaling, rare one-level differences on ties when upscaling).
Image resize_separable(const Image& src, int out_h, int out_w, Interp interp, bool area_mode) {
    const int c = src.channels;
    const Taps tx = make_taps(src.width, out_w, interp, area_mode);
    const Taps ty = make_taps(src.height, out_h, interp, area_mode);
    const int K = tx.ksize;
    Image dst(out_h, out_w, c);
    const size_t row_len = size_t(out_w) * c;
#pragma omp parallel
    {
        std::vector<int> rows(K == 2 ? size_t(K) * row_len : 0);
        std::vector<float> frows(K == 4 ? size_t(K) * row_len : 0);
#pragma omp for schedule(static)
        for (int dy = 0; dy < out_h; ++dy) {
            for (int k = 0; k < K; ++k) {
                const uint8_t* S = src.row(clampi(ty.first[dy] + k, 0, src.height - 1));
                for (int dx = 0; dx < out_w; ++dx) {
                    const size_t o = size_t(k) * row_len + size_t(dx) * c;
                    if (K == 2) {
                        const short* a = tx.alpha.data() + size_t(dx) * 2;
                        const int sx0 = tx.first[dx], sx1 = std::min(sx0 + 1, src.width - 1);
                        for (int ch = 0; ch < c; ++ch)
                            rows[o + ch] = S[size_t(sx0) * c + ch] * a[0] + S[size_t(sx1) * c + ch] * a[1];
                    } else {
                        const float* a = tx.falpha.data() + size_t(dx) * 4;
                        for (int ch = 0; ch < c; ++ch) {
                            float v = 0.f;
                            for (int j = 0; j < 4; ++j)
                                v += float(S[size_t(clampi(tx.first[dx] + j, 0, src.width - 1)) * c + ch]) * a[j];
                            frows[o + ch] = v;
                        }
                    }
                }
            }
            uint8_t* out = dst.row(dy);
            if (K == 2) {
                const short* b = ty.alpha.data() + size_t(dy) * 2;
                const int* S0 = rows.data();
                const int* S1 = rows.data() + row_len;
                // The rounding of OpenCV's vector loop (VResizeLinearVec_32s8u); its scalar tail
                // rounds differently, which leaves rare one-level differences on short rows.
                for (size_t i = 0; i < row_len; ++i) {
                    const int v = (((S0[i] >> 4) * b[0]) >> 16) + (((S1[i] >> 4) * b[1]) >> 16);
                    out[i] = sat_u8((v + 2) >> 2);
                }
            } else {
                const float* b = ty.falpha.data() + size_t(dy) * 4;
                for (size_t i = 0; i < row_len; ++i) {
                    float v = 0.f;
                    for (int k = 0; k < 4; ++k) v += frows[size_t(k) * row_len + i] * b[k];
                    out[i] = sat_u8(int(std::lrint(std::min(std::max(v, -1.f), 256.f))));
                }
            }
        }
    }
    return dst;
}

// Box average for integer scale factors (cv::resize's ResizeAreaFast).
Image resize_area_fast(const Image& src, int out_h, int out_w, int sx, int sy) {
    const int c = src.channels;
    Image dst(out_h, out_w, c);
    const float scale = 1.f / float(sx * sy);
#pragma omp parallel for schedule(static)
    for (int dy = 0; dy < out_h; ++dy) {
        uint8_t* out = dst.row(dy);
        for (int dx = 0; dx < out_w; ++dx)
            for (int ch = 0; ch < c; ++ch) {
                int sum = 0;
                for (int y = 0; y < sy; ++y) {
                    const uint8_t* S = src.row(dy * sy + y);
                    for (int x = 0; x < sx; ++x) sum += S[size_t(dx * sx + x) * c + ch];
                }
                out[size_t(dx) * c + ch] = (sx == 2 && sy == 2) ? uint8_t((sum + 2) >> 2)
                                                               : sat_u8(int(std::lrint(float(sum) * scale)));
            }
    }
    return dst;
}

struct AreaTap {
    int d, s;
    float alpha;
};

std::vector<AreaTap> area_tab(int ssize, int dsize, double scale) {  // computeResizeAreaTab
    std::vector<AreaTap> tab;
    for (int dx = 0; dx < dsize; ++dx) {
        const double fsx1 = dx * scale, fsx2 = fsx1 + scale;
        const double cell = std::min(scale, ssize - fsx1);
        int sx1 = int(std::ceil(fsx1)), sx2 = int(std::floor(fsx2));
        sx2 = std::min(sx2, ssize - 1);
        sx1 = std::min(sx1, sx2);
        if (sx1 - fsx1 > 1e-3) tab.push_back({dx, sx1 - 1, float((sx1 - fsx1) / cell)});
        for (int sx = sx1; sx < sx2; ++sx) tab.push_back({dx, sx, float(1.0 / cell)});
        if (fsx2 - sx2 > 1e-3) tab.push_back({dx, sx2, float(std::min(std::min(fsx2 - sx2, 1.), cell) / cell)});
    }
    return tab;
}

// General downscaling box filter (cv::resize's ResizeArea_Invoker, float accumulation).
Image resize_area(const Image& src, int out_h, int out_w) {
    const int c = src.channels;
    const std::vector<AreaTap> xt = area_tab(src.width, out_w, double(src.width) / out_w);
    const std::vector<AreaTap> yt = area_tab(src.height, out_h, double(src.height) / out_h);
    std::vector<size_t> ystart(size_t(out_h) + 1, yt.size());
    for (size_t j = yt.size(); j-- > 0;) ystart[size_t(yt[j].d)] = j;
    for (int d = out_h - 1; d >= 0; --d) ystart[size_t(d)] = std::min(ystart[size_t(d)], ystart[size_t(d) + 1]);
    Image dst(out_h, out_w, c);
    const size_t row_len = size_t(out_w) * c;
#pragma omp parallel
    {
        std::vector<float> buf(row_len), sum(row_len);
#pragma omp for schedule(static)
        for (int dy = 0; dy < out_h; ++dy) {
            bool first = true;
            for (size_t j = ystart[size_t(dy)]; j < yt.size() && yt[j].d == dy; ++j) {
                const uint8_t* S = src.row(yt[j].s);
                std::fill(buf.begin(), buf.end(), 0.f);
                for (const AreaTap& t : xt)
                    for (int ch = 0; ch < c; ++ch) buf[size_t(t.d) * c + ch] += S[size_t(t.s) * c + ch] * t.alpha;
                const float beta = yt[j].alpha;
                for (size_t i = 0; i < row_len; ++i) sum[i] = first ? beta * buf[i] : sum[i] + beta * buf[i];
                first = false;
            }
            uint8_t* out = dst.row(dy);
            for (size_t i = 0; i < row_len; ++i) out[i] = sat_u8(int(std::lrint(sum[i])));
        }
    }
    return dst;
}

bool integer_scale(int in, int out, int& factor) {
    const double s = double(in) / out;
    factor = int(std::lrint(s));
    return factor >= 1 && std::abs(s - factor) < std::numeric_limits<double>::epsilon();
}

}  // namespace

Image resize(const Image& src, int out_h, int out_w, Interp interp) {
    check_dims(src.height, src.width, src.channels, out_h, out_w);
    int fx = 0, fy = 0;
    const bool fast = integer_scale(src.width, out_w, fx) && integer_scale(src.height, out_h, fy);
    if (interp == Interp::Linear && fast && fx == 2 && fy == 2) interp = Interp::Area;
    if (interp == Interp::Area) {
        if (fast) return resize_area_fast(src, out_h, out_w, fx, fy);
        if (src.width >= out_w && src.height >= out_h) return resize_area(src, out_h, out_w);
        return resize_separable(src, out_h, out_w, Interp::Linear, true);
    }
    return resize_separable(src, out_h, out_w, interp, false);
}

void resize_linear(const float* src, int h, int w, int c, float* dst, int out_h, int out_w) {
    check_dims(h, w, c, out_h, out_w);
    const Taps tx = make_taps(w, out_w, Interp::Linear, false);
    const Taps ty = make_taps(h, out_h, Interp::Linear, false);
    const size_t row_len = size_t(out_w) * c;
#pragma omp parallel
    {
        std::vector<float> r0(row_len), r1(row_len);
#pragma omp for schedule(static)
        for (int dy = 0; dy < out_h; ++dy) {
            const int sy = ty.first[dy];
            const float b0 = ty.falpha[size_t(dy) * 2], b1 = ty.falpha[size_t(dy) * 2 + 1];
            for (int k = 0; k < 2; ++k) {
                const float* S = src + size_t(clampi(sy + k, 0, h - 1)) * w * c;
                float* D = k ? r1.data() : r0.data();
                for (int dx = 0; dx < out_w; ++dx) {
                    const int sx = tx.first[dx], sx1 = std::min(sx + 1, w - 1);
                    const float a0 = tx.falpha[size_t(dx) * 2], a1 = tx.falpha[size_t(dx) * 2 + 1];
                    for (int ch = 0; ch < c; ++ch)
                        D[size_t(dx) * c + ch] = S[size_t(sx) * c + ch] * a0 + S[size_t(sx1) * c + ch] * a1;
                }
            }
            float* out = dst + size_t(dy) * row_len;
            for (size_t i = 0; i < row_len; ++i) out[i] = r0[i] * b0 + r1[i] * b1;
        }
    }
}

ImageF resize_linear(const ImageF& src, int out_h, int out_w) {
    ImageF dst(out_h, out_w, src.channels);
    resize_linear(src.data.data(), src.height, src.width, src.channels, dst.data.data(), out_h, out_w);
    return dst;
}

// -- warpAffine ----------------------------------------------------------------------------------------
namespace {

Affine invert_affine(const Affine& m) {  // cv::invertAffineTransform
    double D = m[0] * m[4] - m[1] * m[3];
    D = D != 0 ? 1. / D : 0.;
    Affine r{};
    r[0] = m[4] * D;
    r[1] = -m[1] * D;
    r[3] = -m[3] * D;
    r[4] = m[0] * D;
    r[2] = -r[0] * m[2] - r[1] * m[5];
    r[5] = -r[3] * m[2] - r[4] * m[5];
    return r;
}

}  // namespace

// OpenCV 5 computes warpAffine in float32: source coordinates M0 * x + (M1 * y + M2), the
// fractional part taken directly (no 1/32 table), weights and sums in float, rounded to nearest.
Image warp_affine(const Image& src, const Affine& m, int out_h, int out_w, Interp interp) {
    check_dims(src.height, src.width, src.channels, out_h, out_w);
    const bool cubic = interp == Interp::Cubic;  // Area behaves as Linear in cv::warpAffine
    const int c = src.channels, W = src.width, H = src.height;
    const Affine M = invert_affine(m);
    const float M0 = float(M[0]), M3 = float(M[3]);
    Image dst(out_h, out_w, c);
    auto pixel = [&](int y, int x, int ch) -> float {  // BORDER_CONSTANT 0
        return (x >= 0 && x < W && y >= 0 && y < H) ? float(src.data[(size_t(y) * W + x) * c + ch]) : 0.f;
    };
#pragma omp parallel for schedule(static)
    for (int y = 0; y < out_h; ++y) {
        const float mx = float(y * M[1] + M[2]), my = float(y * M[4] + M[5]);
        uint8_t* out = dst.row(y);
        for (int x = 0; x < out_w; ++x) {
            const float sx = std::fma(M0, float(x), mx), sy = std::fma(M3, float(x), my);
            const float fxf = std::floor(sx), fyf = std::floor(sy);
            if (!(std::abs(fxf) < 1e9f) || !(std::abs(fyf) < 1e9f)) {  // far outside (or NaN): border
                for (int ch = 0; ch < c; ++ch) out[size_t(x) * c + ch] = 0;
                continue;
            }
            const int ix = int(fxf), iy = int(fyf);
            const float fx = sx - fxf, fy = sy - fyf;
            for (int ch = 0; ch < c; ++ch) {
                float v;
                if (!cubic) {
                    const float p00 = pixel(iy, ix, ch), p01 = pixel(iy, ix + 1, ch);
                    const float p10 = pixel(iy + 1, ix, ch), p11 = pixel(iy + 1, ix + 1, ch);
                    const float t = p00 + fx * (p01 - p00), b = p10 + fx * (p11 - p10);
                    v = t + fy * (b - t);
                } else {
                    float wx[4], wy[4];
                    cubic_coeffs(fx, wx);
                    cubic_coeffs(fy, wy);
                    v = 0.f;
                    for (int i = 0; i < 4; ++i) {
                        float row = 0.f;
                        for (int j = 0; j < 4; ++j) row += pixel(iy - 1 + i, ix - 1 + j, ch) * wx[j];
                        v += row * wy[i];
                    }
                }
                out[size_t(x) * c + ch] = sat_u8(int(std::lrint(std::min(std::max(v, -1.f), 256.f))));
            }
        }
    }
    return dst;
}

// -- GaussianBlur ------------------------------------------------------------------------------------
std::vector<double> gaussian_kernel(int n, double sigma) {  // cv::getGaussianKernel (CV_32F path)
    static const float small[4][7] = {{1.f},
                                      {0.25f, 0.5f, 0.25f},
                                      {0.0625f, 0.25f, 0.375f, 0.25f, 0.0625f},
                                      {0.03125f, 0.109375f, 0.21875f, 0.28125f, 0.21875f, 0.109375f, 0.03125f}};
    if (n < 1 || n % 2 == 0) throw ConfigError("Gaussian kernel size must be a positive odd integer, got " +
                                               std::to_string(n));
    std::vector<double> k(size_t(n), 0.0);
    if (n <= 7 && sigma <= 0) {
        for (int i = 0; i < n; ++i) k[size_t(i)] = small[n / 2][i];
        return k;
    }
    const double s = sigma > 0 ? sigma : ((n - 1) * 0.5 - 1) * 0.3 + 0.8;
    const double scale2x = -0.5 / (s * s);
    double sum = 0;
    for (int i = 0; i < n; ++i) {
        const double x = i - (n - 1) * 0.5;
        k[size_t(i)] = std::exp(scale2x * x * x);
        sum += k[size_t(i)];
    }
    for (double& v : k) v /= sum;
    return k;
}

ImageF gaussian_blur(const ImageF& src, int ksize, double sigma) {
    const std::vector<double> kd = gaussian_kernel(ksize, sigma);
    std::vector<float> k(kd.begin(), kd.end());
    const int h = src.height, w = src.width, c = src.channels, r = ksize / 2;
    auto reflect = [](int p, int n) {  // BORDER_REFLECT_101
        if (n == 1) return 0;
        while (p < 0 || p >= n) p = p < 0 ? -p : 2 * n - 2 - p;
        return p;
    };
    ImageF tmp(h, w, c), dst(h, w, c);
    std::vector<int> xi(size_t(w) + 2 * r), yi(size_t(h) + 2 * r);
    for (int i = 0; i < w + 2 * r; ++i) xi[size_t(i)] = reflect(i - r, w);
    for (int i = 0; i < h + 2 * r; ++i) yi[size_t(i)] = reflect(i - r, h);
    const size_t row_len = size_t(w) * c;
#pragma omp parallel for schedule(static)
    for (int y = 0; y < h; ++y) {  // rows first, as OpenCV's FilterEngine
        const float* S = src.data.data() + size_t(y) * row_len;
        float* D = tmp.data.data() + size_t(y) * row_len;
        for (int x = 0; x < w; ++x)
            for (int ch = 0; ch < c; ++ch) {
                float s = 0.f;
                for (int j = 0; j < ksize; ++j) s += k[size_t(j)] * S[size_t(xi[size_t(x + j)]) * c + ch];
                D[size_t(x) * c + ch] = s;
            }
    }
#pragma omp parallel for schedule(static)
    for (int y = 0; y < h; ++y) {
        float* D = dst.data.data() + size_t(y) * row_len;
        for (size_t i = 0; i < row_len; ++i) {
            float s = 0.f;
            for (int j = 0; j < ksize; ++j) s += k[size_t(j)] * tmp.data[size_t(yi[size_t(y + j)]) * row_len + i];
            D[i] = s;
        }
    }
    return dst;
}

}  // namespace tasks
}  // namespace s2e
