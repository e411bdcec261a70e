#include "s2e/onednn.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>

#include "s2e/common.hpp"

#if defined(__has_include)
#if __has_include(<oneapi/dnnl/dnnl.h>) && __has_include(<dlfcn.h>)
#define S2E_ONEDNN_HEADERS 1
#include <dlfcn.h>
#include <oneapi/dnnl/dnnl.h>
#endif
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

namespace s2e {
namespace onednn {

S2E_CPU_CLONES static void to_bf16_row(const float* x, int64_t n, uint16_t* out) {
    for (int64_t c = 0; c < n; ++c) out[c] = float_to_bf16(x[c]);
}

void to_bf16(const float* x, int64_t rows, int64_t cols, int64_t ld, uint16_t* out) {
    if (rows == 1 || cols * rows <= 65536 || ld == cols) {  // one contiguous stretch: split it evenly
        if (ld == cols || rows == 1) {
            const int64_t n = rows * cols, parts = n > 65536 ? 64 : 1, step = (n + parts - 1) / parts;
#pragma omp parallel for schedule(static) if (parts > 1)
            for (int64_t p = 0; p < parts; ++p) {
                const int64_t lo = p * step, hi = std::min(n, lo + step);
                if (hi > lo) to_bf16_row(x + lo, hi - lo, out + lo);
            }
            return;
        }
    }
#pragma omp parallel for schedule(static) if (rows * cols > 65536)
    for (int64_t r = 0; r < rows; ++r) to_bf16_row(x + r * ld, cols, out + r * cols);
}

#ifdef S2E_ONEDNN_HEADERS
namespace {

// The part of oneDNN's C API the engine uses, resolved with dlsym. The library's own symbols are
// never linked, so an engine without oneDNN installed loads and runs on OpenBLAS alone.
struct Api {
    decltype(&dnnl_version) version;
    decltype(&dnnl_get_effective_cpu_isa) effective_isa;
    decltype(&dnnl_engine_create) engine_create;
    decltype(&dnnl_stream_create) stream_create;
    decltype(&dnnl_stream_destroy) stream_destroy;
    decltype(&dnnl_memory_desc_create_with_strides) md_create;
    decltype(&dnnl_memory_desc_create_with_tag) md_create_tag;
    decltype(&dnnl_memory_desc_destroy) md_destroy;
    decltype(&dnnl_memory_desc_get_size) md_size;
    decltype(&dnnl_primitive_attr_create) attr_create;
    decltype(&dnnl_primitive_attr_destroy) attr_destroy;
    decltype(&dnnl_primitive_attr_set_scratchpad_mode) attr_scratchpad;
    decltype(&dnnl_primitive_attr_set_fpmath_mode) attr_fpmath;
    decltype(&dnnl_primitive_attr_set_scales_mask) attr_scales_mask;
    decltype(&dnnl_matmul_primitive_desc_create) matmul_pd;
    decltype(&dnnl_deconvolution_forward_primitive_desc_create) deconv_pd;
    decltype(&dnnl_convolution_forward_primitive_desc_create) conv_pd;
    decltype(&dnnl_reorder_primitive_desc_create) reorder_pd;
    decltype(&dnnl_primitive_desc_query_md) pd_query_md;
    decltype(&dnnl_primitive_desc_destroy) pd_destroy;
    decltype(&dnnl_primitive_create) prim_create;
    decltype(&dnnl_primitive_destroy) prim_destroy;
    decltype(&dnnl_primitive_execute) execute;
    decltype(&dnnl_memory_create) mem_create;
    decltype(&dnnl_memory_destroy) mem_destroy;
    decltype(&dnnl_stream_wait) stream_wait;
    dnnl_engine_t engine = nullptr;
};

Api g_api;
std::string g_status = "not loaded";
std::once_flag g_once;

template <class F>
bool resolve(void* lib, const char* name, F& out) {
    out = reinterpret_cast<F>(dlsym(lib, name));
    return out != nullptr;
}

std::string open_library(const std::string& path) {
    std::string target = path;
    if (target.empty()) {
        const char* env = std::getenv("S2E_ONEDNN_LIBRARY");
        target = env && *env ? env : "libdnnl.so.3";
    }
    void* lib = dlopen(target.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        const char* why = dlerror();
        return "oneDNN not found (" + target + ": " + (why ? why : "?") +
               "); pip install onednn-cpu-gomp, or set S2E_ONEDNN_LIBRARY to libdnnl.so.3";
    }
    Api a;
    std::string missing;
    auto need = [&](const char* name, auto& fn) {
        if (missing.empty() && !resolve(lib, name, fn)) missing = name;
    };
    need("dnnl_version", a.version), need("dnnl_get_effective_cpu_isa", a.effective_isa);
    need("dnnl_engine_create", a.engine_create), need("dnnl_stream_create", a.stream_create);
    need("dnnl_stream_destroy", a.stream_destroy), need("dnnl_stream_wait", a.stream_wait);
    need("dnnl_memory_desc_create_with_strides", a.md_create), need("dnnl_memory_desc_destroy", a.md_destroy);
    need("dnnl_memory_desc_create_with_tag", a.md_create_tag);
    need("dnnl_deconvolution_forward_primitive_desc_create", a.deconv_pd);
    need("dnnl_convolution_forward_primitive_desc_create", a.conv_pd);
    need("dnnl_reorder_primitive_desc_create", a.reorder_pd);
    need("dnnl_memory_desc_get_size", a.md_size), need("dnnl_memory_create", a.mem_create);
    need("dnnl_memory_destroy", a.mem_destroy), need("dnnl_primitive_attr_create", a.attr_create);
    need("dnnl_primitive_attr_destroy", a.attr_destroy), need("dnnl_primitive_attr_set_scratchpad_mode", a.attr_scratchpad);
    need("dnnl_primitive_attr_set_fpmath_mode", a.attr_fpmath);
    need("dnnl_primitive_attr_set_scales_mask", a.attr_scales_mask);
    need("dnnl_matmul_primitive_desc_create", a.matmul_pd), need("dnnl_primitive_desc_query_md", a.pd_query_md);
    need("dnnl_primitive_desc_destroy", a.pd_destroy), need("dnnl_primitive_create", a.prim_create);
    need("dnnl_primitive_destroy", a.prim_destroy), need("dnnl_primitive_execute", a.execute);
    if (!missing.empty()) return target + " is not oneDNN 3.x (it has no " + missing + ")";
    const dnnl_version_t* v = a.version();
    if (!v || v->major < 3) return target + " is oneDNN " + std::to_string(v ? v->major : 0) + ".x; the engine needs 3.x";
    if (a.engine_create(&a.engine, dnnl_cpu, 0) != dnnl_success) return "oneDNN could not create its CPU engine";
    g_api = a;  // the library stays open for the life of the process
    return "";
}

void check(dnnl_status_t s, const char* what) {
    if (s != dnnl_success)
        throw UnsupportedError(std::string("oneDNN: ") + what + " failed (status " + std::to_string(static_cast<int>(s)) +
                               "); its GEMMs need AVX-512 or AVX2 (bfloat16 ones AVX-512 BF16 or AMX)");
}

// Owners of the C API's handles, so that an error path leaks nothing.
struct Md {
    dnnl_memory_desc_t md = nullptr;
    Md(int nd, const dnnl_dims_t dims, dnnl_data_type_t dt, const dnnl_dims_t strides) {
        check(g_api.md_create(&md, nd, dims, dt, strides), "memory descriptor");
    }
    Md(int nd, const dnnl_dims_t dims, dnnl_data_type_t dt, dnnl_format_tag_t tag) {
        check(g_api.md_create_tag(&md, nd, dims, dt, tag), "memory descriptor");
    }
    ~Md() { if (md) g_api.md_destroy(md); }
};
struct Mem {
    dnnl_memory_t m = nullptr;
    Mem(const_dnnl_memory_desc_t md, void* data) { check(g_api.mem_create(&m, md, g_api.engine, data), "memory"); }
    ~Mem() { if (m) g_api.mem_destroy(m); }
};

// The calling thread's buffer `slot` of at least `bytes`, kept between calls: slot 0 is the
// scratchpad (a fresh one per matmul, where oneDNN packs the weights, several MB, cost a zero-fill,
// page faults and an munmap per GEMM: about 2 % of a 0.1b bf16 run), slot 1 a convolution's weights
// in oneDNN's layout. Owned per thread, so concurrent runs share nothing; 64-byte aligned.
struct ThreadBuffers {
    struct Free {
        void operator()(uint8_t* p) const { std::free(p); }
    };
    std::unique_ptr<uint8_t, Free> buf[2];
    size_t size[2] = {0, 0};
    // int8 products without VNNI: the operands and a slice's sums in float (written in full before read)
    std::vector<float, UninitializedAllocator<float>> s8_a, s8_w, s8_part;

