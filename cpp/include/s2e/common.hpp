// Shared pieces of the native engine: typed errors (mapped to sapiens2_edge.errors by the bindings),
// the float16 / bfloat16 conversions the weight formats and the reference RoPE need, and the advice
// that large buffers be faulted in in huge pages.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>

#if defined(__linux__)
#include <sys/mman.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

namespace s2e {

// Asks the kernel to fault the buffer [p, p + bytes) in 2 MiB pages (transparent huge pages; in their
// usual "madvise" mode only advised memory gets them). Call before the buffer is first written. A buffer
// the engine allocates afresh on every run then costs a fraction of its 4 KiB faults: 400 MB faulted in
// 36 ms against 248 ms on a 2-core EPYC VM. Advice only: where the kernel has none, nothing changes.
inline void advise_huge_pages(void* p, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    constexpr uintptr_t kPage = 4096;
    if (bytes < (4u << 20)) return;  // below two huge pages nothing is gained
    const uintptr_t start = (reinterpret_cast<uintptr_t>(p) + kPage - 1) / kPage * kPage;
    const uintptr_t end = (reinterpret_cast<uintptr_t>(p) + bytes) / kPage * kPage;
    if (end > start) madvise(reinterpret_cast<void*>(start), end - start, MADV_HUGEPAGE);
#else
    (void)p;
    (void)bytes;
#endif
}

// A std::allocator that leaves new float elements uninitialised: buffers that a kernel writes in
// full before reading them are not zero-filled first (a serial memset that took 90 % of a run's
// page faults; 8 % of a 0.1b bf16 run). Large ones are faulted in in huge pages (advise_huge_pages).
template <class T>
struct UninitializedAllocator : std::allocator<T> {
    template <class U>
    struct rebind {
        using other = UninitializedAllocator<U>;
    };
    UninitializedAllocator() = default;
    template <class U>
    UninitializedAllocator(const UninitializedAllocator<U>&) noexcept {}
    T* allocate(std::size_t n) {
        T* p = std::allocator<T>::allocate(n);
        advise_huge_pages(p, n * sizeof(T));
        return p;
    }
    template <class U>
    void construct(U* p) noexcept {
        ::new (static_cast<void*>(p)) U;
    }
    template <class U, class... A>
    void construct(U* p, A&&... a) {
        ::new (static_cast<void*>(p)) U(std::forward<A>(a)...);
    }
};

struct Error : std::runtime_error {
    using std::runtime_error::runtime_error;
};
// The safetensors container is broken: truncated, bad header, lying offsets (CorruptCheckpointError).
struct CorruptFileError : Error {
    using Error::Error;
};
// A JSON document that does not parse or exceeds the parser's limits.
struct JsonError : Error {
    using Error::Error;
};
// manifest.json / the engine configuration is missing fields or inconsistent (ArtifactError).
struct ManifestError : Error {
    using Error::Error;
};
// Missing, unexpected, mis-shaped or wrongly typed tensors for the architecture (StateDictMismatchError).
struct WeightsMismatchError : Error {
    using Error::Error;
};
// Something this engine does not support (ConfigError).
struct UnsupportedError : Error {
    using Error::Error;
};
// A network input of the wrong shape or size (InputSizeError) / values (InvalidTensorError).
struct InputSizeError : Error {
    using Error::Error;
};
struct InvalidTensorError : Error {
    using Error::Error;
};

// For a thread of an OpenMP region whose body calls oneDNN (which opens regions of its own): one thread
// for the regions it opens, whatever the process's nesting setting (torch's bundled libgomp has nesting on:
// max-active-levels 2147483647 against the system libgomp's 1), so that the calls never ask for a team
// inside each thread. A guard: no difference was measurable on a quiet 2-core machine either way. Sets
// this thread's own setting only: the region's caller keeps its own.
inline void single_threaded_nested_regions() {
#ifdef _OPENMP
    omp_set_num_threads(1);
#endif
}

// Function multiversioning for the engine's element-wise loops: GCC builds one copy per listed
// instruction set and picks the widest this CPU has when the library loads (the extension itself is
// built for generic x86-64, so it runs everywhere). Other compilers / CPUs get the single generic copy.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define S2E_CPU_CLONES __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
#else
#define S2E_CPU_CLONES
#endif

inline float bits_to_float(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline uint32_t float_to_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}

// Round a float to the nearest bfloat16 (ties to even) and back, as torch's .to(bfloat16) does.
inline float round_bf16(float x) {
    uint32_t u = float_to_bits(x);
    if ((u & 0x7f800000u) == 0x7f800000u) return x;  // inf / nan unchanged
    u += 0x7fffu + ((u >> 16) & 1u);
    return bits_to_float(u & 0xffff0000u);
}

// The bfloat16 bits of round_bf16(x).
inline uint16_t float_to_bf16(float x) { return static_cast<uint16_t>(float_to_bits(round_bf16(x)) >> 16); }

inline float bf16_to_float(uint16_t h) { return bits_to_float(static_cast<uint32_t>(h) << 16); }

inline float fp16_to_float(uint16_t h) {
    uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    if (exp == 0) {
        if (man == 0) return bits_to_float(sign);
        float f = static_cast<float>(man) * (1.0f / 16777216.0f);  // subnormal: man * 2^-24
        return sign ? -f : f;
    }
    if (exp == 31) return bits_to_float(sign | 0x7f800000u | (man << 13));
    return bits_to_float(sign | ((exp + 112) << 23) | (man << 13));
}

// float8 E4M3 (fn: no infinities, 0x7f/0xff are NaN), as torch.float8_e4m3fn.
inline float fp8e4m3_to_float(uint8_t v) {
    uint32_t sign = v >> 7, exp = (v >> 3) & 0xfu, man = v & 0x7u;
    float f;
    if (exp == 0xf && man == 0x7) {
        f = bits_to_float(0x7fc00000u);
    } else if (exp == 0) {
        f = static_cast<float>(man) * (1.0f / 512.0f);  // subnormal: man * 2^-9
    } else {
        f = bits_to_float(((exp + 120) << 23) | (man << 20));
    }
    return sign ? -f : f;
}

}  // namespace s2e
