// The Sapiens2 inference engine: loads weights (fp32, fp16/bf16-stored, int8-weight) from a
// safetensors file in the official (or quantized-checkpoint) layout and runs backbone + head.
// An Engine is immutable after construction; run() keeps all its buffers local, so one engine may
// be used from several threads at once. Weights are read from the kept file on each run (see
// safetensors.hpp), but for the W8A8 linears' int8 weights, packed once at construction by default (see
// int8_weights_mode); a weights file changed since the engine opened it makes run() throw
// FileChangedError.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "s2e/common.hpp"
#include "s2e/config.hpp"
#include "s2e/ops.hpp"
#include "s2e/safetensors.hpp"

namespace s2e {

namespace onednn {
class PackedInt8;
}

using Floats = std::vector<float, UninitializedAllocator<float>>;
using Halves = std::vector<uint16_t, UninitializedAllocator<uint16_t>>;  // bf16 bits

struct Output {
    std::vector<int64_t> shape;
    std::vector<float> data;
};

// A stored tensor plus, for quantized linear weights, its per-channel / per-tensor scale.
struct Param {
    const TensorView* t = nullptr;
    const TensorView* scale = nullptr;
    int scale_axis = 0;  // the dimension `scale` runs along (1: a transposed convolution's output channels)
    explicit operator bool() const { return t != nullptr; }
};

struct Linear {
    Param w, b;
    int64_t out = 0, in = 0;
    // int8 activations (W8A8): the input is quantized to int8 per token (dynamic) or with the
    // calibrated input_scale (static) except the first `prefix_tokens` tokens of each sequence,
    // which keep a per-token scale; int8 x int8 GEMM, then acc * (s_token * s_weight) + bias.
    bool act_int8 = false;
    Param input_scale;  // static only
    int64_t prefix_tokens = 0;
    // its int8 weights in oneDNN's layout, kept (see Engine::int8_weights_mode), or null: read per call
    std::shared_ptr<const onednn::PackedInt8> packed;
};

struct BlockWeights {
    Param ln1, ln2, q_norm, k_norm, gamma;
    Param q_scale, k_scale, v_scale;  // int8 attention inputs (attn.input_quant.*), or empty
    Linear wq, wk, wv, proj, w12, w3;
    int64_t kv_heads = 0;
    bool main = true;
};

struct ConvWeights {
    Param w, b, norm;  // norm: RMSNorm2d weight (albedo) or empty (InstanceNorm)
    Param input_scale;  // int8 head layers (head="int8"): their input's scale
    int64_t cin = 0, cout = 0, k = 1;
};

class Engine {
public:
    // `path`: an artifact directory (manifest.json + weights) or a .safetensors file. For a file,
    // `config_json` gives the manifest-like configuration; when empty, the quantized checkpoint
    // metadata (sapiens2_edge.arch / sapiens2_edge.head) is used.
    // `precision`: "fp32" (GEMMs in float32 on OpenBLAS, the reference numerics) or "bf16" (linear and
    // attention GEMMs on oneDNN with bfloat16 inputs and float32 accumulation; norms, softmax, RoPE
    // and the head stay float32). bf16 needs oneDNN (see onednn.hpp): UnsupportedError without it.
    explicit Engine(const std::string& path, const std::string& config_json = "", const std::string& precision = "fp32");

    ~Engine();

    // x: (B, 3, H, W) normalised float32, row-major. Safe to call from several threads at once. The
    // FFN's and the head's buffers of the last finished run are kept for the next one, so later runs
    // do not fault fresh pages in (at 0.1b 512x384 that was ~20 % of a run). The token-only buffers are
    // given back before the head, which reuses the FFN's two largest, so the peak is not raised by it.
    // The head's layers read their weights into the spare capacity of its two map buffers where it is
    // large enough, else into buffers given back once the layers after read at most half as much.
    std::vector<Output> run(const float* x, int64_t B, int64_t H, int64_t W) const;
    // Bytes kept for the next run: the last finished run's buffers and the calling thread's oneDNN buffers.
    size_t kept_bytes() const;

