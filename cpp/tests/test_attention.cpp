// Global attention on oneDNN (float32 and bf16 operands) against a float64 softmax(q k^T) v, on a
// sequence long enough for several blocks of query rows (the last one partial), with grouped-query
// heads and peaked scores, so that a row or head written to the wrong place cannot pass.
#include <cmath>
#include <string>
#include <vector>

#include "s2e/attention.hpp"
#include "s2e/common.hpp"
#include "s2e/onednn.hpp"
#include "s2e_check.hpp"

namespace dnn = s2e::onednn;

namespace {

constexpr int64_t B = 2, T = 700, heads = 4, kv = 2, d = 64, C = heads * d, kvd = kv * d;

struct Case {
    std::vector<float> q, k, v;
    Case() : q(s2e_test::randn(B * T * C, 11)), k(s2e_test::randn(B * T * kvd, 12)), v(s2e_test::randn(B * T * kvd, 13)) {
        for (auto& x : q) x *= 3.0f;  // scores of tens: a few keys carry most of each row's weight
    }
};

// float64 attention of the inputs as the engine's operands hold them (`bf16`: q, k, v and the
// probabilities rounded to bfloat16; `probs_bf16`: the probabilities only). The engine's bf16
// probabilities are the unnormalised exponentials, P.v's rows divided by their sums afterwards.
std::vector<double> reference(const Case& c, float scale, bool bf16, bool probs_bf16 = false) {
    auto r = [bf16](float x) { return static_cast<double>(bf16 ? s2e::round_bf16(x) : x); };
    auto rp = [bf16, probs_bf16](double x) {
        return bf16 || probs_bf16 ? static_cast<double>(s2e::round_bf16(static_cast<float>(x))) : x;
    };
    std::vector<double> o(B * T * C), s(T);
    for (int64_t b = 0; b < B; ++b)
        for (int64_t h = 0; h < heads; ++h) {
            const int64_t g = h / (heads / kv);
            for (int64_t i = 0; i < T; ++i) {
                double m = -INFINITY, sum = 0;
                for (int64_t j = 0; j < T; ++j) {
                    double acc = 0;
                    for (int64_t e = 0; e < d; ++e)
                        acc += r(c.q[(b * T + i) * C + h * d + e]) * r(c.k[(b * T + j) * kvd + g * d + e]);
                    s[j] = scale * acc;
                    m = std::max(m, s[j]);
                }
                for (int64_t j = 0; j < T; ++j) sum += (s[j] = std::exp(s[j] - m));
                for (int64_t j = 0; j < T; ++j) s[j] = rp(s[j]);
                for (int64_t e = 0; e < d; ++e) {
                    double acc = 0;
                    for (int64_t j = 0; j < T; ++j) acc += s[j] * r(c.v[(b * T + j) * kvd + g * d + e]);
                    o[(b * T + i) * C + h * d + e] = acc / sum;
                }
            }
        }
    return o;
}

double rel_max(const std::vector<float>& got, const std::vector<double>& want) {
    double m = 0, s = 0;
    for (size_t i = 0; i < want.size(); ++i) {
        m = std::max(m, std::fabs(got[i] - want[i]));
        s = std::max(s, std::fabs(want[i]));
    }
    return m / s;
}

}  // namespace

S2E_TEST(attention_runs_in_several_blocks_of_query_rows_here) {
    const int64_t rows = s2e::attention::block_rows(T);
    CHECK(rows < T && T % rows != 0);
    CHECK(rows * T <= s2e::attention::kScoreFloats);
}

S2E_TEST(attention_f32_matches_float64) {
    const Case c;
    std::vector<float> o(B * T * C, NAN), qb, kb, vb;
    if (!dnn::load().empty()) {
        EXPECT_THROW(s2e::attention::dense(c.q.data(), c.k.data(), c.v.data(), o.data(), B, T, heads, kv, d, 0.125f, qb,
                                           kb, vb),
                     s2e::UnsupportedError);
        return;
    }
    s2e::attention::dense(c.q.data(), c.k.data(), c.v.data(), o.data(), B, T, heads, kv, d, 0.125f, qb, kb, vb);
    const double err = rel_max(o, reference(c, 0.125f, false));
    std::printf("  f32: max error %.2e of the largest output\n", err);
    CHECK(err < 1e-4);
}

S2E_TEST(attention_bf16_matches_float64_of_rounded_operands) {
    const Case c;
    std::vector<float> o(B * T * C, NAN);
    std::vector<uint16_t> qb, kb, vb;
    if (!dnn::load().empty() || !dnn::native_bf16()) {
        std::printf("  no native bf16 oneDNN here (%s)\n", dnn::describe().c_str());
        return;
    }
    s2e::attention::dense(c.q.data(), c.k.data(), c.v.data(), o.data(), B, T, heads, kv, d, 0.125f, qb, kb, vb);
    const double err = rel_max(o, reference(c, 0.125f, true));
    std::printf("  bf16: max error %.2e of the largest output\n", err);
    // float32 scores (vs float64) move a probability across a bf16 rounding boundary now and then: 2^-8
    CHECK(err < 1e-2);
}

S2E_TEST(attention_bf16_on_int8_values_applies_the_scales) {
    // int8 attention inputs: the engine passes q / s_q, k / s_k, v / s_v (integers, exact in bf16) with
    // s_q s_k folded into the softmax scale and s_v on the output; the result is attention of q, k, v
    // themselves, with only the probabilities rounded to bf16
    if (!dnn::load().empty() || !dnn::native_bf16()) {
        std::printf("  no native bf16 oneDNN here (%s)\n", dnn::describe().c_str());
        return;
    }
    Case ints, real;
    const float sq = 0.03f, sk = 0.02f, sv = 0.05f;
    auto grid = [](std::vector<float>& x, std::vector<float>& scaled, float s) {
        for (size_t i = 0; i < x.size(); ++i) {
            x[i] = std::fmax(-127.0f, std::fmin(127.0f, std::nearbyint(x[i] * 40.0f)));
            scaled[i] = x[i] * s;
        }
    };
    grid(ints.q, real.q, sq);
    grid(ints.k, real.k, sk);
    grid(ints.v, real.v, sv);
    const std::vector<double> want = reference(real, 0.125f, false, true);
    std::vector<float> o(B * T * C, NAN);
    std::vector<uint16_t> qb, kb, vb;
    s2e::attention::dense(ints.q.data(), ints.k.data(), ints.v.data(), o.data(), B, T, heads, kv, d, 0.125f * sq * sk,
                          qb, kb, vb, sv);
    const double err = rel_max(o, want);
    std::printf("  bf16 on int8 values: max error %.2e of the largest output\n", err);
    CHECK(err < 1e-2);
    // q k^T as an int8 GEMM (exact int32), P v in bf16: the same within the probabilities' rounding
    std::vector<float> o8(B * T * C, NAN);
    std::vector<int8_t> q8, k8;
    s2e::attention::dense_int8(ints.q.data(), ints.k.data(), ints.v.data(), o8.data(), B, T, heads, kv, d,
                               0.125f * sq * sk, sv, q8, k8, vb);
    const double err8 = rel_max(o8, want);
    std::printf("  int8 q k^T: max error %.2e of the largest output\n", err8);
    CHECK(err8 < 1e-2);
}

S2E_TEST_MAIN()
