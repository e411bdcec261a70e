// A minimal test harness for the engine's C++ unit tests (no external framework): CHECK records
// a failure and continues, EXPECT_THROW checks the exception type, main() returns non-zero on failure.
#pragma once

#include <cmath>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

namespace s2e_test {
// n standard-normal floats from a fixed seed.
inline std::vector<float> randn(size_t n, unsigned seed) {
    std::mt19937 g(seed);
    std::normal_distribution<float> d;
    std::vector<float> v(n);
    for (auto& x : v) x = d(g);
    return v;
}

inline int& failures() {
    static int n = 0;
    return n;
}
inline std::vector<std::pair<std::string, std::function<void()>>>& registry() {
    static std::vector<std::pair<std::string, std::function<void()>>> r;
    return r;
}
struct Register {
    Register(const char* name, std::function<void()> fn) { registry().emplace_back(name, std::move(fn)); }
};
inline int run_all() {
    for (auto& t : registry()) {
        int before = failures();
        try {
            t.second();
        } catch (const std::exception& e) {
            std::printf("  unexpected exception: %s\n", e.what());
            ++failures();
        }
        std::printf("%s %s\n", failures() == before ? "PASS" : "FAIL", t.first.c_str());
    }
    std::printf("%zu tests, %d failed checks\n", registry().size(), failures());
    return failures() ? 1 : 0;
}
}  // namespace s2e_test

#define S2E_TEST(name)                                                     \
    static void name();                                                    \
    static s2e_test::Register name##_reg(#name, name);                     \
    static void name()

#define CHECK(cond)                                                                    \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            std::printf("  %s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond);     \
            ++s2e_test::failures();                                                    \
        }                                                                              \
    } while (0)

#define CHECK_NEAR(a, b, tol)                                                                              \
    do {                                                                                                   \
        double _a = (a), _b = (b);                                                                         \
        if (!(std::fabs(_a - _b) <= (tol))) {                                                              \
            std::printf("  %s:%d: %s = %g, %s = %g (tol %g)\n", __FILE__, __LINE__, #a, _a, #b, _b, (double)(tol)); \
            ++s2e_test::failures();                                                                        \
        }                                                                                                  \
    } while (0)

#define EXPECT_THROW(expr, type)                                                                 \
    do {                                                                                         \
        bool _ok = false;                                                                        \
        try {                                                                                    \
            expr;                                                                                \
        } catch (const type&) {                                                                  \
            _ok = true;                                                                          \
        } catch (const std::exception& _e) {                                                     \
            std::printf("  %s:%d: %s threw another error: %s\n", __FILE__, __LINE__, #expr, _e.what()); \
        }                                                                                        \
        if (!_ok) {                                                                              \
            std::printf("  %s:%d: %s did not throw %s\n", __FILE__, __LINE__, #expr, #type);      \
            ++s2e_test::failures();                                                              \
        }                                                                                        \
    } while (0)

#define S2E_TEST_MAIN() \
    int main() { return s2e_test::run_all(); }
