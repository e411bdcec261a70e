// oneDNN GEMMs for the native engine, loaded at run time.
//
// Why at run time: oneDNN has the VNNI/AVX-512-BF16/AMX kernels (chosen by the CPU it runs on) that
// OpenBLAS lacks, but it is 55 MB; the engine links OpenBLAS (the portable fallback everywhere) and
// opens libdnnl.so.3 (oneDNN 3.x built with GNU OpenMP: the `onednn-cpu-gomp` wheel, or a system
// build) only when a bfloat16 run asks for it. The engine then shares one OpenMP pool with oneDNN.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace s2e {
namespace onednn {

// Opens oneDNN (once per process; later calls return the first result): `path` when given, else
// $S2E_ONEDNN_LIBRARY, else libdnnl.so.3 on the loader's search path. Returns "" when usable, or
// why not (not found, too old, built without the headers).
std::string load(const std::string& path = "");
bool available();
// "3.2.0 (AVX-512 with AMX)": the library version and the widest instruction set it dispatches to.
std::string describe();
// True when bfloat16 GEMMs run on native bf16 instructions here (AVX-512-BF16 or AMX), i.e. faster
// than float32; on other CPUs oneDNN emulates them or refuses.
bool native_bf16();
// Whether oneDNN's kernels here are AVX-512 ones (any AVX-512 level, AMX included).
bool avx512();
// Whether this CPU multiplies int8 with VNNI or AMX (exact int32 sums; without them oneDNN's x86 int8
// kernels pair u8 x s8 products in int16, which saturates, or halve the weights).
bool exact_int8();

// The calling thread's kept buffers (oneDNN's scratchpad, a convolution's weights in its layout, the float
// operands of int8 products without VNNI; each as large as the largest asked for since), in bytes; and
// giving them back (the next call that needs one allocates it afresh). Nothing is kept without oneDNN.
size_t thread_buffer_bytes();
void release_thread_buffers();

// x[rows, cols] (row stride ld) rounded to bfloat16 bits (ties to even), packed in `out`.
void to_bf16(const float* x, int64_t rows, int64_t cols, int64_t ld, uint16_t* out);

// y[M, N] (row stride ldy) = (x[M, K] in bf16) . W[N, K]^T (bf16, row-major: a torch Linear weight)
// accumulated in float32, then y[:, n] * scale[n] (when `scale`) + b[n] (when `b`). `xb` is scratch
// for x rounded to bf16. Throws UnsupportedError when oneDNN is not loaded or cannot run bf16 here.
void linear_bf16(const float* x, int64_t M, int64_t K, const uint16_t* W, const float* scale, const float* b,
                 int64_t N, float* y, int64_t ldy, std::vector<uint16_t>& xb);

// C = alpha * op(A) op(B) + beta * C on float32 operands (row-major, as ops::sgemm), computed with A and
// B rounded to bf16 and float32 accumulation.
void gemm_bf16(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
               const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
// The same with A already rounded: `a` holds bf16 bits, dense as stored ((M, K), or (K, M) when trans_a),
// e.g. a convolution's weights rounded once for all its tiles of output rows.
void gemm_bf16_rounded_a(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const uint16_t* a,
                         const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// c[M, N] (row stride ldc, unit column stride) = alpha * a[M, K] . b[K, N], bf16 operands with
// float32 results: element (m, k) of a at a[m * a_row + k * a_col] and (k, n) of b at
// b[k * b_row + n * b_col], so transposed operands (k^T in attention) are read in place.
void matmul_bf16(int64_t M, int64_t K, int64_t N, const uint16_t* a, int64_t a_row, int64_t a_col, const uint16_t* b,
                 int64_t b_row, int64_t b_col, float* c, int64_t ldc, float alpha);

// Float32 counterparts of linear_bf16 (with b added, no scale) and matmul_bf16: oneDNN's float32
// kernels in strict fp32 math (never rounded to bf16, whatever ONEDNN_DEFAULT_FPMATH_MODE says).
void linear_f32(const float* x, int64_t M, int64_t K, const float* W, const float* b, int64_t N, float* y, int64_t ldy);
void matmul_f32(int64_t M, int64_t K, int64_t N, const float* a, int64_t a_row, int64_t a_col, const float* b,
                int64_t b_row, int64_t b_col, float* c, int64_t ldc, float alpha);
// gemm_bf16's float32 counterpart: operands read in place (transposes through strides).
void gemm_f32(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
              const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// Memory a caller lends a convolution for its weights in the kernel's layout (used where they fit, else
// the calling thread's own buffer): the engine's head lends the unused capacity of its output map.
struct Space {
    void* data = nullptr;
    size_t bytes = 0;

    // A 64-byte aligned start for `n` bytes within the space, or null where they do not fit.
    void* room(size_t n) const {
        const uintptr_t start = reinterpret_cast<uintptr_t>(data), aligned = (start + 63) / 64 * 64;
        return data && aligned - start + n <= bytes ? reinterpret_cast<void*>(aligned) : nullptr;
    }
};

// ConvTranspose2d(kernel 4, stride 2, padding 1, no bias) on oneDNN's transposed-convolution kernels,
// channels last: x (H, W, cin) -> y (2H, 2W, cout) float32, with w (cin, cout, 4, 4) (a torch weight,
// float32). bf16 x: w rounded to bf16, float32 accumulation; float32 x: strict fp32 math. No column
// buffer and no col2im pass: the kernel writes each output once.
void deconv4x4s2(const uint16_t* x, int64_t cin, int64_t H, int64_t W, const float* w, int64_t cout, float* y,
                 Space packed = {});
void deconv4x4s2(const float* x, int64_t cin, int64_t H, int64_t W, const float* w, int64_t cout, float* y,
                 Space packed = {});
// The same on int8 operands: x (H, W, cin) int8 with one scale, w (cin, cout, 4, 4) int8 (a torch weight)
// with one scale per output channel; y = x_scale * w_scale[o] * (exact int32 sum), float32. Use where
// exact_int8().
void deconv4x4s2_s8(const int8_t* x, float x_scale, int64_t cin, int64_t H, int64_t W, const int8_t* w,
                    const float* w_scale, int64_t cout, float* y, Space packed = {});
// Conv2d(kernel 3, stride 1, padding 1) on oneDNN's convolution kernels, channels last: x (H, W, cin) ->
// y (H, W, cout) float32, with w (cout, cin, 3, 3) (a torch weight, float32) and the bias b (cout,) added
// (b may be null). Precisions as deconv4x4s2's; no column buffer.
void conv3x3(const uint16_t* x, int64_t cin, int64_t H, int64_t W, const float* w, const float* b, int64_t cout,
             float* y, Space packed = {});
void conv3x3(const float* x, int64_t cin, int64_t H, int64_t W, const float* w, const float* b, int64_t cout, float* y,
             Space packed = {});
// The same on int8 operands as deconv4x4s2_s8 (w (cout, cin, 3, 3) int8): y = x_scale * w_scale[o] * (exact
// int32 sum) + b[o]. Use where exact_int8().
void conv3x3_s8(const int8_t* x, float x_scale, int64_t cin, int64_t H, int64_t W, const int8_t* w,
                const float* w_scale, const float* b, int64_t cout, float* y, Space packed = {});
// c[M, N] (int32, dense) = a[M, K] . W[N, K]^T on int8 operands (a torch Linear weight layout), exact
// int32 sums: oneDNN's int8 kernels where exact_int8() (VNNI / AMX), float32 GEMMs over K slices whose
// partial sums float32 holds exactly elsewhere.
void matmul_s8(int64_t M, int64_t K, int64_t N, const int8_t* a, const int8_t* w, int32_t* c);

// A Linear's int8 weights packed once, into the layout (with the compensation its int8 input needs) that
// oneDNN's int8 matmul kernels read on this CPU. matmul_s8 hands oneDNN the weights as stored, and oneDNN
// packs them again in every call: measured 1.1-1.4x per GEMM at the backbone's shapes on an AVX-512 VNNI CPU,
// for memory the size of the weights, kept (the engine otherwise reads them from the file per call).
class PackedInt8 {
public:
    // w: (N, K) int8 (a torch Linear weight), packed for products of m rows. Throws UnsupportedError where
    // oneDNN is not loaded or has no exact int8 kernel here (exact_int8()).
    PackedInt8(int64_t m, int64_t K, int64_t N, const int8_t* w);
    ~PackedInt8();
    PackedInt8(const PackedInt8&) = delete;
    PackedInt8& operator=(const PackedInt8&) = delete;
    size_t bytes() const;
    // c[M, N] (int32, dense) = a[M, K] . W^T, as matmul_s8. False, c untouched, where oneDNN's kernel for M rows
    // reads another layout (the caller multiplies the stored weights instead).
    bool matmul(int64_t M, const int8_t* a, int32_t* c) const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace onednn
}  // namespace s2e
