// Post-processing: UDP-DARK heatmap decoding, seg argmax, normal / pointmap / albedo maps
// (sapiens2_edge/tasks/{pose,seg,dense}.py), in the same float32 / float64 steps as numpy.
#include <algorithm>
#include <cmath>
#include <limits>

#include "s2e/spec.hpp"
#include "s2e/tasks.hpp"

namespace s2e {
namespace tasks {

long long Tensor::numel() const {
    long long n = 1;
    for (long long s : shape) n *= s;
    return n;
}

// -- heatmaps ----------------------------------------------------------------------------------------
void flip_heatmaps(const float* src, int b, int k, int h, int w, const std::vector<int>& flip, float* dst) {
    if (int(flip.size()) != k)
        throw InvalidTensorError("flip table has " + std::to_string(flip.size()) + " entries for " +
                                 std::to_string(k) + " heatmaps");
    const size_t plane = size_t(h) * w;
    for (int i = 0; i < b; ++i)
        for (int c = 0; c < k; ++c) {
            if (flip[size_t(c)] < 0 || flip[size_t(c)] >= k) throw InvalidTensorError("flip table entry out of range");
            const float* s = src + (size_t(i) * k + flip[size_t(c)]) * plane;
            float* d = dst + (size_t(i) * k + c) * plane;
            for (int y = 0; y < h; ++y)
                for (int x = 0; x < w; ++x) d[size_t(y) * w + x] = s[size_t(y) * w + (w - 1 - x)];
        }
}

namespace {

// Gaussian blur of one (h, w) plane with zero borders: what the Python gets by zero-padding each
// channel by the kernel radius before cv2.GaussianBlur and cropping afterwards.
void blur_zero_border(const float* src, int h, int w, const std::vector<float>& k, float* tmp, float* dst) {
    const int r = int(k.size()) / 2;
    for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x) {
            float s = 0.f;
            for (int j = -r; j <= r; ++j)
                if (x + j >= 0 && x + j < w) s += k[size_t(j + r)] * src[size_t(y) * w + x + j];
            tmp[size_t(y) * w + x] = s;
        }
    for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x) {
            float s = 0.f;
            for (int j = -r; j <= r; ++j)
                if (y + j >= 0 && y + j < h) s += k[size_t(j + r)] * tmp[size_t(y + j) * w + x];
            dst[size_t(y) * w + x] = s;
        }
}

}  // namespace

