// Winograd convolutions (F(m x m, 3 x 3)) and transposed convolutions (F(m x m, 2 x 2) per output phase)
// against float64 direct ones of the same inputs, and the weight transform against G g G^T multiplied out
// in float64. Where oneDNN is not installed the test
// checks that the convolution says so.
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#else
static int omp_get_max_threads() { return 1; }
#endif

#include "s2e/common.hpp"
#include "s2e/onednn.hpp"
#include "s2e/winograd.hpp"
#include "s2e_check.hpp"

namespace wg = s2e::winograd;
using s2e_test::randn;

// y (H, W, cout) = conv3x3(x (H, W, cin), w (cout, cin, 3, 3), padding 1) + b, in float64.
static std::vector<double> direct(const std::vector<float>& x, int64_t cin, int64_t H, int64_t W,
                                  const std::vector<float>& w, const float* b, int64_t cout) {
    std::vector<double> y(static_cast<size_t>(H * W * cout));
    for (int64_t r = 0; r < H; ++r)
        for (int64_t c = 0; c < W; ++c)
            for (int64_t o = 0; o < cout; ++o) {
                double s = b ? b[o] : 0.0;
                for (int64_t i = 0; i < cin; ++i)
                    for (int64_t dr = -1; dr <= 1; ++dr)
                        for (int64_t dc = -1; dc <= 1; ++dc) {
                            const int64_t rr = r + dr, cc = c + dc;
                            if (rr < 0 || rr >= H || cc < 0 || cc >= W) continue;
                            s += static_cast<double>(x[(rr * W + cc) * cin + i]) *
                                 w[((o * cin + i) * 3 + dr + 1) * 3 + dc + 1];
                        }
                y[(r * W + c) * cout + o] = s;
            }
    return y;
}

// y (2H, 2W, cout) = conv_transpose2d(x (H, W, cin), w (cin, cout, 4, 4), stride 2, padding 1), in float64,
// by its definition: input pixel (r, c) adds x * w[ky][kx] to output (2r - 1 + ky, 2c - 1 + kx).
static std::vector<double> direct_transposed(const std::vector<float>& x, int64_t cin, int64_t H, int64_t W,
                                             const std::vector<float>& w, int64_t cout) {
    const int64_t Ho = 2 * H, Wo = 2 * W;
    std::vector<double> y(static_cast<size_t>(Ho * Wo * cout), 0.0);
    for (int64_t r = 0; r < H; ++r)
        for (int64_t c = 0; c < W; ++c)
            for (int64_t i = 0; i < cin; ++i)
                for (int64_t ky = 0; ky < 4; ++ky)
                    for (int64_t kx = 0; kx < 4; ++kx) {
                        const int64_t yr = 2 * r - 1 + ky, yc = 2 * c - 1 + kx;
                        if (yr < 0 || yr >= Ho || yc < 0 || yc >= Wo) continue;
                        for (int64_t o = 0; o < cout; ++o)
                            y[(yr * Wo + yc) * cout + o] += static_cast<double>(x[(r * W + c) * cin + i]) *
                                                            w[((i * cout + o) * 4 + ky) * 4 + kx];
                    }
    return y;
}

// G for m = 2 (points 0, 1, -1) and m = 4 (0, 1, -1, 2, -2), written out here independently of the source
static const double kG2[4][3] = {{1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0, 0, 1}};
static const double kG4[6][3] = {{0.25, 0, 0},        {-1.0 / 6, -1.0 / 6, -1.0 / 6}, {-1.0 / 6, 1.0 / 6, -1.0 / 6},
                                 {1.0 / 24, 1.0 / 12, 1.0 / 6}, {1.0 / 24, -1.0 / 12, 1.0 / 6}, {0, 0, 1}};

