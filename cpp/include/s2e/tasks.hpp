// Pre- and post-processing of the five Sapiens2 tasks in C++17, matching sapiens2_edge.tasks.
//
// Images are RGB uint8, row-major (H, W, C). Network batches are float32 NCHW. Coordinates follow
// the Python code: image pixels are indexed at their centres. The resampling kernels reproduce
// OpenCV's (cv2.resize INTER_LINEAR / INTER_CUBIC / INTER_AREA, cv2.warpAffine, cv2.GaussianBlur)
// including their fixed-point arithmetic for uint8 images, so results agree with the Python
// runtime to within one grey level (uint8) or float rounding (float32).
#pragma once

#include <array>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace s2e {
class Json;
namespace tasks {

// -- errors (the bindings map them to sapiens2_edge.errors) ---------------------------------------
struct InvalidImageError : std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};
struct ImageNotFoundError : InvalidImageError {
    using InvalidImageError::InvalidImageError;
};
struct InvalidBoxError : std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};
struct InvalidTensorError : std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};
struct ConfigError : std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};

constexpr int kMaxSide = 32768;          // sapiens2_edge.tasks.MAX_SIDE
constexpr long long kMaxPixels = 1LL << 28;  // sapiens2_edge.tasks.MAX_PIXELS

// -- images ----------------------------------------------------------------------------------------
struct Image {  // uint8 (H, W, C), row-major
    int height = 0, width = 0, channels = 0;
    std::vector<uint8_t> data;
    Image() = default;
    Image(int h, int w, int c) : height(h), width(w), channels(c), data(size_t(h) * w * c, 0) {}
    uint8_t* row(int y) { return data.data() + size_t(y) * width * channels; }
    const uint8_t* row(int y) const { return data.data() + size_t(y) * width * channels; }
};

struct ImageF {  // float32 (H, W, C), row-major
    int height = 0, width = 0, channels = 0;
    std::vector<float> data;
    ImageF() = default;
    ImageF(int h, int w, int c) : height(h), width(w), channels(c), data(size_t(h) * w * c, 0.f) {}
};

// Raises InvalidImageError for empty or over-large sizes (same policy and wording as load_image).
void check_image_size(long long h, long long w, const std::string& what);
// 1 (grey) or 4 (RGBA) channels -> RGB, as load_image does; 3 channels pass through.
Image to_rgb(const Image& image, const std::string& what = "image");

Image decode_ppm(const uint8_t* bytes, size_t size, const std::string& what = "PPM data");
Image read_ppm(const std::string& path);
Image read_npy_image(const std::string& path);  // uint8 (H, W), (H, W, 1|3|4)
Image read_image(const std::string& path);      // by extension: .ppm / .npy, converted to RGB

// npy writing (little-endian, C order) for the results of s2e_predict.
void write_npy(const std::string& path, const float* data, const std::vector<long long>& shape);
void write_npy(const std::string& path, const uint8_t* data, const std::vector<long long>& shape);

// -- resampling (OpenCV-compatible) ----------------------------------------------------------------
enum class Interp { Linear, Cubic, Area };

Image resize(const Image& src, int out_h, int out_w, Interp interp = Interp::Linear);
// float (H, W, C) resize; INTER_LINEAR semantics (half-pixel centres, edge clamp).
ImageF resize_linear(const ImageF& src, int out_h, int out_w);
void resize_linear(const float* src, int h, int w, int c, float* dst, int out_h, int out_w);

using Affine = std::array<double, 6>;  // row-major 2x3 (forward map src -> dst, as cv2.warpAffine)
// cv2.warpAffine with BORDER_CONSTANT 0; Interp::Area behaves as Linear, as in OpenCV.
Image warp_affine(const Image& src, const Affine& m, int out_h, int out_w, Interp interp);

// cv2.GaussianBlur of a float32 (H, W, C) array, BORDER_REFLECT_101; sigma <= 0 -> OpenCV's default.
ImageF gaussian_blur(const ImageF& src, int ksize, double sigma);
std::vector<double> gaussian_kernel(int ksize, double sigma);  // cv2.getGaussianKernel

// -- normalisation and task configuration ------------------------------------------------------------
constexpr std::array<float, 3> kMeanRGB{123.675f, 116.28f, 103.53f};
constexpr std::array<float, 3> kStdRGB{58.395f, 57.12f, 57.375f};

// RGB uint8 (H, W, 3) -> (x - mean) / std as float32 (3, H, W) written to `out`.
void normalize(const Image& image, const std::array<float, 3>& mean, const std::array<float, 3>& std,
               float* out);

struct TaskConfig {  // the pipeline's config() as stored in the manifest's "preprocessing"
    std::string task;
    int input_h = 1024, input_w = 768;
    std::array<float, 3> mean = kMeanRGB, std = kStdRGB;
    bool flip_test = true;          // pose
    double bbox_padding = 1.25;     // pose
    int blur_kernel_size = 11;      // pose
    void validate() const;          // ConfigError on bad values
    static TaskConfig from_json(const std::string& json_text);  // the preprocessing dict as JSON text
    static TaskConfig from_json(const Json& preprocessing);
    static TaskConfig from_manifest(const std::string& artifact_dir);  // manifest.json's "preprocessing"
    static TaskConfig for_task(const std::string& task, int input_h, int input_w);
    int num_outputs() const { return task == "pointmap" ? 2 : 1; }
};

