// Pre-processing: normalisation, task configuration, letterbox, pose crops and the per-task
// preprocess step (sapiens2_edge/tasks/{preprocess,seg,dense,pose}.py).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "s2e/tasks.hpp"
#include "s2e/json.hpp"
#include "s2e/spec.hpp"
#include "s2e/tasks/json_text.hpp"

namespace s2e {
namespace tasks {

void normalize(const Image& image, const std::array<float, 3>& mean, const std::array<float, 3>& std, float* out) {
    if (image.channels != 3)
        throw InvalidImageError("normalize expects an RGB image with 3 channels, got " +
                                std::to_string(image.channels));
    const size_t plane = size_t(image.height) * image.width;
    const uint8_t* p = image.data.data();
    // (x - mean) / std in float32, the same operations numpy does.
#pragma omp parallel for schedule(static)
    for (long long i = 0; i < (long long)plane; ++i)
        for (int c = 0; c < 3; ++c) out[size_t(c) * plane + size_t(i)] = (float(p[size_t(i) * 3 + c]) - mean[c]) / std[c];
}

// -- configuration -------------------------------------------------------------------------------------
void TaskConfig::validate() const {
    if (!find_task(task)) throw ConfigError("unknown task '" + task + "'; expected one of " + task_list());
    if (input_h < 2 || input_w < 2)
        throw ConfigError("input_size must be two integers (H, W) of at least 2, e.g. (1024, 768); got (" +
                          std::to_string(input_h) + ", " + std::to_string(input_w) + ")");
    for (int c = 0; c < 3; ++c)
        if (!(std[c] > 0) || !std::isfinite(mean[c]))
            throw ConfigError("mean must be finite and std positive, got std[" + std::to_string(c) + "] = " +
                              json::number(std[c]));
    if (!(bbox_padding > 0)) throw ConfigError("bbox_padding must be positive, got " + json::number(bbox_padding));
    if (blur_kernel_size < 1 || blur_kernel_size % 2 == 0)
        throw ConfigError("blur_kernel_size must be a positive odd integer, got " + std::to_string(blur_kernel_size));
}

TaskConfig TaskConfig::for_task(const std::string& task, int input_h, int input_w) {
    TaskConfig c;
    c.task = task;
    c.input_h = input_h;
    c.input_w = input_w;
    c.flip_test = task == "pose";
    c.validate();
    return c;
}

TaskConfig TaskConfig::from_json(const Json& v) {
    const std::string what = "preprocessing config";
    TaskConfig c;
    try {
        c.task = v.at("task", what).as_string(what + " 'task'");
        const std::vector<Json>& size = v.at("input_size", what).as_array(what + " 'input_size'");
        if (size.size() != 2) throw ConfigError(what + " 'input_size' must be [H, W]");
        const int64_t h = size[0].as_int(what + " 'input_size'"), w = size[1].as_int(what + " 'input_size'");
        if (h < 2 || w < 2 || h > kMaxSide || w > kMaxSide)
            throw ConfigError("input_size must be two integers (H, W) of at least 2, e.g. (1024, 768); got (" +
                              std::to_string(h) + ", " + std::to_string(w) + ")");
        c.input_h = int(h);
        c.input_w = int(w);
        for (const char* key : {"mean", "std"})
            if (const Json* m = v.find(key)) {
                const std::vector<Json>& a = m->as_array(what + " '" + key + "'");
                if (a.size() != 3) throw ConfigError(what + " '" + key + "' must be a list of 3 numbers (RGB)");
                std::array<float, 3>& dst = std::string(key) == "mean" ? c.mean : c.std;
                for (size_t i = 0; i < 3; ++i) dst[i] = float(a[i].as_number(what + " '" + key + "'"));
            }
        if (const Json* order = v.find("channel_order"))
            if (order->as_string(what + " 'channel_order'") != "RGB")
                throw ConfigError(what + " 'channel_order' must be \"RGB\", got " + json::quote(order->as_string("")));
        c.flip_test = false;
        if (c.task == "pose") {
            const Json* flip = v.find("flip_test");
            c.flip_test = flip ? flip->as_bool(what + " 'flip_test'") : true;
            if (const Json* pad = v.find("bbox_padding")) c.bbox_padding = pad->as_number(what + " 'bbox_padding'");
            if (const Json* k = v.find("blur_kernel_size")) {
                const int64_t kk = k->as_int(what + " 'blur_kernel_size'");
                c.blur_kernel_size = int(std::max<int64_t>(std::min<int64_t>(kk, 1 << 20), -1));
            }
        }
    } catch (const s2e::Error& e) {  // wrong JSON types: a configuration error here
        throw ConfigError(e.what());
    }
    c.validate();
    return c;
}

TaskConfig TaskConfig::from_json(const std::string& text) {
    try {
        return from_json(Json::parse(text));
    } catch (const s2e::Error& e) {
        throw ConfigError(std::string("invalid preprocessing config JSON: ") + e.what());
    }
}

TaskConfig TaskConfig::from_manifest(const std::string& artifact_dir) {
    const std::string path = artifact_dir + "/manifest.json";
    std::ifstream f(path, std::ios::binary);
    if (!f) throw ConfigError("cannot read " + path + ": an artifact directory holds a manifest.json");
    std::ostringstream ss;
    ss << f.rdbuf();
    Json m;
    try {
        m = Json::parse(ss.str());
    } catch (const s2e::Error& e) {
        throw ConfigError("cannot parse " + path + ": " + e.what());
    }
    const Json* pre = m.find("preprocessing");
    if (pre == nullptr || !pre->is_object() || pre->as_object("").empty())
        throw ConfigError(path + " has no 'preprocessing' settings (a backbone-only artifact has no task)");
    return from_json(*pre);
}

// -- letterbox -----------------------------------------------------------------------------------------
Letterbox Letterbox::fit(int h0, int w0, int h, int w) {
    check_image_size(h0, w0, "image");
    Letterbox lb;
    lb.scale = std::min(double(w) / w0, double(h) / h0);
    lb.new_w = int(w0 * lb.scale);  // int() truncation, as the Python
    lb.new_h = int(h0 * lb.scale);
    if (lb.new_w < 1 || lb.new_h < 1)
        throw InvalidImageError("image of H x W = " + std::to_string(h0) + " x " + std::to_string(w0) +
                                " is too elongated to letterbox into " + std::to_string(h) + " x " + std::to_string(w) +
                                ": it would be resized to " + std::to_string(lb.new_h) + " x " +
                                std::to_string(lb.new_w) +
                                "; expected an aspect ratio that leaves at least one pixel on each side");
    const int pad_w = w - lb.new_w, pad_h = h - lb.new_h;
    lb.top = pad_h / 2;
    lb.bottom = pad_h - pad_h / 2;
    lb.left = pad_w / 2;
    lb.right = pad_w - pad_w / 2;
    lb.orig_h = h0;
    lb.orig_w = w0;
    lb.canvas_h = h;
    lb.canvas_w = w;
    return lb;
}

Image Letterbox::apply(const Image& image) const {
    const Image r = resize(image, new_h, new_w, Interp::Linear);
    Image out(canvas_h, canvas_w, image.channels);
    const size_t row = size_t(new_w) * image.channels;
    for (int y = 0; y < new_h; ++y)
        std::copy(r.row(y), r.row(y) + row, out.row(y + top) + size_t(left) * image.channels);
    return out;
}

ImageF Letterbox::crop(const ImageF& canvas) const {
    if (canvas.height != canvas_h || canvas.width != canvas_w)
        throw InvalidTensorError("letterbox crop expects a " + std::to_string(canvas_h) + " x " +
                                 std::to_string(canvas_w) + " map, got " + std::to_string(canvas.height) + " x " +
                                 std::to_string(canvas.width));
    ImageF out(new_h, new_w, canvas.channels);
    const size_t row = size_t(new_w) * canvas.channels;
    for (int y = 0; y < new_h; ++y) {
        const float* s = canvas.data.data() + (size_t(y + top) * canvas_w + left) * canvas.channels;
        std::copy(s, s + row, out.data.data() + size_t(y) * row);
    }
    return out;
}

ImageF Letterbox::invert(const ImageF& canvas) const {
    ImageF region = crop(canvas);
    if (region.height == orig_h && region.width == orig_w) return region;
    return resize_linear(region, orig_h, orig_w);
}

// -- pose geometry -------------------------------------------------------------------------------------
namespace {

std::string fmt_g(double v) {  // Python's f"{v:g}"
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", v);
    return buf;
}

}  // namespace

void validate_boxes(const std::vector<Box>& boxes, int h0, int w0) {
    for (size_t i = 0; i < boxes.size(); ++i) {
        const Box& b = boxes[i];
        const std::string shown = "[" + fmt_g(b.x1) + ", " + fmt_g(b.y1) + ", " + fmt_g(b.x2) + ", " + fmt_g(b.y2) + "]";
        const std::string head = "box " + std::to_string(i) + " = " + shown;
        if (!std::isfinite(b.x1) || !std::isfinite(b.y1) || !std::isfinite(b.x2) || !std::isfinite(b.y2))
            throw InvalidBoxError(head + " contains NaN or inf; expected finite pixel coordinates [x1, y1, x2, y2]");
        if (b.x2 <= b.x1 || b.y2 <= b.y1)
            throw InvalidBoxError(head + " is degenerate; expected x2 > x1 and y2 > y1 ([x1, y1, x2, y2] order)");
        if (b.x2 < 0 || b.y2 < 0 || b.x1 > w0 - 1 || b.y1 > h0 - 1)
            throw InvalidBoxError(head + " lies entirely outside the " + std::to_string(w0) + " x " +
                                  std::to_string(h0) + " (W x H) image; expected it to overlap x in [0, " +
                                  std::to_string(w0 - 1) + "], y in [0, " + std::to_string(h0 - 1) + "]");
    }
}

void box_to_center_size(const Box& b, double aspect, double padding, double center[2], double size[2]) {
    center[0] = (b.x1 + b.x2) * 0.5;
    center[1] = (b.y1 + b.y2) * 0.5;
    double w = (b.x2 - b.x1) * padding, h = (b.y2 - b.y1) * padding;
    if (w > aspect * h)
        h = w / aspect;
    else
        w = aspect * h;
    size[0] = w;
    size[1] = h;
}

Affine udp_warp_matrix(const double center[2], const double size[2], int H, int W) {
    const double sx = (W - 1) / size[0], sy = (H - 1) / size[1];
    return Affine{sx, 0.0, sx * (size[0] * 0.5 - center[0]), 0.0, sy, sy * (size[1] * 0.5 - center[1])};
}

Image crop_person(const Image& image, const double center[2], const double size[2], int H, int W) {
    const Affine m = udp_warp_matrix(center, size, H, W);
    const bool shrink = std::min(std::abs(m[0]), std::abs(m[4])) < 1;  // norms of the rows (no rotation)
    return warp_affine(image, m, H, W, shrink ? Interp::Area : Interp::Cubic);
}

// -- the per-task preprocess -----------------------------------------------------------------------------
Preprocessed preprocess(const TaskConfig& cfg, const Image& input, const std::vector<Box>* boxes) {
    cfg.validate();
    const Image image = to_rgb(input);
    const int H = cfg.input_h, W = cfg.input_w;
    const size_t sample = size_t(3) * H * W;
    Preprocessed p;
    p.image_h = image.height;
    p.image_w = image.width;
    if (cfg.task != "pose" && boxes != nullptr)
        throw ConfigError("boxes are only used by the pose task; got boxes for task '" + cfg.task + "'");
    if (cfg.task == "seg") {
        // stretch_resize: the interpolation is chosen by the width alone, as the reference does
        const Interp interp = W < image.width ? Interp::Area : Interp::Cubic;
        p.batch.resize(sample);
        normalize(resize(image, H, W, interp), cfg.mean, cfg.std, p.batch.data());
        p.batch_size = 1;
        return p;
    }
    if (cfg.task != "pose") {
        p.letterbox = Letterbox::fit(image.height, image.width, H, W);
        p.batch.resize(sample);
        normalize(p.letterbox.apply(image), cfg.mean, cfg.std, p.batch.data());
        p.batch_size = 1;
        return p;
    }
    if (boxes == nullptr) {
        if (image.height < 2 && image.width < 2)
            throw InvalidImageError("a " + std::to_string(image.height) + " x " + std::to_string(image.width) +
                                    " image is too small for pose; expected at least 2 pixels on one side");
        p.boxes = {Box{0.0, 0.0, image.width - 1.0, image.height - 1.0}};
    } else {
        validate_boxes(*boxes, image.height, image.width);
        p.boxes = *boxes;
    }
    const size_t n = p.boxes.size();
    p.num_instances = int(n);
    p.flip_test = cfg.flip_test;
    p.batch_size = int(cfg.flip_test ? 2 * n : n);
    p.batch.resize(sample * size_t(p.batch_size));
    for (size_t i = 0; i < n; ++i) {
        std::array<double, 2> c{}, s{};
        box_to_center_size(p.boxes[i], double(W) / H, cfg.bbox_padding, c.data(), s.data());
        p.centers.push_back(c);
        p.sizes.push_back(s);
        normalize(crop_person(image, c.data(), s.data(), H, W), cfg.mean, cfg.std, p.batch.data() + i * sample);
    }
    if (cfg.flip_test)  // second half: the crops mirrored in W
        for (size_t i = 0; i < n * 3 * size_t(H); ++i) {
            const float* src = p.batch.data() + i * size_t(W);
            float* dst = p.batch.data() + n * sample + i * size_t(W);
            for (int x = 0; x < W; ++x) dst[x] = src[W - 1 - x];
        }
    return p;
}

}  // namespace tasks
}  // namespace s2e