S2E_TEST(weight_transform_is_G_g_Gt) {
    // two input and 19 output channels of distinct values (a block of 16 and a short one), output channels
    // [1, 19) asked for; u[xi][i][o - 1] = (G g_oi G^T)[xi / a][xi % a]
    const int64_t cin = 2, cout = 19, o0 = 1, n = 18;
    std::vector<float> w(static_cast<size_t>(cout * cin * 9));
    for (size_t k = 0; k < w.size(); ++k) w[k] = static_cast<float>(k % 7) - 2.5f + 0.125f * static_cast<float>(k);
    for (int m : {2, 4}) {
        const int a = m + 2;
        std::vector<float> u(static_cast<size_t>(a * a * cin * n), NAN);
        wg::transform_weights(w.data(), cin, o0, n, u.data(), m);
        double worst = 0;
        for (int64_t o = o0; o < o0 + n; ++o)
            for (int64_t i = 0; i < cin; ++i)
                for (int r = 0; r < a; ++r)
                    for (int c = 0; c < a; ++c) {
                        double want = 0;
                        for (int p = 0; p < 3; ++p)
                            for (int q = 0; q < 3; ++q) {
                                const double gr = m == 2 ? kG2[r][p] : kG4[r][p], gc = m == 2 ? kG2[c][q] : kG4[c][q];
                                want += gr * w[((o * cin + i) * 3 + p) * 3 + q] * gc;
                            }
                        const double got = u[((r * a + c) * cin + i) * n + (o - o0)];
                        worst = std::isnan(got) ? INFINITY : std::max(worst, std::fabs(got - want));
                    }
        std::printf("  m %d: max error %.2e\n", m, worst);
        CHECK(worst < 1e-5);
    }
    EXPECT_THROW(wg::transform_weights(w.data(), cin, 0, 1, w.data(), 3), s2e::UnsupportedError);
}

// A work buffer of the size asked for, followed by guard values that a layer writing past it would change
struct Work {
    static constexpr size_t kGuard = 4096;
    static constexpr float kMark = 12345.5f;
    explicit Work(int64_t n) : n_(static_cast<size_t>(n)), v_(n_ + kGuard, kMark) {}
    float* data() { return v_.data(); }
    bool untouched_past_end() const {
        for (size_t i = n_; i < v_.size(); ++i)
            if (v_[i] != kMark) return false;
        return true;
    }

private:
    size_t n_;
    std::vector<float> v_;
};

static bool usable() {
    const std::string why = s2e::onednn::load();
    if (why.empty()) return true;
    std::printf("  oneDNN not usable here (%s): checking the refusal\n", why.c_str());
    float x = 1.0f, w[9] = {}, y = 0.0f, work[64] = {};
    EXPECT_THROW(wg::conv3x3(&x, 1, 1, 1, w, nullptr, 1, &y, work), s2e::UnsupportedError);
    return false;
}

// Relative max error against the float64 direct convolution, for maps with odd and even sides (a last
// tile half outside), channel counts off the vector widths, with and without a bias, in one band and in
// bands of 1 to 3 tile rows, in one chunk of output channels and in chunks of 16 and 32 (the last short).
S2E_TEST(matches_a_direct_convolution) {
    if (!usable()) return;
    struct Case {
        int64_t cin, cout, H, W, band, chunk;
        bool bias;
    };
    const Case cases[] = {{1, 1, 1, 1, 0, 0, false},   {3, 5, 1, 7, 0, 0, true},     {5, 3, 6, 1, 0, 0, true},
                          {17, 33, 7, 9, 0, 0, true},  {70, 19, 8, 8, 1, 0, false},  {64, 65, 13, 11, 2, 16, true},
                          {40, 24, 9, 10, 3, 16, true}, {9, 50, 5, 6, 0, 32, false},
                          // a short last chunk whose bands, sized for its own width, would hold more tile rows
                          // than the work buffer's (at m = 2: 3 rows against 2)
                          {8, 48, 4, 6560, 0, 32, true}};
    unsigned seed = 1;
    for (int m : {2, 4})
    for (const Case& k : cases) {
        const auto x = randn(static_cast<size_t>(k.H * k.W * k.cin), seed++);
        const auto w = randn(static_cast<size_t>(k.cout * k.cin * 9), seed++);
        const auto b = randn(static_cast<size_t>(k.cout), seed++);
        const float* bp = k.bias ? b.data() : nullptr;
        Work work(wg::work_floats(k.cin, k.cout, k.H, k.W, m, k.band, k.chunk));
        std::vector<float> y(static_cast<size_t>(k.H * k.W * k.cout), NAN);
        const int threads = omp_get_max_threads();
        wg::conv3x3(x.data(), k.cin, k.H, k.W, w.data(), bp, k.cout, y.data(), work.data(), m, k.band, k.chunk);
        CHECK(omp_get_max_threads() == threads);  // the GEMMs' one thread each was asked inside its region only
        CHECK(work.untouched_past_end());
        const auto want = direct(x, k.cin, k.H, k.W, w, bp, k.cout);
        double err = 0, scale = 0;
        for (size_t i = 0; i < want.size(); ++i) {
            err = std::max(err, std::fabs(y[i] - want[i]));  // NaN (a value never written) fails below
            scale = std::max(scale, std::fabs(want[i]));
            if (std::isnan(y[i])) err = INFINITY;
        }
        std::printf("  m %d cin %lld cout %lld %lldx%lld band %lld chunk %lld: max error %.2e of %.2f\n", m,
                    (long long)k.cin, (long long)k.cout, (long long)k.H, (long long)k.W, (long long)k.band,
                    (long long)k.chunk, err, scale);
        CHECK(err <= (m == 2 ? 2e-6 : 1e-5) * scale);
    }
}