// -- letterbox (dense tasks) -------------------------------------------------------------------------
struct Letterbox {
    double scale = 1.0;
    int new_h = 0, new_w = 0, top = 0, bottom = 0, left = 0, right = 0;
    int orig_h = 0, orig_w = 0, canvas_h = 0, canvas_w = 0;
    static Letterbox fit(int orig_h, int orig_w, int canvas_h, int canvas_w);
    Image apply(const Image& image) const;                 // INTER_LINEAR resize + zero padding
    ImageF crop(const ImageF& canvas) const;               // the image region of a canvas-sized map
    ImageF invert(const ImageF& canvas) const;             // crop + INTER_LINEAR resize back
};

// -- pose geometry -------------------------------------------------------------------------------------
struct Box {
    double x1, y1, x2, y2;
};
// Validates boxes against an (h, w) image; InvalidBoxError with the Python messages.
void validate_boxes(const std::vector<Box>& boxes, int image_h, int image_w);
// centre (cx, cy) and padded, aspect-fixed size (w, h) of a box; aspect = input W / H.
void box_to_center_size(const Box& box, double aspect, double padding, double center[2], double size[2]);
Affine udp_warp_matrix(const double center[2], const double size[2], int input_h, int input_w);
Image crop_person(const Image& image, const double center[2], const double size[2], int input_h, int input_w);

const std::vector<int>& flip_indices();  // the 308-keypoint flip table (sapiens2_edge.tasks.FLIP_INDICES)
constexpr int kNumKeypoints = 308;
const std::vector<std::string>& seg_class_names();  // the 29 classes (sapiens2_edge.tasks.SEG_CLASSES)

// (B, K, h, w) -> mirrored in W with channel k taken from flip_indices[k].
void flip_heatmaps(const float* src, int b, int k, int h, int w, const std::vector<int>& flip, float* dst);

// UDP-DARK decoding of (K, h, w) heatmaps into network-input pixels (input_w, input_h):
// keypoints (K, 2) and scores (K). Same steps as sapiens2_edge.tasks.pose.decode_heatmaps.
void decode_heatmaps(const float* heatmaps, int k, int h, int w, int input_w, int input_h, int blur_kernel_size,
                     float* keypoints, float* scores);

// -- pipelines -----------------------------------------------------------------------------------------
struct Preprocessed {
    std::vector<float> batch;  // (batch_size, 3, H, W)
    int batch_size = 0;
    int image_h = 0, image_w = 0;
    Letterbox letterbox;                       // dense tasks
    std::vector<Box> boxes;                    // pose
    std::vector<std::array<double, 2>> centers, sizes;  // pose
    int num_instances = 0;
    bool flip_test = false;
};

// `boxes` empty = the whole image (pose only; other tasks reject boxes with ConfigError).
Preprocessed preprocess(const TaskConfig& cfg, const Image& image, const std::vector<Box>* boxes = nullptr);

struct Tensor {  // a raw network output, float32, C order
    std::vector<long long> shape;
    std::vector<float> data;
    long long numel() const;
};

struct PoseResult {
    std::vector<Box> boxes;
    int num_keypoints = 0;
    std::vector<float> keypoints;  // (N, K, 2) image pixels
    std::vector<float> scores;     // (N, K)
    int image_h = 0, image_w = 0;
    std::string to_json() const;   // PoseResult.to_dict() layout
};
struct SegResult {
    int height = 0, width = 0, num_classes = 0;
    std::vector<uint8_t> labels;  // (H, W)
    std::string to_json() const;  // SegResult.to_dict() layout
};
struct DenseResult {              // normal / pointmap / albedo
    std::string task;
    ImageF map;                   // (H, W, 3)
    double scale = 0.0, focal_length = 0.0;  // pointmap only
    std::string to_json() const;  // the result's to_dict() layout
};

PoseResult postprocess_pose(const TaskConfig& cfg, const std::vector<Tensor>& outputs, const Preprocessed& meta);
SegResult postprocess_seg(const TaskConfig& cfg, const std::vector<Tensor>& outputs, const Preprocessed& meta);
DenseResult postprocess_dense(const TaskConfig& cfg, const std::vector<Tensor>& outputs, const Preprocessed& meta);

// building blocks of the postprocessing, exposed for tests and bindings
std::vector<uint8_t> logits_to_labels(const float* logits, int c, int h, int w, int out_h, int out_w);
void normalize_normals(float* chw, int h, int w, float eps = 1e-8f);  // (3, h, w) in place
void input_to_image(const float* kps_in, int k, const double center[2], const double size[2], int input_h,
                    int input_w, float* kps_out);

// The reference demo's JSON for a list of pose results (sapiens2_edge.tasks.pose_demo_json).
std::string pose_demo_json(const std::vector<PoseResult>& results, const std::vector<std::string>& image_names,
                           double kpt_thr = 0.3);

}  // namespace tasks
}  // namespace s2e
