// One head layer at a time on the native engine's kernels: oneDNN's direct convolution in float32 and in
// bf16 (where the CPU has native bf16) against Winograd with 4x4 and 2x2 tiles (float32), best of --reps calls each, and the tile the
// engine's "auto" picks on this CPU (winograd::choose_tile). The measurements behind that rule.
//
//   cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build --target s2e_head_layers
//   OMP_NUM_THREADS=2 build/s2e_head_layers conv 768 2048 64 48 deconv 1024 512 64 48 ...
//
// Each layer is a kind ("conv": 3x3, padding 1; "deconv": transposed 4x4, stride 2, padding 1) and cin, cout,
// H, W (the input map). Random inputs and weights; rel L2 of each result against the float32 direct one.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "s2e/onednn.hpp"
#include "s2e/winograd.hpp"

namespace {

double best_ms(int reps, const std::function<void()>& f) {
    double best = 1e30;
    for (int r = 0; r < reps; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        f();
        best = std::min(best, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    return best;
}

double rel_l2(const std::vector<float>& ref, const std::vector<float>& y) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < ref.size(); ++i) {
        num += (y[i] - ref[i]) * double(y[i] - ref[i]);
        den += ref[i] * double(ref[i]);
    }
    return std::sqrt(num / std::max(den, 1e-30));
}

}  // namespace

int main(int argc, char** argv) {
    using namespace s2e;
    const std::string why = onednn::load();
    if (!why.empty()) {
        std::fprintf(stderr, "needs oneDNN: %s\n", why.c_str());
        return 2;
    }
    int reps = 3;
    std::printf("%s, float32 kernels %s\n", onednn::describe().c_str(), onednn::avx512() ? "AVX-512" : "not AVX-512");
    for (int a = 1; a < argc;) {
        const std::string kind = argv[a];
        if (kind == "--reps" && a + 1 < argc) {
            reps = std::max(1, std::atoi(argv[a + 1]));
            a += 2;
            continue;
        }
        if ((kind != "conv" && kind != "deconv") || a + 4 >= argc) {
            std::fprintf(stderr, "expected: [--reps N] {conv|deconv} cin cout H W ...\n");
            return 2;
        }
        const bool deconv = kind == "deconv";
        const int64_t cin = std::atoll(argv[a + 1]), cout = std::atoll(argv[a + 2]), H = std::atoll(argv[a + 3]),
                      W = std::atoll(argv[a + 4]);
        a += 5;
        const int64_t taps = deconv ? 16 : 9, out = cout * H * W * (deconv ? 4 : 1);
        std::mt19937 gen(0);
        std::normal_distribution<float> normal;
        std::vector<float> x(cin * H * W), w(cin * cout * taps), b(cout), ref(out), y(out);
        for (auto& v : x) v = normal(gen);
        for (auto& v : w) v = normal(gen) / std::sqrt(float(cin * taps));
        for (auto& v : b) v = deconv ? 0.0f : normal(gen);
        std::vector<uint16_t> xb(x.size());
        onednn::to_bf16(x.data(), 1, int64_t(x.size()), int64_t(x.size()), xb.data());
        auto work_floats = [&](int m) {
            return deconv ? winograd::deconv_work_floats(cin, cout, H, W, m) : winograd::work_floats(cin, cout, H, W, m);
        };
        std::vector<float> work(std::max(work_floats(2), work_floats(4)));
        auto direct = [&](auto* input, std::vector<float>& to) {
            if (deconv) onednn::deconv4x4s2(input, cin, H, W, w.data(), cout, to.data());
            else onednn::conv3x3(input, cin, H, W, w.data(), b.data(), cout, to.data());
        };
        auto wino = [&](int m) {
            if (deconv) winograd::deconv4x4s2(x.data(), cin, H, W, w.data(), cout, y.data(), work.data(), m);
            else winograd::conv3x3(x.data(), cin, H, W, w.data(), b.data(), cout, y.data(), work.data(), m);
        };
        const double f32 = best_ms(reps, [&] { direct(x.data(), ref); });
        // bf16 where the CPU has native bf16 (oneDNN refuses it elsewhere)
        const bool has_bf16 = onednn::native_bf16();
        const double bf16 = has_bf16 ? best_ms(reps, [&] { direct(xb.data(), y); }) : NAN;
        const double bf16_err = has_bf16 ? rel_l2(ref, y) : NAN;
        const double w4 = best_ms(reps, [&] { wino(4); });
        const double w4_err = rel_l2(ref, y);
        const double w2 = best_ms(reps, [&] { wino(2); });
        const int tile = winograd::choose_tile(cin, cout, H, W, deconv, onednn::avx512());
        std::printf("%-6s %5lld -> %5lld at %4lldx%-4lld  direct f32 %8.1f ms  bf16 %8.1f ms (rel L2 %.1e)  "
                    "Winograd 4x4 %8.1f ms (%.2fx, rel L2 %.1e)  2x2 %8.1f ms (%.2fx)  auto: %s\n",
                    kind.c_str(), (long long)cin, (long long)cout, (long long)H, (long long)W, f32, bf16, bf16_err, w4,
                    f32 / w4, w4_err, w2, f32 / w2,
                    tile ? (tile == 4 ? "Winograd 4x4" : "Winograd 2x2") : "direct");
        std::fflush(stdout);
    }
    return 0;
}
