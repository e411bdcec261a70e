#include "s2e/safetensors.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <limits>

#include "s2e/json.hpp"

namespace s2e {

namespace {
struct DTypeInfo {
    const char* name;
    DType dtype;
    size_t size;
};
const DTypeInfo kDTypes[] = {
    {"F64", DType::F64, 8},   {"F32", DType::F32, 4},         {"F16", DType::F16, 2},
    {"BF16", DType::BF16, 2}, {"I64", DType::I64, 8},         {"I32", DType::I32, 4},
    {"I16", DType::I16, 2},   {"I8", DType::I8, 1},           {"U8", DType::U8, 1},
    {"BOOL", DType::BOOL, 1}, {"F8_E4M3", DType::F8_E4M3, 1}, {"F8_E5M2", DType::F8_E5M2, 1},
    {"U16", DType::U16, 2},   {"U32", DType::U32, 4},         {"U64", DType::U64, 8},
};
constexpr size_t kMaxRank = 8;
}  // namespace

const char* dtype_name(DType d) {
    for (const auto& i : kDTypes)
        if (i.dtype == d) return i.name;
    return "?";
}
size_t dtype_size(DType d) {
    for (const auto& i : kDTypes)
        if (i.dtype == d) return i.size;
    return 0;
}

int64_t TensorView::numel() const {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    return n;
}
std::string TensorView::shape_str() const {
    std::string s = "(";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + (shape.size() == 1 ? ",)" : ")");
}

std::shared_ptr<SafeTensors> SafeTensors::open(const std::string& path) {
    std::shared_ptr<SafeTensors> st(new SafeTensors());
    st->path_ = path;
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw CorruptFileError("cannot open " + path + ": " + std::strerror(errno));
    struct stat sb {};
    if (::fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        ::close(fd);
        throw CorruptFileError(path + " is not a regular file");
    }
    st->size_ = static_cast<size_t>(sb.st_size);
    if (st->size_ > 0) {
        void* m = ::mmap(nullptr, st->size_, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            ::close(fd);
            throw CorruptFileError("cannot map " + path + ": " + std::strerror(errno));
        }
        st->map_ = m;
        st->base_ = static_cast<const uint8_t*>(m);
    }
    ::close(fd);
    st->parse();
    return st;
}

std::shared_ptr<SafeTensors> SafeTensors::from_bytes(const void* data, size_t size, const std::string& name) {
    std::shared_ptr<SafeTensors> st(new SafeTensors());
    st->path_ = name;
    st->owned_.assign(static_cast<const uint8_t*>(data), static_cast<const uint8_t*>(data) + size);
    st->base_ = st->owned_.data();
    st->size_ = size;
    st->parse();
    return st;
}

SafeTensors::~SafeTensors() {
    if (map_) ::munmap(map_, size_);
}

const TensorView* SafeTensors::find(const std::string& name) const {
    auto it = tensors_.find(name);
    return it == tensors_.end() ? nullptr : &it->second;
}

void SafeTensors::parse() {
    const std::string& p = path_;
    if (size_ < 8)
        throw CorruptFileError(p + " is truncated: " + std::to_string(size_) +
                               " bytes, a safetensors file starts with an 8-byte header length");
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | base_[i];  // little-endian
    if (n > kMaxHeader)
        throw CorruptFileError(p + ": header length " + std::to_string(n) + " exceeds the " +
                               std::to_string(kMaxHeader) + "-byte limit (not a safetensors file, or corrupt)");
    if (n > size_ - 8)
        throw CorruptFileError(p + " is truncated: the header claims " + std::to_string(n) + " bytes but only " +
                               std::to_string(size_ - 8) + " follow");
    if (n < 2) throw CorruptFileError(p + ": empty safetensors header");
    Json header;
    try {
        JsonLimits lim;
        lim.max_bytes = kMaxHeader;
        lim.max_depth = 8;  // {name: {shape: [..]}} needs 3
        header = Json::parse(reinterpret_cast<const char*>(base_ + 8), static_cast<size_t>(n), lim);
    } catch (const JsonError& e) {
        throw CorruptFileError(p + ": the safetensors header is not valid JSON (" + e.what() + ")");
    }
    if (!header.is_object()) throw CorruptFileError(p + ": the safetensors header must be a JSON object");
    const uint8_t* data = base_ + 8 + n;
    const uint64_t data_size = size_ - 8 - n;
    std::vector<std::pair<uint64_t, uint64_t>> ranges;
    for (const auto& kv : header.as_object("header")) {
        const std::string& name = kv.first;
        const Json& e = kv.second;
        if (name == "__metadata__") {
            if (!e.is_object()) throw CorruptFileError(p + ": __metadata__ must be an object of strings");
            for (const auto& m : e.as_object("__metadata__")) {
                if (!m.second.is_string())
                    throw CorruptFileError(p + ": __metadata__ entry '" + m.first + "' is not a string");
                metadata_[m.first] = m.second.as_string(m.first);
            }
            continue;
        }
        const std::string where = p + ": tensor '" + name + "'";
        if (!e.is_object()) throw CorruptFileError(where + " is not described by an object");
        const Json *jd = e.find("dtype"), *js = e.find("shape"), *jo = e.find("data_offsets");
        if (!jd || !js || !jo || e.as_object(name).size() != 3)
            throw CorruptFileError(where + " needs exactly 'dtype', 'shape' and 'data_offsets'");
        if (!jd->is_string()) throw CorruptFileError(where + ": dtype is not a string");
        TensorView t;
        t.name = name;
        bool known = false;
        for (const auto& i : kDTypes) {
            if (jd->as_string("dtype") == i.name) {
                t.dtype = i.dtype;
                known = true;
            }
        }
        if (!known) throw CorruptFileError(where + " has unknown dtype '" + jd->as_string("dtype") + "'");
        if (!js->is_array() || js->as_array("shape").size() > kMaxRank)
            throw CorruptFileError(where + ": shape must be an array of at most 8 dimensions");
        uint64_t numel = 1;
        for (const Json& d : js->as_array("shape")) {
            if (!d.is_integer() || d.as_int("dim") < 0)
                throw CorruptFileError(where + ": shape entries must be non-negative integers");
            uint64_t dim = static_cast<uint64_t>(d.as_int("dim"));
            if (dim != 0 && numel > std::numeric_limits<uint64_t>::max() / dim)
                throw CorruptFileError(where + ": shape overflows");
            numel *= dim;
            t.shape.push_back(static_cast<int64_t>(dim));
        }
        if (!jo->is_array() || jo->as_array("data_offsets").size() != 2 || !jo->as_array("o")[0].is_integer() ||
            !jo->as_array("o")[1].is_integer())
            throw CorruptFileError(where + ": data_offsets must be [begin, end] integers");
        int64_t b = jo->as_array("o")[0].as_int("begin"), en = jo->as_array("o")[1].as_int("end");
        if (b < 0 || en < b)
            throw CorruptFileError(where + ": data_offsets [" + std::to_string(b) + ", " + std::to_string(en) +
                                   "] are not an increasing pair");
        if (static_cast<uint64_t>(en) > data_size)
            throw CorruptFileError(where + ": data_offsets end " + std::to_string(en) + " lies past the " +
                                   std::to_string(data_size) + " data bytes of the file (truncated or lying header)");
        size_t isz = dtype_size(t.dtype);
        if (numel > std::numeric_limits<uint64_t>::max() / isz ||
            numel * isz != static_cast<uint64_t>(en - b))
            throw CorruptFileError(where + ": " + std::to_string(en - b) + " bytes do not hold a " +
                                   jd->as_string("dtype") + " tensor of shape " + t.shape_str());
        t.data = data + b;
        t.nbytes = static_cast<size_t>(en - b);
        ranges.emplace_back(static_cast<uint64_t>(b), static_cast<uint64_t>(en));
        tensors_.emplace(name, std::move(t));
    }
    std::sort(ranges.begin(), ranges.end());
    for (size_t i = 1; i < ranges.size(); ++i)
        if (ranges[i].first < ranges[i - 1].second)
            throw CorruptFileError(p + ": tensors overlap in the data section (lying data_offsets)");
}

}  // namespace s2e
