// The engine's task heads: pose / seg deconvolution heads and the channels-last dense heads.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "engine_workspace.hpp"
#include "s2e/onednn.hpp"
#include "s2e/ops.hpp"
#include "s2e/winograd.hpp"

namespace s2e {

namespace {
constexpr float kInstEps = 1e-5f;    // InstanceNorm2d
// A head layer's weight buffers smaller than this are kept for the next layer whatever it reads.
constexpr int64_t kKeepWeightBytes = 1 << 20;
}  // namespace

void Engine::conv_unit(const ConvWeights& c, Floats& act, Floats& y, int64_t& C, int64_t& H, int64_t& W,
                       int64_t stride, bool norm_silu, Workspace& ws) const {
    const int64_t pad = stride > 1 ? 0 : (c.k - 1) / 2;
    const int64_t Ho = ops::conv_out(H, c.k, stride, pad), Wo = ops::conv_out(W, c.k, stride, pad);
    fit(y, static_cast<size_t>(c.cout * Ho * Wo));
    // an int8 layer: its input on the calibrated grid, its weights dequantized (the recipe's numerics)
    if (c.input_scale) ops::fake_quant_int8(act.data(), C * H * W, floats(c.input_scale, ws.pbuf, ws)[0]);
    const float* w = floats(c.w, ws.wbuf, ws);
    const float* b = c.b ? floats(c.b, ws.wbuf2, ws) : nullptr;
    ops::conv2d(act.data(), C, H, W, w, b, c.cout, c.k, stride, pad, y.data(), ws.cols, conv_gemm());
    if (norm_silu) {
        if (c.norm)
            ops::rms_norm2d(y.data(), c.cout, Ho * Wo, floats(c.norm, ws.pbuf, ws), kEps, true);
        else
            ops::instance_norm(y.data(), c.cout, Ho * Wo, kInstEps, true);
    }
    act.swap(y);
    C = c.cout;
    H = Ho;
    W = Wo;
}

int Engine::winograd_tile(int64_t cin, int64_t cout, int64_t H, int64_t W, bool deconv) const {
    const std::string& how = deconv ? deconv_algorithm_ : conv3x3_;
    if (how == "direct") return 0;
    return winograd::choose_tile(cin, cout, H, W, deconv, onednn::avx512(), how == "winograd");
}

namespace {
// y (M, N; row stride ldy) = a . b for the channels-last head's 1x1 convolutions, in the precision of E
// (bf16 bits: float32 accumulation; float: strict fp32), read through strides as onednn::matmul_*.
void head_matmul(int64_t M, int64_t K, int64_t N, const uint16_t* a, int64_t a_row, int64_t a_col, const uint16_t* b,
                 int64_t b_row, int64_t b_col, float* y, int64_t ldy) {
    onednn::matmul_bf16(M, K, N, a, a_row, a_col, b, b_row, b_col, y, ldy, 1.0f);
}
void head_matmul(int64_t M, int64_t K, int64_t N, const float* a, int64_t a_row, int64_t a_col, const float* b,
                 int64_t b_row, int64_t b_col, float* y, int64_t ldy) {
    onednn::matmul_f32(M, K, N, a, a_row, a_col, b, b_row, b_col, y, ldy, 1.0f);
}
// The capacity of `v` past its first `used` elements, lent to a layer for its weights: `v` is sized into it
// (no reallocation, no fill) and sized back by the next fit.
template <class V>
onednn::Space spare_capacity(V& v, size_t used) {
    if (v.capacity() <= used) return {};
    v.resize(v.capacity());
    return {v.data() + used, (v.capacity() - used) * sizeof(typename V::value_type)};
}
}  // namespace

template <class E>
const Floats& Engine::channels_last_head(const float* feat, int64_t& C, int64_t& H, int64_t& W, Workspace& ws) const {
    constexpr bool kBf16 = std::is_same<E, uint16_t>::value;
    // each layer's input, (H*W, C): in float32 the backbone's buffer ws.a (done with), the output then
    // written to ws.u, so that the head holds two large float buffers, not three
    auto& x = [&]() -> auto& {
        if constexpr (kBf16) return ws.hb; else return ws.a;
    }();
    Floats& result = kBf16 ? ws.a : ws.u;
    // A layer's weights take two copies (as floats and in the kernel's layout: 2 x 81 MiB for the first
    // upsampling convolution at 0.1b normal), while the maps grow with the resolution, largest in the last
    // layers, whose weights are small. Held side by side the two added up (462 MB at the peak of a 0.1b
    // normal run at 512x384; 318 MB now). So a layer's weights go into the unused capacity of the two map
    // buffers (x past the layer's input, ws.u past its output): kept from one run to the next, the maps
    // have the head's largest size, and the weights fit there. Where they do not (a first run, a head whose
    // weights outgrow its maps) they go to buffers of their own, given back once the layers left read at
    // most half as much. Given back on every run instead, the maps and weights cost 8 % of that run in
    // page faults.
    std::vector<int64_t> reads;  // the weight values of the head's layers, in the order they run
    if (cfg_.head.task == "pose" || cfg_.head.task == "seg") {
        for (const auto& dc : deconv_) reads.push_back(dc.w.t->numel());
    } else {
        reads.push_back(input_conv_.w.t->numel());
        for (const auto& up : upsample_) reads.push_back(up.w.t->numel());
    }
    for (const auto& c : convs_) reads.push_back(c.w.t->numel());
    size_t ran = 0;
    int64_t held = 0;  // the most values a layer read since the buffers were last given back
    auto layer_ran = [&]() {
        held = std::max(held, reads[ran++]);
        const int64_t later = ran < reads.size() ? *std::max_element(reads.begin() + ran, reads.end()) : 0;
        if (held * static_cast<int64_t>(sizeof(float)) >= kKeepWeightBytes && 2 * later <= held) {
            ws.release_weight_buffers();
            held = 0;
        }
    };
    // a weight (n values) in the precision of E
    auto weights = [&](const Param& p, int64_t n) -> const E* {
        const float* f = floats(p, ws.wbuf, ws);
        if constexpr (kBf16) {
            ws.wb.resize(static_cast<size_t>(n));
            onednn::to_bf16(f, 1, n, n, ws.wb.data());
            return ws.wb.data();
        } else {
            return f;
        }
    };
    int64_t HW = H * W;
    fit(x, static_cast<size_t>(C * HW));
#pragma omp parallel for schedule(static)
    for (int64_t p = 0; p < HW; ++p)
        for (int64_t c = 0; c < C; ++c) {
            if constexpr (kBf16) x[p * C + c] = float_to_bf16(feat[c * HW + p]); else x[p * C + c] = feat[c * HW + p];
        }
    // x quantized with an int8 layer's input scale `xs`: into ws.x8 when the layer runs on int8 kernels
    // (returns true), else onto its grid in place (the recipe's numerics on float kernels)
    auto int8_input = [&](const ConvWeights& c, float& xs) -> bool {
        if (!c.input_scale) return false;
        xs = floats(c.input_scale, ws.pbuf, ws)[0];
        if (!onednn::exact_int8()) {
            ops::fake_quant_int8(x.data(), C * HW, xs);
            return false;
        }
        ws.x8.resize(static_cast<size_t>(C * HW));
        ops::quantize_int8(x.data(), C * HW, xs, ws.x8.data());
        return true;
    };
    // a layer's weights as floats: in x's capacity past the layer's input where they fit, else in ws.wbuf
    auto layer_floats = [&](const Param& p) -> const float* {
        const size_t bytes = static_cast<size_t>(p.t->numel()) * sizeof(float);
        void* room = spare_capacity(x, static_cast<size_t>(C * HW)).room(bytes);
        return room ? floats_to(p, static_cast<float*>(room), ws) : floats(p, ws.wbuf, ws);
    };
    // a Winograd layer's work buffer (a chunk of transformed weights, a band's transformed maps) of n floats:
    // in ws.u's capacity past the layer's output (`out` values) where it fits (kept maps: from the second
    // run on), else in a buffer of its own
    auto winograd_work = [&](int64_t n, size_t out) -> float* {
        if (void* room = spare_capacity(ws.u, out).room(static_cast<size_t>(n) * sizeof(float)))
            return static_cast<float*>(room);
        fit(ws.wino, static_cast<size_t>(n));
        return ws.wino.data();
    };
    // a 3x3 convolution (a dense head's) of x into ws.u (H*W, cout) float32, its bias added
    auto conv3x3 = [&](const ConvWeights& c) {
        const size_t out = static_cast<size_t>(c.cout * HW);
        fit(ws.u, out);
        const float* b = c.b ? floats(c.b, ws.wbuf2, ws) : nullptr;
        float xs = 0.0f;
        if (int8_input(c, xs)) {
            const float* w_scale = int8_weights(c.w, c.cout, ws);
            onednn::conv3x3_s8(ws.x8.data(), xs, C, H, W, ws.w8.data(), w_scale, b, c.cout, ws.u.data(),
                               spare_capacity(ws.u, out));
        } else if (const int tile = kBf16 ? 0 : winograd_tile(C, c.cout, H, W)) {
            const float* w = layer_floats(c.w);
            float* work = winograd_work(winograd::work_floats(C, c.cout, H, W, tile), out);
            if constexpr (!kBf16) winograd::conv3x3(x.data(), C, H, W, w, b, c.cout, ws.u.data(), work, tile);
        } else {
            const float* w = layer_floats(c.w);
            onednn::conv3x3(x.data(), C, H, W, w, b, c.cout, ws.u.data(), spare_capacity(ws.u, out));
        }
        layer_ran();
        C = c.cout;
    };
    // ws.u (H*W, C) normalised (InstanceNorm, or the albedo head's RMSNorm) and SiLU'd into x
    auto norm_silu = [&](const Param& norm) {
        fit(x, static_cast<size_t>(C * HW));
        if (norm)
            ops::rms_norm_nhwc(ws.u.data(), HW, C, floats(norm, ws.pbuf, ws), kEps, true, x.data());
        else
            ops::instance_norm_nhwc(ws.u.data(), HW, C, kInstEps, true, x.data());
    };
    if (cfg_.head.task == "pose" || cfg_.head.task == "seg") {  // transposed convolutions, 1x1 ones
        for (const auto& dc : deconv_) {
            const size_t out = static_cast<size_t>(dc.cout * 4 * HW);
            fit(ws.u, out);
            float xs = 0.0f;
            if (int8_input(dc, xs)) {  // int8 operands, exact int32 sums, scaled once
                const float* w_scale = int8_weights(dc.w, dc.cout, ws);
                onednn::deconv4x4s2_s8(ws.x8.data(), xs, C, H, W, ws.w8.data(), w_scale, dc.cout, ws.u.data(),
                                       spare_capacity(ws.u, out));
            } else if (const int tile = kBf16 ? 0 : winograd_tile(C, dc.cout, H, W, true)) {
                const float* w = layer_floats(dc.w);
                float* work = winograd_work(winograd::deconv_work_floats(C, dc.cout, H, W, tile), out);
                if constexpr (!kBf16) winograd::deconv4x4s2(x.data(), C, H, W, w, dc.cout, ws.u.data(), work, tile);
            } else {
                const float* w = layer_floats(dc.w);
                onednn::deconv4x4s2(x.data(), C, H, W, w, dc.cout, ws.u.data(), spare_capacity(ws.u, out));
            }
            layer_ran();
            C = dc.cout;
            H *= 2;
            W *= 2;
            HW = H * W;
            norm_silu(Param{});
        }
        // 1x1 convolutions (the only kernel size of these heads) as GEMMs on the channels-last rows. Each is
        // followed by an InstanceNorm, which removes a per-channel bias exactly: it is not added.
        for (const auto& c : convs_) {
            fit(ws.u, static_cast<size_t>(c.cout * HW));
            head_matmul(HW, C, c.cout, x.data(), C, 1, weights(c.w, c.cout * C), 1, C, ws.u.data(), c.cout);
            layer_ran();
            C = c.cout;
            norm_silu(Param{});
        }
    } else {  // a dense head: 3x3 convolutions, PixelShuffle upsampling
        conv3x3(input_conv_);
        norm_silu(input_conv_.norm);
        for (const auto& up : upsample_) {
            conv3x3(up);
            const int64_t out = C / 4;
            fit(x, static_cast<size_t>(4 * HW * out));
            ops::pixel_shuffle2_norm_nhwc(ws.u.data(), out, H, W, up.norm ? floats(up.norm, ws.pbuf, ws) : nullptr,
                                          up.norm ? kEps : kInstEps, true, x.data());
            C = out;
            H *= 2;
            W *= 2;
            HW = H * W;
        }
        for (const auto& c : convs_) {
            conv3x3(c);
            norm_silu(c.norm);
        }
    }
    // the final 1x1 convolution, channels first (the output's layout): (cout, H*W) = W (cout, C) . x^T
    const int64_t out = final_.cout;
    fit(result, static_cast<size_t>(out * HW));
    head_matmul(out, C, HW, weights(final_.w, out * C), C, 1, x.data(), 1, C, result.data(), HW);
    if (final_.b) {
        const float* b = floats(final_.b, ws.wbuf2, ws);
        float* y = result.data();
#pragma omp parallel for schedule(static)
        for (int64_t o = 0; o < out; ++o)
            for (int64_t p = 0; p < HW; ++p) y[o * HW + p] += b[o];
    }
    C = out;
    return result;
}

void Engine::head(const float* feat, int64_t hp, int64_t wp, std::vector<Output>& outs, int64_t b, int64_t B,
                  Workspace& ws) const {
    const HeadConfig& h = cfg_.head;
    int64_t C = h.in_channels, H = hp, W = wp;
    Floats &act = ws.a, &y = ws.u;  // the backbone's largest buffers, done with
    // the channels-last path runs the official heads' layers: 1x1 convolutions after the transposed ones
    // (pose / seg), 3x3 ones around the PixelShuffle units (normal, pointmap, albedo), a final 1x1
    const bool deconv_head = h.task == "pose" || h.task == "seg";
    bool channels_last = final_.k == 1 && (deconv_head || input_conv_.k == 3);
    for (const auto& c : convs_) channels_last = channels_last && c.k == (deconv_head ? 1 : 3);
    for (const auto& c : upsample_) channels_last = channels_last && c.k == 3;
    const Floats* result = &act;  // the head's output, (C, H, W)
    if (channels_last && bf16_) {
        result = &channels_last_head<uint16_t>(feat, C, H, W, ws);
    } else if (channels_last && dnnl_f32_) {
        result = &channels_last_head<float>(feat, C, H, W, ws);
    } else {
        fit(act, static_cast<size_t>(C * H * W));
        std::copy(feat, feat + C * H * W, act.begin());
        if (deconv_head) {
            for (const auto& dc : deconv_) {
                fit(y, static_cast<size_t>(dc.cout * 4 * H * W));
                if (dc.input_scale) ops::fake_quant_int8(act.data(), C * H * W, floats(dc.input_scale, ws.pbuf, ws)[0]);
                ops::conv_transpose4x4s2(act.data(), C, H, W, floats(dc.w, ws.wbuf, ws), dc.cout, y.data(), ws.cols,
                                         conv_gemm());
                C = dc.cout;
                H *= 2;
                W *= 2;
                ops::instance_norm(y.data(), C, H * W, kInstEps, true);
                act.swap(y);
            }
        } else {
            conv_unit(input_conv_, act, y, C, H, W, 1, true, ws);
            for (const auto& up : upsample_) {
                conv_unit(up, act, y, C, H, W, 1, false, ws);
                const int64_t out = C / 4;
                fit(y, act.size());
                ops::pixel_shuffle2(act.data(), out, H, W, y.data());
                C = out;
                H *= 2;
                W *= 2;
                if (up.norm)
                    ops::rms_norm2d(y.data(), C, H * W, floats(up.norm, ws.pbuf, ws), kEps, true);
                else
                    ops::instance_norm(y.data(), C, H * W, kInstEps, true);
                act.swap(y);
            }
        }
        for (const auto& c : convs_) conv_unit(c, act, y, C, H, W, 1, true, ws);
        conv_unit(final_, act, y, C, H, W, 1, false, ws);
    }
    auto put = [&](size_t idx, const Floats& data, std::vector<int64_t> shape) {
        Output& o = outs[idx];
        if (B == 1) {  // one image: a copy (not a zero-fill and then a copy)
            o.shape = shape;
            o.data.assign(data.begin(), data.end());
            return;
        }
        if (o.data.empty()) {
            o.shape = shape;
            int64_t n = 1;
            for (int64_t s : shape) n *= s;
            o.data.resize(static_cast<size_t>(n));
        }
        std::copy(data.begin(), data.end(), o.data.begin() + b * static_cast<int64_t>(data.size()));
    };
    put(0, *result, {B, C, H, W});
    if (h.task == "pointmap") {
        int64_t sc = h.in_channels, sh = hp, sw = wp;
        Floats s(feat, feat + sc * sh * sw), spare;  // small (strided convolutions): not the kept buffers
        for (const auto& c : scale_convs_) conv_unit(c, s, spare, sc, sh, sw, 2, true, ws);
        for (size_t i = 0; i < scale_fc_.size(); ++i) {
            const Linear& l = scale_fc_[i];
            Floats fc(static_cast<size_t>(l.out));
            apply_linear(l, s.data(), 1, fc.data(), ws);
            if (i + 1 < scale_fc_.size()) ops::silu_inplace(fc.data(), l.out);
            s.swap(fc);
        }
        put(1, s, {B, static_cast<int64_t>(s.size())});
    }
    // The head swapped its two buffers back and forth: the larger goes back to the FFN's larger rows.
    if (ws.a.capacity() > ws.u.capacity()) ws.a.swap(ws.u);
}

}  // namespace s2e