void decode_heatmaps(const float* hm, int k, int h, int w, int input_w, int input_h, int kernel, float* keypoints,
                     float* scores) {
    if (h < 2 || w < 2 || k < 0)
        throw InvalidTensorError("heatmaps must have shape (K, h, w) with h, w >= 2, got (" + std::to_string(k) +
                                 ", " + std::to_string(h) + ", " + std::to_string(w) + ")");
    if (kernel < 1 || kernel % 2 == 0)
        throw ConfigError("blur_kernel_size must be a positive odd integer, got " + std::to_string(kernel));
    const std::vector<double> kd = gaussian_kernel(kernel, 0.0);
    const std::vector<float> kf(kd.begin(), kd.end());
    const size_t plane = size_t(h) * w;
    const double sx = double(input_w) / (w - 1), sy = double(input_h) / (h - 1);
    const float eps = std::numeric_limits<float>::epsilon();
#pragma omp parallel
    {
        std::vector<float> tmp(plane), blurred(plane), prev(plane);
        // The blurred plane of channel ch rescaled to its maximum before the blur (the ratio).
        auto blur_scaled = [&](int ch, std::vector<float>& out) {
            const float* p = hm + size_t(ch) * plane;
            blur_zero_border(p, h, w, kf, tmp.data(), out.data());
            const float before = *std::max_element(p, p + plane);
            const float after = *std::max_element(out.begin(), out.end());
            return after != 0 ? before / after : 1.f;  // an all-zero blur is kept unscaled
        };
        auto log_at = [](const std::vector<float>& b, float ratio, size_t i) {
            return std::log(std::min(std::max(b[i] * ratio, 0.001f), 50.0f));
        };
#pragma omp for schedule(dynamic, 4)
        for (int c = 0; c < k; ++c) {
            const float* p = hm + size_t(c) * plane;
            size_t idx = 0;
            for (size_t i = 1; i < plane; ++i)
                if (p[i] > p[idx]) idx = i;  // first maximum, as numpy argmax
            const float score = p[idx];
            scores[c] = score;
            double lx = -1.0, ly = -1.0;
            const float ratio = blur_scaled(c, blurred);
            float lp[3][3];
            if (score > 0) {
                const int x = int(idx % size_t(w)), y = int(idx / size_t(w));
                lx = x;
                ly = y;
                for (int dy = -1; dy <= 1; ++dy)
                    for (int dx = -1; dx <= 1; ++dx) {
                        const int yy = std::min(std::max(y + dy, 0), h - 1), xx = std::min(std::max(x + dx, 0), w - 1);
                        lp[dy + 1][dx + 1] = log_at(blurred, ratio, size_t(yy) * w + xx);
                    }
            } else {
                // As the reference, which still steps from (-1, -1): its flat reads land on this channel's
                // padded corner and, left of and above it, on the last padded row of the previous channel
                // (the last channel for channel 0). See sapiens2_edge/tasks/heatmaps.py.
                const float rp = blur_scaled((c + k - 1) % k, prev);
                const float own = log_at(blurred, ratio, 0);
                lp[1][1] = lp[1][2] = lp[2][1] = lp[2][2] = own;
                lp[1][0] = lp[0][0] = log_at(prev, rp, plane - 1);       // (h-1, w-1)
                lp[0][1] = log_at(prev, rp, plane - size_t(w));          // (h-1, 0)
            }
            {
                const float cc = lp[1][1], xp = lp[1][2], xm = lp[1][0], yp = lp[2][1], ym = lp[0][1];
                const float xpyp = lp[2][2], xmym = lp[0][0];
                const float gx = 0.5f * (xp - xm), gy = 0.5f * (yp - ym);
                const float dxx = xp - 2.f * cc + xm, dyy = yp - 2.f * cc + ym;
                const float dxy = 0.5f * (xpyp - xp - yp + cc + cc - xm - ym + xmym);
                const double a = double(dxx) + eps, b = dxy, d = double(dyy) + eps;
                const double det = a * d - b * b;
                if (det != 0) {
                    lx -= (d * gx - b * gy) / det;
                    ly -= (a * gy - b * gx) / det;
                }
            }
            keypoints[2 * c] = float(lx * sx);
            keypoints[2 * c + 1] = float(ly * sy);
        }
    }
}

void input_to_image(const float* kps_in, int k, const double center[2], const double size[2], int input_h,
                    int input_w, float* kps_out) {
    for (int i = 0; i < k; ++i) {
        kps_out[2 * i] = float(double(kps_in[2 * i]) / input_w * size[0] + (center[0] - size[0] * 0.5));
        kps_out[2 * i + 1] = float(double(kps_in[2 * i + 1]) / input_h * size[1] + (center[1] - size[1] * 0.5));
    }
}

// -- seg ------------------------------------------------------------------------------------------------
std::vector<uint8_t> logits_to_labels(const float* logits, int c, int h, int w, int out_h, int out_w) {
    if (c < 1 || c > 256) throw InvalidTensorError("at most 256 classes fit uint8 labels, got " + std::to_string(c));
    const size_t n = size_t(out_h) * out_w;
    std::vector<float> best(n, -std::numeric_limits<float>::infinity()), plane(n);
    std::vector<uint8_t> labels(n, 0);
    for (int k = 0; k < c; ++k) {
        resize_linear(logits + size_t(k) * h * w, h, w, 1, plane.data(), out_h, out_w);
        for (size_t i = 0; i < n; ++i)
            if (plane[i] > best[i]) {  // ties keep the lower class, as argmax
                best[i] = plane[i];
                labels[i] = uint8_t(k);
            }
    }
    return labels;
}

// -- dense -----------------------------------------------------------------------------------------------
void normalize_normals(float* chw, int h, int w, float eps) {
    const size_t plane = size_t(h) * w;
    for (size_t i = 0; i < plane; ++i) {
        const float x = chw[i], y = chw[plane + i], z = chw[2 * plane + i];
        const float norm = std::max(std::sqrt(x * x + y * y + z * z), eps);
        chw[i] = x / norm;
        chw[plane + i] = y / norm;
        chw[2 * plane + i] = z / norm;
    }
}

