// Unit tests of the bounds-checked safetensors reader (in-memory files).
#include <cstdint>
#include <string>
#include <vector>

#include "s2e/safetensors.hpp"
#include "s2e_check.hpp"

using s2e::CorruptFileError;
using s2e::SafeTensors;

static std::vector<uint8_t> file(const std::string& header, size_t data_bytes, uint64_t claimed = UINT64_MAX) {
    uint64_t n = claimed == UINT64_MAX ? header.size() : claimed;
    std::vector<uint8_t> out(8);
    for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(n >> (8 * i));
    for (char c : header) out.push_back(static_cast<uint8_t>(c));
    for (size_t i = 0; i < data_bytes; ++i) out.push_back(static_cast<uint8_t>(i));
    return out;
}

static std::shared_ptr<SafeTensors> parse(const std::vector<uint8_t>& f) { return SafeTensors::from_bytes(f.data(), f.size()); }

static const std::string kValid =
    R"({"__metadata__": {"k": "v"}, "w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},)"
    R"( "q": {"dtype": "I8", "shape": [3], "data_offsets": [16, 19]}})";

S2E_TEST(valid_file) {
    auto st = parse(file(kValid, 19));
    CHECK(st->tensors().size() == 2);
    const auto* w = st->find("w");
    CHECK(w && w->dtype == s2e::DType::F32 && w->numel() == 4 && w->nbytes == 16);
    const auto* q = st->find("q");
    CHECK(q && q->dtype == s2e::DType::I8 && q->data[0] == 16);
    CHECK(st->metadata().at("k") == "v");
    CHECK(w->shape_str() == "(2, 2)" && q->shape_str() == "(3,)");
}

S2E_TEST(every_truncation_rejected) {
    auto f = file(kValid, 19);
    for (size_t n = 0; n < f.size(); ++n) EXPECT_THROW(SafeTensors::from_bytes(f.data(), n), CorruptFileError);
}

S2E_TEST(lying_headers) {
    EXPECT_THROW(parse(file("{}", 0, 1ull << 40)), CorruptFileError);  // huge header length
    EXPECT_THROW(parse(file("{}", 0, 100)), CorruptFileError);        // header past the end
    EXPECT_THROW(parse(file(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 16]}})", 8)), CorruptFileError);
    EXPECT_THROW(parse(file(R"({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})", 8)), CorruptFileError);
    EXPECT_THROW(parse(file(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}})", 8)), CorruptFileError);
    EXPECT_THROW(parse(file(R"({"w": {"dtype": "X", "shape": [1], "data_offsets": [0, 4]}})", 8)), CorruptFileError);
    EXPECT_THROW(parse(file(R"({"w": {"dtype": "F32", "shape": [4611686018427387904, 8], "data_offsets": [0, 4]}})", 8)),
                 CorruptFileError);
    EXPECT_THROW(parse(file(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},)"
                            R"( "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})", 8)), CorruptFileError);
    EXPECT_THROW(parse(file(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": 1}})", 8)), CorruptFileError);
    EXPECT_THROW(parse(file(R"({"__metadata__": {"k": 1}})", 0)), CorruptFileError);
    EXPECT_THROW(parse(file("[]", 0)), CorruptFileError);
    EXPECT_THROW(parse(file("{\"a\": ", 0)), CorruptFileError);
}

S2E_TEST(open_missing_file) { EXPECT_THROW(SafeTensors::open("/nonexistent/w.safetensors"), CorruptFileError); }

S2E_TEST_MAIN()