    size_t bytes() const { return size[0] + size[1] + (s8_a.capacity() + s8_w.capacity() + s8_part.capacity()) * 4; }
};
ThreadBuffers& thread_buffers() {
    thread_local ThreadBuffers b;
    return b;
}
uint8_t* thread_buffer(int slot, size_t bytes) {
    ThreadBuffers& t = thread_buffers();
    if (bytes > t.size[slot]) {
        const size_t rounded = (bytes + 63) / 64 * 64;
        t.buf[slot].reset();  // the old one given back first: never both at once
        t.size[slot] = 0;
        t.buf[slot].reset(static_cast<uint8_t*>(std::aligned_alloc(64, rounded)));
        if (!t.buf[slot]) throw std::bad_alloc();
        advise_huge_pages(t.buf[slot].get(), rounded);
        t.size[slot] = rounded;
    }
    return t.buf[slot].get();
}

// Owner of a primitive descriptor.
struct Pd {
    dnnl_primitive_desc_t pd = nullptr;
    ~Pd() { if (pd) g_api.pd_destroy(pd); }
};

// Attributes every primitive here is made with: the scratchpad is ours (thread_buffer), and float32
// operands are multiplied in float32 even where ONEDNN_DEFAULT_FPMATH_MODE asks oneDNN to round them
// to bf16 on AMX (the fp32 engine must compute what it verified).
struct Attr {
    dnnl_primitive_attr_t attr = nullptr;
    Attr() {
        check(g_api.attr_create(&attr), "attributes");
        dnnl_status_t st = g_api.attr_scratchpad(attr, dnnl_scratchpad_mode_user);
        if (st == dnnl_success) st = g_api.attr_fpmath(attr, dnnl_fpmath_mode_strict);
        if (st != dnnl_success) {
            g_api.attr_destroy(attr);
            check(st, "attributes");
        }
    }
    ~Attr() { g_api.attr_destroy(attr); }
};

// Creates the primitive of `pd` (a oneDNN primitive-cache hit after the first call of a shape) and
// executes it on `args` with the calling thread's scratchpad, waiting for it to finish.
void execute(const Pd& pd, std::vector<dnnl_exec_arg_t> args, const char* what) {
    dnnl_primitive_t prim = nullptr;
    check(g_api.prim_create(&prim, pd.pd), what);
    try {
        const_dnnl_memory_desc_t pad_md = g_api.pd_query_md(pd.pd, dnnl_query_scratchpad_md, 0);
        Mem mp(pad_md, thread_buffer(0, pad_md ? g_api.md_size(pad_md) : 0));
        args.push_back({DNNL_ARG_SCRATCHPAD, mp.m});
        dnnl_stream_t stream = nullptr;
        check(g_api.stream_create(&stream, g_api.engine, dnnl_stream_default_flags), "stream");
        dnnl_status_t st = g_api.execute(prim, stream, static_cast<int>(args.size()), args.data());
        if (st == dnnl_success) st = g_api.stream_wait(stream);
        g_api.stream_destroy(stream);
        check(st, what);
    } catch (...) {
        g_api.prim_destroy(prim);
        throw;
    }
    g_api.prim_destroy(prim);
}

// One matmul call on the calling thread's scratchpad.
void run_matmul(const Md& src, const Md& wei, const Md* bias, const Md& dst, const void* a, const void* b,
                const float* bias_data, void* c) {
    Pd pd;
    {
        Attr attr;
        check(g_api.matmul_pd(&pd.pd, g_api.engine, src.md, wei.md, bias ? bias->md : nullptr, dst.md, attr.attr),
              "matmul for this CPU");
    }
    Mem ms(src.md, const_cast<void*>(a)), mw(wei.md, const_cast<void*>(b)), md(dst.md, c);
    std::vector<dnnl_exec_arg_t> args = {{DNNL_ARG_SRC, ms.m}, {DNNL_ARG_WEIGHTS, mw.m}, {DNNL_ARG_DST, md.m}};
    std::unique_ptr<Mem> mb;
    if (bias) {
        mb = std::make_unique<Mem>(bias->md, const_cast<float*>(bias_data));
        args.push_back({DNNL_ARG_BIAS, mb->m});
    }
    execute(pd, std::move(args), "matmul");
}

void require() {
    if (!available()) throw UnsupportedError("oneDNN GEMMs need oneDNN: " + g_status);
}

// Weights `w` (described by `from`) reordered into the layout `to` at `out` (md_size(to) bytes, 64-byte aligned).
void reorder_weights(const Md& from, const void* w, const_dnnl_memory_desc_t to, void* out) {
    Pd reorder;
    Attr attr;
    check(g_api.reorder_pd(&reorder.pd, from.md, g_api.engine, to, g_api.engine, attr.attr), "weight reorder for this CPU");
    Mem src(from.md, const_cast<void*>(w)), dst(to, out);
    execute(reorder, {{DNNL_ARG_FROM, src.m}, {DNNL_ARG_TO, dst.m}}, "weight reorder");
}

// Whether the instruction set `isa` includes `level`: oneDNN's values are nested bit sets (avx512_core within
// avx512_core_vnni within ... avx512_core_amx_fp16), so a newer CPU's level (AVX-512 FP16, AMX FP16) counts as
// every level it extends.
bool has_isa(dnnl_cpu_isa_t isa, dnnl_cpu_isa_t level) { return (isa & level) == level; }

}  // namespace

std::string load(const std::string& path) {
    std::call_once(g_once, [&] { g_status = open_library(path); });
    return g_status;
}

bool available() { return g_status.empty(); }

std::string describe() {
    if (!available()) return "oneDNN unavailable: " + g_status;
    const dnnl_version_t* v = g_api.version();
    const dnnl_cpu_isa_t isa = g_api.effective_isa();
    const char* name = has_isa(isa, dnnl_cpu_isa_avx512_core_amx) ? "AVX-512 with AMX"
                       : has_isa(isa, dnnl_cpu_isa_avx512_core_bf16) ? "AVX-512 BF16"
                       : has_isa(isa, dnnl_cpu_isa_avx512_core_vnni) ? "AVX-512 VNNI"
                       : has_isa(isa, dnnl_cpu_isa_avx512_core) ? "AVX-512"
                       : has_isa(isa, dnnl_cpu_isa_avx2_vnni) ? "AVX2 VNNI"
                       : has_isa(isa, dnnl_cpu_isa_avx2) ? "AVX2" : "generic x86-64";
    return "oneDNN " + std::to_string(v->major) + "." + std::to_string(v->minor) + "." + std::to_string(v->patch) +
           " (" + name + ")";
}

bool avx512() { return available() && has_isa(g_api.effective_isa(), dnnl_cpu_isa_avx512_core); }

bool exact_int8() {
    if (!available()) return false;
    const dnnl_cpu_isa_t isa = g_api.effective_isa();
    return has_isa(isa, dnnl_cpu_isa_avx512_core_vnni) || has_isa(isa, dnnl_cpu_isa_avx2_vnni);
}

bool native_bf16() {
    if (!available()) return false;
    const dnnl_cpu_isa_t isa = g_api.effective_isa();
    return has_isa(isa, dnnl_cpu_isa_avx512_core_bf16) || has_isa(isa, dnnl_cpu_isa_avx2_vnni_2);
}

void linear_bf16(const float* x, int64_t M, int64_t K, const uint16_t* W, const float* scale, const float* b,
                 int64_t N, float* y, int64_t ldy, std::vector<uint16_t>& xb) {
    require();
    if (M == 0 || N == 0) return;
    xb.resize(static_cast<size_t>(M * K));
    to_bf16(x, M, K, K, xb.data());
    const dnnl_dims_t sd = {M, K}, ss = {K, 1}, wd = {K, N}, ws = {1, K}, dd = {M, N}, ds = {ldy, 1};
    const dnnl_dims_t bd = {1, N}, bs = {N, 1};
    Md src(2, sd, dnnl_bf16, ss), wei(2, wd, dnnl_bf16, ws), dst(2, dd, dnnl_f32, ds);
    // With a per-channel scale the bias is added after scaling, so it cannot ride in the matmul.
    if (b && !scale) {
        Md bias(2, bd, dnnl_f32, bs);
        run_matmul(src, wei, &bias, dst, xb.data(), W, b, y);
        return;
    }
    run_matmul(src, wei, nullptr, dst, xb.data(), W, nullptr, y);
    if (!scale) return;
#pragma omp parallel for schedule(static) if (M * N > 65536)
    for (int64_t m = 0; m < M; ++m) {
        float* ym = y + m * ldy;
        if (b) {
            for (int64_t n = 0; n < N; ++n) ym[n] = ym[n] * scale[n] + b[n];
        } else {
            for (int64_t n = 0; n < N; ++n) ym[n] *= scale[n];
        }
    }
}

namespace {

// c[M, N] (float32, row stride ldc) = alpha * a . b on operands of type `dt` read through strides.
void strided_matmul(dnnl_data_type_t dt, int64_t M, int64_t K, int64_t N, const void* a, int64_t a_row, int64_t a_col,
                    const void* b, int64_t b_row, int64_t b_col, float* c, int64_t ldc, float alpha) {
    require();
    if (M == 0 || N == 0) return;
    const dnnl_dims_t ad = {M, K}, as = {a_row, a_col}, bd = {K, N}, bs = {b_row, b_col}, cd = {M, N}, cs = {ldc, 1};
    Md src(2, ad, dt, as), wei(2, bd, dt, bs), dst(2, cd, dnnl_f32, cs);
    run_matmul(src, wei, nullptr, dst, a, b, nullptr, c);
    if (alpha == 1.0f) return;
#pragma omp parallel for schedule(static) if (M * N > 65536)
    for (int64_t m = 0; m < M; ++m)
        for (int64_t j = 0; j < N; ++j) c[m * ldc + j] *= alpha;
}

}  // namespace

void matmul_bf16(int64_t M, int64_t K, int64_t N, const uint16_t* a, int64_t a_row, int64_t a_col, const uint16_t* b,
                 int64_t b_row, int64_t b_col, float* c, int64_t ldc, float alpha) {
    strided_matmul(dnnl_bf16, M, K, N, a, a_row, a_col, b, b_row, b_col, c, ldc, alpha);
}

void linear_f32(const float* x, int64_t M, int64_t K, const float* W, const float* b, int64_t N, float* y,
                int64_t ldy) {
    require();
    if (M == 0 || N == 0) return;
    const dnnl_dims_t sd = {M, K}, ss = {K, 1}, wd = {K, N}, ws = {1, K}, dd = {M, N}, ds = {ldy, 1};
    const dnnl_dims_t bd = {1, N}, bs = {N, 1};
    Md src(2, sd, dnnl_f32, ss), wei(2, wd, dnnl_f32, ws), dst(2, dd, dnnl_f32, ds);
    if (b) {
        Md bias(2, bd, dnnl_f32, bs);
        run_matmul(src, wei, &bias, dst, x, W, b, y);
    } else {
        run_matmul(src, wei, nullptr, dst, x, W, nullptr, y);
    }
}

void matmul_f32(int64_t M, int64_t K, int64_t N, const float* a, int64_t a_row, int64_t a_col, const float* b,
                int64_t b_row, int64_t b_col, float* c, int64_t ldc, float alpha) {
    strided_matmul(dnnl_f32, M, K, N, a, a_row, a_col, b, b_row, b_col, c, ldc, alpha);
}

namespace {

// A convolution's weights `w` (described by `from`) reordered into the layout `to` its kernel reads, in
// `space` (64-byte aligned) where they fit, else in the calling thread's weight buffer (slot 1).
uint8_t* packed_weights(const Md& from, const void* w, const_dnnl_memory_desc_t to, Space space) {
    const size_t bytes = g_api.md_size(to);
    void* lent = space.room(bytes);
    uint8_t* packed = lent ? static_cast<uint8_t*>(lent) : thread_buffer(1, bytes);
    reorder_weights(from, w, to, packed);
    return packed;
}

// The two convolutions of the heads: ConvTranspose2d(4, stride 2, padding 1), torch weight (IC, OC, 4, 4),
// and Conv2d(3, stride 1, padding 1), torch weight (OC, IC, 3, 3).
enum class ConvKind { deconv4x4s2, conv3x3 };

// `kind` on operands of type `dt` (bf16 or f32, the weights given as f32; or s8, the weights given as s8,
// with `x_scale` and per-output-channel `w_scale`), channels last, `b` (float32, may be null) added; the
// output float32.
void conv_as(ConvKind kind, dnnl_data_type_t dt, const void* x, int64_t cin, int64_t H, int64_t W, const void* w,
             const float* b, int64_t cout, float* y, Space space, const float* x_scale = nullptr,
             const float* w_scale = nullptr) {
    require();
    if (cin == 0 || cout == 0 || H == 0 || W == 0) return;
    const bool transposed = kind == ConvKind::deconv4x4s2;
    const int64_t k = transposed ? 4 : 3, Ho = transposed ? 2 * H : H, Wo = transposed ? 2 * W : W;
    // (N, C, H, W) dimensions as oneDNN names them, in NHWC memory; the weights (OC, IC, k, k) read from
    // torch's layout through strides ((IC, OC, k, k) for a transposed convolution).
    const dnnl_dims_t sd = {1, cin, H, W}, ss = {H * W * cin, 1, W * cin, cin};
    const dnnl_dims_t dd = {1, cout, Ho, Wo}, ds = {Ho * Wo * cout, 1, Wo * cout, cout};
    const dnnl_dims_t wd = {cout, cin, k, k};
    const dnnl_dims_t wst_deconv = {k * k, cout * k * k, k, 1}, wst_conv = {cin * k * k, k * k, k, 1};
    const dnnl_dims_t strides_deconv = {2, 2}, strides_conv = {1, 1}, dense = {0, 0}, pad = {1, 1};
    const dnnl_dims_t bd = {cout}, unit = {1};
    const bool int8 = dt == dnnl_s8;
    Md src(4, sd, dt, ss), dst(4, dd, dnnl_f32, ds), w_torch(4, wd, int8 ? dnnl_s8 : dnnl_f32,
                                                           transposed ? wst_deconv : wst_conv);
    Md w_any(4, wd, dt, dnnl_format_tag_any), bias(1, bd, dnnl_f32, unit);
    Pd pd;
    {
        Attr attr;
        if (int8) {  // y = x_scale * w_scale[oc] * (int32 sum) + b: dim 0 of oneDNN's (OC, IC, KH, KW) weights
            check(g_api.attr_scales_mask(attr.attr, DNNL_ARG_SRC, 0), "input scale");
            check(g_api.attr_scales_mask(attr.attr, DNNL_ARG_WEIGHTS, 1), "weight scales");
        }
        const_dnnl_memory_desc_t bias_md = b ? bias.md : nullptr;
        if (transposed)
            check(g_api.deconv_pd(&pd.pd, g_api.engine, dnnl_forward_inference, dnnl_deconvolution_direct, src.md,
                                  w_any.md, bias_md, dst.md, strides_deconv, dense, pad, pad, attr.attr),
                  "transposed convolution for this CPU");
        else
            check(g_api.conv_pd(&pd.pd, g_api.engine, dnnl_forward_inference, dnnl_convolution_direct, src.md,
                                w_any.md, bias_md, dst.md, strides_conv, dense, pad, pad, attr.attr),
                  "convolution for this CPU");
    }
    // the weights in the layout the kernel reads (bf16: rounded, ties to even; s8: with the compensation
    // its int8 input needs), in one reorder
    const_dnnl_memory_desc_t w_md = g_api.pd_query_md(pd.pd, dnnl_query_weights_md, 0);
    uint8_t* w_packed = packed_weights(w_torch, w, w_md, space);
    Mem ms(src.md, const_cast<void*>(x)), mw(w_md, w_packed), md(dst.md, y);
    std::vector<dnnl_exec_arg_t> args = {{DNNL_ARG_SRC, ms.m}, {DNNL_ARG_WEIGHTS, mw.m}, {DNNL_ARG_DST, md.m}};
    std::unique_ptr<Mem> mb;
    if (b) {
        mb = std::make_unique<Mem>(bias.md, const_cast<float*>(b));
        args.push_back({DNNL_ARG_BIAS, mb->m});
    }
    const dnnl_dims_t one = {1};
    std::unique_ptr<Md> xs_md, ws_md;
    std::unique_ptr<Mem> mxs, mws;
    if (int8) {
        xs_md = std::make_unique<Md>(1, one, dnnl_f32, unit);
        ws_md = std::make_unique<Md>(1, bd, dnnl_f32, unit);
        mxs = std::make_unique<Mem>(xs_md->md, const_cast<float*>(x_scale));
        mws = std::make_unique<Mem>(ws_md->md, const_cast<float*>(w_scale));
        args.push_back({DNNL_ARG_ATTR_SCALES | DNNL_ARG_SRC, mxs->m});
        args.push_back({DNNL_ARG_ATTR_SCALES | DNNL_ARG_WEIGHTS, mws->m});
    }
    execute(pd, std::move(args), transposed ? "transposed convolution" : "convolution");
}

}  // namespace

void deconv4x4s2(const uint16_t* x, int64_t cin, int64_t H, int64_t W, const float* w, int64_t cout, float* y,
                 Space packed) {
    conv_as(ConvKind::deconv4x4s2, dnnl_bf16, x, cin, H, W, w, nullptr, cout, y, packed);
}

void deconv4x4s2(const float* x, int64_t cin, int64_t H, int64_t W, const float* w, int64_t cout, float* y,
                 Space packed) {
    conv_as(ConvKind::deconv4x4s2, dnnl_f32, x, cin, H, W, w, nullptr, cout, y, packed);
}

void deconv4x4s2_s8(const int8_t* x, float x_scale, int64_t cin, int64_t H, int64_t W, const int8_t* w,
                    const float* w_scale, int64_t cout, float* y, Space packed) {
    conv_as(ConvKind::deconv4x4s2, dnnl_s8, x, cin, H, W, w, nullptr, cout, y, packed, &x_scale, w_scale);
}

void conv3x3(const uint16_t* x, int64_t cin, int64_t H, int64_t W, const float* w, const float* b, int64_t cout,
             float* y, Space packed) {
    conv_as(ConvKind::conv3x3, dnnl_bf16, x, cin, H, W, w, b, cout, y, packed);
}

void conv3x3(const float* x, int64_t cin, int64_t H, int64_t W, const float* w, const float* b, int64_t cout, float* y,
             Space packed) {
    conv_as(ConvKind::conv3x3, dnnl_f32, x, cin, H, W, w, b, cout, y, packed);
}

void conv3x3_s8(const int8_t* x, float x_scale, int64_t cin, int64_t H, int64_t W, const int8_t* w,
                const float* w_scale, const float* b, int64_t cout, float* y, Space packed) {
    conv_as(ConvKind::conv3x3, dnnl_s8, x, cin, H, W, w, b, cout, y, packed, &x_scale, w_scale);
}

namespace {

// Without VNNI or AMX, oneDNN's int8 kernels add u8 x s8 products in int16 pairs (vpmaddubsw), which
// saturate. There the same integers come from float32 GEMMs over K slices of 1024: |a w| <= 2^14, so
// every partial sum within a slice is an integer of at most 2^24, which float32 holds exactly in any
// order of addition; the slices are summed in int32.
void matmul_s8_by_f32(int64_t M, int64_t K, int64_t N, const int8_t* a, const int8_t* w, int32_t* c) {
    constexpr int64_t kSlice = 1024;
    ThreadBuffers& t = thread_buffers();
    auto& af = t.s8_a;
    auto& wf = t.s8_w;
    auto& part = t.s8_part;  // kept: see release_thread_buffers
    af.resize(static_cast<size_t>(M * K));
    wf.resize(static_cast<size_t>(N * K));
    part.resize(static_cast<size_t>(M * N));
    float* ap = af.data();
    float* wp = wf.data();
    float* pp = part.data();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < M * K; ++i) ap[i] = static_cast<float>(a[i]);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < N * K; ++i) wp[i] = static_cast<float>(w[i]);
    for (int64_t k0 = 0; k0 < K; k0 += kSlice) {
        const int64_t kk = std::min(kSlice, K - k0);
        // a (M, K) row-major and W (N, K) row-major read as W^T (K, N) through strides
        matmul_f32(M, kk, N, ap + k0, K, 1, wp + k0, 1, K, pp, N, 1.0f);
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < M * N; ++i)
            c[i] = (k0 == 0 ? 0 : c[i]) + static_cast<int32_t>(pp[i]);
    }
}

}  // namespace

