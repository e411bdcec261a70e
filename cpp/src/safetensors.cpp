#include "s2e/safetensors.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

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

bool checked_numel(const std::vector<int64_t>& shape, uint64_t limit, uint64_t& numel) {
    numel = 1;
    bool empty = false;
    for (int64_t d : shape) {
        if (d < 0) return false;
        if (d == 0) empty = true;
    }
    if (empty) {
        numel = 0;
        return true;
    }
    if (limit < 1) return false;  // even a scalar holds one element
    for (int64_t d : shape) {
        const uint64_t dim = static_cast<uint64_t>(d);
        if (numel > limit / dim) return false;  // numel * dim > limit, tested without multiplying
        numel *= dim;
    }
    return true;
}

int64_t TensorView::numel() const {
    int64_t n = 1;
    for (int64_t s : shape)
        if (s == 0) return 0;  // before multiplying: the other dims alone may be huge
    for (int64_t s : shape) n *= s;
    return n;
}
std::string TensorView::shape_str() const {
    std::string s = "(";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + (shape.size() == 1 ? ",)" : ")");
}

bool FileIdentity::operator==(const FileIdentity& o) const {
    return dev == o.dev && ino == o.ino && size == o.size && mtime_s == o.mtime_s && mtime_ns == o.mtime_ns;
}

namespace {
FileIdentity identity_of(const struct stat& sb) {
    FileIdentity id;
    id.dev = static_cast<uint64_t>(sb.st_dev);
    id.ino = static_cast<uint64_t>(sb.st_ino);
    id.size = static_cast<uint64_t>(sb.st_size);
#ifdef __APPLE__
    id.mtime_s = sb.st_mtimespec.tv_sec;
    id.mtime_ns = sb.st_mtimespec.tv_nsec;
#else
    id.mtime_s = sb.st_mtim.tv_sec;
    id.mtime_ns = sb.st_mtim.tv_nsec;
#endif
    return id;
}

std::string changed_message(const std::string& path, const std::string& what) {
    return path + " changed since it was opened (" + what +
           "): its tensors were validated against the old contents, so the engine refuses to read it; "
           "reopen the artifact (a new Predictor / Engine) after rewriting its weights";
}
}  // namespace

std::shared_ptr<SafeTensors> SafeTensors::open(const std::string& path) {
    std::shared_ptr<SafeTensors> st(new SafeTensors());
    st->path_ = path;
    st->fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);  // a FIFO must not hang us
    if (st->fd_ < 0) throw CorruptFileError("cannot open " + path + ": " + std::strerror(errno));
    struct stat sb {};
    if (::fstat(st->fd_, &sb) != 0 || !S_ISREG(sb.st_mode)) throw CorruptFileError(path + " is not a regular file");
    st->identity_ = identity_of(sb);
    st->size_ = static_cast<size_t>(sb.st_size);
    if (st->size_ < 8)
        throw CorruptFileError(path + " is truncated: " + std::to_string(st->size_) +
                               " bytes, a safetensors file starts with an 8-byte header length");
    uint8_t len[8];
    st->read_at(0, 8, len);
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | len[i];  // little-endian
    std::vector<uint8_t> header;
    if (n <= kMaxHeader && n <= st->size_ - 8) {  // else parse() says what is wrong
        header.resize(static_cast<size_t>(n));
        st->read_at(8, header.size(), header.data());
    }
    st->parse(header.data(), n);
    st->check_unchanged();  // rewritten while the header was read
    return st;
}

std::shared_ptr<SafeTensors> SafeTensors::from_bytes(const void* data, size_t size, const std::string& name) {
    std::shared_ptr<SafeTensors> st(new SafeTensors());
    st->path_ = name;
    st->owned_.assign(static_cast<const uint8_t*>(data), static_cast<const uint8_t*>(data) + size);
    st->size_ = size;
    uint64_t n = 0;
    if (size >= 8)
        for (int i = 7; i >= 0; --i) n = (n << 8) | st->owned_[static_cast<size_t>(i)];
    st->parse(size >= 8 ? st->owned_.data() + 8 : nullptr, n);
    return st;
}

