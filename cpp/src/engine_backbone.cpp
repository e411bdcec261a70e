// The engine's backbone: patch embedding, transformer blocks (attention, FFN), the feature map.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "engine_workspace.hpp"
#include "s2e/onednn.hpp"
#include "s2e/ops.hpp"
#include "s2e/attention.hpp"

namespace s2e {

namespace {
constexpr int64_t kSmallSeq = 64;    // sequences up to this length use the BLAS-free attention
}  // namespace

void Engine::ffn_w8a8(const BlockWeights& b, const float* h, int64_t M, int64_t T, float* y, Workspace& ws) const {
    const int64_t hid = b.w3.in;
    // fc1 (gate and up) as int32 products in u; what dequantizes them is copied out of the workspace,
    // which fc2's scales take next
    const float *cs = nullptr, *b1 = nullptr;
    int32_t* acc = reinterpret_cast<int32_t*>(ws.u.data());
    const float* xs = w8a8_product(b.w12, h, M, T, acc, ws, cs, b1);
    const std::vector<float> xs1(xs, xs + M), cs1(cs, cs + b.w12.out),
        bias1 = b1 ? std::vector<float>(b1, b1 + b.w12.out) : std::vector<float>();
    // dequantize, SwiGLU and fc2's int8 input in one pass over the products
    const float* b2 = nullptr;
    const float* cs2 = w8a8_weights(b.w3, ws, b2);
    float* xs2 = w8a8_row_scales(b.w3, M, T, ws);
    ws.x8.resize(static_cast<size_t>(M * hid));
    ops::swiglu_int8(acc, M, hid, xs1.data(), cs1.data(), bias1.empty() ? nullptr : bias1.data(), xs2, ws.x8.data());
    w8a8_matmul(b.w3, M, ws.x8.data(), reinterpret_cast<int32_t*>(y), ws);
    ops::dequantize_rows_int32(y, M, b.w3.out, xs2, cs2, b2);
}

void Engine::apply_linear(const Linear& l, const float* x, int64_t M, float* y, Workspace& ws, int64_t T) const {
    if (l.act_int8) {
        apply_w8a8(l, x, M, T, y, ws);
        return;
    }
    if (bf16_) {
        const uint16_t* W = bf16_weights(l.w, ws.wb, ws.wscale, ws);
        const float* b = l.b ? floats(l.b, ws.wbuf2, ws) : nullptr;
        onednn::linear_bf16(x, M, l.in, W, ws.wscale.empty() ? nullptr : ws.wscale.data(), b, l.out, y, l.out, ws.xb);
        return;
    }
    // int8 / fp16 weights are dequantized into one layer-sized scratch buffer per call: the
    // model is never held in fp32, and the GEMM itself runs in fp32 as the torch reference does.
    const float* W = floats(l.w, ws.wbuf, ws);
    const float* b = l.b ? floats(l.b, ws.wbuf2, ws) : nullptr;
    linear_f32(x, M, l.in, W, b, l.out, y, l.out);
}

void Engine::linear_f32(const float* x, int64_t M, int64_t K, const float* W, const float* b, int64_t N, float* y,
                        int64_t ldy) const {
    if (dnnl_f32_)
        onednn::linear_f32(x, M, K, W, b, N, y, ldy);
    else
        ops::linear(x, M, K, W, b, N, y, ldy);
}

void Engine::block(const BlockWeights& b, float* x, int64_t B, int64_t T, const float* sin_t, const float* cos_t,
                   Workspace& ws) const {
    const ArchConfig& a = cfg_.arch;
    const int64_t C = a.embed_dim, d = a.head_dim(), heads = a.num_heads, kv = b.kv_heads, kvd = kv * d;
    const int64_t M = B * T, hid = a.ffn_hidden;
    ws.h.resize(static_cast<size_t>(M * C));
    ws.q.resize(static_cast<size_t>(M * C));
    ws.k.resize(static_cast<size_t>(M * kvd));
    ws.v.resize(static_cast<size_t>(M * kvd));
    ws.o.resize(static_cast<size_t>(M * C));
    float *h = ws.h.data(), *q = ws.q.data(), *k = ws.k.data(), *v = ws.v.data(), *o = ws.o.data();
    ops::rms_norm(x, h, M, C, C, floats(b.ln1, ws.pbuf, ws), kEps);
    apply_linear(b.wq, h, M, q, ws, T);
    apply_linear(b.wk, h, M, k, ws, T);
    apply_linear(b.wv, h, M, v, ws, T);
    if (b.q_norm) {
        ops::rms_norm(q, q, M * heads, d, d, floats(b.q_norm, ws.pbuf, ws), kEps);
        ops::rms_norm(k, k, M * kv, d, d, floats(b.k_norm, ws.pbuf, ws), kEps);
    }
    if (sin_t) {
        const bool bf = cfg_.rope_bf16;
#pragma omp parallel for schedule(static)
        for (int64_t m = 0; m < M; ++m) {
            const int64_t t = m % T;
            float* qm = q + m * C;
            float* km = k + m * kvd;
            if (t < kPrefixTokens) {  // prefix tokens: no rotation, but the reference casts them to bf16 too
                if (bf) {
                    for (int64_t i = 0; i < C; ++i) qm[i] = round_bf16(qm[i]);
                    for (int64_t i = 0; i < kvd; ++i) km[i] = round_bf16(km[i]);
                }
                continue;
            }
            const float* sr = sin_t + (t - kPrefixTokens) * d;
            const float* cr = cos_t + (t - kPrefixTokens) * d;
            for (int64_t hh = 0; hh < heads; ++hh) ops::rope_rotate(qm + hh * d, d, sr, cr, bf);
            for (int64_t hh = 0; hh < kv; ++hh) ops::rope_rotate(km + hh * d, d, sr, cr, bf);
        }
    }
    const int64_t groups = heads / kv;
    const float scale = 1.0f / std::sqrt(static_cast<float>(d));
    bool int8_attention = false;
    float qk_scale = 1.0f, out_scale = 1.0f;
    if (b.q_scale) {  // int8 attention inputs: q, k, v rounded to their calibrated int8 grids
        const float sq = floats(b.q_scale, ws.pbuf, ws)[0], sk = floats(b.k_scale, ws.pbuf, ws)[0],
                    sv = floats(b.v_scale, ws.pbuf, ws)[0];
        if (bf16_ && T > kSmallSeq) {
            // the int8 values themselves go to the GEMMs: q k^T as an exact int8 GEMM, P v in bf16, where
            // v's int8 values are exact (v * s is not: bf16 would round it again); the scales come back
            // in the softmax's scale and on the output
            ops::round_int8(q, M * C, sq);
            ops::round_int8(k, M * kvd, sk);
            ops::round_int8(v, M * kvd, sv);
            int8_attention = true;
            qk_scale = sq * sk;
            out_scale = sv;
        } else {
            ops::fake_quant_int8(q, M * C, sq);
            ops::fake_quant_int8(k, M * kvd, sk);
            ops::fake_quant_int8(v, M * kvd, sv);
        }
    }
    if (T <= kSmallSeq) {
#pragma omp parallel
        {
            std::vector<float> s(static_cast<size_t>(T * T));
#pragma omp for schedule(static)
            for (int64_t bh = 0; bh < B * heads; ++bh) {
                const int64_t bi = bh / heads, hh = bh % heads, g = hh / groups;
                ops::attention_head_small(q + bi * T * C + hh * d, C, k + bi * T * kvd + g * d, v + bi * T * kvd + g * d,
                                          kvd, o + bi * T * C + hh * d, C, T, d, scale, s.data());
            }
        }
    } else if (int8_attention) {
        attention::dense_int8(q, k, v, o, B, T, heads, kv, d, scale * qk_scale, out_scale, ws.q8, ws.k8, ws.vb);
    } else if (bf16_) {
        attention::dense(q, k, v, o, B, T, heads, kv, d, scale, ws.qb, ws.kb, ws.vb);
    } else if (dnnl_f32_) {
        attention::dense(q, k, v, o, B, T, heads, kv, d, scale, ws.qf, ws.kf, ws.vf);
    } else {
        for (int64_t bi = 0; bi < B; ++bi)
            for (int64_t hh = 0; hh < heads; ++hh) {
                const int64_t g = hh / groups;
                ops::attention_head(q + bi * T * C + hh * d, C, k + bi * T * kvd + g * d, v + bi * T * kvd + g * d, kvd,
                                    o + bi * T * C + hh * d, C, T, d, scale, ws.att);
            }
    }
    apply_linear(b.proj, o, M, h, ws, T);
    const float* gamma = b.gamma ? floats(b.gamma, ws.pbuf, ws) : nullptr;
#pragma omp parallel for schedule(static)
    for (int64_t m = 0; m < M; ++m) {
        float* xm = x + m * C;
        const float* hm = h + m * C;
        if (gamma) {
            for (int64_t i = 0; i < C; ++i) xm[i] += hm[i] * gamma[i];
        } else {
            for (int64_t i = 0; i < C; ++i) xm[i] += hm[i];
        }
    }
    ops::rms_norm(x, h, M, C, C, floats(b.ln2, ws.pbuf, ws), kEps);
    fit(ws.u, static_cast<size_t>(M * 2 * hid));
    fit(ws.a, static_cast<size_t>(M * hid));
    float *u = ws.u.data(), *act = ws.a.data();
    if (b.w12.act_int8 && b.w3.act_int8) {
        ffn_w8a8(b, h, M, T, h, ws);
    } else {
        apply_linear(b.w12, h, M, u, ws, T);
        ops::swiglu(u, act, M, hid);
        apply_linear(b.w3, act, M, h, ws, T);
    }
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < M * C; ++i) x[i] += h[i];
}

