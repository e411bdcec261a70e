// Engine tests. Self-contained: error paths. With S2E_ENGINE_CASES (written by
// tests/test_native_cpp.py: artifact dirs with torch inputs/outputs as raw float32), each case is
// run and compared with the torch reference (relative L2), which also drives every layer under
// the sanitizer build.
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "s2e/engine.hpp"
#include "s2e_check.hpp"

static std::vector<float> read_f32(const std::string& path) {
    std::ifstream f(path, std::ios::binary | std::ios::ate);
    std::vector<float> v(static_cast<size_t>(f.tellg()) / 4);
    f.seekg(0);
    f.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(v.size() * 4));
    return v;
}

S2E_TEST(error_paths) {
    EXPECT_THROW(s2e::Engine("/nonexistent/w.safetensors"), s2e::CorruptFileError);
    EXPECT_THROW(s2e::Engine("/tmp"), s2e::ManifestError);  // a directory without manifest.json
}

S2E_TEST(cases_match_torch) {
    const char* list = std::getenv("S2E_ENGINE_CASES");
    if (!list) {
        std::printf("  (S2E_ENGINE_CASES not set: numeric cases run from tests/test_native_cpp.py)\n");
        return;
    }
    std::ifstream in(list);
    CHECK(in.good());
    std::string line;
    int cases = 0;
    while (std::getline(in, line)) {
        std::istringstream ss(line);
        std::string dir;
        int64_t B, H, W;
        size_t n_out;
        if (!(ss >> dir >> B >> H >> W >> n_out)) continue;
        s2e::Engine e(dir);
        auto x = read_f32(dir + "/input.f32");
        CHECK(static_cast<int64_t>(x.size()) == B * 3 * H * W);
        auto outs = e.run(x.data(), B, H, W);
        CHECK(outs.size() == n_out);
        for (size_t i = 0; i < outs.size() && i < n_out; ++i) {
            auto ref = read_f32(dir + "/expected_" + std::to_string(i) + ".f32");
            CHECK(ref.size() == outs[i].data.size());
            double num = 0, den = 0;
            for (size_t j = 0; j < ref.size() && j < outs[i].data.size(); ++j) {
                num += (ref[j] - outs[i].data[j]) * double(ref[j] - outs[i].data[j]);
                den += double(ref[j]) * ref[j];
            }
            double rel = std::sqrt(num / den);
            std::printf("  %s output %zu: rel L2 %.3g\n", dir.c_str(), i, rel);
            CHECK(rel <= 1e-4);
        }
        // bad inputs are refused with typed errors
        EXPECT_THROW(e.run(x.data(), B, H + 1, W), s2e::InputSizeError);
        std::vector<float> nan = x;
        nan[nan.size() / 2] = std::nanf("");
        EXPECT_THROW(e.run(nan.data(), B, H, W), s2e::InvalidTensorError);
        ++cases;
    }
    CHECK(cases > 0);
}

S2E_TEST_MAIN()
