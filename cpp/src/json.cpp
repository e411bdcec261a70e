#include "s2e/json.hpp"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <unordered_set>

namespace s2e {

namespace {
const char* type_name(Json::Type t) {
    switch (t) {
        case Json::Type::Null: return "null";
        case Json::Type::Bool: return "a boolean";
        case Json::Type::Number: return "a number";
        case Json::Type::String: return "a string";
        case Json::Type::Array: return "an array";
        case Json::Type::Object: return "an object";
    }
    return "?";
}

[[noreturn]] void wrong(const std::string& what, const char* want, Json::Type got) {
    throw ManifestError(what + " must be " + want + ", found " + type_name(got));
}
}  // namespace

bool Json::as_bool(const std::string& what) const {
    if (type_ != Type::Bool) wrong(what, "a boolean", type_);
    return bool_;
}
double Json::as_number(const std::string& what) const {
    if (type_ != Type::Number) wrong(what, "a number", type_);
    return num_;
}
int64_t Json::as_int(const std::string& what) const {
    if (!is_integer()) wrong(what, "an integer", type_);
    return int_;
}
const std::string& Json::as_string(const std::string& what) const {
    if (type_ != Type::String) wrong(what, "a string", type_);
    return str_;
}
const std::vector<Json>& Json::as_array(const std::string& what) const {
    if (type_ != Type::Array) wrong(what, "an array", type_);
    return arr_;
}
const std::vector<std::pair<std::string, Json>>& Json::as_object(const std::string& what) const {
    if (type_ != Type::Object) wrong(what, "an object", type_);
    return obj_;
}
const Json* Json::find(const std::string& key) const {
    if (type_ != Type::Object) return nullptr;
    for (const auto& kv : obj_)
        if (kv.first == key) return &kv.second;
    return nullptr;
}
const Json& Json::at(const std::string& key, const std::string& what) const {
    const Json* v = find(key);
    if (!v) throw ManifestError(what + " lacks the field '" + key + "'");
    return *v;
}

class JsonParser {
public:
    JsonParser(const char* data, size_t size, const JsonLimits& lim) : p_(data), end_(data + size), begin_(data), lim_(lim) {}

    Json document() {
        Json v = value(0);
        skip_ws();
        if (p_ != end_) fail("trailing characters after the JSON value");
        return v;
    }

private:
    const char* p_;
    const char* end_;
    const char* begin_;
    JsonLimits lim_;
    size_t items_ = 0;

    [[noreturn]] void fail(const std::string& msg) const {
        throw JsonError("invalid JSON at byte " + std::to_string(p_ - begin_) + ": " + msg);
    }
    void skip_ws() {
        while (p_ < end_ && (*p_ == ' ' || *p_ == '\t' || *p_ == '\n' || *p_ == '\r')) ++p_;
    }
    bool literal(const char* word) {
        size_t n = std::strlen(word);
        if (static_cast<size_t>(end_ - p_) < n || std::memcmp(p_, word, n) != 0) return false;
        p_ += n;
        return true;
    }

    Json value(int depth) {
        if (depth > lim_.max_depth) fail("nesting deeper than " + std::to_string(lim_.max_depth));
        if (++items_ > lim_.max_items) fail("more than " + std::to_string(lim_.max_items) + " values");
        skip_ws();
        if (p_ >= end_) fail("unexpected end of input");
        Json v;
        char c = *p_;
        if (c == '{') {
            v.type_ = Json::Type::Object;
            ++p_;
            skip_ws();
            if (p_ < end_ && *p_ == '}') { ++p_; return v; }
            std::unordered_set<std::string> seen;
            for (;;) {
                skip_ws();
                if (p_ >= end_ || *p_ != '"') fail("expected a string key");
                std::string key = string();
                if (!seen.insert(key).second) fail("duplicate key '" + key + "'");
                skip_ws();
                if (p_ >= end_ || *p_ != ':') fail("expected ':' after a key");
                ++p_;
                v.obj_.emplace_back(std::move(key), value(depth + 1));
                skip_ws();
                if (p_ >= end_) fail("unterminated object");
                if (*p_ == ',') { ++p_; continue; }
                if (*p_ == '}') { ++p_; break; }
                fail("expected ',' or '}' in an object");
            }
        } else if (c == '[') {
            v.type_ = Json::Type::Array;
            ++p_;
            skip_ws();
            if (p_ < end_ && *p_ == ']') { ++p_; return v; }
            for (;;) {
                v.arr_.push_back(value(depth + 1));
                skip_ws();
                if (p_ >= end_) fail("unterminated array");
                if (*p_ == ',') { ++p_; continue; }
                if (*p_ == ']') { ++p_; break; }
                fail("expected ',' or ']' in an array");
            }
        } else if (c == '"') {
            v.type_ = Json::Type::String;
            v.str_ = string();
        } else if (literal("true")) {
            v.type_ = Json::Type::Bool;
            v.bool_ = true;
        } else if (literal("false")) {
            v.type_ = Json::Type::Bool;
        } else if (literal("null")) {
        } else if (c == '-' || (c >= '0' && c <= '9')) {
            number(v);
        } else {
            fail(std::string("unexpected character '") + (c >= 32 && c < 127 ? std::string(1, c) : "?") + "'");
        }
        return v;
    }