// The transposed convolution's four phases against its definition, over the same kinds of shapes (1x1
// maps, odd sides, channel counts off the vector width, bands of 1-3 tile rows, chunks of 16 with a short
// last one).
S2E_TEST(deconv_matches_a_direct_transposed_convolution) {
    if (!usable()) return;
    struct Case {
        int64_t cin, cout, H, W, band, chunk;
    };
    const Case cases[] = {{1, 1, 1, 1, 0, 0},  {3, 5, 1, 7, 0, 0},    {5, 3, 6, 1, 0, 0},    {17, 33, 7, 9, 0, 0},
                          {70, 19, 8, 8, 1, 0}, {64, 65, 13, 11, 2, 16}, {40, 24, 9, 10, 3, 16}, {9, 50, 5, 6, 0, 32}};
    unsigned seed = 100;
    for (int m : {2, 4})
        for (const Case& k : cases) {
            const auto x = randn(static_cast<size_t>(k.H * k.W * k.cin), seed++);
            const auto w = randn(static_cast<size_t>(k.cin * k.cout * 16), seed++);
            Work work(wg::deconv_work_floats(k.cin, k.cout, k.H, k.W, m, k.band, k.chunk));
            std::vector<float> y(static_cast<size_t>(4 * k.H * k.W * k.cout), NAN);
            const int threads = omp_get_max_threads();
            wg::deconv4x4s2(x.data(), k.cin, k.H, k.W, w.data(), k.cout, y.data(), work.data(), m, k.band, k.chunk);
            CHECK(omp_get_max_threads() == threads);
            CHECK(work.untouched_past_end());
            const auto want = direct_transposed(x, k.cin, k.H, k.W, w, k.cout);
            double err = 0, scale = 0;
            for (size_t i = 0; i < want.size(); ++i) {
                err = std::max(err, std::fabs(y[i] - want[i]));
                scale = std::max(scale, std::fabs(want[i]));
                if (std::isnan(y[i])) err = INFINITY;  // an output never written
            }
            std::printf("  deconv m %d cin %lld cout %lld %lldx%lld band %lld chunk %lld: max error %.2e of %.2f\n",
                        m, (long long)k.cin, (long long)k.cout, (long long)k.H, (long long)k.W, (long long)k.band,
                        (long long)k.chunk, err, scale);
            CHECK(err <= (m == 2 ? 2e-6 : 1e-5) * scale);
        }
}

// The work buffer: one chunk of transformed weights (a^2 x cin x chunk) and one band's transformed maps
// (a^2 x tiles x (cin + chunk)); the chunk keeps a wide layer's transformed weights near 16 MB.
S2E_TEST(work_covers_a_chunk_and_a_band) {
    CHECK(wg::work_floats(8, 16, 10, 10, 2, 1) == 16 * 8 * 16 + 16 * 5 * (8 + 16));
    CHECK(wg::work_floats(8, 16, 10, 10, 4, 1) == 36 * 8 * 16 + 36 * 3 * (8 + 16));  // 3 tiles of 4 per row
    CHECK(wg::work_floats(8, 16, 10, 10, 4, 99) == wg::work_floats(8, 16, 10, 10, 4, 3));  // at most the map
    CHECK(wg::work_floats(8, 100, 10, 10, 2, 1, 32) == 16 * 8 * 32 + 16 * 5 * (8 + 32));
    // 1024 -> 3072 channels at 64x48, m = 4: chunks of 112 channels (36 x 1024 x 112 floats: 16.5 MB), one
    // band of the map's 16 rows of 12 tiles (at least 256 tiles asked for: 21 rows)
    CHECK(wg::work_floats(1024, 3072, 64, 48) == 36 * 1024 * 112 + 36 * 16 * 12 * (1024 + 112));
    // at 256x192 (3072 tiles): bands of 256 tiles, 5 rows of 48
    CHECK(wg::work_floats(1024, 3072, 256, 192) == 36 * 1024 * 112 + 36 * 5 * 48 * (1024 + 112));
    EXPECT_THROW(wg::work_floats(8, 8, 8, 8, 6), s2e::UnsupportedError);
}

S2E_TEST_MAIN()
