#include "s2e/config.hpp"

#include <tuple>
#include <utility>

namespace s2e {

namespace {
constexpr int64_t kMaxWidth = 1 << 16, kMaxDepth = 1024;

int64_t positive(const Json& j, const std::string& key, const std::string& where, int64_t hi) {
    int64_t v = j.at(key, where).as_int(where + "." + key);
    if (v <= 0 || v > hi)
        throw ManifestError(where + "." + key + " = " + std::to_string(v) + " is outside 1.." + std::to_string(hi));
    return v;
}

std::vector<int64_t> int_list(const Json& j, const std::string& key, const std::string& where, size_t max_len) {
    std::vector<int64_t> out;
    const Json* v = j.find(key);
    if (!v || v->is_null()) return out;
    const auto& arr = v->as_array(where + "." + key);
    if (arr.size() > max_len) throw ManifestError(where + "." + key + " has more than " + std::to_string(max_len) + " entries");
    for (const Json& e : arr) {
        int64_t x = e.as_int(where + "." + key + "[]");
        if (x <= 0 || x > kMaxWidth) throw ManifestError(where + "." + key + " holds " + std::to_string(x) + ", outside 1.." + std::to_string(kMaxWidth));
        out.push_back(x);
    }
    return out;
}

// [H, W] of a manifest-like object, within the bounds of input_size_problem.
std::pair<int64_t, int64_t> input_size(const Json& s, const ArchConfig& a, const std::string& key) {
    const auto& arr = s.as_array(key);
    if (arr.size() != 2) throw ManifestError(key + " must be [H, W]");
    const int64_t h = arr[0].as_int(key + "[0]"), w = arr[1].as_int(key + "[1]");
    const std::string problem = input_size_problem(a, h, w);
    if (!problem.empty()) throw ManifestError(key + ": " + problem);
    return {h, w};
}
}  // namespace

// Input bounds. Sapiens2 is trained at 1024x768, the 4K model at 4096x3072 (spec section 4); the
// reference export's dynamic shapes stop at 2048x1536 (spec 5.1). Cost grows with the square of
// the token count (attention), so a manifest that asks for 8192x6144 would run for tens of minutes
// before anything could notice: inputs are capped at the reference's largest size, 2048x1536
// pixels with 2048 a side (either orientation), and 4096x3072 with 4096 a side for the 4K model.
std::string input_size_problem(const ArchConfig& a, int64_t h, int64_t w) {
    const int64_t m = a.input_multiple();
    const std::string size = std::to_string(h) + "x" + std::to_string(w);
    if (h < m || w < m || h % m || w % m)
        return "input size " + size + " is not a positive multiple of " + std::to_string(m) + " in both sides" +
               (a.is_4k() ? " (the 4K tokenizer needs 64)" : "");
    const int64_t side = a.is_4k() ? kMaxSide4K : kMaxSide, pixels = a.is_4k() ? kMaxPixels4K : kMaxPixels;
    if (h > side || w > side || h * w > pixels)  // h, w <= side here: no overflow
        return "input size " + size + " is larger than the engine takes: at most " + std::to_string(side) +
               " a side and " + std::to_string(pixels) + " pixels (" + (a.is_4k() ? "4096x3072" : "2048x1536") +
               (a.is_4k() ? ", the 4K model's training size)" : ", the largest size of the reference export)");
    return {};
}

ArchConfig parse_arch(const Json& j, const std::string& where) {
    j.as_object(where);
    ArchConfig a;
    a.embed_dim = positive(j, "embed_dim", where, kMaxWidth);
    a.depth = positive(j, "depth", where, kMaxDepth);
    a.num_heads = positive(j, "num_heads", where, 4096);
    a.ffn_hidden = positive(j, "ffn_hidden", where, 1 << 18);
    if (const Json* t = j.find("tokenizer_depth")) {
        a.tokenizer_depth = t->as_int(where + ".tokenizer_depth");
        if (a.tokenizer_depth < 0 || a.tokenizer_depth > 64) throw ManifestError(where + ".tokenizer_depth is outside 0..64");
    }
    if (const Json* n = j.find("name"); n && n->is_string()) a.name = n->as_string("name");
    a.kv_heads = int_list(j, "kv_heads", where, kMaxDepth);
    if (a.embed_dim % a.num_heads)
        throw ManifestError(where + ": embed_dim " + std::to_string(a.embed_dim) + " is not divisible by num_heads " + std::to_string(a.num_heads));
    if (a.head_dim() % 4) throw ManifestError(where + ": head width " + std::to_string(a.head_dim()) + " must be a multiple of 4 for 2-D RoPE");
    if (static_cast<int64_t>(a.kv_heads.size()) != a.depth)
        throw ManifestError(where + ": kv_heads has " + std::to_string(a.kv_heads.size()) + " entries, expected depth=" + std::to_string(a.depth));
    for (size_t i = 0; i < a.kv_heads.size(); ++i)
        if (a.num_heads % a.kv_heads[i])
            throw ManifestError(where + ": block " + std::to_string(i) + ": " + std::to_string(a.kv_heads[i]) + " kv heads do not divide " + std::to_string(a.num_heads) + " query heads");
    return a;
}

HeadConfig parse_head(const Json& j, const ArchConfig& arch, const std::string& where) {
    j.as_object(where);
    HeadConfig h;
    h.task = j.at("task", where).as_string(where + ".task");
    if (!find_task(h.task)) throw ManifestError(where + ": unknown task '" + h.task + "'; expected " + task_list(" or "));
    h.in_channels = positive(j, "in_channels", where, kMaxWidth);
    if (h.in_channels != arch.embed_dim)
        throw ManifestError(where + ".in_channels " + std::to_string(h.in_channels) + " differs from the backbone width " + std::to_string(arch.embed_dim));
    h.out_channels = positive(j, "out_channels", where, kMaxWidth);
    h.deconv = int_list(j, "deconv", where, 16);
    h.upsample = int_list(j, "upsample", where, 16);
    h.conv = int_list(j, "conv", where, 16);
    h.scale_conv = int_list(j, "scale_conv", where, 16);
    h.scale_fc = int_list(j, "scale_fc", where, 16);
    if (const Json* k = j.find("conv_kernel")) h.conv_kernel = k->as_int(where + ".conv_kernel");
    if (h.conv_kernel != 1 && h.conv_kernel != 3) throw ManifestError(where + ".conv_kernel must be 1 or 3");
    const bool deconv_head = h.task == "pose" || h.task == "seg";
    if (deconv_head && (h.deconv.empty() || h.conv.empty()))
        throw ManifestError(where + ": a " + h.task + " head needs 'deconv' and 'conv' widths");
    if (!deconv_head && h.conv.empty()) throw ManifestError(where + ": a " + h.task + " head needs 'conv' widths");
    if (h.task == "pointmap") {
        if (h.scale_conv.empty() || h.scale_fc.empty()) throw ManifestError(where + ": a pointmap head needs 'scale_conv' and 'scale_fc'");
        std::tie(h.input_h, h.input_w) = input_size(j.at("input_size", where), arch, where + ".input_size");
    }
    return h;
}

EngineConfig parse_engine_config(const Json& j, const std::string& where) {
    j.as_object(where);
    EngineConfig c;
    c.arch = parse_arch(j.at("arch", where), where + ".arch");
    const Json* head = j.find("head");
    if (head && !head->is_null()) {
        c.has_head = true;
        c.head = parse_head(*head, c.arch, where + ".head");
    }
    if (const Json* r = j.find("rope_mode")) {
        const std::string& m = r->as_string(where + ".rope_mode");
        if (m != "bf16" && m != "fp32") throw ManifestError(where + ": unknown rope_mode '" + m + "'; expected 'bf16' or 'fp32'");
        c.rope_bf16 = m == "bf16";
    }
    if (const Json* s = j.find("input_size"); s && !s->is_null()) {
        std::tie(c.input_h, c.input_w) = input_size(*s, c.arch, where + ".input_size");
    }
    if (const Json* b = j.find("max_batch"); b && !b->is_null()) {
        c.max_batch = b->as_int(where + ".max_batch");
        if (c.max_batch < 1 || c.max_batch > kMaxBatch)
            throw ManifestError(where + ".max_batch = " + std::to_string(c.max_batch) + " is outside 1.." +
                                std::to_string(kMaxBatch) + " (the largest batch the artifact takes)");
    }
    if (const Json* t = j.find("task"); t && !t->is_null()) {
        const std::string& task = t->as_string(where + ".task");
        if (task != c.task()) throw ManifestError(where + ": task '" + task + "' does not match the head's '" + c.task() + "'");
    }
    return c;
}

void check_manifest(const Json& m, const std::string& where) {
    m.as_object(where);
    const Json* v = m.find("schema_version");
    if (!v || !v->is_integer() || v->as_int(where + ".schema_version") < 1)
        throw ManifestError(where + ": schema_version must be an integer from 1");
    if (v->as_int(where + ".schema_version") > kSchemaVersion)
        throw ManifestError(where + " uses manifest schema " + std::to_string(v->as_int("schema_version")) +
                            ", newer than this engine's " + std::to_string(kSchemaVersion) + "; upgrade sapiens2-edge");
    static const char* kFormats[] = {"onnx", "openvino", "coreml", "torch", "native"};
    const Json* f = m.find("format");
    bool known = false;
    if (f && f->is_string())
        for (const char* name : kFormats) known = known || f->as_string("format") == name;
    if (!known) throw ManifestError(where + ": format must be one of onnx, openvino, coreml, torch, native");
    for (const char* key : {"input_size", "max_batch"}) {
        const Json* x = m.find(key);
        if (!x || x->is_null()) throw ManifestError(where + " lacks the field " + key);
    }
}

std::vector<std::string> EngineConfig::output_names() const {
    if (!has_head) return {kPretrainOutput};
    const TaskSpec* t = find_task(head.task);
    if (!t) throw ManifestError("unknown task '" + head.task + "'; expected " + task_list(" or "));
    return std::vector<std::string>(t->outputs, t->outputs + t->num_outputs);
}

}  // namespace s2e
