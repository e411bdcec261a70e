// A small, strict JSON parser for manifest.json and safetensors headers.
// Bounded: nesting depth, document size and container sizes are limited, duplicate object keys are
// rejected, and every malformed input raises s2e::JsonError (never undefined behaviour).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "s2e/common.hpp"

namespace s2e {

struct JsonLimits {
    size_t max_bytes = 64u << 20;  // whole document
    int max_depth = 64;
    size_t max_items = 1u << 22;  // values in one document
};

class Json {
public:
    enum class Type { Null, Bool, Number, String, Array, Object };

    Json() = default;
    Type type() const { return type_; }
    bool is_null() const { return type_ == Type::Null; }
    bool is_number() const { return type_ == Type::Number; }
    bool is_string() const { return type_ == Type::String; }
    bool is_array() const { return type_ == Type::Array; }
    bool is_object() const { return type_ == Type::Object; }
    bool is_bool() const { return type_ == Type::Bool; }
    // True when the number was written as an integer literal that fits int64.
    bool is_integer() const { return type_ == Type::Number && integral_; }

    bool as_bool(const std::string& what) const;
    double as_number(const std::string& what) const;
    int64_t as_int(const std::string& what) const;
    const std::string& as_string(const std::string& what) const;
    const std::vector<Json>& as_array(const std::string& what) const;
    const std::vector<std::pair<std::string, Json>>& as_object(const std::string& what) const;

    // Object member or nullptr.
    const Json* find(const std::string& key) const;
    // Object member; ManifestError naming `what` when absent.
    const Json& at(const std::string& key, const std::string& what) const;

    static Json parse(const char* data, size_t size, const JsonLimits& limits = JsonLimits());
    static Json parse(const std::string& text, const JsonLimits& limits = JsonLimits()) {
        return parse(text.data(), text.size(), limits);
    }

private:
    friend class JsonParser;
    Type type_ = Type::Null;
    bool bool_ = false;
    bool integral_ = false;
    double num_ = 0.0;
    int64_t int_ = 0;
    std::string str_;
    std::vector<Json> arr_;
    std::vector<std::pair<std::string, Json>> obj_;
};

}  // namespace s2e
