// oneDNN bfloat16 GEMMs against a float64 product of the same bf16-rounded inputs. Where oneDNN is
// not installed (or cannot run bf16 on this CPU) the test checks that the calls say so.
#include <cmath>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "s2e/common.hpp"
#include "s2e/onednn.hpp"
#include "s2e/ops.hpp"
#include "s2e_check.hpp"

namespace dnn = s2e::onednn;

using s2e_test::randn;

static std::vector<uint16_t> bits(const std::vector<float>& v) {
    std::vector<uint16_t> b(v.size());
    dnn::to_bf16(v.data(), 1, static_cast<int64_t>(v.size()), static_cast<int64_t>(v.size()), b.data());
    return b;
}

// Largest |got - want| over the largest |want|.
static double rel_max(const std::vector<float>& got, const std::vector<double>& want) {
    double m = 0, s = 0;
    for (size_t i = 0; i < want.size(); ++i) {
        m = std::max(m, std::fabs(got[i] - want[i]));
        s = std::max(s, std::fabs(want[i]));
    }
    return m / s;
}

S2E_TEST(to_bf16_rounds_ties_to_even) {
    const std::vector<float> x = {1.0f, 1.0f + std::ldexp(1.0f, -8), 1.0f + 3 * std::ldexp(1.0f, -8), -2.5f};
    const auto b = bits(x);
    CHECK(b[0] == 0x3f80 && b[1] == 0x3f80 && b[2] == 0x3f82 && b[3] == 0xc020);
}

static bool usable() {
    const std::string why = dnn::load();
    if (why.empty() && !dnn::native_bf16()) {  // oneDNN may emulate bf16 here, or refuse it
        std::vector<uint16_t> xb;
        const uint16_t one = 0x3f80;
        float x = 1.0f, y = 0.0f;
        try {
            dnn::linear_bf16(&x, 1, 1, &one, nullptr, nullptr, 1, &y, 1, xb);
        } catch (const s2e::UnsupportedError& e) {
            std::printf("  %s: bf16 refused on this CPU (%s)\n", dnn::describe().c_str(), e.what());
            return false;
        }
        CHECK(y == 1.0f);
    }
    if (why.empty()) return true;
    std::printf("  oneDNN not usable here (%s): checking the refusal\n", why.c_str());
    std::vector<uint16_t> xb;
    float y = 0;
    EXPECT_THROW(dnn::linear_bf16(&y, 1, 1, nullptr, nullptr, nullptr, 1, &y, 1, xb), s2e::UnsupportedError);
    return false;
}

S2E_TEST(linear_bf16_matches_rounded_product) {
    if (!usable()) return;
    const int64_t M = 37, K = 96, N = 50;
    auto x = randn(M * K, 1), w = randn(N * K, 2), b = randn(N, 3), s = randn(N, 4);
    const auto wb = bits(w);
    for (int variant = 0; variant < 3; ++variant) {  // bias; per-channel scale + bias; scale only
        const bool scaled = variant > 0, biased = variant < 2;
        const int64_t ldy = N + 3;
        std::vector<float> y(M * ldy, 7.0f);
        std::vector<uint16_t> xb;
        dnn::linear_bf16(x.data(), M, K, wb.data(), scaled ? s.data() : nullptr, biased ? b.data() : nullptr, N,
                         y.data(), ldy, xb);
        std::vector<double> want(M * N);
        std::vector<float> got(M * N);
        for (int64_t m = 0; m < M; ++m)
            for (int64_t n = 0; n < N; ++n) {
                double acc = 0;
                for (int64_t k = 0; k < K; ++k)
                    acc += static_cast<double>(s2e::round_bf16(x[m * K + k])) * s2e::round_bf16(w[n * K + k]);
                want[m * N + n] = acc * (scaled ? s[n] : 1.0) + (biased ? b[n] : 0.0);
                got[m * N + n] = y[m * ldy + n];
            }
        CHECK(rel_max(got, want) < 1e-5);
        CHECK(y[N] == 7.0f && y[M * ldy - 1] == 7.0f);  // the row padding is left alone
    }
}