void matmul_s8(int64_t M, int64_t K, int64_t N, const int8_t* a, const int8_t* w, int32_t* c) {
    require();
    if (M == 0 || N == 0) return;
    if (!exact_int8()) return matmul_s8_by_f32(M, K, N, a, w, c);
    const dnnl_dims_t ad = {M, K}, as = {K, 1}, wd = {K, N}, wst = {1, K}, cd = {M, N}, cs = {N, 1};
    Md src(2, ad, dnnl_s8, as), wei(2, wd, dnnl_s8, wst), dst(2, cd, dnnl_s32, cs);
    run_matmul(src, wei, nullptr, dst, a, w, nullptr, c);
}

struct PackedInt8::Impl {
    struct Free {
        void operator()(uint8_t* p) const { std::free(p); }
    };
    int64_t m = 0, K = 0, N = 0;
    Pd pd;  // the matmul of m rows: owns the packed layout's descriptor
    const_dnnl_memory_desc_t w_md = nullptr;
    std::unique_ptr<uint8_t, Free> data;
    size_t bytes = 0;
};

PackedInt8::PackedInt8(int64_t m, int64_t K, int64_t N, const int8_t* w) : impl_(std::make_unique<Impl>()) {
    require();
    if (!exact_int8()) throw UnsupportedError("packed int8 weights need VNNI or AMX int8 kernels (oneDNN: " + describe() + ")");
    if (m < 1 || K < 1 || N < 1) throw UnsupportedError("packed int8 weights need a non-empty product");
    Impl& p = *impl_;
    p.m = m, p.K = K, p.N = N;
    const dnnl_dims_t ad = {m, K}, as = {K, 1}, wd = {K, N}, wst = {1, K}, cd = {m, N}, cs = {N, 1};
    Md src(2, ad, dnnl_s8, as), w_any(2, wd, dnnl_s8, dnnl_format_tag_any), w_plain(2, wd, dnnl_s8, wst),
        dst(2, cd, dnnl_s32, cs);
    {
        Attr attr;
        check(g_api.matmul_pd(&p.pd.pd, g_api.engine, src.md, w_any.md, nullptr, dst.md, attr.attr),
              "int8 matmul for this CPU");
    }
    p.w_md = g_api.pd_query_md(p.pd.pd, dnnl_query_weights_md, 0);
    p.bytes = g_api.md_size(p.w_md);
    const size_t rounded = (p.bytes + 63) / 64 * 64;
    p.data.reset(static_cast<uint8_t*>(std::aligned_alloc(64, rounded)));
    if (!p.data) throw std::bad_alloc();
    reorder_weights(w_plain, w, p.w_md, p.data.get());
}