namespace {

std::string shape_str(const std::vector<long long>& shape) {
    std::string s = "(";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + (shape.size() == 1 ? ",)" : ")");
}

// Base.Pipeline._outputs: count, leading batch dimension and finiteness of the raw outputs.
void check_outputs(const TaskConfig& cfg, const std::vector<Tensor>& outs, const Preprocessed& meta) {
    const TaskSpec* spec = find_task(cfg.task);
    if (!spec) throw ConfigError("unknown task '" + cfg.task + "'; expected one of " + task_list());
    const int n = spec->num_outputs;
    const char* const* names = spec->outputs;
    std::string tuple = "(";
    for (int i = 0; i < n; ++i) tuple += std::string(i ? ", " : "") + "'" + names[i] + "'";
    tuple += n == 1 ? ",)" : ")";
    if (int(outs.size()) != n)
        throw InvalidTensorError("task '" + cfg.task + "' expects " + std::to_string(n) + " raw output(s) " + tuple +
                                 ", got " + std::to_string(outs.size()) + " arrays");
    for (int i = 0; i < n; ++i) {
        const Tensor& t = outs[size_t(i)];
        if (t.numel() != (long long)t.data.size())
            throw InvalidTensorError("output '" + std::string(names[i]) + "' has shape " + shape_str(t.shape) +
                                     " but holds " + std::to_string(t.data.size()) + " values");
        if (t.shape.empty() || t.shape[0] != meta.batch_size)
            throw InvalidTensorError("output '" + std::string(names[i]) + "' of task '" + cfg.task + "' has shape " +
                                     shape_str(t.shape) + "; expected a leading batch dimension of " +
                                     std::to_string(meta.batch_size) + " (the size of the preprocessed batch)");
        for (float v : t.data)
            if (!std::isfinite(v))
                throw InvalidTensorError("output '" + std::string(names[i]) + "' of task '" + cfg.task +
                                         "' contains NaN or inf; the model or backend produced invalid values");
    }
}

// (1, 3, H, W) network map -> (H, W, 3)
ImageF to_hwc(const Tensor& t, const TaskConfig& cfg, const std::string& name) {
    if (t.shape.size() != 4 || t.shape[1] != 3 || t.shape[2] != cfg.input_h || t.shape[3] != cfg.input_w)
        throw InvalidTensorError(cfg.task + " output '" + name + "' has shape " + shape_str(t.shape) +
                                 "; expected (1, 3, " + std::to_string(cfg.input_h) + ", " +
                                 std::to_string(cfg.input_w) + ") for input size (" + std::to_string(cfg.input_h) +
                                 ", " + std::to_string(cfg.input_w) + ")");
    const int H = cfg.input_h, W = cfg.input_w;
    const size_t plane = size_t(H) * W;
    ImageF out(H, W, 3);
    for (size_t i = 0; i < plane; ++i)
        for (int c = 0; c < 3; ++c) out.data[i * 3 + c] = t.data[size_t(c) * plane + i];
    return out;
}

}  // namespace