S2E_TEST(matmul_bf16_reads_transposed_and_strided_operands) {
    if (!usable()) return;
    // scores = alpha * q[:, h*d:(h+1)*d] . k^T, with q (R, H*d) read at row stride H*d and k (T, d) read
    // transposed in place; written at row stride T + 2.
    const int64_t H = 3, R = 11, T = 29, d = 16, h = 1, ldc = T + 2;
    auto q = randn(R * H * d, 5), k = randn(T * d, 6);
    const auto qb = bits(q), kb = bits(k);
    std::vector<float> c(R * ldc, 7.0f), got(R * T);
    const float alpha = 0.25f;
    dnn::matmul_bf16(R, d, T, qb.data() + h * d, H * d, 1, kb.data(), 1, d, c.data(), ldc, alpha);
    std::vector<double> want(R * T);
    for (int64_t r = 0; r < R; ++r)
        for (int64_t t = 0; t < T; ++t) {
            double acc = 0;
            for (int64_t i = 0; i < d; ++i)
                acc += static_cast<double>(s2e::round_bf16(q[r * H * d + h * d + i])) * s2e::round_bf16(k[t * d + i]);
            want[r * T + t] = alpha * acc;
            got[r * T + t] = c[r * ldc + t];
        }
    CHECK(rel_max(got, want) < 1e-5);
    CHECK(c[T] == 7.0f && c[R * ldc - 1] == 7.0f);
}

S2E_TEST(gemm_bf16_transposed_operands_and_beta) {
    if (!usable()) return;
    // C = 0.5 * A^T B^T + 2 C, A stored (K, M), B stored (N, K): the deconvolution / linear layouts.
    const int64_t M = 40, N = 23, K = 19;
    auto A = randn(K * M, 7), B = randn(N * K, 8), C0 = randn(M * N, 9);
    std::vector<float> c = C0;
    dnn::gemm_bf16(true, true, M, N, K, 0.5f, A.data(), M, B.data(), K, 2.0f, c.data(), N);
    std::vector<double> want(M * N);
    for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 0; n < N; ++n) {
            double acc = 0;
            for (int64_t k = 0; k < K; ++k)
                acc += static_cast<double>(s2e::round_bf16(A[k * M + m])) * s2e::round_bf16(B[n * K + k]);
            want[m * N + n] = 0.5 * acc + 2.0 * C0[m * N + n];
        }
    CHECK(rel_max(c, want) < 1e-5);
}

// Float64 ConvTranspose2d(4, stride 2, padding 1) of x (cin, H, W) and w (cin, cout, 4, 4), channels first,
// both rounded to bf16 first when `bf16`.
static std::vector<double> deconv_reference(const std::vector<float>& x, const std::vector<float>& w, int64_t cin,
                                            int64_t cout, int64_t H, int64_t W, bool bf16 = true) {
    auto r = [bf16](float v) { return bf16 ? s2e::round_bf16(v) : v; };
    const int64_t Ho = 2 * H, Wo = 2 * W;
    std::vector<double> want(static_cast<size_t>(cout * Ho * Wo), 0.0);
    for (int64_t ci = 0; ci < cin; ++ci)
        for (int64_t co = 0; co < cout; ++co)
            for (int64_t ky = 0; ky < 4; ++ky)
                for (int64_t kx = 0; kx < 4; ++kx) {
                    const double wv = r(w[((ci * cout + co) * 4 + ky) * 4 + kx]);
                    for (int64_t iy = 0; iy < H; ++iy) {
                        const int64_t oy = 2 * iy - 1 + ky;
                        if (oy < 0 || oy >= Ho) continue;
                        for (int64_t ix = 0; ix < W; ++ix) {
                            const int64_t ox = 2 * ix - 1 + kx;
                            if (ox >= 0 && ox < Wo)
                                want[(co * Ho + oy) * Wo + ox] += wv * r(x[(ci * H + iy) * W + ix]);
                        }
                    }
                }
    return want;
}

S2E_TEST(conv_transpose_bf16_over_several_row_tiles) {
    if (!usable()) return;
    // Tall enough for three tiles of input rows, which share weights rounded to bf16 once: the result is
    // the float64 transposed convolution of the rounded input and weights.
    const int64_t cin = 8, cout = 64, H = 70, W = 128, Ho = 2 * H, Wo = 2 * W;
    auto x = randn(cin * H * W, 21), w = randn(cin * cout * 16, 22);
    std::vector<float> y(cout * Ho * Wo, 1e30f), scratch;  // every output written (NaN would not show in rel_max)
    s2e::ops::conv_transpose4x4s2(x.data(), cin, H, W, w.data(), cout, y.data(), scratch, s2e::ops::Gemm::onednn_bf16);
    CHECK(static_cast<int64_t>(scratch.size()) < cout * 16 * H * W);  // it did run in tiles
    const auto want = deconv_reference(x, w, cin, cout, H, W);
    CHECK(rel_max(y, want) < 1e-5);
}

