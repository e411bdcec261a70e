// The engine's weights as its GEMMs read them: floats, bf16 or int8, read from the file on each use (the W8A8
// linears' int8 weights: packed once at construction by default, see Engine::int8_weights_mode).
#include <algorithm>
#include <cstring>
#include <new>

#include "engine_workspace.hpp"
#include "s2e/ops.hpp"

namespace s2e {

namespace {
// n 16-bit floats (unaligned, little-endian) to floats with `conv` (float16 or bfloat16).
template <class Conv>
void halves_to_floats(const uint8_t* src, int64_t n, float* out, Conv conv) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        out[i] = conv(h);
    }
}

// `rows` x `cols` stored values of dtype `dt` to floats; I8 / F8_E4M3 rows are multiplied by
// their scale (`scale[r]`, or `scale[0]` for all rows when `per_tensor`).
void to_floats(DType dt, const uint8_t* src, int64_t rows, int64_t cols, const float* scale, bool per_tensor,
               float* out) {
    const int64_t n = rows * cols;
    switch (dt) {
        case DType::F16: halves_to_floats(src, n, out, fp16_to_float); break;
        case DType::BF16: halves_to_floats(src, n, out, bf16_to_float); break;
        case DType::I8:
        case DType::F8_E4M3: {
            const bool i8 = dt == DType::I8;
#pragma omp parallel for schedule(static) if (n > 65536)
            for (int64_t r = 0; r < rows; ++r) {
                const float s = scale[per_tensor ? 0 : r];
                const uint8_t* row = src + r * cols;
                float* o = out + r * cols;
                if (i8) {
                    for (int64_t c = 0; c < cols; ++c) o[c] = static_cast<float>(static_cast<int8_t>(row[c])) * s;
                } else {
                    for (int64_t c = 0; c < cols; ++c) o[c] = fp8e4m3_to_float(row[c]) * s;
                }
            }
            break;
        }
        default: throw UnsupportedError(std::string("unsupported weight dtype ") + dtype_name(dt));
    }
}
}  // namespace

const float* Engine::floats(const Param& p, std::vector<float>& out, Workspace& ws) const {
    out.resize(static_cast<size_t>(p.t->numel()));
    return floats_to(p, out.data(), ws);
}

const float* Engine::floats(const Param& p, Floats& out, Workspace& ws) const {
    fit(out, static_cast<size_t>(p.t->numel()));
    return floats_to(p, out.data(), ws);
}

const float* Engine::floats_to(const Param& p, float* out, Workspace& ws) const {
    // Weights are read from the file (pread) on each use, never through a mapping: a weights file
    // rewritten or truncated while the engine lives then gives FileChangedError, not SIGBUS. Only
    // one tensor is held as floats at a time per scratch buffer, and non-fp32 tensors are read in
    // bounded chunks (ws.raw) and converted, so peak memory stays one layer's weights.
    const TensorView& t = *p.t;
    const int64_t n = t.numel();
    if (t.dtype == DType::F32) {
        st_->read(t, 0, t.nbytes, out);
        return out;
    }
    std::vector<float> scale;
    if (p.scale) {
        scale.resize(static_cast<size_t>(p.scale->numel()));
        st_->read(*p.scale, 0, p.scale->nbytes, scale.data());
    }
    if (p.scale_axis == 1) {  // int8 (cin, cout, k, k) with a scale per output channel: value * scale[o]
        std::vector<int8_t> q(static_cast<size_t>(n));
        st_->read(t, 0, t.nbytes, q.data());
        const int64_t cout = t.shape[1], inner = n / (t.shape[0] * cout);
        for (int64_t i = 0; i < n; ++i)
            out[i] = static_cast<float>(q[static_cast<size_t>(i)]) * scale[scale.size() == 1 ? 0 : static_cast<size_t>((i / inner) % cout)];
        return out;
    }
    const int64_t rows = t.shape.empty() ? 1 : t.shape[0];
    const int64_t cols = rows ? n / rows : 0;
    const size_t row_bytes = static_cast<size_t>(cols) * dtype_size(t.dtype);
    const int64_t chunk = std::max<int64_t>(1, static_cast<int64_t>(kReadChunk / std::max<size_t>(row_bytes, 1)));
    for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
        const int64_t nr = std::min(chunk, rows - r0);
        ws.raw.resize(static_cast<size_t>(nr) * row_bytes);
        st_->read(t, static_cast<size_t>(r0) * row_bytes, ws.raw.size(), ws.raw.data());
        const bool per_tensor = scale.size() == 1;
        const float* s = scale.empty() ? nullptr : per_tensor ? scale.data() : scale.data() + r0;
        to_floats(t.dtype, ws.raw.data(), nr, cols, s, per_tensor, out + r0 * cols);
    }
    return out;
}