PoseResult postprocess_pose(const TaskConfig& cfg, const std::vector<Tensor>& outputs, const Preprocessed& meta) {
    PoseResult r;
    r.image_h = meta.image_h;
    r.image_w = meta.image_w;
    r.boxes = meta.boxes;
    const int n = meta.num_instances;
    if (n == 0) {
        r.num_keypoints = kNumKeypoints;
        return r;
    }
    check_outputs(cfg, outputs, meta);
    const Tensor& raw = outputs[0];
    if (raw.shape.size() != 4 || raw.shape[2] < 2 || raw.shape[3] < 2)
        throw InvalidTensorError("pose heatmaps must have shape (B, K, h, w) with h, w >= 2, got " +
                                 shape_str(raw.shape));
    const int K = int(raw.shape[1]), h = int(raw.shape[2]), w = int(raw.shape[3]);
    const size_t per = size_t(K) * h * w;
    std::vector<float> hm;
    if (meta.flip_test) {
        if (K != int(flip_indices().size()))
            throw InvalidTensorError("flip test needs " + std::to_string(flip_indices().size()) +
                                     " keypoint heatmaps (the flip table), got " + std::to_string(K) +
                                     "; use flip_test=False for other keypoint sets");
        hm.resize(per * n);
        flip_heatmaps(raw.data.data() + per * n, n, K, h, w, flip_indices(), hm.data());
        for (size_t i = 0; i < per * n; ++i) hm[i] = (hm[i] + raw.data[i]) * 0.5f;
    } else {
        hm.assign(raw.data.begin(), raw.data.begin() + long(per * n));
    }
    r.num_keypoints = K;
    r.keypoints.resize(size_t(n) * K * 2);
    r.scores.resize(size_t(n) * K);
    std::vector<float> kps(size_t(K) * 2);
    for (int i = 0; i < n; ++i) {
        decode_heatmaps(hm.data() + per * i, K, h, w, cfg.input_w, cfg.input_h, cfg.blur_kernel_size, kps.data(),
                        r.scores.data() + size_t(i) * K);
        input_to_image(kps.data(), K, meta.centers[size_t(i)].data(), meta.sizes[size_t(i)].data(), cfg.input_h,
                       cfg.input_w, r.keypoints.data() + size_t(i) * K * 2);
    }
    return r;
}

SegResult postprocess_seg(const TaskConfig& cfg, const std::vector<Tensor>& outputs, const Preprocessed& meta) {
    check_outputs(cfg, outputs, meta);
    const Tensor& t = outputs[0];
    if (t.shape.size() != 4 || t.shape[1] < 1 || t.shape[1] > 256)
        throw InvalidTensorError("seg logits must have shape (1, classes, H, W) with at most 256 classes, got " +
                                 shape_str(t.shape));
    SegResult r;
    r.height = meta.image_h;
    r.width = meta.image_w;
    r.num_classes = int(t.shape[1]);
    r.labels = logits_to_labels(t.data.data(), r.num_classes, int(t.shape[2]), int(t.shape[3]), r.height, r.width);
    return r;
}

DenseResult postprocess_dense(const TaskConfig& cfg, const std::vector<Tensor>& outputs, const Preprocessed& meta) {
    check_outputs(cfg, outputs, meta);
    DenseResult r;
    r.task = cfg.task;
    const Letterbox& lb = meta.letterbox;
    if (cfg.task == "normal") {
        Tensor t = outputs[0];
        if (t.shape.size() == 4 && t.shape[1] == 3) normalize_normals(t.data.data(), int(t.shape[2]), int(t.shape[3]));
        r.map = lb.invert(to_hwc(t, cfg, "normal"));
    } else if (cfg.task == "albedo") {
        Tensor t = outputs[0];
        for (float& v : t.data) v = std::min(std::max(v, 0.f), 1.f);
        r.map = lb.invert(to_hwc(t, cfg, "albedo"));
    } else if (cfg.task == "pointmap") {
        Tensor t = outputs[0];
        const Tensor& scale = outputs[1];
        if (scale.numel() != meta.batch_size)
            throw InvalidTensorError("pointmap scale must have one value per sample, shape (B, 1); got " +
                                     shape_str(scale.shape));
        const float s = scale.data[0];
        if (s == 0) throw InvalidTensorError("the predicted pointmap scale is 0, so metric points are undefined");
        for (float& v : t.data) v /= s;
        ImageF region = lb.crop(to_hwc(t, cfg, "pointmap"));
        if (lb.orig_h > region.height || lb.orig_w > region.width)
            for (int pass = 0; pass < 4; ++pass) region = gaussian_blur(region, 3, 0.8);
        if (region.height != lb.orig_h || region.width != lb.orig_w)
            region = resize_linear(region, lb.orig_h, lb.orig_w);
        r.map = std::move(region);
        r.scale = s;
        r.focal_length = cfg.input_w / double(s) / lb.scale;
    } else {
        throw ConfigError("postprocess_dense handles normal, pointmap and albedo, not '" + cfg.task + "'");
    }
    return r;
}

}  // namespace tasks
}  // namespace s2e
