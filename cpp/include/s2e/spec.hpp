// Facts the Sapiens2 specification fixes: the one C++ table of them, the twin of
// sapiens2_edge/spec.py. tests/test_spec_facts.py parses this file and checks the two are equal.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace s2e {

constexpr int64_t kPatch = 16;
constexpr int64_t kStorageTokens = 8;
constexpr int64_t kPrefixTokens = 1 + kStorageTokens;  // CLS + 8 storage tokens
constexpr int64_t kWindow = 4;                          // 4K tokenizer: 4x4 patch windows

// A task and the raw outputs of its head, in the order a backend returns them.
struct TaskSpec {
    const char* name;
    int num_outputs;
    const char* outputs[2];
};

inline constexpr TaskSpec kTaskSpecs[] = {
    {"pose", 1, {"heatmaps"}},
    {"seg", 1, {"logits"}},
    {"normal", 1, {"normal"}},
    {"pointmap", 2, {"pointmap", "scale"}},
    {"albedo", 1, {"albedo"}},
};
inline constexpr const char* kPretrainOutput = "featmap";  // a backbone without a head

// The entry of `task`, or nullptr for a task the specification does not know.
inline const TaskSpec* find_task(const std::string& task) {
    for (const TaskSpec& t : kTaskSpecs)
        if (task == t.name) return &t;
    return nullptr;
}

// "pose, seg, normal, pointmap<last>albedo", for error messages (`last`: ", " or " or ").
inline std::string task_list(const char* last = ", ") {
    constexpr size_t n = sizeof(kTaskSpecs) / sizeof(kTaskSpecs[0]);
    std::string s;
    for (size_t i = 0; i < n; ++i) s += std::string(i == 0 ? "" : i + 1 == n ? last : ", ") + kTaskSpecs[i].name;
    return s;
}

}  // namespace s2e
