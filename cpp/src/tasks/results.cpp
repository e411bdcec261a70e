// JSON summaries of the results, in the layouts of sapiens2_edge/tasks/results.py (to_dict) and
// pose_demo_json; json.dumps' default separators so the text reads the same.
#include <algorithm>
#include <cmath>

#include "s2e/tasks.hpp"
#include "s2e/tasks/json_text.hpp"

namespace s2e {
namespace tasks {
namespace {

std::string list(const std::vector<double>& v) {
    std::string s = "[";
    for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + json::number(v[i]);
    return s + "]";
}

std::string image_size(int h, int w) { return "[" + std::to_string(h) + ", " + std::to_string(w) + "]"; }

std::string instances(const PoseResult& r) {
    const size_t n = r.boxes.size(), k = size_t(r.num_keypoints);
    std::string s = "[";
    for (size_t i = 0; i < n; ++i) {
        const Box& b = r.boxes[i];
        // boxes are float32 in the Python result
        s += std::string(i ? ", " : "") + "{\"bbox\": " +
             list({double(float(b.x1)), double(float(b.y1)), double(float(b.x2)), double(float(b.y2))}) +
             ", \"keypoints\": [";
        for (size_t j = 0; j < k; ++j)
            s += std::string(j ? ", " : "") + "[" + json::number(r.keypoints[(i * k + j) * 2]) + ", " +
                 json::number(r.keypoints[(i * k + j) * 2 + 1]) + "]";
        s += "], \"keypoint_scores\": [";
        for (size_t j = 0; j < k; ++j) s += std::string(j ? ", " : "") + json::number(r.scores[i * k + j]);
        s += "]}";
    }
    return s + "]";
}

// Per-channel min / max / mean of an (H, W, C) map (results._stats).
std::string stats(const ImageF& m) {
    const size_t c = size_t(m.channels), n = size_t(m.height) * m.width;
    if (n == 0 || c == 0) return "{\"min\": [], \"max\": [], \"mean\": []}";
    std::vector<double> lo(c, INFINITY), hi(c, -INFINITY), sum(c, 0.0);
    for (size_t i = 0; i < n; ++i)
        for (size_t k = 0; k < c; ++k) {
            const double v = m.data[i * c + k];
            lo[k] = std::min(lo[k], v);
            hi[k] = std::max(hi[k], v);
            sum[k] += v;
        }
    for (double& v : sum) v /= double(n);
    return "{\"min\": " + list(lo) + ", \"max\": " + list(hi) + ", \"mean\": " + list(sum) + "}";
}

}  // namespace

std::string PoseResult::to_json() const {
    return "{\"task\": \"pose\", \"image_size\": " + image_size(image_h, image_w) +
           ", \"num_keypoints\": " + std::to_string(num_keypoints) + ", \"instances\": " + instances(*this) + "}";
}

std::string SegResult::to_json() const {
    const std::vector<std::string>& known = seg_class_names();
    std::vector<long long> counts(size_t(std::max(num_classes, 1)), 0);
    for (uint8_t l : labels)
        if (l < counts.size()) ++counts[l];
    std::string s = "{\"task\": \"seg\", \"image_size\": " + image_size(height, width) +
                    ", \"num_classes\": " + std::to_string(num_classes) + ", \"class_pixel_counts\": {";
    bool first = true;
    long long fg = 0;
    for (int k = 0; k < num_classes; ++k) {
        if (k > 0) fg += counts[size_t(k)];
        if (!counts[size_t(k)]) continue;
        const std::string name = num_classes == int(known.size()) ? known[size_t(k)] : "class_" + std::to_string(k);
        s += std::string(first ? "" : ", ") + json::quote(name) + ": " + std::to_string(counts[size_t(k)]);
        first = false;
    }
    const double total = double(std::max<size_t>(labels.size(), 1));
    return s + "}, \"foreground_fraction\": " + json::number(double(fg) / total) + "}";
}

std::string DenseResult::to_json() const {
    std::string s = "{\"task\": " + json::quote(task) + ", \"image_size\": " + image_size(map.height, map.width) +
                    ", \"shape\": [" + std::to_string(map.height) + ", " + std::to_string(map.width) + ", " +
                    std::to_string(map.channels) + "]";
    if (task == "pointmap")
        s += ", \"scale\": " + json::number(scale) + ", \"focal_length_px\": " + json::number(focal_length);
    s += ", \"stats\": " + stats(map);
    if (task == "normal") {
        const size_t n = size_t(map.height) * map.width;
        double total = 0;
        for (size_t i = 0; i < n; ++i) {
            double q = 0;
            for (int k = 0; k < 3; ++k) q += double(map.data[i * 3 + k]) * map.data[i * 3 + k];
            total += std::sqrt(q);
        }
        s += ", \"mean_norm\": " + json::number(n ? total / double(n) : 0.0);
    }
    return s + "}";
}

std::string pose_demo_json(const std::vector<PoseResult>& results, const std::vector<std::string>& names,
                           double kpt_thr) {
    if (results.size() != names.size())
        throw ConfigError("got " + std::to_string(results.size()) + " results but " + std::to_string(names.size()) +
                          " image names; expected one name per result");
    std::string s = "{\"video\": null, \"image_size\": ";
    s += results.empty() ? "null" : image_size(results[0].image_h, results[0].image_w);
    s += ", \"num_keypoints\": " + std::to_string(results.empty() ? kNumKeypoints : results[0].num_keypoints);
    s += ", \"kpt_thr_used\": " + json::number(kpt_thr) + ", \"frames\": [";
    for (size_t i = 0; i < results.size(); ++i)
        s += std::string(i ? ", " : "") + "{\"image_name\": " + json::quote(names[i]) +
             ", \"instances\": " + instances(results[i]) + "}";
    return s + "]}";
}

}  // namespace tasks
}  // namespace s2e