    const EngineConfig& config() const { return cfg_; }
    const std::string& weights_path() const { return st_->path(); }
    // "float32", "float16", "int8-weight", "mixed": how the backbone linears are stored.
    const std::string& weight_format() const { return weight_format_; }
    const std::string& precision() const { return precision_; }
    // The library the float32 GEMMs run on: "oneDNN" when it is loaded (its kernels for the CPU at hand),
    // else "OpenBLAS"; $S2E_NATIVE_FP32_GEMM=openblas keeps them on OpenBLAS.
    std::string fp32_gemm() const { return dnnl_f32_ ? "oneDNN" : "OpenBLAS"; }
    // How the float32 dense heads' 3x3 convolutions run: "auto" (Winograd where it measured faster than
    // oneDNN's direct convolution on this kind of CPU, by the layer's channels and map: winograd::choose_tile;
    // direct for the narrow full-resolution layers, and on AVX-512 CPUs for small maps too), "winograd" (every
    // one) or "direct" (none); from $S2E_NATIVE_CONV3X3, "auto" when unset. bf16 and int8 convolutions are
    // always direct (bf16's direct kernels measured faster than float32 Winograd on all but one layer of an
    // AVX-512 BF16 CPU).
    const std::string& conv3x3_algorithm() const { return conv3x3_; }
    // How the float32 pose / seg heads' transposed convolutions run, the same way (each of the four output
    // phases by Winograd where winograd::choose_tile says so), from $S2E_NATIVE_DECONV.
    const std::string& deconv_algorithm() const { return deconv_algorithm_; }
    // Where the W8A8 linears' int8 weights live: "packed" (once, at construction, in the layout oneDNN's int8
    // kernels read, kept in memory: packed_bytes() of it) or "file" (read from the weights file and packed by
    // oneDNN in every call: no memory kept); from $S2E_NATIVE_INT8_WEIGHTS, "packed" when unset. "file" where
    // the artifact has no W8A8 layers, this CPU has no exact int8 kernels, or packing failed (oneDNN refused
    // the layout, or the memory was not there): the engine then runs as with "file".
    const std::string& int8_weights_mode() const { return int8_weights_mode_; }
    size_t packed_bytes() const { return packed_bytes_; }

private:
    struct Workspace;
    void load();
    Param need(const std::string& name, const std::vector<int64_t>& shape, bool quantizable = false, int scale_axis = 0);
    Linear linear(const std::string& prefix, int64_t out, int64_t in, bool bias = true);
    ConvWeights conv(const std::string& prefix, const std::string& norm, int64_t cin, int64_t cout, int64_t k, bool bias = true,
                     bool int8_ok = false);
    void int8_input_scale(ConvWeights& c, const std::string& prefix, const char* what);
    // The tensor of `p` as floats in `out` (read from the file, dequantized with its scale).
    const float* floats(const Param& p, std::vector<float>& out, Workspace& ws) const;
    const float* floats(const Param& p, Floats& out, Workspace& ws) const;  // large weights (not zero-filled first)
    // The same into `out` (room for its numel() floats).
    const float* floats_to(const Param& p, float* out, Workspace& ws) const;
    // The tensor of `p` as bfloat16 bits in `out`: float weights rounded, int8 / float8 values exact
    // with their per-row scale in `scale` (empty when there is none), to apply after the GEMM.
    const uint16_t* bf16_weights(const Param& p, std::vector<uint16_t>& out, std::vector<float>& scale,
                                 Workspace& ws) const;
    ops::Gemm conv_gemm() const {
        return bf16_ ? ops::Gemm::onednn_bf16 : dnnl_f32_ ? ops::Gemm::onednn_f32 : ops::Gemm::blas;
    }
    // `T`: tokens per sequence (rows of x come B sequences of T tokens), for int8 layers' prefix tokens.
    void apply_linear(const Linear& l, const float* x, int64_t M, float* y, Workspace& ws, int64_t T = 0) const;
    void apply_w8a8(const Linear& l, const float* x, int64_t M, int64_t T, float* y, Workspace& ws) const;
    // A stored int8 tensor read into `out`; returns out.data().
    const int8_t* stored_int8(const Param& w, std::vector<int8_t>& out) const;
    // Stored int8 weights into ws.w8; returns their `out` per-output-channel scales (ws.wscale; a per-tensor
    // scale repeated).
    const float* int8_weights(const Param& w, int64_t out, Workspace& ws) const;
    // Those scales alone (ws.wscale).
    const float* int8_scales(const Param& w, int64_t out, Workspace& ws) const;
    // A W8A8 layer's per-output scales; `b` its bias (or null).
    const float* w8a8_weights(const Linear& l, Workspace& ws, const float*& b) const;
    // Its input's per-row scales in ws.xs: the static scale, 0 for rows quantized dynamically.
    float* w8a8_row_scales(const Linear& l, int64_t M, int64_t T, Workspace& ws) const;
    // A W8A8 layer's int32 products acc (M, out) of x quantized with its row scales; `cs`, `b` and the
    // returned row scales (ws.xs) dequantize them.
    float* w8a8_product(const Linear& l, const float* x, int64_t M, int64_t T, int32_t* acc, Workspace& ws,
                        const float*& cs, const float*& b) const;
    // The FFN of a block whose two layers are both W8A8: fc1's int32 products go through dequantization,
    // SwiGLU and fc2's input quantization in one pass (ops::swiglu_int8); y = fc2's output.
    void ffn_w8a8(const BlockWeights& b, const float* h, int64_t M, int64_t T, float* y, Workspace& ws) const;
    // y (M, N; row stride ldy) = x W^T + b in float32, on oneDNN when it is loaded (its threads are the
    // engine's OpenMP ones), else OpenBLAS.
    void linear_f32(const float* x, int64_t M, int64_t K, const float* W, const float* b, int64_t N, float* y,
                    int64_t ldy) const;
    void block(const BlockWeights& b, float* x, int64_t B, int64_t T, const float* sin_t, const float* cos_t,
               Workspace& ws) const;
    void backbone(const float* x, int64_t B, int64_t H, int64_t W, std::vector<float>& feat, int64_t& hp,
                  int64_t& wp, Workspace& ws) const;
    // act = conv(act); `spare` holds the output while it is computed, then the two swap.
    void conv_unit(const ConvWeights& c, Floats& act, Floats& spare, int64_t& C, int64_t& H, int64_t& W,
                   int64_t stride, bool norm_silu, Workspace& ws) const;
    // The head on oneDNN, in bf16 (E = uint16_t: bf16 bits) or float32 (E = float): channels last from its
    // input to its last normalisation (oneDNN's transposed-convolution kernels and 1x1 GEMMs for pose / seg,
    // its 3x3 convolution kernels for the dense heads, int8 ones for int8 layers where exact; each
    // normalisation writing the next layer's input), the final 1x1 convolution written channels first into
    // the buffer returned (ws.a or ws.u). C, H, W: in, then out.
    template <class E>
    const Floats& channels_last_head(const float* feat, int64_t& C, int64_t& H, int64_t& W, Workspace& ws) const;
    void head(const float* feat, int64_t hp, int64_t wp, std::vector<Output>& outs, int64_t b, int64_t B,
              Workspace& ws) const;

