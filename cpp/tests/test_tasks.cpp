// Unit tests of the C++ pre- and post-processing against hand-computed values (no framework: a
// tiny check helper; the exit status is the number of failed checks, capped).
#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "s2e/tasks.hpp"

namespace t = s2e::tasks;

static int g_failures = 0;

#define CHECK(cond)                                                               \
    do {                                                                          \
        if (!(cond)) {                                                            \
            std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            ++g_failures;                                                         \
        }                                                                         \
    } while (0)

static bool near(double a, double b, double tol) { return std::abs(a - b) <= tol; }

// `fn` throws an exception of type E whose message contains `needle`.
template <class E>
static bool throws(const std::function<void()>& fn, const std::string& needle) {
    try {
        fn();
    } catch (const E& e) {
        if (std::string(e.what()).find(needle) != std::string::npos) return true;
        std::fprintf(stderr, "  unexpected message: %s\n", e.what());
        return false;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "  wrong exception type: %s\n", e.what());
        return false;
    }
    return false;
}

static void test_resize_2x2_to_4x4() {
    // Half-pixel centres: output x = 0..3 samples input x = -0.25, 0.25, 0.75, 1.25 -> clamp, 1/4, 3/4, clamp.
    t::ImageF src(2, 2, 1);
    src.data = {0.f, 4.f, 8.f, 12.f};
    const t::ImageF out = t::resize_linear(src, 4, 4);
    const float expect[16] = {0, 1, 3, 4, 2, 3, 5, 6, 6, 7, 9, 10, 8, 9, 11, 12};
    for (int i = 0; i < 16; ++i) CHECK(near(out.data[size_t(i)], expect[i], 1e-6));
    // uint8: the same grid with values x 10 lands on integers exactly
    t::Image u(2, 2, 1);
    u.data = {0, 40, 80, 120};
    const t::Image uo = t::resize(u, 4, 4, t::Interp::Linear);
    for (int i = 0; i < 16; ++i) CHECK(uo.data[size_t(i)] == uint8_t(expect[i] * 10));
    // 4x4 -> 2x2 is a 2x2 box average (OpenCV's area shortcut), rounded half up
    t::Image big(4, 4, 1);
    for (int i = 0; i < 16; ++i) big.data[size_t(i)] = uint8_t(i);
    const t::Image small = t::resize(big, 2, 2, t::Interp::Linear);
    CHECK(small.data[0] == 3 && small.data[1] == 5 && small.data[2] == 11 && small.data[3] == 13);  // 2.5 -> 3
    // identity sizes are copies for every interpolation
    for (t::Interp in : {t::Interp::Linear, t::Interp::Cubic, t::Interp::Area}) CHECK(t::resize(big, 4, 4, in).data == big.data);
}

static void test_letterbox() {
    const t::Letterbox lb = t::Letterbox::fit(100, 50, 64, 48);  // scale min(48/50, 64/100) = 0.64
    CHECK(near(lb.scale, 0.64, 1e-12) && lb.new_h == 64 && lb.new_w == 32);
    CHECK(lb.top == 0 && lb.bottom == 0 && lb.left == 8 && lb.right == 8);
    t::Image img(64, 32, 3);
    for (size_t i = 0; i < img.data.size(); ++i) img.data[i] = uint8_t(i % 251);
    const t::Letterbox same = t::Letterbox::fit(64, 32, 64, 48);
    const t::Image canvas = same.apply(img);
    CHECK(canvas.data[0] == 0 && canvas.row(0)[8 * 3] == img.data[0]);
    t::ImageF f(64, 48, 1);
    for (size_t i = 0; i < f.data.size(); ++i) f.data[i] = float(i);
    const t::ImageF back = same.invert(f);  // scale 1: crop only
    CHECK(back.width == 32 && back.height == 64 && back.data[0] == 8.f && back.data[32] == 48.f + 8.f);
    CHECK(throws<t::InvalidImageError>([] { t::Letterbox::fit(1, 5000, 64, 48); }, "too elongated"));
}