const uint16_t* Engine::bf16_weights(const Param& p, std::vector<uint16_t>& out, std::vector<float>& scale,
                                     Workspace& ws) const {
    const TensorView& t = *p.t;
    const int64_t n = t.numel();
    const int64_t rows = t.shape.empty() ? 1 : t.shape[0];
    scale.clear();
    out.resize(static_cast<size_t>(n));
    if (t.dtype == DType::BF16) {
        st_->read(t, 0, t.nbytes, out.data());
        return out.data();
    }
    if (t.dtype != DType::I8 && t.dtype != DType::F8_E4M3) {  // float32 / float16 weights: rounded to bf16
        const float* f = floats(p, ws.wbuf, ws);
        onednn::to_bf16(f, 1, n, n, out.data());
        return out.data();
    }
    // int8 and float8 E4M3 values are bfloat16 numbers: converted exactly, the scale applied after.
    if (p.scale) {
        std::vector<float> s(static_cast<size_t>(p.scale->numel()));
        st_->read(*p.scale, 0, p.scale->nbytes, s.data());
        scale = s.size() == 1 ? std::vector<float>(static_cast<size_t>(rows), s[0]) : std::move(s);
    }
    const int64_t cols = rows ? n / rows : 0;
    const size_t row_bytes = static_cast<size_t>(cols);
    const int64_t chunk = std::max<int64_t>(1, static_cast<int64_t>(kReadChunk / std::max<size_t>(row_bytes, 1)));
    const bool i8 = t.dtype == DType::I8;
    for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
        const int64_t nr = std::min(chunk, rows - r0);
        ws.raw.resize(static_cast<size_t>(nr) * row_bytes);
        st_->read(t, static_cast<size_t>(r0) * row_bytes, ws.raw.size(), ws.raw.data());
        const uint8_t* src = ws.raw.data();
        uint16_t* dst = out.data() + r0 * cols;
#pragma omp parallel for schedule(static) if (nr * cols > 65536)
        for (int64_t i = 0; i < nr * cols; ++i)
            dst[i] = float_to_bf16(i8 ? static_cast<float>(static_cast<int8_t>(src[i])) : fp8e4m3_to_float(src[i]));
    }
    return out.data();
}

const int8_t* Engine::stored_int8(const Param& w, std::vector<int8_t>& out) const {
    out.resize(static_cast<size_t>(w.t->numel()));
    st_->read(*w.t, 0, w.t->nbytes, out.data());
    return out.data();
}

const float* Engine::int8_weights(const Param& w, int64_t out, Workspace& ws) const {
    stored_int8(w, ws.w8);
    return int8_scales(w, out, ws);
}

const float* Engine::int8_scales(const Param& w, int64_t out, Workspace& ws) const {
    std::vector<float>& cs = ws.wscale;
    cs.resize(static_cast<size_t>(w.scale->numel()));
    st_->read(*w.scale, 0, w.scale->nbytes, cs.data());
    if (cs.size() == 1) cs.assign(static_cast<size_t>(out), cs[0]);
    return cs.data();
}

const float* Engine::w8a8_weights(const Linear& l, Workspace& ws, const float*& b) const {
    const float* cs = int8_scales(l.w, l.out, ws);
    b = l.b ? floats(l.b, ws.wbuf2, ws) : nullptr;
    return cs;
}