void Engine::backbone(const float* x, int64_t B, int64_t H, int64_t W, std::vector<float>& feat, int64_t& hp,
                      int64_t& wp, Workspace& ws) const {
    const ArchConfig& a = cfg_.arch;
    const int64_t C = a.embed_dim, d = a.head_dim(), P = kPatch, K = 3 * P * P;
    const int64_t hp0 = H / P, wp0 = W / P, n0 = hp0 * wp0;
    hp = a.is_4k() ? hp0 / kWindow : hp0;
    wp = a.is_4k() ? wp0 / kWindow : wp0;
    const int64_t N = hp * wp, T = kPrefixTokens + N;
    // patches (n0, 3*16*16) per image, flattened (c, ky, kx) like the conv weight
    std::vector<float> patches(static_cast<size_t>(n0 * K));
    std::vector<float> xs(static_cast<size_t>(B * T * C));
    std::vector<float> tok0;
    if (a.is_4k()) tok0.resize(static_cast<size_t>(n0 * C));
    std::vector<float> pw_buf, pb_buf;
    const float* pw = floats(patch_w_, pw_buf, ws);
    const float* pb = floats(patch_b_, pb_buf, ws);
    std::vector<float> cls_buf;  // kept through the batch loop, which reuses ws.pbuf
    const float* cls = floats(cls_, cls_buf, ws);
    std::vector<float> stor_buf;
    const float* stor = floats(storage_, stor_buf, ws);
    for (int64_t b = 0; b < B; ++b) {
        const float* img = x + b * 3 * H * W;
#pragma omp parallel for schedule(static)
        for (int64_t n = 0; n < n0; ++n) {
            const int64_t py = n / wp0, px = n % wp0;
            float* row = patches.data() + n * K;
            for (int64_t c = 0; c < 3; ++c)
                for (int64_t ky = 0; ky < P; ++ky)
                    std::memcpy(row + (c * P + ky) * P, img + (c * H + py * P + ky) * W + px * P, sizeof(float) * P);
        }
        float* seq = xs.data() + b * T * C;
        std::memcpy(seq, cls, sizeof(float) * C);
        std::memcpy(seq + C, stor, sizeof(float) * kStorageTokens * C);
        if (!a.is_4k()) {
            linear_f32(patches.data(), n0, K, pw, pb, C, seq + kPrefixTokens * C, C);
            continue;
        }
        linear_f32(patches.data(), n0, K, pw, pb, C, tok0.data(), C);
        // 4K tokenizer: each 4x4 window -> [w_cls, 16 patches] + local_pos_embed, MHA blocks, keep CLS.
        std::vector<float> lpe_buf, wcls_buf;
        const float* lpe = floats(local_pos_, lpe_buf, ws);
        const float* wcls = floats(w_cls_, wcls_buf, ws);
        const int64_t L = kWindow * kWindow + 1, nwin = N;
        for (int64_t w0 = 0; w0 < nwin; w0 += kWindowChunk) {
            const int64_t nw = std::min(kWindowChunk, nwin - w0);
            std::vector<float> win(static_cast<size_t>(nw * L * C));
#pragma omp parallel for schedule(static)
            for (int64_t wi = 0; wi < nw; ++wi) {
                const int64_t w = w0 + wi, wy = w / wp, wx = w % wp;
                float* s = win.data() + wi * L * C;
                for (int64_t c = 0; c < C; ++c) s[c] = wcls[c] + lpe[c];
                for (int64_t i = 0; i < kWindow; ++i)
                    for (int64_t j = 0; j < kWindow; ++j) {
                        const int64_t l = 1 + i * kWindow + j;
                        const float* src = tok0.data() + ((wy * kWindow + i) * wp0 + wx * kWindow + j) * C;
                        for (int64_t c = 0; c < C; ++c) s[l * C + c] = src[c] + lpe[l * C + c];
                    }
            }
            for (const auto& blk : tok_blocks_) block(blk, win.data(), nw, L, nullptr, nullptr, ws);
            for (int64_t wi = 0; wi < nw; ++wi)
                std::memcpy(seq + (kPrefixTokens + w0 + wi) * C, win.data() + wi * L * C, sizeof(float) * C);
        }
    }
    std::vector<float> sin_t(static_cast<size_t>(N * d)), cos_t(static_cast<size_t>(N * d)), per_buf;
    ops::rope_tables(floats(periods_, per_buf, ws), d / 4, hp, wp, cfg_.rope_bf16, sin_t.data(), cos_t.data());
    for (const auto& blk : blocks_) block(blk, xs.data(), B, T, sin_t.data(), cos_t.data(), ws);
    ops::rms_norm(xs.data(), xs.data(), B * T, C, C, floats(final_norm_, ws.pbuf, ws), kEps);
    feat.resize(static_cast<size_t>(B * C * N));
#pragma omp parallel for schedule(static)
    for (int64_t bc = 0; bc < B * C; ++bc) {
        const int64_t b = bc / C, c = bc % C;
        const float* src = xs.data() + (b * T + kPrefixTokens) * C + c;
        float* dst = feat.data() + bc * N;
        for (int64_t n = 0; n < N; ++n) dst[n] = src[n * C];
    }
}

}  // namespace s2e