static void test_decode_known_peak() {
    // A Gaussian centred at (5.3, 3.6): one DARK step on its log recovers the centre exactly
    // (log of a Gaussian is quadratic); kernel 1 = no blur; input size (w-1, h-1) = unit scale.
    const int h = 9, w = 12;
    std::vector<float> hm(size_t(h) * w);
    for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x)
            hm[size_t(y) * w + x] = float(std::exp(-((x - 5.3) * (x - 5.3) + (y - 3.6) * (y - 3.6)) / (2 * 1.5 * 1.5)));
    float kp[2], score;
    t::decode_heatmaps(hm.data(), 1, h, w, w - 1, h - 1, 1, kp, &score);
    CHECK(near(kp[0], 5.3, 2e-3) && near(kp[1], 3.6, 2e-3));
    CHECK(score == hm[size_t(4) * w + 5]);
    for (float& v : hm) v = -v;  // no positive peak: (-1, -1) heatmap pixels, scaled
    t::decode_heatmaps(hm.data(), 1, h, w, 2 * (w - 1), h - 1, 11, kp, &score);
    CHECK(kp[0] == -2.f && kp[1] == -1.f && score < 0);
    CHECK(throws<t::InvalidTensorError>([&] { t::decode_heatmaps(hm.data(), 1, 1, w, 4, 4, 11, kp, &score); },
                                        "h, w >= 2"));
}

static void test_seg_argmax_and_normals() {
    // two classes on a 1x2 map: class 1 wins on the right after upsampling to 1x4
    const std::vector<float> logits = {1.f, 0.f, 0.f, 1.f};
    const std::vector<uint8_t> labels = t::logits_to_labels(logits.data(), 2, 1, 2, 1, 4);
    CHECK(labels == (std::vector<uint8_t>{0, 0, 1, 1}));
    std::vector<float> n = {3.f, 0.f, 4.f, 0.f, 0.f, 0.f};  // (3, 1, 2): (3,4,0) and (0,0,0)
    t::normalize_normals(n.data(), 1, 2);
    CHECK(near(n[0], 0.6, 1e-7) && near(n[2], 0.8, 1e-7) && n[1] == 0.f && n[5] == 0.f);
}

static void test_normalize_and_flip() {
    t::Image img(1, 1, 3);
    img.data = {124, 116, 104};
    float out[3];
    t::normalize(img, t::kMeanRGB, t::kStdRGB, out);
    CHECK(near(out[0], (124 - 123.675) / 58.395, 1e-6) && near(out[2], (104 - 103.53) / 57.375, 1e-6));
    const std::vector<int> flip = {1, 0};
    const std::vector<float> hm = {1, 2, 3, 4, 5, 6};  // (1, 2, 1, 3)
    std::vector<float> out2(6);
    t::flip_heatmaps(hm.data(), 1, 2, 1, 3, flip, out2.data());
    CHECK(out2 == (std::vector<float>{6, 5, 4, 3, 2, 1}));
    CHECK(t::flip_indices().size() == 308 && t::flip_indices()[1] == 2 && t::flip_indices()[307] == 296);
}

static void test_pose_geometry() {
    double c[2], s[2];
    t::box_to_center_size(t::Box{0, 0, 30, 80}, 0.75, 1.25, c, s);
    CHECK(c[0] == 15 && c[1] == 40 && near(s[1], 100, 1e-12) && near(s[0], 75, 1e-12));
    const t::Affine m = t::udp_warp_matrix(c, s, 64, 48);  // box edges -> 0 and W-1
    CHECK(near(m[0] * (c[0] - s[0] / 2) + m[2], 0, 1e-9) && near(m[0] * (c[0] + s[0] / 2) + m[2], 47, 1e-9));
    float in[2] = {48.f, 32.f}, out[2];
    t::input_to_image(in, 1, c, s, 64, 48, out);
    CHECK(near(out[0], 15 + 37.5, 1e-4) && near(out[1], 40, 1e-4));
    CHECK(throws<t::InvalidBoxError>([] { t::validate_boxes({t::Box{5, 5, 3, 9}}, 20, 30); },
                                     "box 0 = [5, 5, 3, 9] is degenerate"));
    // a constant image warps to itself inside and to zero outside the image
    t::Image img(10, 10, 3);
    std::fill(img.data.begin(), img.data.end(), uint8_t(200));
    const t::Image crop = t::warp_affine(img, t::Affine{1, 0, 5, 0, 1, 0}, 10, 10, t::Interp::Linear);
    CHECK(crop.row(3)[0] == 0 && crop.row(3)[6 * 3] == 200);
}