void Engine::w8a8_matmul(const Linear& l, int64_t M, const int8_t* x8, int32_t* c, Workspace& ws) const {
    if (l.packed && l.packed->matmul(M, x8, c)) return;
    onednn::matmul_s8(M, l.in, l.out, x8, stored_int8(l.w, ws.w8), c);
}

void Engine::pack_int8_weights(const std::string& mode) {
    if (mode != "packed" || act_layers_.empty() || !onednn::exact_int8()) return;
    // packed for one image of the artifact's input size (the training size where it names none); oneDNN's kernels for
    // other row counts read the same layout (where one does not, that call reads the stored weights)
    const bool k4 = cfg_.arch.is_4k();
    const int64_t h = cfg_.input_h > 0 ? cfg_.input_h : k4 ? 4096 : 1024, w = cfg_.input_w > 0 ? cfg_.input_w : k4 ? 3072 : 768;
    const int64_t stride = cfg_.arch.input_multiple(), grid = (h / stride) * (w / stride);
    const int64_t main_rows = kPrefixTokens + grid, window_rows = std::min(grid, kWindowChunk) * (kWindow * kWindow + 1);
    // every layer packed before any is given its weights: where one cannot be, all read theirs per call
    std::vector<std::pair<Linear*, std::shared_ptr<const onednn::PackedInt8>>> packs;
    std::vector<int8_t> stored;
    try {
        for (auto* list : {&blocks_, &tok_blocks_})
            for (auto& b : *list)
                for (Linear* l : {&b.wq, &b.wk, &b.wv, &b.proj, &b.w12, &b.w3})
                    if (l->act_int8)
                        packs.emplace_back(l, std::make_shared<const onednn::PackedInt8>(
                                                  b.main ? main_rows : window_rows, l->in, l->out, stored_int8(l->w, stored)));
    } catch (const UnsupportedError&) {  // oneDNN has no packed layout for a layer here
        return;
    } catch (const std::bad_alloc&) {  // no memory for them: the engine that keeps none still runs
        return;
    }
    for (auto& p : packs) {
        packed_bytes_ += p.second->bytes();
        p.first->packed = std::move(p.second);
    }
    int8_weights_mode_ = "packed";
}

float* Engine::w8a8_row_scales(const Linear& l, int64_t M, int64_t T, Workspace& ws) const {
    // the static scale for tokens past the prefix, 0 (= dynamic: absmax / 127 of the row) for the others
    const float s_static = l.input_scale ? floats(l.input_scale, ws.pbuf, ws)[0] : 0.0f;
    ws.xs.resize(static_cast<size_t>(M));
    for (int64_t m = 0; m < M; ++m) {
        const int64_t t = T > 0 ? m % T : m;
        ws.xs[m] = l.input_scale && t >= l.prefix_tokens ? s_static : 0.0f;
    }
    return ws.xs.data();
}

float* Engine::w8a8_product(const Linear& l, const float* x, int64_t M, int64_t T, int32_t* acc, Workspace& ws,
                            const float*& cs, const float*& b) const {
    cs = w8a8_weights(l, ws, b);
    float* xs = w8a8_row_scales(l, M, T, ws);
    ws.x8.resize(static_cast<size_t>(M * l.in));
    ops::quantize_rows_int8(x, M, l.in, xs, ws.x8.data());
    w8a8_matmul(l, M, ws.x8.data(), acc, ws);
    return xs;
}

void Engine::apply_w8a8(const Linear& l, const float* x, int64_t M, int64_t T, float* y, Workspace& ws) const {
    static_assert(sizeof(int32_t) == sizeof(float), "the int32 GEMM result is converted in the float output");
    const float *cs = nullptr, *b = nullptr;
    const float* xs = w8a8_product(l, x, M, T, reinterpret_cast<int32_t*>(y), ws, cs, b);
    ops::dequantize_rows_int32(y, M, l.out, xs, cs, b);
}

}  // namespace s2e
