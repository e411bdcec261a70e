// A bounds-checked safetensors reader. The file is memory-mapped read-only; every tensor's
// dtype, shape and byte range is validated against the file before any data is touched.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "s2e/common.hpp"

namespace s2e {

enum class DType { F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL, F8_E4M3, F8_E5M2, U16, U32, U64 };

const char* dtype_name(DType d);
size_t dtype_size(DType d);

struct TensorView {
    std::string name;
    DType dtype = DType::F32;
    std::vector<int64_t> shape;
    const uint8_t* data = nullptr;  // inside the mapping; not necessarily aligned
    size_t nbytes = 0;

    int64_t numel() const;
    std::string shape_str() const;
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

private:
    SafeTensors() = default;
    void parse();

    std::string path_;
    const uint8_t* base_ = nullptr;
    size_t size_ = 0;
    void* map_ = nullptr;  // mmap region, or nullptr when `owned_` holds the bytes
    std::vector<uint8_t> owned_;
    std::map<std::string, TensorView> tensors_;
    std::map<std::string, std::string> metadata_;
};

}  // namespace s2e