PackedInt8::~PackedInt8() = default;

size_t PackedInt8::bytes() const { return impl_->bytes; }

bool PackedInt8::matmul(int64_t M, const int8_t* a, int32_t* c) const {
    const Impl& p = *impl_;
    if (M == 0) return true;
    const dnnl_dims_t ad = {M, p.K}, as = {p.K, 1}, cd = {M, p.N}, cs = {p.N, 1};
    Md src(2, ad, dnnl_s8, as), dst(2, cd, dnnl_s32, cs);
    Pd other;
    if (M != p.m) {  // a kernel for M rows that reads this layout, if oneDNN has one
        Attr attr;
        if (g_api.matmul_pd(&other.pd, g_api.engine, src.md, p.w_md, nullptr, dst.md, attr.attr) != dnnl_success)
            return false;
    }
    Mem ms(src.md, const_cast<int8_t*>(a)), mw(p.w_md, p.data.get()), md(dst.md, c);
    execute(M == p.m ? p.pd : other, {{DNNL_ARG_SRC, ms.m}, {DNNL_ARG_WEIGHTS, mw.m}, {DNNL_ARG_DST, md.m}},
            "int8 matmul");
    return true;
}

// C = product + beta * C, where `product(out, ld)` writes alpha * op(A) op(B): straight into C when
// beta is 0, else into the calling thread's scratch, added after. (OpenMP workers see the scratch
// through a plain pointer: a thread_local named inside the parallel loop would be each worker's own.)
template <class Product>
void accumulate(int64_t M, int64_t N, float beta, float* C, int64_t ldc, Product product) {
    if (beta == 0.0f) {
        product(C, ldc);
        return;
    }
    thread_local std::vector<float> t_buf;
    t_buf.resize(static_cast<size_t>(M * N));
    const float* t = t_buf.data();
    product(t_buf.data(), N);
#pragma omp parallel for schedule(static) if (M * N > 65536)
    for (int64_t m = 0; m < M; ++m)
        for (int64_t j = 0; j < N; ++j) C[m * ldc + j] = t[m * N + j] + beta * C[m * ldc + j];
}

