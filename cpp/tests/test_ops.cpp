// Unit tests of the engine's float kernels against direct (naive) implementations.
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "s2e/common.hpp"
#include "s2e/ops.hpp"
#include "s2e_check.hpp"

namespace ops = s2e::ops;

using s2e_test::randn;

static double max_diff(const std::vector<float>& a, const std::vector<float>& b) {
    double m = 0;
    for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(static_cast<double>(a[i]) - b[i]));
    return m;
}

S2E_TEST(conversions) {
    CHECK(s2e::fp16_to_float(0x3c00) == 1.0f && s2e::fp16_to_float(0xc000) == -2.0f);
    CHECK(s2e::fp16_to_float(0x0001) == std::ldexp(1.0f, -24) && s2e::fp16_to_float(0x7bff) == 65504.0f);
    CHECK(std::isinf(s2e::fp16_to_float(0x7c00)));
    CHECK(s2e::bf16_to_float(0x3f80) == 1.0f);
    CHECK(s2e::round_bf16(1.0f + std::ldexp(1.0f, -8)) == 1.0f);                                  // tie to even
    CHECK(s2e::round_bf16(1.0f + 3 * std::ldexp(1.0f, -8)) == 1.0f + std::ldexp(1.0f, -6));      // tie up to even
    CHECK(s2e::round_bf16(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20)) == 1.0f + std::ldexp(1.0f, -7));
    CHECK(s2e::fp8e4m3_to_float(0x7e) == 448.0f && s2e::fp8e4m3_to_float(0x01) == std::ldexp(1.0f, -9));
    CHECK(std::isnan(s2e::fp8e4m3_to_float(0x7f)) && s2e::fp8e4m3_to_float(0xb8) == -1.0f);
}

S2E_TEST(linear_matches_naive) {
    const int M = 7, K = 13, N = 5;
    auto x = randn(M * K, 1), w = randn(N * K, 2), b = randn(N, 3);
    std::vector<float> y(M * N), ref(M * N);
    ops::linear(x.data(), M, K, w.data(), b.data(), N, y.data(), N);
    for (int i = 0; i < M; ++i)
        for (int j = 0; j < N; ++j) {
            double s = b[j];
            for (int k = 0; k < K; ++k) s += static_cast<double>(x[i * K + k]) * w[j * K + k];
            ref[i * N + j] = static_cast<float>(s);
        }
    CHECK(max_diff(y, ref) < 1e-4);
}

static std::vector<float> naive_conv(const std::vector<float>& x, int cin, int H, int W, const std::vector<float>& w,
                                     const std::vector<float>& b, int cout, int k, int stride, int pad) {
    int Ho = (H + 2 * pad - k) / stride + 1, Wo = (W + 2 * pad - k) / stride + 1;
    std::vector<float> y(cout * Ho * Wo);
    for (int co = 0; co < cout; ++co)
        for (int oy = 0; oy < Ho; ++oy)
            for (int ox = 0; ox < Wo; ++ox) {
                double s = b[co];
                for (int ci = 0; ci < cin; ++ci)
                    for (int ky = 0; ky < k; ++ky)
                        for (int kx = 0; kx < k; ++kx) {
                            int iy = oy * stride - pad + ky, ix = ox * stride - pad + kx;
                            if (iy >= 0 && iy < H && ix >= 0 && ix < W)
                                s += static_cast<double>(x[(ci * H + iy) * W + ix]) * w[((co * cin + ci) * k + ky) * k + kx];
                        }
                y[(co * Ho + oy) * Wo + ox] = static_cast<float>(s);
            }
    return y;
}

