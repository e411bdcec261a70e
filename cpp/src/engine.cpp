#include "s2e/engine.hpp"

#include <sys/stat.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <type_traits>

#include "s2e/attention.hpp"
#include "s2e/onednn.hpp"
#include "s2e/ops.hpp"

namespace s2e {

namespace {
constexpr float kEps = 1e-6f;        // RMSNorm (backbone, RMSNorm2d)
constexpr float kInstEps = 1e-5f;    // InstanceNorm2d
constexpr int64_t kSmallSeq = 64;    // sequences up to this length use the BLAS-free attention
constexpr int64_t kWindowChunk = 1024;  // 4K tokenizer windows per chunk (bounds memory)
constexpr size_t kMaxManifest = 16u << 20;

std::string shape_str(const std::vector<int64_t>& s) {
    std::string r = "(";
    for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
    return r + (s.size() == 1 ? ",)" : ")");
}

bool is_dir(const std::string& p) {
    struct stat sb {};
    return ::stat(p.c_str(), &sb) == 0 && S_ISDIR(sb.st_mode);
}

std::string read_text(const std::string& path, size_t limit) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw ManifestError(path + " cannot be read (an artifact directory holds manifest.json)");
    f.seekg(0, std::ios::end);
    std::streamoff n = f.tellg();
    if (n < 0 || static_cast<size_t>(n) > limit)
        throw ManifestError(path + " is larger than the " + std::to_string(limit) + "-byte limit for a manifest");
    f.seekg(0);
    std::string s(static_cast<size_t>(n), '\0');
    f.read(&s[0], n);
    return s;
}

Json parse_json(const std::string& text, const std::string& where) {
    try {
        JsonLimits lim;
        lim.max_bytes = kMaxManifest;
        return Json::parse(text, lim);
    } catch (const JsonError& e) {
        throw ManifestError(where + " is not valid JSON: " + e.what());
    }
}

// grid after `steps` stride-2 1x1 convs (ceil(n/2) each), as arch.scale_grid_for
std::pair<int64_t, int64_t> scale_grid(int64_t h, int64_t w, int64_t stride, size_t steps) {
    h /= stride;
    w /= stride;
    for (size_t i = 0; i < steps; ++i) {
        h = (h + 1) / 2;
        w = (w + 1) / 2;
    }
    return {h, w};
}

// Stored weights are read and converted in chunks of about this many bytes.
constexpr size_t kReadChunk = 4u << 20;
// A head layer's weight buffers smaller than this are kept for the next layer whatever it reads.
constexpr int64_t kKeepWeightBytes = 1 << 20;

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

namespace {
// v sized n for new contents: grown without copying the old ones, which are freed first (the two are
// never held at once); kept buffers only grow, so later runs of the same size allocate nothing.
template <class V>
void fit(V& v, size_t n) {
    if (n > v.capacity()) V().swap(v);
    v.resize(n);
}
}  // namespace

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
        onednn::release_thread_buffers();
    }

    // What the buffers hold, in bytes.
    size_t bytes() const {
        size_t n = (u.capacity() + a.capacity() + wbuf.capacity()) * sizeof(float) + hb.capacity() * sizeof(uint16_t) +
                   raw.capacity();
        for (const auto* f : {&wbuf2, &pbuf, &cols, &att, &h, &q, &k, &v, &o, &qf, &kf, &vf, &xs, &wscale})
            n += f->capacity() * sizeof(float);
        for (const auto* b : {&wb, &xb, &qb, &kb, &vb}) n += b->capacity() * sizeof(uint16_t);
        for (const auto* b : {&w8, &x8, &q8, &k8}) n += b->capacity();
        return n;
    }
};

