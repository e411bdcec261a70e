// sapiens2_edge._native.tasks: the C++ pre- and post-processing with numpy arrays, so Python tests
// can hold it against sapiens2_edge.tasks. C++ errors become the sapiens2_edge.errors classes.
#include "tasks_bindings.hpp"

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cstring>

#include "s2e/tasks.hpp"

namespace py = pybind11;
using namespace s2e::tasks;

namespace {

using U8 = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;
using F32 = py::array_t<float, py::array::c_style | py::array::forcecast>;

Image to_image(const py::array& a) {
    if (!py::isinstance<py::array_t<uint8_t>>(a) || (a.ndim() != 2 && a.ndim() != 3))
        throw InvalidImageError("expected a uint8 array of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got " +
                                std::string(py::str(a.dtype())) + " with " + std::to_string(a.ndim()) + " dimensions");
    U8 u = U8::ensure(a);
    Image img;
    img.height = int(u.shape(0));
    img.width = int(u.shape(1));
    img.channels = a.ndim() == 3 ? int(u.shape(2)) : 1;
    img.data.assign(u.data(), u.data() + u.size());
    return img;
}

py::array_t<uint8_t> from_image(const Image& img) {
    py::array_t<uint8_t> out({py::ssize_t(img.height), py::ssize_t(img.width), py::ssize_t(img.channels)});
    std::memcpy(out.mutable_data(), img.data.data(), img.data.size());
    return out;
}

ImageF to_imagef(const F32& a) {
    if (a.ndim() != 2 && a.ndim() != 3)
        throw InvalidTensorError("expected a float32 array of shape (H, W) or (H, W, C), got " +
                                 std::to_string(a.ndim()) + " dimensions");
    ImageF img;
    img.height = int(a.shape(0));
    img.width = int(a.shape(1));
    img.channels = a.ndim() == 3 ? int(a.shape(2)) : 1;
    img.data.assign(a.data(), a.data() + a.size());
    return img;
}

py::array_t<float> from_imagef(const ImageF& img) {
    py::array_t<float> out({py::ssize_t(img.height), py::ssize_t(img.width), py::ssize_t(img.channels)});
    std::memcpy(out.mutable_data(), img.data.data(), img.data.size() * sizeof(float));
    return out;
}

Interp parse_interp(const std::string& s) {
    if (s == "linear") return Interp::Linear;
    if (s == "cubic") return Interp::Cubic;
    if (s == "area") return Interp::Area;
    throw ConfigError("unknown interpolation '" + s + "'; expected linear, cubic or area");
}

std::vector<Box> to_boxes(const py::object& obj) {
    F32 a = F32::ensure(obj);
    if (!a || !(a.ndim() == 2 && (a.shape(1) == 4 || a.shape(1) == 5)))
        throw InvalidBoxError("boxes must be an (n, 4) array of [x1, y1, x2, y2] (or (n, 5) with a score column)");
    py::array_t<double, py::array::c_style | py::array::forcecast> d(obj);
    std::vector<Box> boxes;
    const auto r = d.unchecked<2>();
    for (py::ssize_t i = 0; i < r.shape(0); ++i) boxes.push_back(Box{r(i, 0), r(i, 1), r(i, 2), r(i, 3)});
    return boxes;
}

Tensor to_tensor(const py::handle& h) {
    F32 a = F32::ensure(h);
    if (!a) throw InvalidTensorError("raw outputs must be float arrays");
    Tensor t;
    for (py::ssize_t i = 0; i < a.ndim(); ++i) t.shape.push_back(a.shape(i));
    t.data.assign(a.data(), a.data() + a.size());
    return t;
}

// The sapiens2_edge.errors classes, kept for the interpreter's lifetime (leaked on purpose: no
// destructor runs after the interpreter is gone). Set once, at import.
py::object* g_errors = nullptr;

void register_errors() {
    py::module_ errors = py::module_::import("sapiens2_edge.errors");
    g_errors = new py::object[5]{errors.attr("ImageNotFoundError"), errors.attr("InvalidImageError"),
                                 errors.attr("InvalidBoxError"), errors.attr("InvalidTensorError"),
                                 errors.attr("ConfigError")};
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const ImageNotFoundError& e) {
            PyErr_SetString(g_errors[0].ptr(), e.what());
        } catch (const InvalidImageError& e) {
            PyErr_SetString(g_errors[1].ptr(), e.what());
        } catch (const InvalidBoxError& e) {
            PyErr_SetString(g_errors[2].ptr(), e.what());
        } catch (const InvalidTensorError& e) {
            PyErr_SetString(g_errors[3].ptr(), e.what());
        } catch (const ConfigError& e) {
            PyErr_SetString(g_errors[4].ptr(), e.what());
        }
    });
}