S2E_TEST(conv2d_matches_naive) {
    struct Case { int cin, H, W, cout, k, stride, pad; };
    for (Case c : {Case{3, 9, 7, 4, 3, 1, 1}, Case{5, 6, 6, 2, 1, 1, 0}, Case{4, 7, 5, 3, 1, 2, 0}, Case{2, 8, 8, 3, 3, 2, 0}}) {
        auto x = randn(c.cin * c.H * c.W, 4), w = randn(c.cout * c.cin * c.k * c.k, 5), b = randn(c.cout, 6);
        auto ref = naive_conv(x, c.cin, c.H, c.W, w, b, c.cout, c.k, c.stride, c.pad);
        std::vector<float> y(ref.size()), scratch;
        ops::conv2d(x.data(), c.cin, c.H, c.W, w.data(), b.data(), c.cout, c.k, c.stride, c.pad, y.data(), scratch);
        CHECK(max_diff(y, ref) < 1e-4);
    }
}

S2E_TEST(conv_transpose_matches_naive) {
    // widths 1 and 2 take the row edges alone; 37 the vector loop with a remainder
    for (auto [H, W] : {std::pair<int, int>{5, 4}, {3, 1}, {2, 2}, {4, 37}}) {
        const int cin = 3, cout = 2;
        auto x = randn(cin * H * W, 7), w = randn(cin * cout * 16, 8);
        std::vector<float> ref(cout * 4 * H * W, 0.0f), y(ref.size(), 1e30f), scratch;  // every output written
        for (int ci = 0; ci < cin; ++ci)
            for (int co = 0; co < cout; ++co)
                for (int iy = 0; iy < H; ++iy)
                    for (int ix = 0; ix < W; ++ix)
                        for (int ky = 0; ky < 4; ++ky)
                            for (int kx = 0; kx < 4; ++kx) {
                                int oy = 2 * iy - 1 + ky, ox = 2 * ix - 1 + kx;
                                if (oy >= 0 && oy < 2 * H && ox >= 0 && ox < 2 * W)
                                    ref[(co * 2 * H + oy) * 2 * W + ox] +=
                                        x[(ci * H + iy) * W + ix] * w[((ci * cout + co) * 4 + ky) * 4 + kx];
                            }
        ops::conv_transpose4x4s2(x.data(), cin, H, W, w.data(), cout, y.data(), scratch);
        CHECK(max_diff(y, ref) < 1e-4);
    }
}

S2E_TEST(pixel_shuffle_layout) {
    const int c = 2, H = 3, W = 2;
    std::vector<float> x(4 * c * H * W), y(x.size());
    for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i);
    ops::pixel_shuffle2(x.data(), c, H, W, y.data());
    for (int ch = 0; ch < c; ++ch)
        for (int oy = 0; oy < 2 * H; ++oy)
            for (int ox = 0; ox < 2 * W; ++ox)
                CHECK(y[(ch * 2 * H + oy) * 2 * W + ox] == x[((ch * 4 + (oy % 2) * 2 + ox % 2) * H + oy / 2) * W + ox / 2]);
}