static void test_images_and_config() {
    const std::string ppm = "P6\n# c\n2 1\n255\n\x01\x02\x03\x04\x05\x06";
    const t::Image img = t::decode_ppm(reinterpret_cast<const uint8_t*>(ppm.data()), ppm.size());
    CHECK(img.width == 2 && img.height == 1 && img.channels == 3 && img.data[5] == 6);
    const std::string bad = "P6\n2 1\n255\n\x01";
    CHECK(throws<t::InvalidImageError>(
        [&] { t::decode_ppm(reinterpret_cast<const uint8_t*>(bad.data()), bad.size()); }, "truncated"));
    CHECK(throws<t::InvalidImageError>([] { t::check_image_size(0, 4, "image"); }, "is empty"));
    t::Image two(2, 2, 2);
    CHECK(throws<t::InvalidImageError>([&] { t::to_rgb(two); }, "has 2 channels"));
    CHECK(throws<t::ImageNotFoundError>([] { t::read_image("/nonexistent/x.ppm"); }, "not found"));
    const t::TaskConfig cfg = t::TaskConfig::from_json(
        R"({"task": "pose", "input_size": [64, 48], "mean": [1, 2, 3], "std": [4, 5, 6], "flip_test": false,)"
        R"( "bbox_padding": 1.5, "blur_kernel_size": 5, "channel_order": "RGB", "outputs": ["heatmaps"]})");
    CHECK(cfg.task == "pose" && cfg.input_h == 64 && cfg.input_w == 48 && !cfg.flip_test);
    CHECK(cfg.bbox_padding == 1.5 && cfg.blur_kernel_size == 5 && cfg.mean[2] == 3.f && cfg.std[0] == 4.f);
    CHECK(throws<t::ConfigError>([] { t::TaskConfig::from_json(R"({"task": "x", "input_size": [4, 4]})"); },
                                 "unknown task"));
    CHECK(throws<t::ConfigError>([] { t::TaskConfig::from_json("{"); }, "invalid preprocessing config JSON"));
}

static void test_pipeline_shapes() {
    t::Image img(30, 20, 3);
    for (size_t i = 0; i < img.data.size(); ++i) img.data[i] = uint8_t(i * 7);
    const t::TaskConfig pose = t::TaskConfig::for_task("pose", 64, 48);
    const t::Preprocessed p = t::preprocess(pose, img);
    CHECK(p.batch_size == 2 && p.batch.size() == size_t(2) * 3 * 64 * 48);
    CHECK(p.batch[5] == p.batch[size_t(3) * 64 * 48 + 47 - 5]);  // the second crop is the mirror
    t::Tensor hm;
    hm.shape = {2, 308, 16, 12};
    hm.data.assign(size_t(hm.numel()), 0.f);
    for (int k = 0; k < 308; ++k) hm.data[(size_t(k) * 16 + 8) * 12 + 6] = 1.f;  // peak at (6, 8) in both
    for (int k = 0; k < 308; ++k) hm.data[((size_t(308 + k) * 16) + 8) * 12 + 5] = 1.f;  // mirrored: 11-6
    const t::PoseResult r = t::postprocess_pose(pose, {hm}, p);
    CHECK(r.num_keypoints == 308 && r.keypoints.size() == 616 && near(r.scores[0], 1.0, 1e-6));
    const std::string js = r.to_json();
    CHECK(js.rfind("{\"task\": \"pose\", \"image_size\": [30, 20], \"num_keypoints\": 308", 0) == 0);
    const t::TaskConfig seg = t::TaskConfig::for_task("seg", 8, 6);
    const t::Preprocessed sp = t::preprocess(seg, img);
    t::Tensor logits;
    logits.shape = {1, 29, 2, 2};
    logits.data.assign(size_t(logits.numel()), 0.f);
    for (int i = 0; i < 4; ++i) logits.data[size_t(3) * 4 + size_t(i)] = 1.f;  // class 3 everywhere
    const t::SegResult sr = t::postprocess_seg(seg, {logits}, sp);
    CHECK(sr.height == 30 && sr.width == 20 && sr.labels[0] == 3 && sr.labels[599] == 3);
    CHECK(sr.to_json().find("\"Face_Neck\": 600") != std::string::npos);
    CHECK(throws<t::InvalidTensorError>([&] { t::postprocess_seg(seg, {logits, logits}, sp); }, "got 2 arrays"));
}

int main() {
    test_resize_2x2_to_4x4();
    test_letterbox();
    test_decode_known_peak();
    test_seg_argmax_and_normals();
    test_normalize_and_flip();
    test_pose_geometry();
    test_images_and_config();
    test_pipeline_shapes();
    if (g_failures) std::fprintf(stderr, "test_tasks: %d check(s) failed\n", g_failures);
    else std::printf("test_tasks: all checks passed\n");
    return g_failures ? 1 : 0;
}
