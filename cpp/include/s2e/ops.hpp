// Float32 kernels of the engine: GEMM (OpenBLAS), norms, activations, convolutions, RoPE, attention.
// Tensors are plain row-major float arrays; images are (C, H, W) per batch element.
#pragma once

#include <cstdint>
#include <vector>

namespace s2e {
namespace ops {

// Where a GEMM runs: OpenBLAS float32 (the portable default), oneDNN float32 (strict fp32 math), or
// oneDNN with bf16 inputs and float32 accumulation (see onednn.hpp).
enum class Gemm { blas, onednn_f32, onednn_bf16 };

// C = alpha * op(A) op(B) + beta * C, row-major, on the library `how` names.
void gemm(Gemm how, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
           const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
// y (M,N) = x (M,K) @ W(N,K)^T + b; y has leading dimension ldy (>= N).
void linear(const float* x, int64_t M, int64_t K, const float* W, const float* b, int64_t N, float* y, int64_t ldy);

void rms_norm(const float* x, float* y, int64_t rows, int64_t dim, int64_t stride, const float* w, float eps);
void silu_inplace(float* x, int64_t n);
// a[r, j] = silu(u[r, j]) * u[r, hid + j] for (rows, 2 * hid) gate/up rows u: the FFN's SwiGLU.
void swiglu(const float* u, float* a, int64_t rows, int64_t hid);
void softmax_rows(float* s, int64_t rows, int64_t cols, int64_t ld);
// softmax(scale * s) row by row on the calling thread (for one task of a parallel loop); the
// probabilities replace s.
void softmax_rows_scaled(float* s, int64_t rows, int64_t cols, int64_t ld, float scale);
// The softmax of bfloat16 probabilities in two reads of the scores, on the calling thread: row r of
// p (rows, cols) gets exp(scale * s - scale * max_r s) as bfloat16 bits, unnormalised, and inv_sum[r]
// 1 / its sum, to scale what P.v makes of that row. Scores in float, or the exact int32 ones of an
// int8 q k^T (the int8 attention inputs' scales folded into `scale`).
// `vectorized`: the AVX-512 BF16 kernel where the CPU has it (false: the portable loop, for tests).
void exp_rows_bf16(const float* s, int64_t rows, int64_t cols, float scale, uint16_t* p, float* inv_sum,
                   bool vectorized = true);
void exp_rows_bf16(const int32_t* s, int64_t rows, int64_t cols, float scale, uint16_t* p, float* inv_sum,
                   bool vectorized = true);
// Whether exp_rows_bf16 has its AVX-512 BF16 kernel on this CPU.
bool exp_rows_bf16_vectorized();
// Per-channel normalisation over H*W (biased variance), no affine: InstanceNorm2d(affine=False);
// `silu`: SiLU applied in the same pass.
void instance_norm(float* x, int64_t C, int64_t HW, float eps, bool silu = false);
// instance_norm of y (HW, C) channels last (float32), the result written to `out` (HW, C) as bf16 bits or
// floats: the channels-last heads' normalisation, whose output is the next layer's input.
void instance_norm_nhwc(const float* y, int64_t HW, int64_t C, float eps, bool silu, uint16_t* out);
void instance_norm_nhwc(const float* y, int64_t HW, int64_t C, float eps, bool silu, float* out);
// Per-pixel RMSNorm over channels with weight (C,); `silu` as instance_norm's.
void rms_norm2d(float* x, int64_t C, int64_t HW, const float* w, float eps, bool silu = false);
// rms_norm2d of y (HW, C) channels last, written to `out` (HW, C) as bf16 bits or floats (as instance_norm_nhwc).
void rms_norm_nhwc(const float* y, int64_t HW, int64_t C, const float* w, float eps, bool silu, uint16_t* out);
void rms_norm_nhwc(const float* y, int64_t HW, int64_t C, const float* w, float eps, bool silu, float* out);
// PixelShuffle(2) of y (H, W, 4c) channels last, then per channel InstanceNorm (rms_w null) or per pixel
// RMSNorm with weight rms_w (c,), `silu` after; written to `out` (2H, 2W, c) as bf16 bits or floats. One
// pass over y: no shuffled float32 copy.
void pixel_shuffle2_norm_nhwc(const float* y, int64_t c, int64_t H, int64_t W, const float* rms_w, float eps, bool silu,
                              uint16_t* out);
void pixel_shuffle2_norm_nhwc(const float* y, int64_t c, int64_t H, int64_t W, const float* rms_w, float eps, bool silu,
                              float* out);

// 2-D convolution (C_in,H,W) -> (C_out,Ho,Wo); weight (C_out, C_in, k, k); im2col tiled over output rows.
// `how`: where its GEMMs run (see gemm).
void conv2d(const float* x, int64_t cin, int64_t H, int64_t W, const float* w, const float* b, int64_t cout, int64_t k,
            int64_t stride, int64_t pad, float* y, std::vector<float>& scratch, Gemm how = Gemm::blas);
inline int64_t conv_out(int64_t n, int64_t k, int64_t stride, int64_t pad) { return (n + 2 * pad - k) / stride + 1; }
// ConvTranspose2d(kernel 4, stride 2, padding 1, no bias): (C_in,H,W) -> (C_out,2H,2W); weight (C_in, C_out, 4, 4).
void conv_transpose4x4s2(const float* x, int64_t cin, int64_t H, int64_t W, const float* w, int64_t cout, float* y,
                         std::vector<float>& scratch, Gemm how = Gemm::blas);
// PixelShuffle(2): (4C,H,W) -> (C,2H,2W).
void pixel_shuffle2(const float* x, int64_t c, int64_t H, int64_t W, float* y);

// 2-D axial RoPE tables (spec 1.4) for an (hp, wp) grid: sin/cos of shape (hp*wp, 4*quarter).
// bf16: every step rounded to bfloat16 as the reference computes them; otherwise float32.
void rope_tables(const float* periods, int64_t quarter, int64_t hp, int64_t wp, bool bf16, float* sin_t, float* cos_t);
// Rotate one head vector v (length d) in place with a table row; bf16 reproduces the reference's rounding.
void rope_rotate(float* v, int64_t d, const float* sin_r, const float* cos_r, bool bf16);

// softmax(q k^T * scale) v for one head: q (T,d) with leading dim ldq, k/v (T,d) with ldkv, o (T,d) with ldo.
void attention_head(const float* q, int64_t ldq, const float* k, const float* v, int64_t ldkv, float* o, int64_t ldo,
                    int64_t T, int64_t d, float scale, std::vector<float>& scratch);
// Same for short sequences, without BLAS and without threads (called inside parallel loops).
void attention_head_small(const float* q, int64_t ldq, const float* k, const float* v, int64_t ldkv, float* o,
                          int64_t ldo, int64_t T, int64_t d, float scale, float* s_buf);

// Symmetric int8 quantization of rows, as the quantized torch model computes it: each row m of x
// (rows of K floats) divided by its scale, rounded half to even and clamped to [-127, 127].
// scales[m] <= 0 asks for the row's dynamic scale absmax(row) / 127 (1e-12 for an all-zero row),
// which is written back into scales[m].
void quantize_rows_int8(const float* x, int64_t rows, int64_t K, float* scales, int8_t* q);
// x = clamp(round(x / scale), -127, 127) * scale in place (one scale for all n values): int8 values
// of the attention inputs, as the quantized torch model rounds them.
void fake_quant_int8(float* x, int64_t n, float scale);
// The same on bfloat16 bits (the result rounded back to bf16).
void fake_quant_int8(uint16_t* x, int64_t n, float scale);
// q = clamp(round(x / scale), -127, 127) as int8 (x float32 or bfloat16 bits).
void quantize_int8(const float* x, int64_t n, float scale, int8_t* q);
void quantize_int8(const uint16_t* x, int64_t n, float scale, int8_t* q);
// x = clamp(round(x / scale), -127, 127) in place: the int8 values themselves, as floats (exact in
// bfloat16 too), for GEMMs that apply the scales to their results.
void round_int8(float* x, int64_t n, float scale);
// y[m, n] = float(acc[m, n]) * (row_scale[m] * col_scale[n]) (+ b[n]); acc is read from y's own
// memory (the int32 GEMM result written there), converted in place.
void dequantize_rows_int32(float* y, int64_t rows, int64_t N, const float* row_scale, const float* col_scale,
                           const float* b);
// The int8 FFN's middle in one pass: rows of fc1's int32 products (gate | up, 2 * hid each) dequantized
// as dequantize_rows_int32, SwiGLU'd as swiglu, quantized to int8 `q` (rows, hid) as quantize_rows_int8
// with out_scale (in: static scale or 0 = dynamic; out: the scale used).
void swiglu_int8(const int32_t* acc, int64_t rows, int64_t hid, const float* row_scale, const float* col_scale,
                 const float* b, float* out_scale, int8_t* q);

int num_threads();

}  // namespace ops
}  // namespace s2e
