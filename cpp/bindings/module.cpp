// sapiens2_edge._native: the engine for Python. run() releases the GIL; C++ errors become the typed
// errors of sapiens2_edge.errors (CorruptCheckpointError, ArtifactError, ...).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "s2e/config.hpp"
#include "s2e/engine.hpp"
#include "s2e/onednn.hpp"
#include "s2e/json.hpp"
#include "s2e/winograd.hpp"
#include "s2e/ops.hpp"
#include "s2e/safetensors.hpp"

#if __has_include("tasks_bindings.hpp")
#include "tasks_bindings.hpp"
#define S2E_HAS_TASKS 1
#endif

namespace py = pybind11;

namespace {

PyObject* error_class(const char* name) {
    // Looked up once at import and kept for the life of the interpreter.
    py::object cls = py::module_::import("sapiens2_edge.errors").attr(name);
    return cls.release().ptr();
}

struct ErrorClasses {
    PyObject *corrupt, *artifact, *mismatch, *config, *input_size, *invalid_tensor, *base;
};
ErrorClasses g_err{};

py::object to_python(const s2e::Json& j) {
    using T = s2e::Json::Type;
    switch (j.type()) {
        case T::Null: return py::none();
        case T::Bool: return py::bool_(j.as_bool(""));
        case T::Number: return j.is_integer() ? py::object(py::int_(j.as_int(""))) : py::object(py::float_(j.as_number("")));
        case T::String: return py::str(j.as_string(""));
        case T::Array: {
            py::list l;
            for (const auto& e : j.as_array("")) l.append(to_python(e));
            return std::move(l);
        }
        case T::Object: {
            py::dict d;
            for (const auto& kv : j.as_object("")) d[py::str(kv.first)] = to_python(kv.second);
            return std::move(d);
        }
    }
    return py::none();
}

py::array_t<float> to_array(s2e::Output&& o) {
    auto* v = new std::vector<float>(std::move(o.data));
    py::capsule owner(v, [](void* p) { delete static_cast<std::vector<float>*>(p); });
    return py::array_t<float>(o.shape, v->data(), owner);
}

std::string bytes_of(const py::buffer& b, const char** data, size_t* size) {
    py::buffer_info info = b.request();
    if (info.ndim > 1 || (info.ndim == 1 && info.itemsize != 1))
        throw s2e::InvalidTensorError("expected a bytes-like object");
    *data = static_cast<const char*>(info.ptr);
    *size = static_cast<size_t>(info.size * info.itemsize);
    return {};
}

}  // namespace