Engine::Engine(const std::string& path, const std::string& config_json, const std::string& precision) {
    if (precision != "fp32" && precision != "bf16")
        throw UnsupportedError("precision '" + precision + "' is not one the native engine runs; expected 'fp32' or 'bf16'");
    if (precision == "bf16") {
        const std::string why = onednn::load();
        if (!why.empty()) throw UnsupportedError("precision 'bf16' needs oneDNN: " + why);
        precision_ = precision;
        bf16_ = true;
    }
    const char* gemm_env = std::getenv("S2E_NATIVE_FP32_GEMM");
    const std::string fp32_choice = gemm_env ? gemm_env : "";
    if (fp32_choice != "" && fp32_choice != "openblas" && fp32_choice != "onednn")
        throw UnsupportedError("S2E_NATIVE_FP32_GEMM='" + fp32_choice + "' is not a GEMM library the engine has; expected "
                               "'onednn' or 'openblas'");
    if (fp32_choice != "openblas") {
        const std::string why = onednn::load();
        if (why.empty()) {
            dnnl_f32_ = true;
        } else if (fp32_choice == "onednn") {
            throw UnsupportedError("S2E_NATIVE_FP32_GEMM=onednn: " + why);
        }
    }
#ifdef __GLIBC__
    // Activation buffers are tens of MB and change size layer to layer. A fixed 1 MB mmap threshold
    // (glibc otherwise raises it after the first free) returns each to the OS when freed, which
    // cut peak RSS by ~15% on 0.1b seg; it applies process-wide and only to large blocks.
    static const bool malloc_tuned = mallopt(M_MMAP_THRESHOLD, 1 << 20) == 1;
    (void)malloc_tuned;
#endif
    if (is_dir(path)) {
        const std::string mpath = path + "/manifest.json";
        Json m = parse_json(read_text(mpath, kMaxManifest), mpath);
        check_manifest(m, mpath);
        cfg_ = parse_engine_config(m, mpath);
        std::string rel;
        if (const Json* files = m.find("files")) {
            for (const auto& kv : files->as_object(mpath + ".files")) {
                kv.second.as_object(mpath + ".files['" + kv.first + "'] (an object with sha256, size and role)");
                const Json* role = kv.second.find("role");
                const std::string& name = kv.first;
                bool st = name.size() > 12 && name.compare(name.size() - 12, 12, ".safetensors") == 0;
                if (st && role && role->is_string() && role->as_string("role") == "model") rel = name;
                if (rel.empty() && name == "weights.safetensors") rel = name;
            }
        }
        if (rel.empty()) throw ManifestError(mpath + " lists no weights.safetensors: this artifact has no weights the native engine can read; export it with format='native'");
        if (rel[0] == '/' || rel.find("..") != std::string::npos)
            throw ManifestError(mpath + ": weights path '" + rel + "' leaves the artifact directory");
        st_ = SafeTensors::open(path + "/" + rel);
    } else {
        st_ = SafeTensors::open(path);
        if (!config_json.empty()) {
            cfg_ = parse_engine_config(parse_json(config_json, "config"), "config");
        } else {
            auto arch = st_->metadata().find("sapiens2_edge.arch");
            auto head = st_->metadata().find("sapiens2_edge.head");
            if (arch == st_->metadata().end() || head == st_->metadata().end())
                throw ManifestError(path + " carries no sapiens2_edge.arch/head metadata; pass the configuration (arch, head, rope_mode) as JSON");
            cfg_.arch = parse_arch(parse_json(arch->second, "sapiens2_edge.arch"), "sapiens2_edge.arch");
            Json h = parse_json(head->second, "sapiens2_edge.head");
            if (!h.is_null()) {
                cfg_.has_head = true;
                cfg_.head = parse_head(h, cfg_.arch, "sapiens2_edge.head");
            }
            auto rope = st_->metadata().find("sapiens2_edge.rope_mode");
            if (rope != st_->metadata().end()) {
                if (rope->second != "bf16" && rope->second != "fp32")
                    throw ManifestError(path + ": unknown sapiens2_edge.rope_mode '" + rope->second + "'; expected 'bf16' or 'fp32'");
                cfg_.rope_bf16 = rope->second == "bf16";
            }
        }
    }
    const std::string where = "sapiens2_edge.native_activations";
    auto acts = st_->metadata().find(where);
    if (acts != st_->metadata().end()) {
        Json j = parse_json(acts->second, where);
        for (const auto& kv : j.as_object(where)) {
            const std::string what = where + "['" + kv.first + "']";
            kv.second.as_object(what + " (an object with dtype, mode and prefix_tokens)");
            const Json* dt = kv.second.find("dtype");
            const Json* mode = kv.second.find("mode");
            const Json* pre = kv.second.find("prefix_tokens");
            if (!dt || !mode || !pre) throw ManifestError(what + " lacks dtype, mode or prefix_tokens");
            const std::string& dts = dt->as_string(what + ".dtype");
            const std::string& ms = mode->as_string(what + ".mode");
            if (dts != "int8")
                throw UnsupportedError("layer " + kv.first + " quantizes its activations to '" + dts + "'; the native engine quantizes them to int8 only");
            if (ms != "static" && ms != "dynamic")
                throw ManifestError(what + ".mode is '" + ms + "'; expected 'static' or 'dynamic'");
            const int64_t p = pre->as_int(what + ".prefix_tokens");
            if (p < 0) throw ManifestError(what + ".prefix_tokens is negative");
            act_layers_[kv.first] = {ms == "static", p};
        }
    }
    auto recipe = st_->metadata().find("sapiens2_edge.recipe");
    if (recipe != st_->metadata().end()) {
        Json r = parse_json(recipe->second, "sapiens2_edge.recipe");
        size_t int8_layers = 0;
        if (const Json* layers = r.find("layers")) {
            for (const auto& kv : layers->as_object("sapiens2_edge.recipe.layers")) {
                const std::string& s = kv.second.as_string("layer scheme");
                if (s == "int8") ++int8_layers;
                else if (s != "float" && s != "fp16" && s != "int8-weight")
                    throw UnsupportedError("layer " + kv.first + " uses scheme '" + s + "'; the native engine runs float, fp16, int8-weight and int8 (W8A8) layers");
            }
        }
        if (int8_layers != act_layers_.size())
            throw UnsupportedError(st_->path() + ": the recipe has " + std::to_string(int8_layers) + " int8 (W8A8) layers but " + where + " describes " + std::to_string(act_layers_.size()) + "; re-export the artifact with format='native'");
    }
    if (!act_layers_.empty()) {
        const std::string why = onednn::load();
        if (!why.empty())
            throw UnsupportedError("int8 (W8A8) layers run on oneDNN's int8 GEMMs: " + why);
    }
    load();
}

