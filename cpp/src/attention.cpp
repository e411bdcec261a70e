#include "s2e/attention.hpp"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <exception>
#include <type_traits>

#include "s2e/common.hpp"
#include "s2e/onednn.hpp"
#include "s2e/ops.hpp"

namespace s2e {
namespace attention {

int64_t block_rows(int64_t T) { return std::max<int64_t>(16, std::min<int64_t>(T, kScoreFloats / std::max<int64_t>(1, T))); }

namespace {

// Dense (rows, cols) copies of strided rows, as the GEMM operands of one precision: bf16 bits or floats.
void pack_rows(const float* x, int64_t rows, int64_t cols, int64_t ld, uint16_t* out) {
    onednn::to_bf16(x, rows, cols, ld, out);
}
void pack_rows(const float* x, int64_t rows, int64_t cols, int64_t ld, float* out) {
#pragma omp parallel for schedule(static) if (rows * cols > 65536)
    for (int64_t r = 0; r < rows; ++r) std::memcpy(out + r * cols, x + r * ld, sizeof(float) * cols);
}
void pack_rows(const float* x, int64_t rows, int64_t cols, int64_t ld, int8_t* out) {  // int8 values held as floats
#pragma omp parallel for schedule(static) if (rows * cols > 65536)
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) out[r * cols + c] = static_cast<int8_t>(x[r * ld + c]);
}
// c (M, N) = alpha a . b; the softmax applies attention's scale, so the scores' product is unscaled.
void dense_matmul(int64_t M, int64_t K, int64_t N, const uint16_t* a, int64_t a_row, int64_t a_col, const uint16_t* b,
                  int64_t b_row, int64_t b_col, float* c, int64_t ldc, float alpha = 1.0f) {
    onednn::matmul_bf16(M, K, N, a, a_row, a_col, b, b_row, b_col, c, ldc, alpha);
}
void dense_matmul(int64_t M, int64_t K, int64_t N, const float* a, int64_t a_row, int64_t a_col, const float* b,
                  int64_t b_row, int64_t b_col, float* c, int64_t ldc, float alpha = 1.0f) {
    onednn::matmul_f32(M, K, N, a, a_row, a_col, b, b_row, b_col, c, ldc, alpha);
}

// Runs body(task, att, pb, inv) for every (head, block of query rows) task of one image in parallel,
// each thread with its own scores (rows x T floats), bf16 probabilities and their rows' 1 / sum kept
// between calls (OpenMP reuses its threads). An exception cannot leave an OpenMP region: the first one
// is kept, the other tasks are skipped, and it is thrown once the region is done.
template <class Body>
void for_each_block(int64_t tasks, int64_t rows, int64_t T, bool probs_bf16, Body body) {
    std::exception_ptr error;
    std::atomic<bool> failed{false};
    auto keep = [&] {
#pragma omp critical(s2e_attention_error)
        if (!error) error = std::current_exception();
        failed = true;
    };
#pragma omp parallel
    {
        single_threaded_nested_regions();  // the body's oneDNN GEMMs: one thread each
        thread_local std::vector<float> att;
        thread_local std::vector<uint16_t> pb;
        thread_local std::vector<float> inv;
        try {
            att.resize(static_cast<size_t>(rows * T));
            if (probs_bf16) {
                pb.resize(att.size());
                inv.resize(static_cast<size_t>(rows));
            }
        } catch (...) {
            keep();
        }
#pragma omp for schedule(dynamic)
        for (int64_t task = 0; task < tasks; ++task) {
            if (failed) continue;
            try {
                body(task, att.data(), pb.data(), inv.data());
            } catch (...) {
                keep();
            }
        }
    }
    if (error) std::rethrow_exception(error);
}

// Attention on oneDNN matmuls. q and k are packed into head-major copies (head, token, d) of type QK,
// v into one of type V, so every GEMM is a plain 2-D matmul on dense operands (oneDNN's fast brgemm
// kernels; strided or broadcast batches fall back to a reference kernel). The (head, block of query
// rows) tasks run in parallel, each on one thread with its own scores of ~kScoreFloats floats, sized
// to stay in that core's cache: scores, their scaled softmax (for bf16 written straight as the bf16
// probabilities) and P.V read what the last step wrote there. One head's whole (T, T) scores at 0.4b
// (38 MB) went through memory four times instead. body(bi, hh, r0, n, att, pb, inv) does one task.
template <class QK, class V, class Body>
void blocked(const float* q, const float* k, const float* v, int64_t B, int64_t T, int64_t heads, int64_t kv,
             int64_t d, std::vector<QK>& qb, std::vector<QK>& kb, std::vector<V>& vb, bool probs_bf16, Body body) {
    const int64_t C = heads * d, kvd = kv * d;
    qb.resize(static_cast<size_t>(heads * T * d));
    kb.resize(static_cast<size_t>(kv * T * d));
    vb.resize(static_cast<size_t>(kv * T * d));
    const int64_t rows = block_rows(T);
    const int64_t blocks = (T + rows - 1) / rows;
    for (int64_t bi = 0; bi < B; ++bi) {
        const float *qi = q + bi * T * C, *ki = k + bi * T * kvd, *vi = v + bi * T * kvd;
        for (int64_t hh = 0; hh < heads; ++hh) pack_rows(qi + hh * d, T, d, C, qb.data() + hh * T * d);
        for (int64_t g = 0; g < kv; ++g) {
            pack_rows(ki + g * d, T, d, kvd, kb.data() + g * T * d);
            pack_rows(vi + g * d, T, d, kvd, vb.data() + g * T * d);
        }
        for_each_block(heads * blocks, rows, T, probs_bf16, [&](int64_t task, float* att, uint16_t* pb, float* inv) {
            const int64_t r0 = (task % blocks) * rows;
            body(bi, task / blocks, r0, std::min(rows, T - r0), att, pb, inv);
        });
    }
}

// o (n, d; row stride ldo) = out_scale * diag(inv) . P . v for probabilities P (n, T) and v (T, d) of
// type E, inv null for normalised P. The product goes to a dense per-thread block first: oneDNN runs its
// brgemm kernels on a dense output, where the strided (token, C) one took its slower gemm:jit (bf16 P.v
// 25 % slower at 0.4b); the copy into o applies the scales.
template <class E>
void probs_times_v(int64_t n, int64_t T, int64_t d, const E* p, const E* v, const float* inv, float* o, int64_t ldo,
                   float out_scale) {
    thread_local std::vector<float> pv;
    pv.resize(static_cast<size_t>(n * d));
    dense_matmul(n, T, d, p, T, 1, v, d, 1, pv.data(), d);
    for (int64_t r = 0; r < n; ++r) {
        const float s = inv ? inv[r] * out_scale : out_scale;
        for (int64_t c = 0; c < d; ++c) o[r * ldo + c] = pv[r * d + c] * s;
    }
}

// Operands of type E (uint16_t: bf16 bits; float).
template <class E>
void dense_attention(const float* q, const float* k, const float* v, float* o, int64_t B, int64_t T, int64_t heads,
                     int64_t kv, int64_t d, float scale, std::vector<E>& qb, std::vector<E>& kb, std::vector<E>& vb,
                     float out_scale) {
    const int64_t C = heads * d, groups = heads / kv;
    constexpr bool kFloat = std::is_same<E, float>::value;
    blocked(q, k, v, B, T, heads, kv, d, qb, kb, vb, !kFloat,
            [&](int64_t bi, int64_t hh, int64_t r0, int64_t n, float* att, uint16_t* pb, float* inv) {
                const E* kh = kb.data() + (hh / groups) * T * d;
                const E* vh = vb.data() + (hh / groups) * T * d;
                float* oh = o + (bi * T + r0) * C + hh * d;  // o_h[r0:r0+n] in the (token, C) output
                // scores (n, T) = q_h[r0:r0+n] . k_h^T (oneDNN runs on this thread inside the loop)
                dense_matmul(n, d, T, qb.data() + (hh * T + r0) * d, d, 1, kh, 1, d, att, T);
                if constexpr (kFloat) {
                    ops::softmax_rows_scaled(att, n, T, T, scale);
                    probs_times_v<float>(n, T, d, att, vh, nullptr, oh, C, out_scale);
                } else {
                    ops::exp_rows_bf16(att, n, T, scale, pb, inv);
                    probs_times_v<uint16_t>(n, T, d, pb, vh, inv, oh, C, out_scale);
                }
            });
}

}  // namespace

void dense_int8(const float* q, const float* k, const float* v, float* o, int64_t B, int64_t T, int64_t heads,
                int64_t kv, int64_t d, float scale, float out_scale, std::vector<int8_t>& qb, std::vector<int8_t>& kb,
                std::vector<uint16_t>& vb) {
    const int64_t C = heads * d, groups = heads / kv;
    blocked(q, k, v, B, T, heads, kv, d, qb, kb, vb, true,
            [&](int64_t bi, int64_t hh, int64_t r0, int64_t n, float* att, uint16_t* pb, float* inv) {
                // integer scores (n, T) = q_h . k_h^T, exact in int32, written over the float scores' memory
                int32_t* acc = reinterpret_cast<int32_t*>(att);
                onednn::matmul_s8(n, d, T, qb.data() + (hh * T + r0) * d, kb.data() + (hh / groups) * T * d, acc);
                ops::exp_rows_bf16(acc, n, T, scale, pb, inv);
                float* oh = o + (bi * T + r0) * C + hh * d;
                probs_times_v<uint16_t>(n, T, d, pb, vb.data() + (hh / groups) * T * d, inv, oh, C, out_scale);
            });
}

void dense(const float* q, const float* k, const float* v, float* o, int64_t B, int64_t T, int64_t heads, int64_t kv,
           int64_t d, float scale, std::vector<uint16_t>& qb, std::vector<uint16_t>& kb, std::vector<uint16_t>& vb,
           float out_scale) {
    dense_attention(q, k, v, o, B, T, heads, kv, d, scale, qb, kb, vb, out_scale);
}

void dense(const float* q, const float* k, const float* v, float* o, int64_t B, int64_t T, int64_t heads, int64_t kv,
           int64_t d, float scale, std::vector<float>& qb, std::vector<float>& kb, std::vector<float>& vb,
           float out_scale) {
    dense_attention(q, k, v, o, B, T, heads, kv, d, scale, qb, kb, vb, out_scale);
}

}  // namespace attention
}  // namespace s2e