S2E_TEST(deconv_channels_last_is_the_transposed_convolution) {
    const int64_t cin = 19, cout = 21, H = 7, W = 11, Ho = 2 * H, Wo = 2 * W;
    if (!dnn::load().empty()) {
        float y = 0;
        uint16_t x = 0;
        EXPECT_THROW(dnn::deconv4x4s2(&x, 1, 1, 1, &y, 1, &y), s2e::UnsupportedError);
        EXPECT_THROW(dnn::deconv4x4s2(&y, 1, 1, 1, &y, 1, &y), s2e::UnsupportedError);
        return;
    }
    // odd sizes and channel counts that are not multiples of oneDNN's blocks; every output written
    auto x = randn(cin * H * W, 31), w = randn(cin * cout * 16, 32);
    std::vector<float> xf(static_cast<size_t>(cin * H * W));  // channels last
    std::vector<uint16_t> xb(xf.size());
    for (int64_t c = 0; c < cin; ++c)
        for (int64_t p = 0; p < H * W; ++p) {
            xf[p * cin + c] = x[c * H * W + p];
            xb[p * cin + c] = s2e::float_to_bf16(x[c * H * W + p]);
        }
    const bool bf16 = usable();
    for (bool rounded : {false, true}) {
        if (rounded && !bf16) continue;
        std::vector<float> y(static_cast<size_t>(cout * Ho * Wo), 1e30f);
        if (rounded)
            dnn::deconv4x4s2(xb.data(), cin, H, W, w.data(), cout, y.data());
        else
            dnn::deconv4x4s2(xf.data(), cin, H, W, w.data(), cout, y.data());
        const auto want = deconv_reference(x, w, cin, cout, H, W, rounded);
        std::vector<float> got(y.size());  // back to channels first
        for (int64_t c = 0; c < cout; ++c)
            for (int64_t p = 0; p < Ho * Wo; ++p) got[c * Ho * Wo + p] = y[p * cout + c];
        std::printf("  %s: max error %.2e of the largest output\n", rounded ? "bf16" : "f32", rel_max(got, want));
        CHECK(rel_max(got, want) < 1e-5);
    }
}

S2E_TEST(deconv_s8_is_the_scaled_integer_transposed_convolution) {
    // int8 input (one scale) and weights (a scale per output channel) at the extremes +-127 and at
    // random values, odd sizes: y = x_scale * w_scale[o] * the exact integer sum, so the float64
    // reference of the dequantized operands matches to float rounding.
    const int64_t cin = 37, cout = 21, H = 5, W = 9, Ho = 2 * H, Wo = 2 * W;
    if (!dnn::load().empty() || !dnn::exact_int8()) {
        if (!dnn::load().empty()) {
            float y = 0;
            int8_t x = 0;
            EXPECT_THROW(dnn::deconv4x4s2_s8(&x, 1.0f, 1, 1, 1, &x, &y, 1, &y), s2e::UnsupportedError);
        }
        return;
    }
    std::mt19937 rng(9);
    std::uniform_int_distribution<int> pick(-127, 127);
    std::vector<int8_t> xq(static_cast<size_t>(cin * H * W)), wq(static_cast<size_t>(cin * cout * 16));
    for (size_t i = 0; i < xq.size(); ++i) xq[i] = static_cast<int8_t>(i % 3 == 0 ? (i % 2 ? 127 : -127) : pick(rng));
    for (size_t i = 0; i < wq.size(); ++i) wq[i] = static_cast<int8_t>(i % 5 == 0 ? 127 : pick(rng));
    const float xs = 0.0371f;
    std::vector<float> ws(static_cast<size_t>(cout));
    for (int64_t o = 0; o < cout; ++o) ws[o] = 0.001f * static_cast<float>(o + 1);
    // channels-first float copies of the dequantized values for the reference
    std::vector<float> x(xq.size()), w(wq.size());
    for (int64_t c = 0; c < cin; ++c)
        for (int64_t p = 0; p < H * W; ++p) x[c * H * W + p] = static_cast<float>(xq[p * cin + c]) * xs;
    for (size_t i = 0; i < wq.size(); ++i) w[i] = static_cast<float>(wq[i]) * ws[(i / 16) % cout];
    std::vector<float> y(static_cast<size_t>(cout * Ho * Wo), 1e30f);
    dnn::deconv4x4s2_s8(xq.data(), xs, cin, H, W, wq.data(), ws.data(), cout, y.data());
    const auto want = deconv_reference(x, w, cin, cout, H, W, false);
    std::vector<float> got(y.size());
    for (int64_t c = 0; c < cout; ++c)
        for (int64_t p = 0; p < Ho * Wo; ++p) got[c * Ho * Wo + p] = y[p * cout + c];
    std::printf("  s8: max error %.2e of the largest output\n", rel_max(got, want));
    CHECK(rel_max(got, want) < 1e-6);
}