Param Engine::need(const std::string& name, const std::vector<int64_t>& shape, bool quantizable, int scale_axis) {
    const std::string& p = st_->path();
    const TensorView* t = st_->find(name);
    if (!t) throw WeightsMismatchError(p + ": missing tensor '" + name + "' of shape " + shape_str(shape));
    if (t->shape != shape)
        throw WeightsMismatchError(p + ": tensor '" + name + "' has shape " + t->shape_str() + ", expected " + shape_str(shape));
    Param out;
    out.t = t;
    used_.push_back(name);
    switch (t->dtype) {
        case DType::F32: case DType::F16: case DType::BF16: break;
        case DType::I8: case DType::F8_E4M3: {
            if (!quantizable)
                throw WeightsMismatchError(p + ": tensor '" + name + "' is " + dtype_name(t->dtype) + "; only linear weights of the backbone and the head's transposed and 3x3 convolutions may be quantized (expected F32, F16 or BF16)");
            const std::string sname = name + "_scale";
            const TensorView* s = st_->find(sname);
            if (!s) throw WeightsMismatchError(p + ": quantized tensor '" + name + "' has no '" + sname + "'");
            const int64_t n = shape[static_cast<size_t>(scale_axis)];
            if (s->dtype != DType::F32 || s->shape.size() != 1 || (s->shape[0] != n && s->shape[0] != 1))
                throw WeightsMismatchError(p + ": '" + sname + "' must be F32 of shape (" + std::to_string(n) + ",) or (1,), found " + dtype_name(s->dtype) + " " + s->shape_str());
            out.scale = s;
            out.scale_axis = scale_axis;
            used_.push_back(sname);
            break;
        }
        default:
            throw WeightsMismatchError(p + ": tensor '" + name + "' has dtype " + dtype_name(t->dtype) + ", expected F32, F16 or BF16" + (quantizable ? " (or I8 / F8_E4M3 with a scale)" : ""));
    }
    return out;
}