S2E_TEST(pixel_shuffle_then_norm_channels_last) {
    // The dense heads' PixelShuffle unit channels last in one pass: the same as the channels-first
    // pixel_shuffle2 followed by InstanceNorm (channels far from zero: the shifted sums pool 4 sub-pixel
    // columns) or the albedo head's per-pixel RMSNorm, with SiLU, as floats and as bf16 bits.
    const int64_t c = 13, H = 5, W = 7, HW = 4 * H * W;
    auto x = randn(4 * c * H * W, 41);  // channels first (4c, H, W)
    for (int64_t k = 0; k < 4 * c; ++k)
        for (int64_t p = 0; p < H * W; ++p) x[k * H * W + p] = x[k * H * W + p] * (1 + k % 3) + 50.0f * (k / 4);
    std::vector<float> last(x.size());  // (H, W, 4c)
    for (int64_t k = 0; k < 4 * c; ++k)
        for (int64_t p = 0; p < H * W; ++p) last[p * 4 * c + k] = x[k * H * W + p];
    const std::vector<float> rms_w = randn(c, 42);
    for (bool rms : {false, true}) {
        std::vector<float> want(x.size());  // (c, 2H, 2W)
        ops::pixel_shuffle2(x.data(), c, H, W, want.data());
        if (rms)
            ops::rms_norm2d(want.data(), c, HW, rms_w.data(), 1e-6f, true);
        else
            ops::instance_norm(want.data(), c, HW, 1e-5f, true);
        std::vector<float> gotf(x.size(), 1e30f);
        std::vector<uint16_t> gotb(x.size());
        const float* w = rms ? rms_w.data() : nullptr;
        const float eps = rms ? 1e-6f : 1e-5f;
        ops::pixel_shuffle2_norm_nhwc(last.data(), c, H, W, w, eps, true, gotf.data());
        ops::pixel_shuffle2_norm_nhwc(last.data(), c, H, W, w, eps, true, gotb.data());
        double worst = 0, worst_b = 0;
        for (int64_t ch = 0; ch < c; ++ch)
            for (int64_t p = 0; p < HW; ++p) {
                const float v = want[ch * HW + p], scale = std::max(1.0f, std::fabs(v));
                worst = std::max(worst, static_cast<double>(std::fabs(gotf[p * c + ch] - v) / scale));
                worst_b = std::max(worst_b, static_cast<double>(std::fabs(s2e::bf16_to_float(gotb[p * c + ch]) - v) / scale));
            }
        std::printf("  %s: float max error %.2e, bf16 %.2e\n", rms ? "rms" : "instance", worst, worst_b);
        CHECK(worst <= 1e-5);
        CHECK(worst_b <= 1.0 / 256);
    }
    // the per-pixel RMSNorm channels last without the shuffle: rms_norm2d's values
    auto first = randn(c * HW, 43);
    std::vector<float> rows(first.size()), out(first.size());
    for (int64_t ch = 0; ch < c; ++ch)
        for (int64_t p = 0; p < HW; ++p) rows[p * c + ch] = first[ch * HW + p];
    ops::rms_norm2d(first.data(), c, HW, rms_w.data(), 1e-6f, true);
    ops::rms_norm_nhwc(rows.data(), HW, c, rms_w.data(), 1e-6f, true, out.data());
    double worst = 0;
    for (int64_t ch = 0; ch < c; ++ch)
        for (int64_t p = 0; p < HW; ++p)
            worst = std::max(worst, static_cast<double>(std::fabs(out[p * c + ch] - first[ch * HW + p])));
    CHECK(worst <= 1e-5);
}