    void number(Json& v) {
        const char* start = p_;
        bool integral = true;
        if (*p_ == '-') ++p_;
        if (p_ >= end_ || !(*p_ >= '0' && *p_ <= '9')) fail("a number needs digits");
        if (*p_ == '0') {
            ++p_;
        } else {
            while (p_ < end_ && *p_ >= '0' && *p_ <= '9') ++p_;
        }
        if (p_ < end_ && *p_ == '.') {
            integral = false;
            ++p_;
            if (p_ >= end_ || !(*p_ >= '0' && *p_ <= '9')) fail("digits expected after '.'");
            while (p_ < end_ && *p_ >= '0' && *p_ <= '9') ++p_;
        }
        if (p_ < end_ && (*p_ == 'e' || *p_ == 'E')) {
            integral = false;
            ++p_;
            if (p_ < end_ && (*p_ == '+' || *p_ == '-')) ++p_;
            if (p_ >= end_ || !(*p_ >= '0' && *p_ <= '9')) fail("digits expected in the exponent");
            while (p_ < end_ && *p_ >= '0' && *p_ <= '9') ++p_;
        }
        std::string text(start, p_);  // strtod needs a terminated copy
        if (text.size() > 400) fail("number literal too long");
        v.type_ = Json::Type::Number;
        v.num_ = std::strtod(text.c_str(), nullptr);
        if (!std::isfinite(v.num_)) fail("number out of range");
        if (integral) {
            errno = 0;
            long long i = std::strtoll(text.c_str(), nullptr, 10);
            if (errno == 0) {
                v.integral_ = true;
                v.int_ = i;
            }
        }
    }

    unsigned hex4() {
        if (end_ - p_ < 4) fail("truncated \\u escape");
        unsigned u = 0;
        for (int i = 0; i < 4; ++i) {
            char h = *p_++;
            u <<= 4;
            if (h >= '0' && h <= '9') u |= h - '0';
            else if (h >= 'a' && h <= 'f') u |= h - 'a' + 10;
            else if (h >= 'A' && h <= 'F') u |= h - 'A' + 10;
            else fail("bad hex digit in a \\u escape");
        }
        return u;
    }

    static void utf8(std::string& out, unsigned cp) {
        if (cp < 0x80) {
            out += static_cast<char>(cp);
        } else if (cp < 0x800) {
            out += static_cast<char>(0xc0 | (cp >> 6));
            out += static_cast<char>(0x80 | (cp & 0x3f));
        } else if (cp < 0x10000) {
            out += static_cast<char>(0xe0 | (cp >> 12));
            out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
            out += static_cast<char>(0x80 | (cp & 0x3f));
        } else {
            out += static_cast<char>(0xf0 | (cp >> 18));
            out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
            out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
            out += static_cast<char>(0x80 | (cp & 0x3f));
        }
    }

    // One multi-byte UTF-8 character whose lead byte `c` was just read: well-formed (no overlong
    // forms, surrogates or code points past U+10FFFF) or a JsonError.
    void utf8_sequence(std::string& out, unsigned char c) {
        int extra;
        unsigned cp;
        if (c >= 0xc2 && c <= 0xdf) { extra = 1; cp = c & 0x1f; }
        else if (c >= 0xe0 && c <= 0xef) { extra = 2; cp = c & 0x0f; }
        else if (c >= 0xf0 && c <= 0xf4) { extra = 3; cp = c & 0x07; }
        else fail("invalid UTF-8 in a string");
        if (end_ - p_ < extra) fail("truncated UTF-8 in a string");
        out += static_cast<char>(c);
        for (int i = 0; i < extra; ++i) {
            unsigned char b = static_cast<unsigned char>(*p_++);
            if ((b & 0xc0) != 0x80) fail("invalid UTF-8 in a string");
            cp = (cp << 6) | (b & 0x3f);
            out += static_cast<char>(b);
        }
        if ((extra == 2 && (cp < 0x800 || (cp >= 0xd800 && cp < 0xe000))) || (extra == 3 && (cp < 0x10000 || cp > 0x10ffff)))
            fail("invalid UTF-8 in a string");
    }

    std::string string() {
        ++p_;  // opening quote
        std::string out;
        for (;;) {
            if (p_ >= end_) fail("unterminated string");
            unsigned char c = static_cast<unsigned char>(*p_++);
            if (c == '"') break;
            if (c < 0x20) fail("control character inside a string");
            if (c >= 0x80) {
                utf8_sequence(out, c);
                continue;
            }
            if (c != '\\') {
                out += static_cast<char>(c);
                continue;
            }
            if (p_ >= end_) fail("unterminated escape");
            char e = *p_++;
            switch (e) {
                case '"': out += '"'; break;
                case '\\': out += '\\'; break;
                case '/': out += '/'; break;
                case 'b': out += '\b'; break;
                case 'f': out += '\f'; break;
                case 'n': out += '\n'; break;
                case 'r': out += '\r'; break;
                case 't': out += '\t'; break;
                case 'u': {
                    unsigned cp = hex4();
                    if (cp >= 0xd800 && cp < 0xdc00) {
                        if (end_ - p_ < 2 || p_[0] != '\\' || p_[1] != 'u') fail("unpaired surrogate");
                        p_ += 2;
                        unsigned lo = hex4();
                        if (lo < 0xdc00 || lo >= 0xe000) fail("bad low surrogate");
                        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                    } else if (cp >= 0xdc00 && cp < 0xe000) {
                        fail("unpaired low surrogate");
                    }
                    utf8(out, cp);
                    break;
                }
                default: fail("unknown escape");
            }
        }
        return out;
    }
};

Json Json::parse(const char* data, size_t size, const JsonLimits& limits) {
    if (size > limits.max_bytes)
        throw JsonError("JSON document of " + std::to_string(size) + " bytes exceeds the limit of " +
                        std::to_string(limits.max_bytes));
    JsonParser parser(data, size, limits);
    return parser.document();
}

}  // namespace s2e