Linear Engine::linear(const std::string& prefix, int64_t out, int64_t in, bool bias) {
    const auto act = act_layers_.find(prefix);
    if (act == act_layers_.end() && st_->find(prefix + ".input_scale"))
        throw UnsupportedError(st_->path() + ": '" + prefix + "' has static activation quantization (input_scale) that the file's sapiens2_edge.native_activations does not describe; re-export the artifact with format='native'");
    Linear l;
    l.w = need(prefix + ".weight", {out, in}, true);
    if (bias) l.b = need(prefix + ".bias", {out});
    l.out = out;
    l.in = in;
    if (act != act_layers_.end()) {
        if (l.w.t->dtype != DType::I8)
            throw WeightsMismatchError(st_->path() + ": '" + prefix + ".weight' is " + dtype_name(l.w.t->dtype) + "; a layer with int8 activations needs I8 weights");
        l.act_int8 = true;
        l.prefix_tokens = act->second.second;
        if (act->second.first) {
            l.input_scale = need(prefix + ".input_scale", {1});
            if (l.input_scale.t->dtype != DType::F32)
                throw WeightsMismatchError(st_->path() + ": '" + prefix + ".input_scale' must be F32");
        }
    }
    return l;
}

// An int8 head layer's weights (I8 with a scale per output channel) come with their input's scale;
// float weights with none.
void Engine::int8_input_scale(ConvWeights& c, const std::string& pre, const char* what) {
    const bool int8 = c.w.t->dtype == DType::I8;
    if (c.w.scale && !int8)
        throw WeightsMismatchError(st_->path() + ": '" + pre + ".weight' is " + dtype_name(c.w.t->dtype) + "; " + what + " weights are float or int8 (head='int8')");
    if (int8) {
        c.input_scale = need(pre + ".input_scale", {1});
        if (c.input_scale.t->dtype != DType::F32)
            throw WeightsMismatchError(st_->path() + ": '" + pre + ".input_scale' must be F32");
    } else if (st_->find(pre + ".input_scale")) {
        throw WeightsMismatchError(st_->path() + ": '" + pre + ".input_scale' belongs to int8 weights, but '" + pre + ".weight' is " + dtype_name(c.w.t->dtype));
    }
}

ConvWeights Engine::conv(const std::string& prefix, const std::string& norm, int64_t cin, int64_t cout, int64_t k, bool bias,
                         bool int8_ok) {
    ConvWeights c;
    c.w = need(prefix + ".weight", {cout, cin, k, k}, int8_ok, 0);
    if (int8_ok) int8_input_scale(c, prefix, "a convolution's");
    if (bias) c.b = need(prefix + ".bias", {cout});
    if (!norm.empty()) c.norm = need(norm, {cout});
    c.cin = cin;
    c.cout = cout;
    c.k = k;
    return c;
}