// Float64 Conv2d(3, stride 1, padding 1) of x (cin, H, W), w (cout, cin, 3, 3) and b (cout), channels first.
static std::vector<double> conv3x3_reference(const std::vector<float>& x, const std::vector<float>& w,
                                             const std::vector<float>& b, int64_t cin, int64_t cout, int64_t H,
                                             int64_t W, bool bf16) {
    auto r = [bf16](float v) { return bf16 ? s2e::round_bf16(v) : v; };
    std::vector<double> want(static_cast<size_t>(cout * H * W));
    for (int64_t co = 0; co < cout; ++co)
        for (int64_t p = 0; p < H * W; ++p) want[co * H * W + p] = b[co];
    for (int64_t co = 0; co < cout; ++co)
        for (int64_t ci = 0; ci < cin; ++ci)
            for (int64_t ky = 0; ky < 3; ++ky)
                for (int64_t kx = 0; kx < 3; ++kx) {
                    const double wv = r(w[((co * cin + ci) * 3 + ky) * 3 + kx]);
                    for (int64_t oy = 0; oy < H; ++oy) {
                        const int64_t iy = oy - 1 + ky;
                        if (iy < 0 || iy >= H) continue;
                        for (int64_t ox = 0; ox < W; ++ox) {
                            const int64_t ix = ox - 1 + kx;
                            if (ix >= 0 && ix < W) want[(co * H + oy) * W + ox] += wv * r(x[(ci * H + iy) * W + ix]);
                        }
                    }
                }
    return want;
}

// y (H*W, cout) channels last, back to channels first
static std::vector<float> channels_first(const std::vector<float>& y, int64_t cout, int64_t HW) {
    std::vector<float> got(y.size());
    for (int64_t c = 0; c < cout; ++c)
        for (int64_t p = 0; p < HW; ++p) got[c * HW + p] = y[p * cout + c];
    return got;
}

S2E_TEST(conv3x3_channels_last_is_the_convolution) {
    // float32 and bf16 operands, the bias added; odd sizes and channel counts; every output written
    const int64_t cin = 19, cout = 21, H = 7, W = 11;
    if (!dnn::load().empty()) {
        float y = 0;
        uint16_t x = 0;
        EXPECT_THROW(dnn::conv3x3(&x, 1, 1, 1, &y, &y, 1, &y), s2e::UnsupportedError);
        EXPECT_THROW(dnn::conv3x3(&y, 1, 1, 1, &y, &y, 1, &y), s2e::UnsupportedError);
        return;
    }
    auto x = randn(cin * H * W, 51), w = randn(cout * cin * 9, 52), b = randn(cout, 53);
    std::vector<float> xf(static_cast<size_t>(cin * H * W));
    std::vector<uint16_t> xb(xf.size());
    for (int64_t c = 0; c < cin; ++c)
        for (int64_t p = 0; p < H * W; ++p) {
            xf[p * cin + c] = x[c * H * W + p];
            xb[p * cin + c] = s2e::float_to_bf16(x[c * H * W + p]);
        }
    for (bool rounded : {false, true}) {
        if (rounded && !usable()) continue;
        std::vector<float> y(static_cast<size_t>(cout * H * W), 1e30f);
        if (rounded)
            dnn::conv3x3(xb.data(), cin, H, W, w.data(), b.data(), cout, y.data());
        else
            dnn::conv3x3(xf.data(), cin, H, W, w.data(), b.data(), cout, y.data());
        const auto got = channels_first(y, cout, H * W);
        const auto want = conv3x3_reference(x, w, b, cin, cout, H, W, rounded);
        std::printf("  %s: max error %.2e of the largest output\n", rounded ? "bf16" : "f32", rel_max(got, want));
        CHECK(rel_max(got, want) < 1e-5);
    }
    // without a bias: the convolution alone
    std::vector<float> y(static_cast<size_t>(cout * H * W), 1e30f), zero(static_cast<size_t>(cout), 0.0f);
    dnn::conv3x3(xf.data(), cin, H, W, w.data(), nullptr, cout, y.data());
    CHECK(rel_max(channels_first(y, cout, H * W), conv3x3_reference(x, w, zero, cin, cout, H, W, false)) < 1e-5);
}