py::dict letterbox_dict(const Letterbox& lb) {
    py::dict d;
    d["scale"] = lb.scale;
    d["new_size"] = py::make_tuple(lb.new_h, lb.new_w);
    d["top"] = lb.top;
    d["bottom"] = lb.bottom;
    d["left"] = lb.left;
    d["right"] = lb.right;
    d["original_size"] = py::make_tuple(lb.orig_h, lb.orig_w);
    d["canvas_size"] = py::make_tuple(lb.canvas_h, lb.canvas_w);
    return d;
}

Letterbox letterbox_of(int h0, int w0, int h, int w) { return Letterbox::fit(h0, w0, h, w); }

}  // namespace

void bind_tasks(py::module_& parent) {
    py::module_ m = parent.def_submodule("tasks", "C++ pre- and post-processing (s2e/tasks.hpp)");
    register_errors();

    // -- images and resampling
    m.def("decode_ppm", [](const py::bytes& b) {
        const std::string s = b;
        return from_image(decode_ppm(reinterpret_cast<const uint8_t*>(s.data()), s.size()));
    }, "Binary PPM (P6) / PGM (P5) bytes -> uint8 (H, W, C).");
    m.def("read_image", [](const std::string& path) { return from_image(read_image(path)); },
          "A .ppm/.pgm/.npy file -> RGB uint8 (H, W, 3).");
    m.def("to_rgb", [](const py::array& a) { return from_image(to_rgb(to_image(a))); });
    m.def("write_npy", [](const std::string& path, const py::array& a) {
        std::vector<long long> shape;
        for (py::ssize_t i = 0; i < a.ndim(); ++i) shape.push_back(a.shape(i));
        if (py::isinstance<py::array_t<uint8_t>>(a))
            write_npy(path, U8::ensure(a).data(), shape);
        else
            write_npy(path, F32::ensure(a).data(), shape);
    });
    m.def("resize", [](const py::array& img, int out_h, int out_w, const std::string& interp) {
        const Image src = to_image(img);
        const Interp mode = parse_interp(interp);
        Image out;
        {
            py::gil_scoped_release nogil;
            out = resize(src, out_h, out_w, mode);
        }
        return from_image(out);
    }, py::arg("image"), py::arg("out_h"), py::arg("out_w"), py::arg("interp") = "linear");
    m.def("resize_linear", [](const F32& a, int out_h, int out_w) {
        return from_imagef(resize_linear(to_imagef(a), out_h, out_w));
    });
    m.def("warp_affine", [](const py::array& img, const std::array<double, 6>& mat, int out_h, int out_w,
                            const std::string& interp) {
        return from_image(warp_affine(to_image(img), mat, out_h, out_w, parse_interp(interp)));
    });
    m.def("gaussian_blur", [](const F32& a, int ksize, double sigma) {
        return from_imagef(gaussian_blur(to_imagef(a), ksize, sigma));
    });
    m.def("normalize", [](const py::array& img) {
        Image rgb = to_image(img);
        py::array_t<float> out({py::ssize_t(3), py::ssize_t(rgb.height), py::ssize_t(rgb.width)});
        normalize(rgb, kMeanRGB, kStdRGB, out.mutable_data());
        return out;
    });

    // -- letterbox and pose geometry
    m.def("letterbox_fit", [](int h0, int w0, int h, int w) { return letterbox_dict(letterbox_of(h0, w0, h, w)); });
    m.def("letterbox_apply", [](const py::array& img, int h, int w) {
        Image src = to_image(img);
        return from_image(letterbox_of(src.height, src.width, h, w).apply(src));
    });
    m.def("letterbox_invert", [](const F32& canvas, int h0, int w0) {
        ImageF c = to_imagef(canvas);
        return from_imagef(letterbox_of(h0, w0, c.height, c.width).invert(c));
    });
    m.def("crop_person", [](const py::array& img, std::array<double, 2> c, std::array<double, 2> s, int h, int w) {
        return from_image(crop_person(to_image(img), c.data(), s.data(), h, w));
    });
    m.def("udp_warp_matrix", [](std::array<double, 2> c, std::array<double, 2> s, int h, int w) {
        return udp_warp_matrix(c.data(), s.data(), h, w);
    });

    // -- postprocessing blocks
    m.def("decode_heatmaps", [](const F32& hm, int input_w, int input_h, int blur) {
        if (hm.ndim() != 3)
            throw InvalidTensorError("heatmaps must have shape (K, h, w), got " + std::to_string(hm.ndim()) + " dims");
        const int k = int(hm.shape(0)), h = int(hm.shape(1)), w = int(hm.shape(2));
        py::array_t<float> kps({py::ssize_t(k), py::ssize_t(2)}), scores(k);
        decode_heatmaps(hm.data(), k, h, w, input_w, input_h, blur, kps.mutable_data(), scores.mutable_data());
        return py::make_tuple(kps, scores);
    }, py::arg("heatmaps"), py::arg("input_w"), py::arg("input_h"), py::arg("blur_kernel_size") = 11);
    m.def("flip_heatmaps", [](const F32& hm) {
        if (hm.ndim() != 4) throw InvalidTensorError("heatmaps must have shape (B, K, h, w)");
        py::array_t<float> out({hm.shape(0), hm.shape(1), hm.shape(2), hm.shape(3)});
        flip_heatmaps(hm.data(), int(hm.shape(0)), int(hm.shape(1)), int(hm.shape(2)), int(hm.shape(3)),
                      flip_indices(), out.mutable_data());
        return out;
    });
    m.def("logits_to_labels", [](const F32& logits, int out_h, int out_w) {
        if (logits.ndim() != 3) throw InvalidTensorError("logits must have shape (C, h, w)");
        std::vector<uint8_t> labels = logits_to_labels(logits.data(), int(logits.shape(0)), int(logits.shape(1)),
                                                       int(logits.shape(2)), out_h, out_w);
        py::array_t<uint8_t> out({py::ssize_t(out_h), py::ssize_t(out_w)});
        std::memcpy(out.mutable_data(), labels.data(), labels.size());
        return out;
    });
    m.def("normalize_normals", [](const F32& n) {
        if (n.ndim() != 3 || n.shape(0) != 3) throw InvalidTensorError("normals must have shape (3, H, W)");
        py::array_t<float> out({n.shape(0), n.shape(1), n.shape(2)});
        std::memcpy(out.mutable_data(), n.data(), size_t(n.size()) * sizeof(float));
        normalize_normals(out.mutable_data(), int(n.shape(1)), int(n.shape(2)));
        return out;
    });

    // -- pipelines
    py::class_<Preprocessed>(m, "Meta", "What postprocess needs about one preprocessed image.")
        .def_readonly("batch_size", &Preprocessed::batch_size)
        .def_property_readonly("image_size", [](const Preprocessed& p) { return py::make_tuple(p.image_h, p.image_w); })
        .def_readonly("num_instances", &Preprocessed::num_instances)
        .def_property_readonly("centers", [](const Preprocessed& p) { return p.centers; })
        .def_property_readonly("sizes", [](const Preprocessed& p) { return p.sizes; })
        .def_property_readonly("letterbox", [](const Preprocessed& p) { return letterbox_dict(p.letterbox); });

    py::class_<TaskConfig>(m, "Pipeline", "The C++ pipeline of one task, built from a preprocessing config JSON.")
        .def(py::init([](const std::string& config_json) { return TaskConfig::from_json(config_json); }))
        .def_static("from_manifest", &TaskConfig::from_manifest)
        .def_readonly("task", &TaskConfig::task)
        .def_property_readonly("input_size", [](const TaskConfig& c) { return py::make_tuple(c.input_h, c.input_w); })
        .def_readonly("flip_test", &TaskConfig::flip_test)
        .def_readonly("bbox_padding", &TaskConfig::bbox_padding)
        .def_readonly("blur_kernel_size", &TaskConfig::blur_kernel_size)
        .def("preprocess", [](const TaskConfig& cfg, const py::array& img, const py::object& boxes) {
            Image image = to_image(img);
            std::vector<Box> b;
            if (!boxes.is_none()) b = to_boxes(boxes);
            Preprocessed p = preprocess(cfg, image, boxes.is_none() ? nullptr : &b);
            py::array_t<float> batch({py::ssize_t(p.batch_size), py::ssize_t(3), py::ssize_t(cfg.input_h),
                                      py::ssize_t(cfg.input_w)});
            std::memcpy(batch.mutable_data(), p.batch.data(), p.batch.size() * sizeof(float));
            p.batch.clear();
            p.batch.shrink_to_fit();
            return py::make_tuple(batch, p);
        }, py::arg("image"), py::arg("boxes") = py::none())
        .def("postprocess", [](const TaskConfig& cfg, const py::list& outputs, const Preprocessed& meta) {
            std::vector<Tensor> outs;
            for (const py::handle& h : outputs) outs.push_back(to_tensor(h));
            py::dict r;
            if (cfg.task == "pose") {
                PoseResult p = postprocess_pose(cfg, outs, meta);
                const py::ssize_t n = py::ssize_t(p.boxes.size()), k = p.num_keypoints;
                py::array_t<float> kps({n, k, py::ssize_t(2)}), scores({n, k}), boxes({n, py::ssize_t(4)});
                std::memcpy(kps.mutable_data(), p.keypoints.data(), p.keypoints.size() * sizeof(float));
                std::memcpy(scores.mutable_data(), p.scores.data(), p.scores.size() * sizeof(float));
                for (py::ssize_t i = 0; i < n; ++i) {
                    const Box& b = p.boxes[size_t(i)];
                    float* d = boxes.mutable_data(i);
                    d[0] = float(b.x1), d[1] = float(b.y1), d[2] = float(b.x2), d[3] = float(b.y2);
                }
                r["boxes"] = boxes;
                r["keypoints"] = kps;
                r["scores"] = scores;
                r["json"] = p.to_json();
            } else if (cfg.task == "seg") {
                SegResult s = postprocess_seg(cfg, outs, meta);
                py::array_t<uint8_t> labels({py::ssize_t(s.height), py::ssize_t(s.width)});
                std::memcpy(labels.mutable_data(), s.labels.data(), s.labels.size());
                r["labels"] = labels;
                r["json"] = s.to_json();
            } else {
                DenseResult d = postprocess_dense(cfg, outs, meta);
                r[cfg.task == "pointmap" ? "points" : cfg.task.c_str()] = from_imagef(d.map);
                if (cfg.task == "pointmap") {
                    r["scale"] = d.scale;
                    r["focal_length"] = d.focal_length;
                }
                r["json"] = d.to_json();
            }
            return r;
        });
    m.def("pose_demo_json", [](const TaskConfig& cfg, const py::list& outputs, const Preprocessed& meta,
                               const std::string& name, double kpt_thr) {
        std::vector<Tensor> outs;
        for (const py::handle& h : outputs) outs.push_back(to_tensor(h));
        return pose_demo_json({postprocess_pose(cfg, outs, meta)}, {name}, kpt_thr);
    });
}