    EngineConfig cfg_;
    std::shared_ptr<SafeTensors> st_;
    std::string bb_, hd_;  // name prefixes: "backbone." / "decode_head." for task files
    std::vector<std::string> used_;
    std::string weight_format_;
    std::string precision_ = "fp32";
    bool bf16_ = false;
    bool dnnl_f32_ = false;
    std::string conv3x3_ = "auto", deconv_algorithm_ = "auto", int8_weights_mode_ = "file";
    size_t packed_bytes_ = 0;
    // The W8A8 linears' weights packed for oneDNN (int8_weights_mode "packed").
    void pack_int8_weights(const std::string& mode);
    // c (M, l.out) int32 = x8 . W^T of a W8A8 layer: its packed weights where it has them (and oneDNN a kernel
    // for M rows that reads them), else the stored ones read into ws.w8.
    void w8a8_matmul(const Linear& l, int64_t M, const int8_t* x8, int32_t* c, Workspace& ws) const;
    // The Winograd tile (2 or 4) a float32 3x3 convolution (a transposed convolution: `deconv`) from cin to
    // cout channels on an H x W map runs with, or 0 where it runs direct (see conv3x3_algorithm,
    // deconv_algorithm).
    int winograd_tile(int64_t cin, int64_t cout, int64_t H, int64_t W, bool deconv = false) const;
    // Layers with int8 activations, from the file's sapiens2_edge.native_activations metadata:
    // name -> (static, prefix tokens).
    std::map<std::string, std::pair<bool, int64_t>> act_layers_;
    // The buffers of the last finished run, taken by the next (a concurrent run makes its own).
    mutable std::mutex spare_mutex_;
    mutable std::unique_ptr<Workspace> spare_;
    // backbone
    Param cls_, storage_, patch_w_, patch_b_, periods_, final_norm_, local_pos_, w_cls_;
    std::vector<BlockWeights> blocks_, tok_blocks_;
    // heads
    std::vector<ConvWeights> deconv_, convs_, upsample_, scale_convs_;
    ConvWeights input_conv_, final_;
    std::vector<Linear> scale_fc_;
};

}  // namespace s2e