S2E_TEST(thread_buffers_are_kept_until_given_back) {
    // a convolution leaves its packed weights in the calling thread's buffer for the next call; given back,
    // the buffers hold nothing, and the next convolution (same result) allocates them afresh
    if (!dnn::load().empty()) {
        CHECK(dnn::thread_buffer_bytes() == 0);
        dnn::release_thread_buffers();
        return;
    }
    const int64_t cin = 64, cout = 96, H = 4, W = 5;
    auto x = randn(cin * H * W, 61), w = randn(cout * cin * 9, 62);
    std::vector<float> y1(static_cast<size_t>(cout * H * W)), y2(y1.size());
    dnn::release_thread_buffers();  // what earlier calls of this thread left
    dnn::conv3x3(x.data(), cin, H, W, w.data(), nullptr, cout, y1.data());
    const size_t kept = dnn::thread_buffer_bytes();
    CHECK(kept >= static_cast<size_t>(cout * cin * 9) * sizeof(float));  // at least the packed weights
    dnn::release_thread_buffers();
    CHECK(dnn::thread_buffer_bytes() == 0);
    dnn::conv3x3(x.data(), cin, H, W, w.data(), nullptr, cout, y2.data());
    CHECK(dnn::thread_buffer_bytes() == kept);
    CHECK(y1 == y2);
    // lent room for the packed weights (an unaligned start: the convolution aligns it) is used instead of the
    // thread's buffer, with the same result
    dnn::release_thread_buffers();
    std::vector<uint8_t> room(static_cast<size_t>(cout * cin * 9) * sizeof(float) + 4096 + 1);
    std::vector<float> y3(y1.size());
    dnn::conv3x3(x.data(), cin, H, W, w.data(), nullptr, cout, y3.data(), {room.data() + 1, room.size() - 1});
    CHECK(dnn::thread_buffer_bytes() < static_cast<size_t>(cout * cin * 9) * sizeof(float));
    CHECK(y1 == y3);
    // too little room: the thread's buffer again
    dnn::conv3x3(x.data(), cin, H, W, w.data(), nullptr, cout, y3.data(), {room.data(), 64});
    CHECK(dnn::thread_buffer_bytes() == kept);
    CHECK(y1 == y3);
}

S2E_TEST(conv3x3_s8_is_the_scaled_integer_convolution_plus_bias) {
    // as the transposed convolution's int8 test: y = x_scale * w_scale[o] * (exact integer sum) + b[o]
    const int64_t cin = 37, cout = 21, H = 5, W = 9;
    if (!dnn::load().empty() || !dnn::exact_int8()) {
        if (!dnn::load().empty()) {
            float y = 0;
            int8_t x = 0;
            EXPECT_THROW(dnn::conv3x3_s8(&x, 1.0f, 1, 1, 1, &x, &y, &y, 1, &y), s2e::UnsupportedError);
        }
        return;
    }
    std::mt19937 rng(19);
    std::uniform_int_distribution<int> pick(-127, 127);
    std::vector<int8_t> xq(static_cast<size_t>(cin * H * W)), wq(static_cast<size_t>(cout * cin * 9));
    for (size_t i = 0; i < xq.size(); ++i) xq[i] = static_cast<int8_t>(i % 3 == 0 ? (i % 2 ? 127 : -127) : pick(rng));
    for (size_t i = 0; i < wq.size(); ++i) wq[i] = static_cast<int8_t>(i % 5 == 0 ? -127 : pick(rng));
    const float xs = 0.0293f;
    std::vector<float> ws(static_cast<size_t>(cout)), b = randn(cout, 54);
    for (int64_t o = 0; o < cout; ++o) ws[o] = 0.002f * static_cast<float>(o + 1);
    std::vector<float> x(xq.size()), w(wq.size());
    for (int64_t c = 0; c < cin; ++c)
        for (int64_t p = 0; p < H * W; ++p) x[c * H * W + p] = static_cast<float>(xq[p * cin + c]) * xs;
    for (size_t i = 0; i < wq.size(); ++i) w[i] = static_cast<float>(wq[i]) * ws[i / (cin * 9)];
    std::vector<float> y(static_cast<size_t>(cout * H * W), 1e30f);
    dnn::conv3x3_s8(xq.data(), xs, cin, H, W, wq.data(), ws.data(), b.data(), cout, y.data());
    const auto got = channels_first(y, cout, H * W);
    const auto want = conv3x3_reference(x, w, b, cin, cout, H, W, false);
    std::printf("  s8: max error %.2e of the largest output\n", rel_max(got, want));
    CHECK(rel_max(got, want) < 1e-6);
}