void gemm_f32(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
              const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
    require();
    if (M == 0 || N == 0) return;
    accumulate(M, N, beta, C, ldc, [&](float* out, int64_t ld) {
        matmul_f32(M, K, N, A, trans_a ? 1 : lda, trans_a ? lda : 1, B, trans_b ? 1 : ldb, trans_b ? ldb : 1, out, ld,
                   alpha);
    });
}

void gemm_bf16(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
               const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
    require();
    if (M == 0 || N == 0) return;
    // Both operands rounded into dense bf16 copies as stored, read transposed through strides.
    thread_local std::vector<uint16_t> a_buf;
    a_buf.resize(static_cast<size_t>(M * K));
    to_bf16(A, trans_a ? K : M, trans_a ? M : K, lda, a_buf.data());  // as stored: (K, M) when transposed
    gemm_bf16_rounded_a(trans_a, trans_b, M, N, K, alpha, a_buf.data(), B, ldb, beta, C, ldc);
}

void gemm_bf16_rounded_a(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const uint16_t* a,
                         const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
    require();
    if (M == 0 || N == 0) return;
    thread_local std::vector<uint16_t> b_buf;
    b_buf.resize(static_cast<size_t>(K * N));
    uint16_t* b = b_buf.data();
    to_bf16(B, trans_b ? N : K, trans_b ? K : N, ldb, b);
    accumulate(M, N, beta, C, ldc, [&](float* out, int64_t ld) {
        matmul_bf16(M, K, N, a, trans_a ? 1 : K, trans_a ? M : 1, b, trans_b ? 1 : N, trans_b ? K : 1, out, ld, alpha);
    });
}