void Engine::load() {
    const ArchConfig& a = cfg_.arch;
    const int64_t C = a.embed_dim, d = a.head_dim(), hid = a.ffn_hidden;
    bb_ = cfg_.has_head ? "backbone." : "";
    hd_ = "decode_head.";
    cls_ = need(bb_ + "cls_token", {1, 1, C});
    storage_ = need(bb_ + "storage_tokens", {1, kStorageTokens, C});
    patch_w_ = need(bb_ + "patch_embed.projection.weight", {C, 3, kPatch, kPatch});
    patch_b_ = need(bb_ + "patch_embed.projection.bias", {C});
    periods_ = need(bb_ + "rope_embed.periods", {d / 4});
    final_norm_ = need(bb_ + "ln1.weight", {C});
    auto make_block = [&](const std::string& pre, int64_t kv, bool main) {
        BlockWeights b;
        b.main = main;
        b.kv_heads = kv;
        b.ln1 = need(pre + "ln1.weight", {C});
        b.ln2 = need(pre + "ln2.weight", {C});
        b.wq = linear(pre + "attn.wq", C, C);
        b.wk = linear(pre + "attn.wk", kv * d, C);
        b.wv = linear(pre + "attn.wv", kv * d, C);
        b.proj = linear(pre + "attn.proj", C, C);
        b.w12 = linear(pre + "ffn.w12", 2 * hid, C);
        b.w3 = linear(pre + "ffn.w3", C, hid);
        if (st_->find(pre + "attn.input_quant.q_scale")) {  // int8 attention inputs
            Param* slots[] = {&b.q_scale, &b.k_scale, &b.v_scale};
            const char* names[] = {"q_scale", "k_scale", "v_scale"};
            for (int i = 0; i < 3; ++i) {
                const std::string n = pre + "attn.input_quant." + names[i];
                *slots[i] = need(n, {1});
                if (slots[i]->t->dtype != DType::F32)
                    throw WeightsMismatchError(st_->path() + ": '" + n + "' must be F32");
            }
        }
        if (main) {
            b.q_norm = need(pre + "attn.q_norm.weight", {d});
            b.k_norm = need(pre + "attn.k_norm.weight", {d});
            b.gamma = need(pre + "attn.gamma.weight", {C});
        }
        return b;
    };
    for (int64_t i = 0; i < a.depth; ++i)
        blocks_.push_back(make_block(bb_ + "blocks." + std::to_string(i) + ".", a.kv_heads[i], true));
    if (a.is_4k()) {
        local_pos_ = need(bb_ + "tokenizer.local_pos_embed", {1, kWindow * kWindow + 1, C});
        w_cls_ = need(bb_ + "tokenizer.w_cls", {1, 1, C});
        for (int64_t j = 0; j < a.tokenizer_depth; ++j)
            tok_blocks_.push_back(make_block(bb_ + "tokenizer.blocks." + std::to_string(j) + ".", a.num_heads, false));
    }
    if (cfg_.has_head) {
        const HeadConfig& h = cfg_.head;
        int64_t cur = h.in_channels;
        if (h.task == "pose" || h.task == "seg") {
            for (size_t i = 0; i < h.deconv.size(); ++i) {
                ConvWeights c;
                const std::string pre = hd_ + "deconv_layers." + std::to_string(3 * i);
                c.w = need(pre + ".weight", {cur, h.deconv[i], 4, 4}, true, 1);
                int8_input_scale(c, pre, "a transposed convolution's");
                c.cin = cur;
                c.cout = h.deconv[i];
                c.k = 4;
                deconv_.push_back(c);
                cur = h.deconv[i];
            }
            for (size_t i = 0; i < h.conv.size(); ++i) {
                convs_.push_back(conv(hd_ + "conv_layers." + std::to_string(3 * i), "", cur, h.conv[i], h.conv_kernel));
                cur = h.conv[i];
            }
        } else {
            const bool rms = h.task == "albedo";
            // every 3x3 convolution of a dense head may be int8 (head='int8')
            input_conv_ = conv(hd_ + "input_conv.0", rms ? hd_ + "input_conv.1.norm.weight" : "", cur, cur, 3, true, true);
            for (size_t i = 0; i < h.upsample.size(); ++i) {
                const std::string pre = hd_ + "upsample_blocks." + std::to_string(i);
                ConvWeights c = conv(pre + ".0", "", cur, 4 * h.upsample[i], 3, true, true);
                if (rms) c.norm = need(pre + ".2.norm.weight", {h.upsample[i]});
                upsample_.push_back(c);
                cur = h.upsample[i];
            }
            for (size_t i = 0; i < h.conv.size(); ++i) {
                const std::string pre = hd_ + "conv_layers.";
                convs_.push_back(conv(pre + std::to_string(3 * i), rms ? pre + std::to_string(3 * i + 1) + ".norm.weight" : "", cur, h.conv[i], 3,
                                      true, true));
                cur = h.conv[i];
            }
        }
        final_ = conv(hd_ + "conv_" + h.task, "", cur, h.out_channels, 1);
        if (h.task == "pointmap") {
            cur = h.in_channels;
            for (size_t i = 0; i < h.scale_conv.size(); ++i) {
                scale_convs_.push_back(conv(hd_ + "scale_conv_layers." + std::to_string(3 * i), "", cur, h.scale_conv[i], 1));
                cur = h.scale_conv[i];
            }
            auto g = scale_grid(h.input_h, h.input_w, a.input_multiple(), h.scale_conv.size());
            cur *= g.first * g.second;
            for (size_t i = 0; i < h.scale_fc.size(); ++i) {
                Linear l;
                const std::string pre = hd_ + "scale_final_layer." + std::to_string(2 * i + 1);
                l.w = need(pre + ".weight", {h.scale_fc[i], cur});
                l.b = need(pre + ".bias", {h.scale_fc[i]});
                l.out = h.scale_fc[i];
                l.in = cur;
                scale_fc_.push_back(l);
                cur = h.scale_fc[i];
            }
        }
    }
    std::set<std::string> used(used_.begin(), used_.end());
    std::vector<std::string> extra;
    for (const auto& kv : st_->tensors())
        if (!used.count(kv.first)) extra.push_back(kv.first);
    if (!extra.empty()) {
        std::string list;
        for (size_t i = 0; i < extra.size() && i < 5; ++i) list += (i ? ", '" : "'") + extra[i] + "'";
        throw WeightsMismatchError(st_->path() + ": " + std::to_string(extra.size()) + " unexpected tensor(s) for this architecture: " + list);
    }
    std::set<std::string> kinds;
    size_t int8_acts = 0;
    auto kind = [&](const Linear& l) {
        DType t = l.w.t->dtype;
        int8_acts += l.act_int8 ? 1 : 0;
        kinds.insert(l.act_int8 ? "int8" : t == DType::I8 ? "int8-weight" : t == DType::F16 ? "float16" : t == DType::BF16 ? "bfloat16" : t == DType::F32 ? "float32" : "fp8-weight");
    };
    for (const auto* list : {&blocks_, &tok_blocks_})
        for (const auto& b : *list)
            for (const Linear* l : {&b.wq, &b.wk, &b.wv, &b.proj, &b.w12, &b.w3}) kind(*l);
    if (int8_acts != act_layers_.size())
        throw ManifestError(st_->path() + ": sapiens2_edge.native_activations names " + std::to_string(act_layers_.size() - int8_acts) + " layer(s) this model does not have");
    weight_format_ = kinds.size() == 1 ? *kinds.begin() : "mixed";
}

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