// The largest |exact sum - c| of c (M, N) = a (M, K) . w (N, K)^T.
static int64_t int8_product_error(const std::vector<int8_t>& a, const std::vector<int8_t>& w, const std::vector<int32_t>& c,
                           int64_t M, int64_t K, int64_t N) {
    int64_t worst = 0;
    for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 0; n < N; ++n) {
            int64_t want = 0;
            for (int64_t k = 0; k < K; ++k) want += int64_t(a[m * K + k]) * w[n * K + k];
            worst = std::max<int64_t>(worst, std::llabs(want - c[m * N + n]));
        }
    return worst;
}

S2E_TEST(matmul_s8_is_exact_at_the_int8_extremes) {
    // Rows that reach +-127 everywhere (dynamic per-token quantization puts each row's largest value
    // there) and long K: a kernel that saturates 16-bit partial sums, or mishandles the s8 -> u8 shift,
    // is off by thousands here. Several row counts, since oneDNN picks kernels by shape.
    if (!dnn::load().empty()) {
        int32_t c = 0;
        int8_t a = 1;
        EXPECT_THROW(dnn::matmul_s8(1, 1, 1, &a, &a, &c), s2e::UnsupportedError);
        return;
    }
    std::mt19937 rng(7);
    std::uniform_int_distribution<int> pick(0, 3);
    for (int64_t M : {1, 17, 777, 1554}) {
        const int64_t K = 256, N = 96;
        std::vector<int8_t> a(static_cast<size_t>(M * K)), w(static_cast<size_t>(N * K));
        const int8_t values[4] = {127, -127, 126, -1};
        for (auto& v : a) v = values[pick(rng)];
        for (auto& v : w) v = values[pick(rng)];
        std::vector<int32_t> c(static_cast<size_t>(M * N));
        dnn::matmul_s8(M, K, N, a.data(), w.data(), c.data());
        const int64_t worst = int8_product_error(a, w, c, M, K, N);
        if (worst) std::printf("  M=%lld: off by up to %lld\n", static_cast<long long>(M), static_cast<long long>(worst));
        CHECK(worst == 0);
    }
}

S2E_TEST(packed_int8_weights_multiply_exactly_at_every_row_count) {
    // Weights packed once for m rows, then products of 1, m and 2m + 1 rows: each equal to the exact sums (the
    // layout's compensation for the int8 input included), or refused (false, c untouched) where oneDNN's
    // kernel for that row count reads another layout; refused outright without VNNI / AMX.
    int8_t one = 1;
    if (!dnn::load().empty() || !dnn::exact_int8()) {
        EXPECT_THROW(dnn::PackedInt8(1, 1, 1, &one), s2e::UnsupportedError);
        return;
    }
    std::mt19937 rng(11);
    std::uniform_int_distribution<int> value(-128, 127);
    const int64_t m = 77, K = 200, N = 72;
    std::vector<int8_t> w(static_cast<size_t>(N * K));
    for (auto& v : w) v = static_cast<int8_t>(value(rng));
    std::fill(w.begin(), w.begin() + K, int8_t(-128));  // a row at the extreme
    const dnn::PackedInt8 packed(m, K, N, w.data());
    CHECK(packed.bytes() >= static_cast<size_t>(N * K));
    for (int64_t M : {int64_t(1), m, 2 * m + 1}) {
        std::vector<int8_t> a(static_cast<size_t>(M * K));
        for (auto& v : a) v = static_cast<int8_t>(value(rng));
        std::fill(a.begin(), a.begin() + K, int8_t(-128));
        std::vector<int32_t> c(static_cast<size_t>(M * N), 7);
        if (!packed.matmul(M, a.data(), c.data())) {
            CHECK(M != m);  // the row count it was packed for always runs
            CHECK(std::all_of(c.begin(), c.end(), [](int32_t v) { return v == 7; }));
            continue;
        }
        CHECK(int8_product_error(a, w, c, M, K, N) == 0);
    }
}

S2E_TEST_MAIN()