S2E_TEST(norms_and_softmax) {
    auto x = randn(3 * 50, 9);
    ops::instance_norm(x.data(), 3, 50, 1e-5f);
    for (int c = 0; c < 3; ++c) {
        double m = 0, v = 0;
        for (int i = 0; i < 50; ++i) m += x[c * 50 + i];
        m /= 50;
        for (int i = 0; i < 50; ++i) v += (x[c * 50 + i] - m) * (x[c * 50 + i] - m);
        CHECK_NEAR(m, 0.0, 1e-5);
        CHECK_NEAR(v / 50, 1.0, 1e-3);
    }
    // the head's norms with SiLU in the same pass: the norm, then silu_inplace
    for (bool rms : {false, true}) {
        auto plain = randn(5 * 300, 12), fused = plain;
        std::vector<float> cw = randn(5, 13);
        if (rms) {
            ops::rms_norm2d(plain.data(), 5, 300, cw.data(), 1e-6f);
            ops::rms_norm2d(fused.data(), 5, 300, cw.data(), 1e-6f, true);
        } else {
            ops::instance_norm(plain.data(), 5, 300, 1e-5f);
            ops::instance_norm(fused.data(), 5, 300, 1e-5f, true);
        }
        ops::silu_inplace(plain.data(), static_cast<int64_t>(plain.size()));
        CHECK(max_diff(fused, plain) < 1e-6);
    }
    // channels last, written as bf16: the same normalisation as channels first (rounded to bf16), also
    // for channels far from zero (the shifted sums), with and without SiLU
    for (bool silu : {false, true}) {
        const int64_t C = 37, HW = 301;
        auto first = randn(C * HW, 14);
        for (int64_t c = 0; c < C; ++c)
            for (int64_t p = 0; p < HW; ++p) first[c * HW + p] = first[c * HW + p] * (1 + c) + 100.0f * c;
        std::vector<float> last(first.size());
        for (int64_t c = 0; c < C; ++c)
            for (int64_t p = 0; p < HW; ++p) last[p * C + c] = first[c * HW + p];
        ops::instance_norm(first.data(), C, HW, 1e-5f, silu);
        std::vector<uint16_t> out(first.size());
        std::vector<float> outf(first.size());
        ops::instance_norm_nhwc(last.data(), HW, C, 1e-5f, silu, out.data());
        ops::instance_norm_nhwc(last.data(), HW, C, 1e-5f, silu, outf.data());
        double worst = 0, worst_f = 0;
        for (int64_t c = 0; c < C; ++c)
            for (int64_t p = 0; p < HW; ++p) {
                const float want = first[c * HW + p], got = s2e::bf16_to_float(out[p * C + c]);
                const float scale = std::max(1.0f, std::fabs(want));
                worst = std::max(worst, static_cast<double>(std::fabs(got - want) / scale));
                worst_f = std::max(worst_f, static_cast<double>(std::fabs(outf[p * C + c] - want) / scale));
            }
        CHECK(worst <= 1.0 / 256);  // bf16's rounding (8 significant bits), nothing more
        CHECK(worst_f <= 1e-5);     // float32: the same normalisation
    }
    auto r = randn(4 * 8, 10);
    std::vector<float> w(8, 2.0f), out(r.size());
    ops::rms_norm(r.data(), out.data(), 4, 8, 8, w.data(), 1e-6f);
    for (int i = 0; i < 4; ++i) {
        double ss = 0;
        for (int j = 0; j < 8; ++j) ss += out[i * 8 + j] * out[i * 8 + j];
        CHECK_NEAR(ss / 8, 4.0, 1e-3);
    }
    auto s = randn(3 * 6, 11);
    ops::softmax_rows(s.data(), 3, 6, 6);
    for (int i = 0; i < 3; ++i) {
        double sum = 0;
        for (int j = 0; j < 6; ++j) sum += s[i * 6 + j];
        CHECK_NEAR(sum, 1.0, 1e-6);
    }
}

S2E_TEST(attention_paths_agree) {
    const int T = 23, d = 8, ld = 3 * d;
    auto q = randn(T * ld, 12), k = randn(T * ld, 13), v = randn(T * ld, 14);
    std::vector<float> o1(T * d), o2(T * d), s(T * T), scratch;
    ops::attention_head(q.data(), ld, k.data(), v.data(), ld, o1.data(), d, T, d, 0.35f, scratch);
    ops::attention_head_small(q.data(), ld, k.data(), v.data(), ld, o2.data(), d, T, d, 0.35f, s.data());
    CHECK(max_diff(o1, o2) < 1e-5);
}