PYBIND11_MODULE(_native, m) {
    m.doc() = "Native C++ inference engine for Sapiens2 artifacts (fp32, fp16-stored and int8-weight).";
    g_err = {error_class("CorruptCheckpointError"), error_class("ArtifactError"), error_class("StateDictMismatchError"),
             error_class("ConfigError"),           error_class("InputSizeError"), error_class("InvalidTensorError"),
             error_class("Sapiens2EdgeError")};
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const s2e::CorruptFileError& e) {
            PyErr_SetString(g_err.corrupt, e.what());
        } catch (const s2e::JsonError& e) {
            PyErr_SetString(g_err.artifact, e.what());
        } catch (const s2e::ManifestError& e) {
            PyErr_SetString(g_err.artifact, e.what());
        } catch (const s2e::WeightsMismatchError& e) {
            PyErr_SetString(g_err.mismatch, e.what());
        } catch (const s2e::UnsupportedError& e) {
            PyErr_SetString(g_err.config, e.what());
        } catch (const s2e::InputSizeError& e) {
            PyErr_SetString(g_err.input_size, e.what());
        } catch (const s2e::InvalidTensorError& e) {
            PyErr_SetString(g_err.invalid_tensor, e.what());
        } catch (const s2e::Error& e) {
            PyErr_SetString(g_err.base, e.what());
        }
    });

    py::class_<s2e::Engine, std::shared_ptr<s2e::Engine>>(m, "Engine", R"doc(
Engine(path, config="", precision="fp32") loads an artifact directory (manifest.json +
weights.safetensors) or a .safetensors file; for a file, ``config`` is a JSON object with ``arch``,
``head``, ``rope_mode`` (as in a manifest), or empty to use a quantized checkpoint's metadata.
``precision="bf16"`` runs the linear and attention GEMMs on oneDNN in bfloat16 (``load_onednn``
first; ConfigError without it). ``run(x)`` takes a float32
(B,3,H,W) array and returns the head's raw outputs as a tuple; it releases the GIL and may be
called from several threads at once.)doc")
        .def(py::init([](const std::string& path, const std::string& config, const std::string& precision) {
                 py::gil_scoped_release release;
                 return std::make_shared<s2e::Engine>(path, config, precision);
             }),
             py::arg("path"), py::arg("config") = "", py::arg("precision") = "fp32")
        .def("run",
             [](const s2e::Engine& e, const py::array_t<float, py::array::c_style | py::array::forcecast>& x) {
                 if (x.ndim() != 4 || x.shape(1) != 3) {
                     std::string s = "(";
                     for (py::ssize_t i = 0; i < x.ndim(); ++i) s += (i ? ", " : "") + std::to_string(x.shape(i));
                     throw s2e::InvalidTensorError("expected input of shape (B,3,H,W), got " + s + ")");
                 }
                 std::vector<s2e::Output> outs;
                 {
                     py::gil_scoped_release release;
                     outs = e.run(x.data(), x.shape(0), x.shape(2), x.shape(3));
                 }
                 py::tuple t(outs.size());
                 for (size_t i = 0; i < outs.size(); ++i) t[i] = to_array(std::move(outs[i]));
                 return t;
             },
             py::arg("x"))
        .def_property_readonly("task", [](const s2e::Engine& e) -> py::object {
            return e.config().has_head ? py::object(py::str(e.config().head.task)) : py::object(py::none());
        })
        .def_property_readonly("output_names", [](const s2e::Engine& e) { return e.config().output_names(); })
        .def_property_readonly("input_multiple", [](const s2e::Engine& e) { return e.config().arch.input_multiple(); })
        .def_property_readonly("input_size", [](const s2e::Engine& e) -> py::object {
            const auto& c = e.config();
            if (c.input_h <= 0) return py::none();
            return py::make_tuple(c.input_h, c.input_w);
        })
        .def_property_readonly("max_batch", [](const s2e::Engine& e) { return e.config().max_batch; })
        .def_property_readonly("embed_dim", [](const s2e::Engine& e) { return e.config().arch.embed_dim; })
        .def_property_readonly("rope_mode", [](const s2e::Engine& e) { return e.config().rope_bf16 ? "bf16" : "fp32"; })
        .def_property_readonly("weight_format", &s2e::Engine::weight_format)
        .def_property_readonly("precision", &s2e::Engine::precision)
        .def_property_readonly("fp32_gemm", &s2e::Engine::fp32_gemm)
        .def_property_readonly("conv3x3_algorithm", &s2e::Engine::conv3x3_algorithm,
                               "How float32 3x3 convolutions run on oneDNN: 'auto', 'winograd' or 'direct'.")
        .def_property_readonly("deconv_algorithm", &s2e::Engine::deconv_algorithm,
                               "How float32 transposed convolutions run on oneDNN: 'auto', 'winograd' or 'direct'.")
        .def_property_readonly("int8_weights_mode", &s2e::Engine::int8_weights_mode,
                               "Where the W8A8 linears' int8 weights live: 'packed' (in oneDNN's layout, kept) or 'file'.")
        .def_property_readonly("packed_bytes", &s2e::Engine::packed_bytes,
                               "Bytes of int8 weights kept packed in oneDNN's layout (0 when they are read from the file).")
        .def_property_readonly("weights_path", &s2e::Engine::weights_path)
        .def_property_readonly("kept_bytes", &s2e::Engine::kept_bytes,
                               "Bytes kept for the next run (the last run's buffers, this thread's oneDNN buffers).");

    m.def("parse_safetensors",
          [](const py::buffer& data) {
              const char* p;
              size_t n;
              bytes_of(data, &p, &n);
              std::shared_ptr<s2e::SafeTensors> st;
              {
                  py::gil_scoped_release release;
                  st = s2e::SafeTensors::from_bytes(p, n);
              }
              py::dict tensors;
              for (const auto& kv : st->tensors())
                  tensors[py::str(kv.first)] = py::make_tuple(s2e::dtype_name(kv.second.dtype), kv.second.shape);
              return py::make_tuple(tensors, st->metadata());
          },
          py::arg("data"), "Validate an in-memory safetensors file: ({name: (dtype, shape)}, metadata).");
    m.def("read_safetensors_header",
          [](const std::string& path) {
              auto st = s2e::SafeTensors::open(path);
              py::dict tensors;
              for (const auto& kv : st->tensors())
                  tensors[py::str(kv.first)] = py::make_tuple(s2e::dtype_name(kv.second.dtype), kv.second.shape);
              return py::make_tuple(tensors, st->metadata());
          },
          py::arg("path"), "Validate a safetensors file (memory-mapped): ({name: (dtype, shape)}, metadata).");
    m.def("parse_json",
          [](const py::buffer& data) {
              const char* p;
              size_t n;
              bytes_of(data, &p, &n);
              return to_python(s2e::Json::parse(p, n));
          },
          py::arg("data"), "Parse JSON with the engine's bounded parser (for tests and fuzzing).");
    m.def("parse_config",
          [](const py::buffer& data) {
              const char* p;
              size_t n;
              bytes_of(data, &p, &n);
              s2e::Json j;
              try {
                  j = s2e::Json::parse(p, n);
              } catch (const s2e::JsonError& e) {
                  throw s2e::ManifestError(std::string("config is not valid JSON: ") + e.what());
              }
              s2e::EngineConfig c = s2e::parse_engine_config(j, "config");
              py::dict d;
              d["task"] = c.has_head ? py::object(py::str(c.head.task)) : py::object(py::none());
              d["embed_dim"] = c.arch.embed_dim;
              d["depth"] = c.arch.depth;
              d["outputs"] = c.output_names();
              d["rope_mode"] = c.rope_bf16 ? "bf16" : "fp32";
              return d;
          },
          py::arg("data"), "Validate a manifest-like engine configuration (arch, head, rope_mode).");
    m.def("rope_tables",
          [](const py::array_t<float, py::array::c_style | py::array::forcecast>& periods, int64_t hp, int64_t wp,
             bool bf16) {
              if (periods.ndim() != 1 || hp < 1 || wp < 1 || hp > 4096 || wp > 4096)
                  throw s2e::InvalidTensorError("rope_tables expects 1-D periods and a grid of 1..4096 per side");
              const int64_t q = periods.shape(0), n = hp * wp;
              py::array_t<float> sin_t({n, 4 * q}), cos_t({n, 4 * q});
              s2e::ops::rope_tables(periods.data(), q, hp, wp, bf16, sin_t.mutable_data(), cos_t.mutable_data());
              return py::make_tuple(sin_t, cos_t);
          },
          py::arg("periods"), py::arg("hp"), py::arg("wp"), py::arg("bf16") = true);
    m.def("num_threads", &s2e::ops::num_threads, "OpenMP threads the engine uses.");
    m.def("load_onednn", [](const std::string& path) { return s2e::onednn::load(path); }, py::arg("path") = "",
          "Opens oneDNN for bf16 runs (once per process: later calls return the first result): `path`, else "
          "$S2E_ONEDNN_LIBRARY, else libdnnl.so.3. Returns '' when usable, else why not.");
    m.def("onednn_info", [] {
        return py::make_tuple(s2e::onednn::available(), s2e::onednn::native_bf16(), s2e::onednn::describe());
    }, "(loaded, native bf16 on this CPU, description) of oneDNN.");
    m.def(
        "winograd_tile",
        [](int64_t cin, int64_t cout, int64_t h, int64_t w, bool deconv, std::optional<bool> avx512, bool forced) {
            return s2e::winograd::choose_tile(cin, cout, h, w, deconv, avx512.value_or(s2e::onednn::avx512()), forced);
        },
        py::arg("cin"), py::arg("cout"), py::arg("h"), py::arg("w"), py::arg("deconv") = false,
        py::arg("avx512") = py::none(), py::arg("forced") = false,
        "The Winograd tile side (4 or 2) a float32 head layer runs with, or 0 where it runs direct: the rule of "
        "the engine's 'auto' (`forced`: of 'winograd') on a CPU whose float32 kernels are AVX-512 ones "
        "(`avx512`; None: as oneDNN, once loaded, reports this CPU) or not.");
    m.def("onednn_avx512", &s2e::onednn::avx512, "Whether oneDNN's kernels here are AVX-512 ones.");
    m.def("onednn_exact_int8", &s2e::onednn::exact_int8,
          "Whether oneDNN multiplies int8 here with VNNI or AMX (exact int32 sums): where the engine packs int8 weights.");
    m.def(
        "int8_matmul_packed",
        [](const py::array_t<int8_t, py::array::c_style>& a, const py::array_t<int8_t, py::array::c_style>& w,
           int64_t m) -> py::object {
            if (a.ndim() != 2 || w.ndim() != 2 || a.shape(1) != w.shape(1))
                throw std::invalid_argument("int8_matmul_packed takes a (M, K) and w (N, K), both int8");
            const int64_t M = a.shape(0), K = a.shape(1), N = w.shape(0);
            py::array_t<int32_t> c({M, N});
            int32_t* out = c.mutable_data();
            bool done = false;
            size_t bytes = 0;
            {
                py::gil_scoped_release nogil;
                s2e::onednn::PackedInt8 packed(m, K, N, w.data());
                done = packed.matmul(M, a.data(), out);
                bytes = packed.bytes();
            }
            if (!done) return py::none();
            return py::make_tuple(c, bytes);
        },
        py::arg("a"), py::arg("w"), py::arg("m"),
        "(a . w^T as int32, bytes of the packed weights): w packed once for products of m rows as the engine's "
        "W8A8 linears keep it, then multiplied by a; None where oneDNN's kernel for a's rows reads another layout.");
#ifdef S2E_HAS_TASKS
    bind_tasks(m);
#endif
}