const float* Engine::int8_weights(const Param& w, int64_t out, Workspace& ws) const {
    ws.w8.resize(static_cast<size_t>(w.t->numel()));
    st_->read(*w.t, 0, w.t->nbytes, ws.w8.data());
    std::vector<float>& cs = ws.wscale;
    cs.resize(static_cast<size_t>(w.scale->numel()));
    st_->read(*w.scale, 0, w.scale->nbytes, cs.data());
    if (cs.size() == 1) cs.assign(static_cast<size_t>(out), cs[0]);
    return cs.data();
}

const float* Engine::w8a8_weights(const Linear& l, Workspace& ws, const float*& b) const {
    const float* cs = int8_weights(l.w, l.out, ws);
    b = l.b ? floats(l.b, ws.wbuf2, ws) : nullptr;
    return cs;
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
    onednn::matmul_s8(M, l.in, l.out, ws.x8.data(), ws.w8.data(), acc);
    return xs;
}

void Engine::apply_w8a8(const Linear& l, const float* x, int64_t M, int64_t T, float* y, Workspace& ws) const {
    static_assert(sizeof(int32_t) == sizeof(float), "the int32 GEMM result is converted in the float output");
    const float *cs = nullptr, *b = nullptr;
    const float* xs = w8a8_product(l, x, M, T, reinterpret_cast<int32_t*>(y), ws, cs, b);
    ops::dequantize_rows_int32(y, M, l.out, xs, cs, b);
}

