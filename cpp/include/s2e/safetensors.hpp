// A bounds-checked safetensors reader. Every tensor's dtype, shape and byte range is validated
// against the file before any data is touched.
//
// The file is NOT memory-mapped: a mapping turns a file rewritten or truncated by someone else
// into SIGBUS, which kills the whole process. The reader keeps the file descriptor, reads only
// the header at open, and copies tensor bytes with pread() on demand (read()); a short read, or a
// file whose identity (device, inode, size, mtime) differs from the one validated at open
// (check_unchanged()), becomes a FileChangedError.
//
// A file renamed over the path (the atomic way to update an artifact) leaves the opened inode
// intact and open: the reader keeps serving the weights it validated. The change time is not part
// of the identity, since that rename, a chmod or a new hard link all change it without touching
// the contents.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "s2e/common.hpp"

namespace s2e {

// The weights file was rewritten, truncated or replaced in place after it was opened and
// validated; the artifact must be reopened (CorruptCheckpointError in Python).
struct FileChangedError : CorruptFileError {
    using CorruptFileError::CorruptFileError;
};

enum class DType { F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL, F8_E4M3, F8_E5M2, U16, U32, U64 };

const char* dtype_name(DType d);
size_t dtype_size(DType d);

// The product of `shape`, checked step by step so that it never exceeds `limit` (no overflow,
// whatever the dims): false when some partial product of the non-zero dims would pass `limit`,
// or a dim is negative. A shape with a zero dim has 0 elements and fits.
bool checked_numel(const std::vector<int64_t>& shape, uint64_t limit, uint64_t& numel);

struct TensorView {
    std::string name;
    DType dtype = DType::F32;
    std::vector<int64_t> shape;
    uint64_t offset = 0;  // of the first byte, from the start of the file
    size_t nbytes = 0;

    int64_t numel() const;  // validated at parse time: never overflows
    std::string shape_str() const;
};

// What identifies the file contents a reader validated (compared before and after each engine run).
struct FileIdentity {
    uint64_t dev = 0, ino = 0, size = 0;
    int64_t mtime_s = 0, mtime_ns = 0;
    bool operator==(const FileIdentity& o) const;
    bool operator!=(const FileIdentity& o) const { return !(*this == o); }
};

class SafeTensors {
public:
    // Header limit: safetensors itself refuses headers over 100 MB.
    static constexpr uint64_t kMaxHeader = 100ull << 20;

    static std::shared_ptr<SafeTensors> open(const std::string& path);
    // Parses a copy of an in-memory file (tests and fuzzing).
    static std::shared_ptr<SafeTensors> from_bytes(const void* data, size_t size, const std::string& name = "<bytes>");
    ~SafeTensors();
    SafeTensors(const SafeTensors&) = delete;
    SafeTensors& operator=(const SafeTensors&) = delete;

    const std::string& path() const { return path_; }
    const std::map<std::string, TensorView>& tensors() const { return tensors_; }
    const std::map<std::string, std::string>& metadata() const { return metadata_; }
    const TensorView* find(const std::string& name) const;
    size_t file_size() const { return size_; }

    // Copies bytes [begin, begin + len) of tensor `t` into `dst`. The range is checked against
    // the tensor; a short read (the file shrank) throws FileChangedError. Thread-safe.
    void read(const TensorView& t, size_t begin, size_t len, void* dst) const;
    // Throws FileChangedError when the open file is no longer the one validated at open (it was
    // truncated or rewritten in place). A no-op for in-memory files.
    void check_unchanged() const;

private:
    SafeTensors() = default;
    void parse(const uint8_t* header, uint64_t n);
    void read_at(uint64_t offset, size_t len, void* dst) const;

    std::string path_;
    size_t size_ = 0;
    int fd_ = -1;               // the open file, or -1 when `owned_` holds the bytes
    FileIdentity identity_;     // of fd_ when it was validated
    std::vector<uint8_t> owned_;
    std::map<std::string, TensorView> tensors_;
    std::map<std::string, std::string> metadata_;
};

}  // namespace s2e
