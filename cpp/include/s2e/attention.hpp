// Global attention on oneDNN matmuls, in float32 or with bfloat16 operands (the engine's long
// sequences; short ones use ops::attention_head_small).
#pragma once

#include <cstdint>
#include <vector>

namespace s2e {
namespace attention {

// Scores one task holds at a time (floats): query rows per task are this over the sequence length.
constexpr int64_t kScoreFloats = 384 * 1024;
int64_t block_rows(int64_t T);

// o (B*T, heads*d) = softmax(scale * q k^T) v per head, for q (B*T, heads*d) and k, v (B*T, kv*d)
// (grouped-query: head h reads kv head h / (heads / kv)). qb, kb, vb: scratch for head-major copies of
// q, k, v in the operand type (float; or uint16_t: bf16 bits, with the probabilities as bf16
// unnormalised exponentials, P v's rows divided by their sums after the product).
// out_scale multiplies the output (v's scale when v holds int8 values: o = softmax(...) (v / s) * s).
void dense(const float* q, const float* k, const float* v, float* o, int64_t B, int64_t T, int64_t heads, int64_t kv,
           int64_t d, float scale, std::vector<uint16_t>& qb, std::vector<uint16_t>& kb, std::vector<uint16_t>& vb,
           float out_scale = 1.0f);
void dense(const float* q, const float* k, const float* v, float* o, int64_t B, int64_t T, int64_t heads, int64_t kv,
           int64_t d, float scale, std::vector<float>& qb, std::vector<float>& kb, std::vector<float>& vb,
           float out_scale = 1.0f);

// The same with int8 attention inputs: q, k, v hold int8 values (as floats: ops::round_int8), `scale`
// is the softmax's scale times s_q s_k and `out_scale` is s_v. q k^T runs as an exact int8 GEMM (int32
// accumulation), P v in bf16 (v's int8 values are exact in bf16). Needs oneDNN with native bf16.
void dense_int8(const float* q, const float* k, const float* v, float* o, int64_t B, int64_t T, int64_t heads,
                int64_t kv, int64_t d, float scale, float out_scale, std::vector<int8_t>& qb, std::vector<int8_t>& kb,
                std::vector<uint16_t>& vb);

}  // namespace attention
}  // namespace s2e
