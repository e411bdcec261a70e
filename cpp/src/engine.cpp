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

#include "engine_workspace.hpp"
#include "s2e/attention.hpp"
#include "s2e/onednn.hpp"
#include "s2e/ops.hpp"

namespace s2e {

namespace {
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

// A head layer kind's algorithm from the environment variable `var`: "auto" when unset, else "auto",
// "winograd" or "direct" (anything else refused, naming the variable)
std::string algorithm_from_env(const char* var, const std::string& layer) {
    const char* env = std::getenv(var);
    const std::string v = env && *env ? env : "auto";
    if (v != "auto" && v != "winograd" && v != "direct")
        throw UnsupportedError(std::string(var) + "='" + v + "' is not a " + layer +
                               " algorithm the engine has; expected 'auto', 'winograd' or 'direct'");
    return v;
}
}  // namespace

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
    conv3x3_ = algorithm_from_env("S2E_NATIVE_CONV3X3", "convolution");
    deconv_algorithm_ = algorithm_from_env("S2E_NATIVE_DECONV", "transposed convolution");
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
    const char* packing = std::getenv("S2E_NATIVE_INT8_WEIGHTS");
    const std::string mode = packing && *packing ? packing : "packed";
    if (mode != "packed" && mode != "file")
        throw UnsupportedError("S2E_NATIVE_INT8_WEIGHTS='" + mode + "' is not a place the engine keeps int8 weights; expected 'packed' or 'file'");
    pack_int8_weights(mode);
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