SafeTensors::~SafeTensors() {
    if (fd_ >= 0) ::close(fd_);
}

const TensorView* SafeTensors::find(const std::string& name) const {
    auto it = tensors_.find(name);
    return it == tensors_.end() ? nullptr : &it->second;
}

void SafeTensors::read_at(uint64_t offset, size_t len, void* dst) const {
    if (fd_ < 0) {  // in-memory: offsets were validated against owned_
        std::memcpy(dst, owned_.data() + offset, len);
        return;
    }
    auto* out = static_cast<uint8_t*>(dst);
    size_t done = 0;
    while (done < len) {
        const ssize_t r = ::pread(fd_, out + done, len - done, static_cast<off_t>(offset + done));
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) throw CorruptFileError("cannot read " + path_ + ": " + std::strerror(errno));
        if (r == 0)
            throw FileChangedError(changed_message(
                path_, "it ends at byte " + std::to_string(offset + done) + ", the validated file had " +
                           std::to_string(size_) + " bytes"));
        done += static_cast<size_t>(r);
    }
}

void SafeTensors::read(const TensorView& t, size_t begin, size_t len, void* dst) const {
    if (begin > t.nbytes || len > t.nbytes - begin)
        throw CorruptFileError(path_ + ": read of bytes [" + std::to_string(begin) + ", +" + std::to_string(len) +
                               ") lies outside tensor '" + t.name + "' (" + std::to_string(t.nbytes) + " bytes)");
    if (len) read_at(t.offset + begin, len, dst);
}

void SafeTensors::check_unchanged() const {
    if (fd_ < 0) return;
    struct stat sb {};
    if (::fstat(fd_, &sb) != 0) throw CorruptFileError("cannot stat " + path_ + ": " + std::strerror(errno));
    const FileIdentity now = identity_of(sb);
    if (now == identity_) return;
    std::string what = now.size != identity_.size
                           ? "size " + std::to_string(identity_.size) + " -> " + std::to_string(now.size) + " bytes"
                           : "rewritten in place: same size, new modification time";
    throw FileChangedError(changed_message(path_, what));
}

// `header`: the n header bytes after the 8-byte length, when n fits the limit and the file.
void SafeTensors::parse(const uint8_t* header_bytes, uint64_t n) {
    const std::string& p = path_;
    if (size_ < 8)
        throw CorruptFileError(p + " is truncated: " + std::to_string(size_) +
                               " bytes, a safetensors file starts with an 8-byte header length");
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
        header = Json::parse(reinterpret_cast<const char*>(header_bytes), static_cast<size_t>(n), lim);
    } catch (const JsonError& e) {
        throw CorruptFileError(p + ": the safetensors header is not valid JSON (" + e.what() + ")");
    }
    if (!header.is_object()) throw CorruptFileError(p + ": the safetensors header must be a JSON object");
    const uint64_t data_start = 8 + n;
    const uint64_t data_size = size_ - data_start;
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
        for (const Json& d : js->as_array("shape")) {
            if (!d.is_integer() || d.as_int("dim") < 0)
                throw CorruptFileError(where + ": shape entries must be non-negative integers");
            t.shape.push_back(d.as_int("dim"));
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
        // The element count is checked against the data section before any unchecked product:
        // no shape that could not fit the file gets through, so numel() cannot overflow later.
        const size_t isz = dtype_size(t.dtype);
        uint64_t numel = 0;
        const bool fits = checked_numel(t.shape, data_size / isz, numel);
        if (!fits || numel * isz != static_cast<uint64_t>(en - b))
            throw CorruptFileError(where + ": " + std::to_string(en - b) + " bytes do not hold a " +
                                   jd->as_string("dtype") + " tensor of shape " + t.shape_str() +
                                   (fits ? "" : " (its size overflows the " + std::to_string(data_size) +
                                                    " data bytes of the file)"));
        t.offset = data_start + static_cast<uint64_t>(b);
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