S2E_TEST(rope_rotation) {
    const float periods[4] = {1.0f, 1.3359375f, 1.78125f, 2.375f};
    const int q = 4, d = 16, hp = 3, wp = 5;
    std::vector<float> sin_t(hp * wp * d), cos_t(hp * wp * d);
    ops::rope_tables(periods, q, hp, wp, false, sin_t.data(), cos_t.data());
    for (size_t i = 0; i < sin_t.size(); ++i) CHECK_NEAR(sin_t[i] * sin_t[i] + cos_t[i] * cos_t[i], 1.0, 1e-6);
    // token (1, 2): y = 2*(1.5/3)-1 = 0, x = 2*(2.5/5)-1 = 0 -> identity rotation
    const int t = 1 * wp + 2;
    auto v = randn(d, 15), orig = v;
    ops::rope_rotate(v.data(), d, sin_t.data() + t * d, cos_t.data() + t * d, false);
    CHECK(max_diff(v, orig) < 1e-6);
    // fp32 rotation preserves the norm of each (j, j + d/2) pair
    auto w = randn(d, 16), w0 = w;
    ops::rope_rotate(w.data(), d, sin_t.data(), cos_t.data(), false);
    for (int j = 0; j < d / 2; ++j)
        CHECK_NEAR(w[j] * w[j] + w[j + d / 2] * w[j + d / 2], w0[j] * w0[j] + w0[j + d / 2] * w0[j + d / 2], 1e-4);
    // bf16 mode: every output is a bfloat16 value
    ops::rope_tables(periods, q, hp, wp, true, sin_t.data(), cos_t.data());
    ops::rope_rotate(w0.data(), d, sin_t.data() + 3 * d, cos_t.data() + 3 * d, true);
    for (float x : w0) CHECK(s2e::round_bf16(x) == x);
}

S2E_TEST(silu_and_softmax_exp_accuracy) {
    // The engine's vectorized exp against libm over the range the model produces (and past it).
    std::vector<float> x;
    for (float v = -100.0f; v <= 100.0f; v += 0.013f) x.push_back(v);
    std::vector<float> y = x;
    ops::silu_inplace(y.data(), static_cast<int64_t>(y.size()));
    double worst = 0;
    for (size_t i = 0; i < x.size(); ++i) {
        const double want = x[i] / (1.0 + std::exp(-static_cast<double>(x[i])));
        worst = std::max(worst, std::fabs(y[i] - want) / std::max(std::fabs(want), 1e-30));
    }
    CHECK(worst < 1e-6);
    std::vector<float> s = {0.0f, -1.0f, 3.5f, -90.0f, 2.0f};
    ops::softmax_rows(s.data(), 1, 5, 5);
    double z = 0;
    for (float v : {0.0f, -1.0f, 3.5f, -90.0f, 2.0f}) z += std::exp(static_cast<double>(v));
    CHECK(std::fabs(s[2] - std::exp(3.5) / z) < 1e-7 && std::fabs(s[1] - std::exp(-1.0) / z) < 1e-7);
    CHECK(s[3] < 1e-30);
    std::vector<float> u = {1.5f, -2.0f, 0.25f, 3.0f}, a(2);  // one row, hid 2: gates (1.5, -2), ups (0.25, 3)
    ops::swiglu(u.data(), a.data(), 1, 2);
    CHECK(std::fabs(a[0] - 1.5 / (1 + std::exp(-1.5)) * 0.25) < 1e-6 && std::fabs(a[1] - -2.0 / (1 + std::exp(2.0)) * 3.0) < 1e-6);
    std::vector<float> nan = {std::nanf(""), 1.0f};
    ops::silu_inplace(nan.data(), 2);
    CHECK(std::isnan(nan[0]));
}

