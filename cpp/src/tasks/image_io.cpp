// Image input (binary PPM/PGM and uint8 .npy, bounds-checked) and .npy output.
#include <algorithm>
#include <cctype>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "s2e/tasks.hpp"

namespace s2e {
namespace tasks {

void check_image_size(long long h, long long w, const std::string& what) {
    if (h <= 0 || w <= 0)
        throw InvalidImageError(what + " is empty (H x W = " + std::to_string(h) + " x " + std::to_string(w) +
                                "); expected at least 1 x 1 pixels");
    if (h > kMaxSide || w > kMaxSide || h * w > kMaxPixels)
        throw InvalidImageError(what + " is too large (H x W = " + std::to_string(h) + " x " + std::to_string(w) +
                                "); the limit is " + std::to_string(kMaxSide) + " pixels per side and " +
                                std::to_string(kMaxPixels) + " pixels in total. Downscale it first.");
}

Image to_rgb(const Image& image, const std::string& what) {
    const int c = image.channels;
    if (c != 1 && c != 3 && c != 4)
        throw InvalidImageError(what + " has " + std::to_string(c) + " channels (shape (" +
                                std::to_string(image.height) + ", " + std::to_string(image.width) + ", " +
                                std::to_string(c) + ")); expected 3 (RGB), 1 (grayscale) or 4 (RGBA)");
    check_image_size(image.height, image.width, what);
    if (image.data.size() != size_t(image.height) * image.width * c)
        throw InvalidImageError(what + " holds " + std::to_string(image.data.size()) + " bytes; expected H * W * C = " +
                                std::to_string(size_t(image.height) * image.width * c));
    if (c == 3) return image;
    Image out(image.height, image.width, 3);
    const size_t n = size_t(image.height) * image.width;
    for (size_t i = 0; i < n; ++i)
        for (int k = 0; k < 3; ++k) out.data[i * 3 + k] = image.data[i * c + (c == 1 ? 0 : k)];
    return out;
}

namespace {

std::string read_file(const std::string& path) {
    std::error_code ec;
    if (!std::filesystem::exists(path, ec)) throw ImageNotFoundError("image file not found: '" + path + "'");
    if (!std::filesystem::is_regular_file(path, ec))
        throw InvalidImageError("image path is not a file: '" + path + "'");
    std::ifstream f(path, std::ios::binary);
    if (!f) throw InvalidImageError("cannot open image file '" + path + "'");
    std::ostringstream ss;
    ss << f.rdbuf();
    if (f.bad()) throw InvalidImageError("cannot read image file '" + path + "'");
    return ss.str();
}

bool ends_with(const std::string& s, const std::string& suffix) {
    if (s.size() < suffix.size()) return false;
    for (size_t i = 0; i < suffix.size(); ++i)
        if (std::tolower(static_cast<unsigned char>(s[s.size() - suffix.size() + i])) != suffix[i]) return false;
    return true;
}

}  // namespace

Image decode_ppm(const uint8_t* bytes, size_t size, const std::string& what) {
    size_t i = 0;
    auto fail = [&](const std::string& msg) -> void {
        throw InvalidImageError("cannot decode " + what + " as binary PPM/PGM: " + msg);
    };
    if (size < 2 || bytes[0] != 'P' || (bytes[1] != '6' && bytes[1] != '5'))
        fail("it does not start with the magic number P6 (colour) or P5 (grey)");
    const int channels = bytes[1] == '6' ? 3 : 1;
    i = 2;
    long long fields[3];
    for (long long& field : fields) {
        while (true) {  // whitespace and comments
            if (i >= size) fail("the header is truncated");
            if (bytes[i] == '#') {
                while (i < size && bytes[i] != '\n' && bytes[i] != '\r') ++i;
            } else if (std::isspace(bytes[i])) {
                ++i;
            } else {
                break;
            }
        }
        if (!std::isdigit(bytes[i])) fail("expected a decimal number in the header at byte " + std::to_string(i));
        field = 0;
        while (i < size && std::isdigit(bytes[i])) {
            field = field * 10 + (bytes[i++] - '0');
            if (field > 1000000000LL) fail("a header number is too large");
        }
    }
    if (i >= size || !std::isspace(bytes[i])) fail("expected one whitespace byte after the header");
    ++i;
    const long long w = fields[0], h = fields[1], maxval = fields[2];
    if (maxval < 1 || maxval > 255)
        fail("only 8-bit files are supported (maxval 1..255), got maxval " + std::to_string(maxval));
    check_image_size(h, w, what);
    const size_t need = size_t(h) * size_t(w) * channels;
    if (size - i < need)
        fail("the pixel data is truncated: " + std::to_string(size - i) + " bytes for " + std::to_string(w) + " x " +
             std::to_string(h) + " x " + std::to_string(channels) + " = " + std::to_string(need));
    Image img(int(h), int(w), channels);
    std::memcpy(img.data.data(), bytes + i, need);
    if (maxval != 255)
        for (uint8_t& v : img.data) v = uint8_t(std::min<long long>(255, (v * 255LL + maxval / 2) / maxval));
    return img;
}

Image read_ppm(const std::string& path) {
    const std::string data = read_file(path);
    return to_rgb(decode_ppm(reinterpret_cast<const uint8_t*>(data.data()), data.size(), "'" + path + "'"),
                  "image '" + path + "'");
}

namespace {

// Parses a .npy v1/v2/v3 header: returns the dtype descr, fortran flag and shape; offset of the data.
size_t parse_npy_header(const std::string& d, const std::string& what, std::string& descr, bool& fortran,
                        std::vector<long long>& shape) {
    auto fail = [&](const std::string& msg) { throw InvalidImageError("cannot read " + what + " as .npy: " + msg); };
    if (d.size() < 10 || d.compare(0, 6, "\x93NUMPY") != 0) fail("missing the \\x93NUMPY magic");
    const int major = uint8_t(d[6]);
    size_t hlen, start;
    if (major == 1) {
        hlen = uint8_t(d[8]) | size_t(uint8_t(d[9])) << 8;
        start = 10;
    } else if (major == 2 || major == 3) {
        if (d.size() < 12) fail("truncated header");
        hlen = uint8_t(d[8]) | size_t(uint8_t(d[9])) << 8 | size_t(uint8_t(d[10])) << 16 | size_t(uint8_t(d[11])) << 24;
        start = 12;
    } else {
        fail("unsupported format version " + std::to_string(major));
    }
    if (hlen > 65536 || d.size() - start < hlen) fail("truncated or oversized header");
    const std::string h = d.substr(start, hlen);
    auto value_of = [&](const std::string& key) {
        const size_t k = h.find("'" + key + "'");
        if (k == std::string::npos) fail("header lacks '" + key + "'");
        size_t p = h.find(':', k);
        if (p == std::string::npos) fail("malformed header");
        ++p;
        while (p < h.size() && h[p] == ' ') ++p;
        return p;
    };
    size_t p = value_of("descr");
    if (p >= h.size() || (h[p] != '\'' && h[p] != '"')) fail("malformed descr");
    const size_t q = h.find(h[p], p + 1);
    if (q == std::string::npos) fail("malformed descr");
    descr = h.substr(p + 1, q - p - 1);
    p = value_of("fortran_order");
    fortran = h.compare(p, 4, "True") == 0;
    p = value_of("shape");
    if (p >= h.size() || h[p] != '(') fail("malformed shape");
    const size_t e = h.find(')', p);
    if (e == std::string::npos) fail("malformed shape");
    std::string dims = h.substr(p + 1, e - p - 1);
    std::stringstream ss(dims);
    std::string tok;
    while (std::getline(ss, tok, ',')) {
        size_t a = tok.find_first_not_of(' '), b = tok.find_last_not_of(' ');
        if (a == std::string::npos) continue;
        tok = tok.substr(a, b - a + 1);
        if (tok.empty() || tok.size() > 12 || tok.find_first_not_of("0123456789") != std::string::npos)
            fail("malformed shape (" + dims + ")");
        shape.push_back(std::stoll(tok));
    }
    return start + hlen;
}

std::string shape_str(const std::vector<long long>& shape) {
    std::string s = "(";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + (shape.size() == 1 ? ",)" : ")");
}

}  // namespace

Image read_npy_image(const std::string& path) {
    const std::string d = read_file(path);
    const std::string what = "'" + path + "'";
    std::string descr;
    bool fortran = false;
    std::vector<long long> shape;
    const size_t off = parse_npy_header(d, what, descr, fortran, shape);
    if (descr != "|u1" && descr != "<u1" && descr != "u1")
        throw InvalidImageError("expected a uint8 RGB image with values 0-255, got dtype '" + descr + "' in " + what +
                                "; convert with e.g. np.clip(x * 255, 0, 255).astype(np.uint8)");
    if (fortran) throw InvalidImageError("cannot read " + what + " as .npy: Fortran-ordered arrays are not supported");
    if (shape.size() != 2 && shape.size() != 3)
        throw InvalidImageError("image " + what + " must have shape (H, W, 3) (or (H, W) grayscale / (H, W, 4) RGBA), "
                                "got an array of shape " + shape_str(shape));
    const long long c = shape.size() == 2 ? 1 : shape[2];
    if (c != 1 && c != 3 && c != 4)
        throw InvalidImageError("image " + what + " has " + std::to_string(c) + " channels (shape " + shape_str(shape) +
                                "); expected 3 (RGB), 1 (grayscale) or 4 (RGBA)");
    check_image_size(shape[0], shape[1], "image " + what);
    const size_t need = size_t(shape[0]) * size_t(shape[1]) * size_t(c);
    if (d.size() - off < need)
        throw InvalidImageError("cannot read " + what + " as .npy: the data is truncated (" +
                                std::to_string(d.size() - off) + " bytes for shape " + shape_str(shape) + ")");
    Image img{int(shape[0]), int(shape[1]), int(c)};
    std::memcpy(img.data.data(), d.data() + off, need);
    return to_rgb(img, "image " + what);
}

Image read_image(const std::string& path) {
    if (ends_with(path, ".npy")) return read_npy_image(path);
    if (ends_with(path, ".ppm") || ends_with(path, ".pgm") || ends_with(path, ".pnm")) return read_ppm(path);
    throw InvalidImageError("cannot read image '" + path +
                            "': the native reader supports binary PPM/PGM (.ppm, .pgm, .pnm) and uint8 .npy files; "
                            "convert other formats first (e.g. with OpenCV or Pillow)");
}

// -- npy output ----------------------------------------------------------------------------------------
namespace {

void write_npy_raw(const std::string& path, const char* descr, const void* data, size_t bytes,
                   const std::vector<long long>& shape) {
    std::string header = "{'descr': '" + std::string(descr) + "', 'fortran_order': False, 'shape': " +
                         shape_str(shape) + ", }";
    const size_t total = 10 + header.size() + 1;
    header += std::string((64 - total % 64) % 64, ' ') + "\n";
    std::ofstream f(path, std::ios::binary);
    if (!f) throw std::runtime_error("cannot write '" + path + "'");
    const uint16_t hlen = uint16_t(header.size());
    f.write("\x93NUMPY\x01\x00", 8);
    const char len[2] = {char(hlen & 0xFF), char(hlen >> 8)};
    f.write(len, 2);
    f.write(header.data(), std::streamsize(header.size()));
    f.write(static_cast<const char*>(data), std::streamsize(bytes));
    if (!f) throw std::runtime_error("cannot write '" + path + "'");
}

size_t count(const std::vector<long long>& shape) {
    size_t n = 1;
    for (long long s : shape) n *= size_t(s);
    return n;
}

}  // namespace

void write_npy(const std::string& path, const float* data, const std::vector<long long>& shape) {
    static_assert(sizeof(float) == 4, "float32 expected");
    write_npy_raw(path, "<f4", data, count(shape) * sizeof(float), shape);
}

void write_npy(const std::string& path, const uint8_t* data, const std::vector<long long>& shape) {
    write_npy_raw(path, "|u1", data, count(shape), shape);
}

}  // namespace tasks
}  // namespace s2e
