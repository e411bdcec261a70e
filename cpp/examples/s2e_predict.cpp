// s2e_predict: run an exported artifact on one image with the native engine, in C++ only.
//
//   s2e_predict ARTIFACT_DIR IMAGE [--out DIR] [--box x1,y1,x2,y2 ...] [--kpt-thr T]
//
// IMAGE: binary PPM/PGM (.ppm, .pgm, .pnm) or a uint8 .npy (H, W[, 1|3|4]) in RGB order.
// Writes the result arrays as .npy files and result.json (the Python result's to_dict layout) to
// DIR (default: ./s2e_out); pose also writes pose.json in the reference demo layout.
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "s2e/engine.hpp"
#include "s2e/tasks.hpp"

namespace t = s2e::tasks;

namespace {

int usage() {
    std::fprintf(stderr,
                 "usage: s2e_predict ARTIFACT_DIR IMAGE [--out DIR] [--box x1,y1,x2,y2 ...] [--kpt-thr T]\n"
                 "  IMAGE: binary PPM/PGM or uint8 .npy (RGB)\n");
    return 2;
}

t::Box parse_box(const std::string& s) {
    double v[4];
    size_t pos = 0;
    for (int i = 0; i < 4; ++i) {
        size_t used = 0;
        try {
            v[i] = std::stod(s.substr(pos), &used);
        } catch (const std::exception&) {
            throw t::InvalidBoxError("--box expects x1,y1,x2,y2, got '" + s + "'");
        }
        pos += used;
        if (i < 3) {
            if (pos >= s.size() || s[pos] != ',') throw t::InvalidBoxError("--box expects x1,y1,x2,y2, got '" + s + "'");
            ++pos;
        }
    }
    if (pos != s.size()) throw t::InvalidBoxError("--box expects x1,y1,x2,y2, got '" + s + "'");
    return t::Box{v[0], v[1], v[2], v[3]};
}

void write_text(const std::filesystem::path& p, const std::string& text) {
    std::ofstream f(p, std::ios::binary);
    f << text << "\n";
    if (!f) throw std::runtime_error("cannot write " + p.string());
}

// Runs the engine over the batch in chunks of at most max_batch samples.
std::vector<t::Tensor> infer(const s2e::Engine& engine, const t::Preprocessed& pre, int H, int W) {
    const int64_t limit = engine.config().max_batch > 0 ? engine.config().max_batch : pre.batch_size;
    std::vector<t::Tensor> outs;
    for (int64_t start = 0; start < pre.batch_size; start += limit) {
        const int64_t n = std::min<int64_t>(limit, pre.batch_size - start);
        std::vector<s2e::Output> o = engine.run(pre.batch.data() + size_t(start) * 3 * H * W, n, H, W);
        if (outs.empty()) outs.resize(o.size());
        for (size_t i = 0; i < o.size() && i < outs.size(); ++i) {
            t::Tensor& dst = outs[i];
            if (dst.shape.empty()) {
                dst.shape.assign(o[i].shape.begin(), o[i].shape.end());
                dst.shape[0] = 0;
            }
            dst.shape[0] += o[i].shape.empty() ? 0 : o[i].shape[0];
            dst.data.insert(dst.data.end(), o[i].data.begin(), o[i].data.end());
        }
    }
    return outs;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 3) return usage();
    const std::string artifact = argv[1], image_path = argv[2];
    std::filesystem::path out_dir = "s2e_out";
    std::vector<t::Box> boxes;
    double kpt_thr = 0.3;
    for (int i = 3; i < argc; ++i) {
        const std::string a = argv[i];
        if (i + 1 >= argc) return usage();
        if (a == "--out")
            out_dir = argv[++i];
        else if (a == "--box")
            boxes.push_back(parse_box(argv[++i]));
        else if (a == "--kpt-thr")
            kpt_thr = std::atof(argv[++i]);
        else
            return usage();
    }
    try {
        const t::TaskConfig cfg = t::TaskConfig::from_manifest(artifact);
        const s2e::Engine engine(artifact);
        const t::Image image = t::read_image(image_path);
        const t::Preprocessed pre = t::preprocess(cfg, image, boxes.empty() ? nullptr : &boxes);
        const std::vector<t::Tensor> outs = infer(engine, pre, cfg.input_h, cfg.input_w);
        std::filesystem::create_directories(out_dir);
        std::string summary;
        if (cfg.task == "pose") {
            const t::PoseResult r = t::postprocess_pose(cfg, outs, pre);
            const long long n = (long long)r.boxes.size(), k = r.num_keypoints;
            std::vector<float> b;
            for (const t::Box& x : r.boxes) b.insert(b.end(), {float(x.x1), float(x.y1), float(x.x2), float(x.y2)});
            t::write_npy((out_dir / "boxes.npy").string(), b.data(), {n, 4});
            t::write_npy((out_dir / "keypoints.npy").string(), r.keypoints.data(), {n, k, 2});
            t::write_npy((out_dir / "scores.npy").string(), r.scores.data(), {n, k});
            const std::string name = std::filesystem::path(image_path).filename().string();
            write_text(out_dir / "pose.json", t::pose_demo_json({r}, {name}, kpt_thr));
            summary = r.to_json();
        } else if (cfg.task == "seg") {
            const t::SegResult r = t::postprocess_seg(cfg, outs, pre);
            t::write_npy((out_dir / "labels.npy").string(), r.labels.data(), {r.height, r.width});
            summary = r.to_json();
        } else {
            const t::DenseResult r = t::postprocess_dense(cfg, outs, pre);
            const std::vector<long long> shape{r.map.height, r.map.width, 3};
            const std::string key = cfg.task == "pointmap" ? "points" : cfg.task;
            t::write_npy((out_dir / (key + ".npy")).string(), r.map.data.data(), shape);
            if (cfg.task == "pointmap") {  // depth: the Z channel
                std::vector<float> depth(size_t(r.map.height) * r.map.width);
                for (size_t i = 0; i < depth.size(); ++i) depth[i] = r.map.data[i * 3 + 2];
                t::write_npy((out_dir / "depth.npy").string(), depth.data(), {r.map.height, r.map.width});
            }
            summary = r.to_json();
        }
        write_text(out_dir / "result.json", summary);
        std::printf("%s: %s on %s (%d x %d) -> %s\n", artifact.c_str(), cfg.task.c_str(), image_path.c_str(),
                    image.width, image.height, out_dir.string().c_str());
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "s2e_predict: error: %s\n", e.what());
        return 1;
    }
}
