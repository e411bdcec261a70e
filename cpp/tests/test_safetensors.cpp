// Unit tests of the bounds-checked safetensors reader: in-memory files, checked shape products,
// and files on disk changed (truncated, rewritten) after they were opened.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "s2e/safetensors.hpp"
#include "s2e_check.hpp"

using s2e::CorruptFileError;
using s2e::FileChangedError;
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
    uint8_t q0 = 0;
    st->read(*q, 0, 1, &q0);
    CHECK(q && q->dtype == s2e::DType::I8 && q0 == 16);
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

S2E_TEST(checked_products) {
    uint64_t n = 7;
    CHECK(s2e::checked_numel({2, 3, 4}, 24, n) && n == 24);
    CHECK(!s2e::checked_numel({2, 3, 4}, 23, n));
    CHECK(s2e::checked_numel({}, 1, n) && n == 1);                          // a scalar
    CHECK(!s2e::checked_numel({}, 0, n));                                   // ... that does not fit
    CHECK(s2e::checked_numel({INT64_MAX, INT64_MAX, 0}, 0, n) && n == 0);  // empty, whatever the others
    CHECK(!s2e::checked_numel({INT64_MAX, INT64_MAX}, UINT64_MAX, n));     // would overflow 64 bits
    CHECK(!s2e::checked_numel({1ll << 32, 1ll << 32}, UINT64_MAX, n));     // exactly 2^64: overflow
    CHECK(s2e::checked_numel({1ll << 31, 1ll << 32}, UINT64_MAX, n) && n == 1ull << 63);
    CHECK(!s2e::checked_numel({-1}, 100, n));
    CHECK(!s2e::checked_numel({1 << 20, 1 << 20, 1 << 20, 1 << 20}, 1ull << 40, n));
}

S2E_TEST(shapes_checked_against_the_file) {
    // Eight huge dims: refused by the checked product (against the 8 data bytes), not multiplied.
    EXPECT_THROW(parse(file(R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296, 4294967296, 4294967296,)"
                            R"( 4294967296, 4294967296, 4294967296, 4294967296], "data_offsets": [0, 8]}})", 8)),
                 CorruptFileError);
    EXPECT_THROW(parse(file(R"({"w": {"dtype": "F64", "shape": [2], "data_offsets": [0, 8]}})", 8)), CorruptFileError);
    auto st = parse(file(R"({"e": {"dtype": "F32", "shape": [9223372036854775807, 0], "data_offsets": [0, 0]}})", 0));
    CHECK(st->find("e") && st->find("e")->numel() == 0 && st->find("e")->nbytes == 0);
    try {
        parse(file(R"({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 4]}})", 4));
        CHECK(false);
    } catch (const CorruptFileError& e) {
        CHECK(std::string(e.what()).find("4 bytes do not hold a F32 tensor of shape (3,) (its size overflows the 4 data bytes") != std::string::npos);
    }
}

static std::string write_temp(const std::vector<uint8_t>& bytes) {
    char name[] = "/tmp/s2e_test_st_XXXXXX";
    int fd = ::mkstemp(name);
    CHECK(fd >= 0);
    CHECK(::write(fd, bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size()));
    ::close(fd);
    return name;
}

static void overwrite(const std::string& path, const std::vector<uint8_t>& bytes) {
    int fd = ::open(path.c_str(), O_WRONLY | O_TRUNC);  // in place: the same inode
    CHECK(fd >= 0);
    CHECK(::write(fd, bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size()));
    ::close(fd);
}

static bool throws_changed(const std::function<void()>& fn) {
    try {
        fn();
    } catch (const FileChangedError& e) {
        return std::string(e.what()).find("changed since it was opened") != std::string::npos &&
               std::string(e.what()).find("reopen the artifact") != std::string::npos;
    }
    return false;
}

S2E_TEST(file_reads_and_changes) {
    const auto bytes = file(kValid, 19);
    const std::string path = write_temp(bytes);
    auto st = SafeTensors::open(path);
    const auto* w = st->find("w");
    CHECK(w && w->offset == 8 + kValid.size() && w->nbytes == 16);
    std::vector<uint8_t> got(16);
    st->read(*w, 0, 16, got.data());
    CHECK(got[0] == 0 && got[15] == 15);
    st->read(*w, 4, 4, got.data());
    CHECK(got[0] == 4);
    EXPECT_THROW(st->read(*w, 8, 9, got.data()), CorruptFileError);  // past the tensor
    EXPECT_THROW(st->read(*w, 17, 0, got.data()), CorruptFileError);
    st->check_unchanged();

    // Truncated in place: the identity check and every read refuse with FileChangedError.
    CHECK(::truncate(path.c_str(), 20) == 0);
    CHECK(throws_changed([&] { st->check_unchanged(); }));
    CHECK(throws_changed([&] { st->read(*w, 0, 16, got.data()); }));

    // Rewritten in place with the same size: caught by the modification time (pinned to a
    // distinct one here so that the test does not depend on the clock's granularity).
    overwrite(path, bytes);
    auto st2 = SafeTensors::open(path);
    st2->check_unchanged();
    auto flipped = bytes;
    flipped.back() ^= 1;
    overwrite(path, flipped);
    struct timespec times[2] = {{1, 0}, {1, 0}};
    CHECK(::utimensat(AT_FDCWD, path.c_str(), times, 0) == 0);
    CHECK(throws_changed([&] { st2->check_unchanged(); }));

    // Metadata-only changes (mode, links) leave the contents alone and are not refused.
    auto st3 = SafeTensors::open(path);
    CHECK(::chmod(path.c_str(), 0400) == 0);
    const std::string link = path + ".link";
    CHECK(::link(path.c_str(), link.c_str()) == 0);
    ::unlink(link.c_str());
    st3->check_unchanged();

    // Replaced (a new file renamed over the path): the open file is the old inode, still intact.
    const std::string other = write_temp(file(kValid, 19));
    CHECK(::rename(other.c_str(), path.c_str()) == 0);
    st3->check_unchanged();
    st3->read(*st3->find("q"), 0, 3, got.data());
    CHECK(got[0] == 16 && got[2] == (18 ^ 1));  // the flipped file it opened, not the replacement
    ::unlink(path.c_str());
}

S2E_TEST(open_missing_file) { EXPECT_THROW(SafeTensors::open("/nonexistent/w.safetensors"), CorruptFileError); }

S2E_TEST_MAIN()
