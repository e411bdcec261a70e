// Engine configuration: the backbone (ArchSpec) and head (HeadSpec) of sapiens2_edge.models.arch,
// read from manifest.json, from a JSON string, or from a quantized checkpoint's metadata.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "s2e/json.hpp"
#include "s2e/spec.hpp"

namespace s2e {

struct ArchConfig {
    int64_t embed_dim = 0, depth = 0, num_heads = 0, ffn_hidden = 0, tokenizer_depth = 0;
    std::vector<int64_t> kv_heads;
    std::string name = "custom";
    int64_t head_dim() const { return embed_dim / num_heads; }
    bool is_4k() const { return tokenizer_depth > 0; }
    int64_t input_multiple() const { return kPatch * (is_4k() ? kWindow : 1); }
};

struct HeadConfig {
    std::string task;
    int64_t in_channels = 0, out_channels = 0, conv_kernel = 1;
    std::vector<int64_t> deconv, upsample, conv, scale_conv, scale_fc;
    int64_t input_h = 0, input_w = 0;  // pointmap only
};

struct EngineConfig {
    ArchConfig arch;
    bool has_head = false;
    HeadConfig head;
    bool rope_bf16 = true;
    int64_t input_h = 0, input_w = 0;  // the artifact's input size (0: not given)
    int64_t max_batch = 0;             // 0: no limit
    std::string task() const { return has_head ? head.task : std::string(); }
    std::vector<std::string> output_names() const;
};

// The largest input the engine takes, per side and in pixels (justified in config.cpp), and the
// largest max_batch a configuration may declare.
constexpr int64_t kMaxSide = 2048, kMaxPixels = 2048 * 1536;
constexpr int64_t kMaxSide4K = 4096, kMaxPixels4K = 4096 * 3072;
constexpr int64_t kMaxBatch = 1024;
// Empty when an H x W input suits the architecture; otherwise a sentence that says what is wrong
// with it and what was expected (the caller picks the error type).
std::string input_size_problem(const ArchConfig& a, int64_t h, int64_t w);

ArchConfig parse_arch(const Json& j, const std::string& where);
HeadConfig parse_head(const Json& j, const ArchConfig& arch, const std::string& where);
// From a manifest-like object: arch, head (object or null), rope_mode, optional input_size and max_batch.
EngineConfig parse_engine_config(const Json& j, const std::string& where);

// The manifest schema version this engine reads (sapiens2_edge.artifact.schema.SCHEMA_VERSION).
constexpr int64_t kSchemaVersion = 1;
// The fields of an artifact manifest the engine relies on beyond parse_engine_config, with the
// bounds of the Python validator (sapiens2_edge/artifact/schema.py): schema_version, format,
// and input_size / max_batch present.
void check_manifest(const Json& m, const std::string& where);

}  // namespace s2e