void Engine::ffn_w8a8(const BlockWeights& b, const float* h, int64_t M, int64_t T, float* y, Workspace& ws) const {
    const int64_t hid = b.w3.in;
    // fc1 (gate and up) as int32 products in u; what dequantizes them is copied out of the workspace,
    // which fc2's weights and scales take next
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
    onednn::matmul_s8(M, hid, b.w3.out, ws.x8.data(), ws.w8.data(), reinterpret_cast<int32_t*>(y));
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

std::vector<Output> Engine::run(const float* x, int64_t B, int64_t H, int64_t W) const {
    if (B < 1) throw InputSizeError("the batch is empty; expected (B,3,H,W) with B >= 1");
    if (cfg_.max_batch > 0 && B > cfg_.max_batch)
        throw InputSizeError("a batch of " + std::to_string(B) + " is larger than the " + std::to_string(cfg_.max_batch) + " this artifact was exported for");
    const std::string problem = input_size_problem(cfg_.arch, H, W);
    if (!problem.empty()) throw InputSizeError(problem);
    if (cfg_.has_head && cfg_.head.task == "pointmap" && (H != cfg_.head.input_h || W != cfg_.head.input_w))
        throw InputSizeError("the pointmap head's scale branch was built for " + std::to_string(cfg_.head.input_h) + "x" + std::to_string(cfg_.head.input_w) + " inputs, got " + std::to_string(H) + "x" + std::to_string(W));
    const int64_t n = B * 3 * H * W;
    bool bad = false;
#pragma omp parallel for reduction(|| : bad) schedule(static)
    for (int64_t i = 0; i < n; ++i) bad = bad || !std::isfinite(x[i]);
    if (bad) throw InvalidTensorError("the input holds NaN or infinite values");
    st_->check_unchanged();  // the weights file is still the one validated at open
    std::unique_ptr<Workspace> taken;
    {
        std::lock_guard<std::mutex> lock(spare_mutex_);
        taken.swap(spare_);
    }
    if (!taken) taken = std::make_unique<Workspace>();
    Workspace& ws = *taken;
    std::vector<float> feat;
    int64_t hp = 0, wp = 0;
    backbone(x, B, H, W, feat, hp, wp, ws);
    ws.release_token_buffers();
    const int64_t C = cfg_.arch.embed_dim;
    std::vector<Output> outs(cfg_.output_names().size());
    if (!cfg_.has_head) {
        outs[0].shape = {B, C, hp, wp};
        outs[0].data.swap(feat);
    } else {
        for (int64_t b = 0; b < B; ++b) head(feat.data() + b * C * hp * wp, hp, wp, outs, b, B, ws);
    }
    st_->check_unchanged();  // rewritten during the run (same size): the outputs may mix old and new weights
    std::lock_guard<std::mutex> lock(spare_mutex_);
    if (!spare_) spare_.swap(taken);
    return outs;
}

size_t Engine::kept_bytes() const {
    std::lock_guard<std::mutex> lock(spare_mutex_);
    return (spare_ ? spare_->bytes() : 0) + onednn::thread_buffer_bytes();
}

Engine::~Engine() = default;

}  // namespace s2e