size_t thread_buffer_bytes() { return thread_buffers().bytes(); }

void release_thread_buffers() { thread_buffers() = ThreadBuffers(); }

#else  // built without oneDNN's headers: the engine runs float32 on OpenBLAS only

size_t thread_buffer_bytes() { return 0; }
void release_thread_buffers() {}

std::string load(const std::string&) { return "the native extension was built without oneDNN's headers"; }
bool available() { return false; }
std::string describe() { return "oneDNN unavailable: " + load(); }
bool native_bf16() { return false; }
bool avx512() { return false; }
bool exact_int8() { return false; }
void linear_bf16(const float*, int64_t, int64_t, const uint16_t*, const float*, const float*, int64_t, float*, int64_t,
                 std::vector<uint16_t>&) {
    throw UnsupportedError("bfloat16 GEMMs need oneDNN: " + load());
}
void gemm_bf16(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*, int64_t, float, float*,
               int64_t) {
    throw UnsupportedError("bfloat16 GEMMs need oneDNN: " + load());
}
void gemm_bf16_rounded_a(bool, bool, int64_t, int64_t, int64_t, float, const uint16_t*, const float*, int64_t, float,
                         float*, int64_t) {
    throw UnsupportedError("bfloat16 GEMMs need oneDNN: " + load());
}
void matmul_bf16(int64_t, int64_t, int64_t, const uint16_t*, int64_t, int64_t, const uint16_t*, int64_t, int64_t, float*,
                 int64_t, float) {
    throw UnsupportedError("bfloat16 GEMMs need oneDNN: " + load());
}
void linear_f32(const float*, int64_t, int64_t, const float*, const float*, int64_t, float*, int64_t) {
    throw UnsupportedError("oneDNN GEMMs need oneDNN: " + load());
}
void matmul_f32(int64_t, int64_t, int64_t, const float*, int64_t, int64_t, const float*, int64_t, int64_t, float*, int64_t,
                float) {
    throw UnsupportedError("oneDNN GEMMs need oneDNN: " + load());
}
void deconv4x4s2(const uint16_t*, int64_t, int64_t, int64_t, const float*, int64_t, float*, Space) {
    throw UnsupportedError("oneDNN GEMMs need oneDNN: " + load());
}
void deconv4x4s2(const float*, int64_t, int64_t, int64_t, const float*, int64_t, float*, Space) {
    throw UnsupportedError("oneDNN GEMMs need oneDNN: " + load());
}
void matmul_s8(int64_t, int64_t, int64_t, const int8_t*, const int8_t*, int32_t*) {
    throw UnsupportedError("oneDNN GEMMs need oneDNN: " + load());
}
struct PackedInt8::Impl {};
PackedInt8::PackedInt8(int64_t, int64_t, int64_t, const int8_t*) {
    throw UnsupportedError("packed int8 weights need oneDNN: " + load());
}
PackedInt8::~PackedInt8() = default;
size_t PackedInt8::bytes() const { return 0; }
bool PackedInt8::matmul(int64_t, const int8_t*, int32_t*) const { return false; }
void deconv4x4s2_s8(const int8_t*, float, int64_t, int64_t, int64_t, const int8_t*, const float*, int64_t, float*,
                    Space) {
    throw UnsupportedError("oneDNN GEMMs need oneDNN: " + load());
}
void conv3x3(const uint16_t*, int64_t, int64_t, int64_t, const float*, const float*, int64_t, float*, Space) {
    throw UnsupportedError("oneDNN GEMMs need oneDNN: " + load());
}
void conv3x3(const float*, int64_t, int64_t, int64_t, const float*, const float*, int64_t, float*, Space) {
    throw UnsupportedError("oneDNN GEMMs need oneDNN: " + load());
}
void conv3x3_s8(const int8_t*, float, int64_t, int64_t, int64_t, const int8_t*, const float*, const float*, int64_t,
                float*, Space) {
    throw UnsupportedError("oneDNN GEMMs need oneDNN: " + load());
}
void gemm_f32(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*, int64_t, float, float*,
              int64_t) {
    throw UnsupportedError("oneDNN GEMMs need oneDNN: " + load());
}

#endif

}  // namespace onednn
}  // namespace s2e
