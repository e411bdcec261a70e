// int8 quantization of activations, int32 products back to floats, and the int8 FFN's SwiGLU.
#include "s2e/ops.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "ops_internal.hpp"
#include "s2e/common.hpp"

namespace s2e {
namespace ops {

S2E_CPU_CLONES static float quantize_row_int8(const float* x, int64_t n, float scale, int8_t* q) {
    if (!(scale > 0.0f)) {  // dynamic: absmax / 127, as the torch reference (1e-12 for a zero row)
        float m = 0.0f;
#pragma omp simd reduction(max : m)
        for (int64_t i = 0; i < n; ++i) {
            const float a = x[i] < 0.0f ? -x[i] : x[i];
            m = a > m ? a : m;
        }
        scale = m / 127.0f;
        scale = scale > 0.0f ? scale : 1e-12f;
    }
    for (int64_t i = 0; i < n; ++i) {
        float v = x[i] / scale;
        v = v < -127.0f ? -127.0f : v;  // clamped before rounding: the same integers, since the
        v = v > 127.0f ? 127.0f : v;    // bounds are integers (round(-127.5) = -128 clamps to -127)
        // round half to even (the FPU's mode) by the 1.5 * 2^23 shift, exact for |v| <= 2^22
        const float r = (v + 12582912.0f) - 12582912.0f;
        q[i] = static_cast<int8_t>(static_cast<int32_t>(r));
    }
    return scale;
}

void quantize_rows_int8(const float* x, int64_t rows, int64_t K, float* scales, int8_t* q) {
#pragma omp parallel for schedule(static)
    for (int64_t m = 0; m < rows; ++m) scales[m] = quantize_row_int8(x + m * K, K, scales[m], q + m * K);
}

S2E_CPU_CLONES static void round_span_int8(float* x, int64_t n, float scale, float out_scale) {
    for (int64_t i = 0; i < n; ++i) {
        float v = x[i] / scale;
        v = v < -127.0f ? -127.0f : v;
        v = v > 127.0f ? 127.0f : v;
        x[i] = ((v + 12582912.0f) - 12582912.0f) * out_scale;  // round half to even, as quantize_row_int8
    }
}

static void round_int8_to(float* x, int64_t n, float scale, float out_scale) {
    const int64_t chunk = 1 << 14;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i += chunk) round_span_int8(x + i, std::min(chunk, n - i), scale, out_scale);
}

void fake_quant_int8(float* x, int64_t n, float scale) { round_int8_to(x, n, scale, scale); }

static inline int8_t to_int8(float v) {
    v = v < -127.0f ? -127.0f : v;
    v = v > 127.0f ? 127.0f : v;
    return static_cast<int8_t>((v + 12582912.0f) - 12582912.0f);  // round half to even, as round_int8
}

S2E_CPU_CLONES static void quantize_span_int8(const float* x, int64_t n, float scale, int8_t* q) {
    for (int64_t i = 0; i < n; ++i) q[i] = to_int8(x[i] / scale);
}

S2E_CPU_CLONES static void quantize_span_int8(const uint16_t* x, int64_t n, float scale, int8_t* q) {
    for (int64_t i = 0; i < n; ++i) q[i] = to_int8(bf16_to_float(x[i]) / scale);
}

template <class E>
static void quantize_int8_as(const E* x, int64_t n, float scale, int8_t* q) {
    const int64_t chunk = 1 << 14;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i += chunk) quantize_span_int8(x + i, std::min(chunk, n - i), scale, q + i);
}

void quantize_int8(const float* x, int64_t n, float scale, int8_t* q) { quantize_int8_as(x, n, scale, q); }

void quantize_int8(const uint16_t* x, int64_t n, float scale, int8_t* q) { quantize_int8_as(x, n, scale, q); }

void fake_quant_int8(uint16_t* x, int64_t n, float scale) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; ++i) x[i] = float_to_bf16(static_cast<float>(to_int8(bf16_to_float(x[i]) / scale)) * scale);
}

void round_int8(float* x, int64_t n, float scale) { round_int8_to(x, n, scale, 1.0f); }

S2E_CPU_CLONES static void dequantize_row_int32(float* y, int64_t N, float rs, const float* cs, const float* b) {
    for (int64_t n = 0; n < N; ++n) {
        int32_t a;
        std::memcpy(&a, y + n, sizeof a);
        const float v = static_cast<float>(a) * (rs * cs[n]);
        y[n] = b ? v + b[n] : v;
    }
}

void dequantize_rows_int32(float* y, int64_t rows, int64_t N, const float* row_scale, const float* col_scale,
                           const float* b) {
#pragma omp parallel for schedule(static)
    for (int64_t m = 0; m < rows; ++m) dequantize_row_int32(y + m * N, N, row_scale[m], col_scale, b);
}

void swiglu_int8(const int32_t* acc, int64_t rows, int64_t hid, const float* row_scale, const float* col_scale,
                 const float* b, float* out_scale, int8_t* q) {
#pragma omp parallel
    {
        thread_local std::vector<float> row;  // one row's gate | up | SwiGLU, in cache between the steps
        row.resize(static_cast<size_t>(3 * hid));
        float *gu = row.data(), *a = gu + 2 * hid;
#pragma omp for schedule(static)
        for (int64_t m = 0; m < rows; ++m) {
            std::memcpy(gu, acc + m * 2 * hid, sizeof(float) * 2 * hid);
            dequantize_row_int32(gu, 2 * hid, row_scale[m], col_scale, b);
            swiglu_row(gu, a, hid);
            out_scale[m] = quantize_row_int8(a, hid, out_scale[m], q + m * hid);
        }
    }
}

}  // namespace ops
}  // namespace s2e