S2E_TEST(exp_rows_bf16_match_float64) {
    // The attention's bf16 probabilities: each is exp(scale * (s - max)) rounded to bf16 (a float
    // exponential near a bf16 rounding boundary may land on the neighbour: at most one step, rarely),
    // and inv_sum is 1 / the sum of the exponentials. Scores in float and as exact int32; row lengths
    // with every kind of tail (whole 32-column steps, a 16-column step, a partial one).
    std::printf("  AVX-512 BF16 kernel here: %s\n", ops::exp_rows_bf16_vectorized() ? "yes" : "no");
    for (int64_t cols : {1000, 1013, 7, 64}) {
        const int64_t rows = 3;
        const float base = 0.01f;
        std::vector<float> sf = randn(rows * cols, 5);
        std::vector<int32_t> si(sf.size());
        for (size_t i = 0; i < sf.size(); ++i) {
            sf[i] *= 300.0f;  // differences up to ~20 after scaling, and one score far below the rest
            si[i] = static_cast<int32_t>(std::lround(sf[i] * 10.0f));
        }
        sf[5] = -1e6f;
        si[5] = -100000000;
        auto check = [&](auto& s, float scale, const std::vector<uint16_t>& p, const std::vector<float>& inv) {
            int64_t off_by_one = 0;
            for (int64_t r = 0; r < rows; ++r) {
                double m = -INFINITY, sum = 0;
                for (int64_t j = 0; j < cols; ++j) m = std::max(m, static_cast<double>(s[r * cols + j]));
                for (int64_t j = 0; j < cols; ++j) {
                    const double e = std::exp(scale * (static_cast<double>(s[r * cols + j]) - m));
                    sum += e;
                    if (r * cols + j == 5) continue;  // exp(-1e4): checked below
                    const int32_t want = s2e::float_to_bf16(static_cast<float>(e)), got = p[r * cols + j];
                    CHECK(std::abs(got - want) <= 1);
                    off_by_one += got != want;
                }
                CHECK(std::fabs(inv[r] * sum - 1.0) < 1e-5);
            }
            CHECK(off_by_one * 300 < rows * cols);  // boundary cases only
            CHECK(p[5] == 0 || s2e::bf16_to_float(p[5]) < 1e-30f);  // exp(-1e4): zero or below any weight
        };
        for (bool vectorized : {true, false}) {  // the CPU's kernel and the portable loop
            std::vector<uint16_t> p(rows * cols, 0xffff);
            std::vector<float> inv(rows);
            ops::exp_rows_bf16(sf.data(), rows, cols, base, p.data(), inv.data(), vectorized);
            check(sf, base, p, inv);
            std::fill(p.begin(), p.end(), 0xffff);
            ops::exp_rows_bf16(si.data(), rows, cols, base / 10.0f, p.data(), inv.data(), vectorized);
            check(si, base / 10.0f, p, inv);
        }
    }
}

S2E_TEST(swiglu_int8_is_the_three_steps_in_one) {
    // fc1's int32 products -> dequantize -> SwiGLU -> fc2's int8 input, against the three separate steps;
    // rows 0 and 2 dynamic (scale 0 in), the others static
    const int64_t rows = 5, hid = 37;
    std::vector<int32_t> acc(rows * 2 * hid);
    std::mt19937 gen(3);
    std::uniform_int_distribution<int32_t> d(-40000, 40000);
    for (auto& a : acc) a = d(gen);
    const std::vector<float> rs = {1e-4f, 2e-4f, 5e-5f, 1e-4f, 3e-4f}, cs = randn(2 * hid, 4), bias = randn(2 * hid, 5);
    for (const float* b : {bias.data(), static_cast<const float*>(nullptr)}) {
        std::vector<float> y(acc.size()), a(rows * hid), sep_scale = {0.0f, 0.02f, 0.0f, 0.02f, 0.05f};
        std::memcpy(y.data(), acc.data(), sizeof(float) * y.size());
        ops::dequantize_rows_int32(y.data(), rows, 2 * hid, rs.data(), cs.data(), b);
        ops::swiglu(y.data(), a.data(), rows, hid);
        std::vector<int8_t> want(rows * hid), got(rows * hid);
        std::vector<float> fused_scale = sep_scale;
        ops::quantize_rows_int8(a.data(), rows, hid, sep_scale.data(), want.data());
        ops::swiglu_int8(acc.data(), rows, hid, rs.data(), cs.data(), b, fused_scale.data(), got.data());
        CHECK(got == want);
        CHECK(fused_scale == sep_scale && fused_scale[0] > 0.0f && fused_scale[1] == 0.02f);
        int64_t nonzero = 0;
        for (int8_t v : got) nonzero += v != 0;
        CHECK(nonzero > rows * hid / 2);  // the products are not all rounded away
    }
}

S2E_TEST_MAIN()
