// The native engine's scratch buffers and what its parts (engine*.cpp) share; not installed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "s2e/engine.hpp"
#include "s2e/onednn.hpp"

namespace s2e {

constexpr float kEps = 1e-6f;  // RMSNorm (backbone, RMSNorm2d)
constexpr int64_t kWindowChunk = 1024;  // 4K tokenizer windows per chunk (bounds memory)
// Stored weights are read and converted in chunks of about this many bytes.
constexpr size_t kReadChunk = 4u << 20;

// v sized n for new contents: grown without copying the old ones, which are freed first (the two are
// never held at once); kept buffers only grow, so later runs of the same size allocate nothing.
template <class V>
void fit(V& v, size_t n) {
    if (n > v.capacity()) V().swap(v);
    v.resize(n);
}

struct Engine::Workspace {
    Floats wbuf;  // one layer's weights as floats (up to 81 MiB: a dense head's first upsampling convolution)
    std::vector<float> wbuf2, pbuf, cols, att, h, q, k, v, o;
    Floats u, a;  // the FFN's hidden rows; in the head, the activation and the next layer's output
    Halves hb;    // the channels-last head's activations in bf16 (in float32 they run in a)
    std::vector<uint8_t> raw;  // stored weight bytes on their way to floats (at most kReadChunk + a row)
    std::vector<uint16_t> wb, xb, qb, kb, vb;  // bf16 runs: weights and GEMM inputs rounded to bf16
    std::vector<float> qf, kf, vf;  // fp32 attention on oneDNN: head-major q, k, v
    std::vector<int8_t> w8, x8;  // int8 (W8A8) layers: stored weights, quantized inputs
    std::vector<int8_t> q8, k8;  // int8 attention inputs: head-major q and k
    std::vector<float> xs;       // and the inputs' per-row scales
    std::vector<float> wscale;
    // a Winograd layer's work (see winograd::work_floats, deconv_work_floats) where the head's output map has
    // no room
    Floats wino;

    // Gives back what only the backbone uses (the token rows, the attention's operands, the int8 and
    // bf16 copies) before the head, whose own buffers are u, a and cols: the head's peak is not raised
    // by them. The token rows are re-made by the next run (cheap next to the FFN's and the head's).
    void release_token_buffers() {
        for (auto* f : {&att, &h, &q, &k, &v, &o, &qf, &kf, &vf, &xs}) std::vector<float>().swap(*f);
        for (auto* b : {&wb, &xb, &qb, &kb, &vb}) std::vector<uint16_t>().swap(*b);
        for (auto* b : {&w8, &x8, &q8, &k8}) std::vector<int8_t>().swap(*b);
        onednn::release_thread_buffers();  // the backbone's GEMM scratchpad (36 MiB at 0.1b on AVX2 int8)
    }

    // Gives back the copies of one layer's weights: as floats (wbuf), as stored bytes (raw), in bf16 (wb), in
    // int8 (w8), and oneDNN's packed copy and scratchpad (its thread buffers).
    void release_weight_buffers() {
        Floats().swap(wbuf);
        std::vector<uint8_t>().swap(raw);
        std::vector<uint16_t>().swap(wb);
        std::vector<int8_t>().swap(w8);
        Floats().swap(wino);
        onednn::release_thread_buffers();
    }

    // What the buffers hold, in bytes.
    size_t bytes() const {
        size_t n = (u.capacity() + a.capacity() + wbuf.capacity() + wino.capacity()) * sizeof(float) +
                   hb.capacity() * sizeof(uint16_t) + raw.capacity();
        for (const auto* f : {&wbuf2, &pbuf, &cols, &att, &h, &q, &k, &v, &o, &qf, &kf, &vf, &xs, &wscale})
            n += f->capacity() * sizeof(float);
        for (const auto* b : {&wb, &xb, &qb, &kb, &vb}) n += b->capacity() * sizeof(uint16_t);
        for (const auto* b : {&w8, &x8, &q8, &k8}) n += b->capacity();
        return n;
    }
};

}  // namespace s2e
