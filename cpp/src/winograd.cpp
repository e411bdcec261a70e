// Winograd convolutions F(m x m, 3 x 3) for the dense heads (see s2e/winograd.hpp for why).
//
// Notation (Lavin and Gray's): for an a x a block d of input (a = m + 2) and a 3x3 filter g, the m x m
// block of output is A^T [(G g G^T) . (B^T d B)] A. Summed over input channels, the elementwise product
// at each of the a^2 positions xi of the transformed block is a GEMM: M_xi (tiles, cout) = V_xi (tiles,
// cin) . U_xi (cin, cout). The map is worked through in bands of tile rows and the output channels in
// chunks, so that neither the transformed maps nor the transformed weights grow with the layer.
#include "s2e/winograd.hpp"

#include <algorithm>
#include <cstring>
#include <exception>
#include <string>

#include "s2e/common.hpp"
#include "s2e/onednn.hpp"

namespace s2e {
namespace winograd {

namespace {

// The transforms of F(m x m, 3 x 3), interpolation points 0, 1, -1 (m = 2) and 0, 1, -1, 2, -2 (m = 4).
template <int M>
struct Transforms;
template <>
struct Transforms<2> {
    static constexpr int kA = 4;
    static constexpr float BT[4][4] = {{1, 0, -1, 0}, {0, 1, 1, 0}, {0, -1, 1, 0}, {0, 1, 0, -1}};
    static constexpr float G[4][3] = {{1, 0, 0}, {0.5f, 0.5f, 0.5f}, {0.5f, -0.5f, 0.5f}, {0, 0, 1}};
    static constexpr float AT[2][4] = {{1, 1, 1, 0}, {0, 1, -1, -1}};
};
template <>
struct Transforms<4> {
    static constexpr int kA = 6;
    static constexpr float BT[6][6] = {{4, 0, -5, 0, 1, 0},  {0, -4, -4, 1, 1, 0}, {0, 4, -4, -1, 1, 0},
                                       {0, -2, -1, 2, 1, 0}, {0, 2, -1, -2, 1, 0}, {0, 4, 0, -5, 0, 1}};
    static constexpr float G[6][3] = {{1.0f / 4, 0, 0},
                                      {-1.0f / 6, -1.0f / 6, -1.0f / 6},
                                      {-1.0f / 6, 1.0f / 6, -1.0f / 6},
                                      {1.0f / 24, 1.0f / 12, 1.0f / 6},
                                      {1.0f / 24, -1.0f / 12, 1.0f / 6},
                                      {0, 0, 1}};
    static constexpr float AT[4][6] = {
        {1, 1, 1, 1, 1, 0}, {0, 1, -1, 2, -2, 0}, {0, 1, 1, 4, 4, 0}, {0, 1, -1, 8, -8, 1}};
};

constexpr int kLanes = 16;  // channels transformed together (one AVX-512 register, two AVX2 ones)
// Tiles per band: the band's transformed input and products (a^2 x tiles x (cin + chunk) floats) stay
// near 16 MB, while each of its GEMMs still has enough rows to run at full speed.
constexpr int64_t kBandFloats = int64_t{1} << 22;
constexpr int64_t kMinBandTiles = 256;
// Transformed weights per chunk of output channels: 16 MB, which the L3 cache holds while every band's
// GEMMs read them (a 0.4b normal head's widest layer, 1024 -> 3072 channels, in chunks of 112 at m = 4;
// its input is transformed once per chunk, cheap at that layer's 64x48). Measured on the whole 0.1b normal
// model at 512x384 on a Zen 3 EPYC, against oneDNN's direct convolutions: chunks of 8 / 16 / 32 / 64 MB
// made it 1.35 / 1.40 / 1.37 / 1.31x faster, and 64 MB ones did not fit the kept maps' spare capacity
// there (+68 MB peak RSS; 16 MB: none).
constexpr int64_t kChunkFloats = int64_t{1} << 22;

// The a x a block of input at (r0, c0) (top-left, may lie outside the map: zeros there), channels [0, cin),
// transformed to B^T d B and written to v[xi * vs + c].
template <int M>
S2E_CPU_CLONES void input_block(const float* x, int64_t cin, int64_t H, int64_t W, int64_t r0, int64_t c0, float* v,
                                int64_t vs) {
    using T = Transforms<M>;
    constexpr int A = T::kA;
    const float* px[A][A];
    for (int i = 0; i < A; ++i)
        for (int j = 0; j < A; ++j) {
            const int64_t r = r0 + i, c = c0 + j;
            px[i][j] = (r >= 0 && r < H && c >= 0 && c < W) ? x + (r * W + c) * cin : nullptr;
        }
    for (int64_t c = 0; c < cin; c += kLanes) {
        const int64_t n = std::min<int64_t>(kLanes, cin - c);
        float d[A][A][kLanes], t[A][A][kLanes];
        for (int i = 0; i < A; ++i)
            for (int j = 0; j < A; ++j) {
                if (px[i][j] && n == kLanes) {
                    std::memcpy(d[i][j], px[i][j] + c, sizeof(d[i][j]));
                } else {
                    std::memset(d[i][j], 0, sizeof(d[i][j]));
                    if (px[i][j]) std::memcpy(d[i][j], px[i][j] + c, static_cast<size_t>(n) * sizeof(float));
                }
            }
        for (int i = 0; i < A; ++i)  // B^T d
            for (int j = 0; j < A; ++j)
#pragma omp simd
                for (int l = 0; l < kLanes; ++l) {
                    float s = 0.0f;
                    for (int r = 0; r < A; ++r) s += T::BT[i][r] * d[r][j][l];
                    t[i][j][l] = s;
                }
        for (int i = 0; i < A; ++i)  // (B^T d) B
            for (int j = 0; j < A; ++j) {
                float* o = v + (i * A + j) * vs + c;
#pragma omp simd
                for (int l = 0; l < kLanes; ++l) {
                    float s = 0.0f;
                    for (int q = 0; q < A; ++q) s += t[i][q][l] * T::BT[j][q];
                    d[0][0][l] = s;  // d is done with: a staging row for the store
                }
                std::memcpy(o, d[0][0], static_cast<size_t>(n) * sizeof(float));
            }
    }
}

// The m x m output block at (r0, c0) of n channels from the products m[xi * ms + o], bias added, into y
// (pixels ldy floats apart); rows / columns past the map are not written.
template <int M>
S2E_CPU_CLONES void output_block(const float* m, int64_t ms, const float* b, int64_t n, int64_t ldy, int64_t H,
                                 int64_t W, int64_t r0, int64_t c0, float* y) {
    using T = Transforms<M>;
    constexpr int A = T::kA;
    const int rows = static_cast<int>(std::min<int64_t>(M, H - r0));
    const int cols = static_cast<int>(std::min<int64_t>(M, W - c0));
    for (int64_t o = 0; o < n; o += kLanes) {
        const int64_t k = std::min<int64_t>(kLanes, n - o);
        float mm[A][A][kLanes], s[M][A][kLanes], out[kLanes];
        if (k < kLanes) std::memset(mm, 0, sizeof(mm));  // a short last group: its unused lanes zero
        for (int i = 0; i < A; ++i)
            for (int j = 0; j < A; ++j) std::memcpy(mm[i][j], m + (i * A + j) * ms + o, static_cast<size_t>(k) * 4);
        for (int i = 0; i < M; ++i)  // A^T M
            for (int j = 0; j < A; ++j)
#pragma omp simd
                for (int l = 0; l < kLanes; ++l) {
                    float acc = 0.0f;
                    for (int r = 0; r < A; ++r) acc += T::AT[i][r] * mm[r][j][l];
                    s[i][j][l] = acc;
                }
        for (int i = 0; i < rows; ++i)  // (A^T M) A, bias added
            for (int j = 0; j < cols; ++j) {
#pragma omp simd
                for (int l = 0; l < kLanes; ++l) {
                    float acc = 0.0f;
                    for (int q = 0; q < A; ++q) acc += s[i][q][l] * T::AT[j][q];
                    out[l] = acc;
                }
                float* yp = y + ((r0 + i) * W + c0 + j) * ldy + o;
                for (int64_t l = 0; l < k; ++l) yp[l] = out[l] + (b ? b[o + l] : 0.0f);
            }
    }
}

// G g G^T for output channels [o0, o0 + n) (n <= kLanes) of input channel i, into u (a^2, cin, un) at
// column c
template <int M>
S2E_CPU_CLONES void weight_block(const float* w, int64_t cin, int64_t o0, int64_t n, int64_t i, float* u, int64_t un,
                                 int64_t c) {
    using T = Transforms<M>;
    constexpr int A = T::kA;
    float g[3][3][kLanes] = {}, t[A][3][kLanes], out[kLanes];
    for (int64_t k = 0; k < n; ++k)
        for (int j = 0; j < 9; ++j) g[j / 3][j % 3][k] = w[((o0 + k) * cin + i) * 9 + j];
    for (int a = 0; a < A; ++a)  // G g
        for (int j = 0; j < 3; ++j)
#pragma omp simd
            for (int l = 0; l < kLanes; ++l)
                t[a][j][l] = T::G[a][0] * g[0][j][l] + T::G[a][1] * g[1][j][l] + T::G[a][2] * g[2][j][l];
    const int64_t us = cin * un;
    for (int a = 0; a < A; ++a)  // (G g) G^T
        for (int e = 0; e < A; ++e) {
#pragma omp simd
            for (int l = 0; l < kLanes; ++l)
                out[l] = t[a][0][l] * T::G[e][0] + t[a][1][l] * T::G[e][1] + t[a][2][l] * T::G[e][2];
            std::memcpy(u + (a * A + e) * us + i * un + c, out, static_cast<size_t>(n) * sizeof(float));
        }
}

int64_t positions(int m) { return (m + 2) * (m + 2); }

void check_tile(int m) {
    if (m != 2 && m != 4) throw UnsupportedError("Winograd tiles are 2x2 or 4x4 outputs, not " + std::to_string(m));
}

// Output channels per chunk (`asked` when positive): the chunk's transformed weights (a^2 x cin x chunk
// floats) stay near kChunkFloats (a multiple of 16 channels, at least 16).
int64_t chunk_channels(int m, int64_t cin, int64_t cout, int64_t asked) {
    if (asked > 0) return std::min(cout, asked);
    const int64_t n = std::max<int64_t>(16, kChunkFloats / (positions(m) * cin) / 16 * 16);
    return std::min(cout, n);
}

// Rows of output tiles per band (`asked` when positive, else from kBandFloats), at most the map's.
int64_t band_rows(int m, int64_t cin, int64_t n, int64_t H, int64_t W, int64_t asked) {
    const int64_t th = (H + m - 1) / m, tw = (W + m - 1) / m;
    if (asked > 0) return std::min(th, asked);
    const int64_t tiles = std::max(kMinBandTiles, kBandFloats / (positions(m) * (cin + n)));
    return std::max<int64_t>(1, std::min(th, tiles / tw));
}

// The output channels [o0, o0 + n) of the convolution, u the chunk's transformed weights (a^2, cin, n).
template <int M>
void conv_chunk(const float* x, int64_t cin, int64_t H, int64_t W, const float* u, const float* b, int64_t cout,
                int64_t o0, int64_t n, float* y, float* scratch, int64_t asked_rows) {
    constexpr int64_t kXi = Transforms<M>::kA * Transforms<M>::kA;
    const int64_t th = (H + M - 1) / M, tw = (W + M - 1) / M;
    const int64_t rows_per_band = band_rows(M, cin, n, H, W, asked_rows);
    float* v = scratch;                             // (a^2, tiles, cin)
    float* m = v + kXi * rows_per_band * tw * cin;  // (a^2, tiles, n)
    const int64_t us = cin * n;
    const float* bias = b ? b + o0 : nullptr;
    // one parallel region per band, its three steps split between the threads (tiles, then the a^2
    // GEMMs, each on one thread, then tiles): two barriers per band instead of a fork and join per GEMM.
    // An exception may not leave a parallel region: the first a GEMM throws is kept and thrown after it.
    std::exception_ptr failed;
    for (int64_t r0 = 0; r0 < th; r0 += rows_per_band) {
        const int64_t rows = std::min(rows_per_band, th - r0), tiles = rows * tw;
        const int64_t vs = tiles * cin, ms = tiles * n;
#pragma omp parallel
        {
            single_threaded_nested_regions();  // the GEMMs below: one thread each
#pragma omp for schedule(static)
            for (int64_t t = 0; t < tiles; ++t) {
                const int64_t ti = r0 + t / tw, tj = t % tw;
                input_block<M>(x, cin, H, W, M * ti - 1, M * tj - 1, v + t * cin, vs);
            }
#pragma omp for schedule(static)
            for (int64_t xi = 0; xi < kXi; ++xi) {
                try {
                    onednn::matmul_f32(tiles, cin, n, v + xi * vs, cin, 1, u + xi * us, n, 1, m + xi * ms, n, 1.0f);
                } catch (...) {
#pragma omp critical(s2e_winograd_failed)
                    if (!failed) failed = std::current_exception();
                }
            }
#pragma omp for schedule(static)
            for (int64_t t = 0; t < tiles; ++t) {
                const int64_t ti = r0 + t / tw, tj = t % tw;
                output_block<M>(m + t * n, ms, bias, n, cout, H, W, M * ti, M * tj, y + o0);
            }
        }
        if (failed) std::rethrow_exception(failed);
    }
}

template <int M>
void transform_chunk(const float* w, int64_t cin, int64_t o0, int64_t n, float* u) {
    // blocks of 16 output channels: each input channel's values of a block fill one 64-byte line of each
    // of u's a^2 planes
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < n; c += kLanes)
        for (int64_t i = 0; i < cin; ++i)
            weight_block<M>(w, cin, o0 + c, std::min<int64_t>(kLanes, n - c), i, u, n, c);
}

template <int M>
void conv(const float* x, int64_t cin, int64_t H, int64_t W, const float* w, const float* b, int64_t cout, float* y,
          float* work, int64_t band_rows_asked, int64_t chunk_asked) {
    const int64_t chunk = chunk_channels(M, cin, cout, chunk_asked);
    float* u = work;
    float* scratch = work + positions(M) * cin * chunk;
    for (int64_t o0 = 0; o0 < cout; o0 += chunk) {
        const int64_t n = std::min(chunk, cout - o0);
        transform_chunk<M>(w, cin, o0, n, u);
        conv_chunk<M>(x, cin, H, W, u, b, cout, o0, n, y, scratch, band_rows_asked);
    }
}

}  // namespace

void transform_weights(const float* w, int64_t cin, int64_t o0, int64_t n, float* u, int m) {
    check_tile(m);
    if (m == 2) transform_chunk<2>(w, cin, o0, n, u); else transform_chunk<4>(w, cin, o0, n, u);
}

int64_t work_floats(int64_t cin, int64_t cout, int64_t H, int64_t W, int m, int64_t band_rows_asked,
                    int64_t chunk_asked) {
    check_tile(m);
    const int64_t n = chunk_channels(m, cin, cout, chunk_asked);
    return positions(m) * (cin * n + band_rows(m, cin, n, H, W, band_rows_asked) * ((W + m - 1) / m) * (cin + n));
}

void conv3x3(const float* x, int64_t cin, int64_t H, int64_t W, const float* w, const float* b, int64_t cout,
             float* y, float* work, int m, int64_t band_rows_asked, int64_t chunk_asked) {
    check_tile(m);
    if (cin == 0 || cout == 0 || H == 0 || W == 0) return;
    if (!onednn::available()) throw UnsupportedError("Winograd convolutions need oneDNN: " + onednn::load());
    if (m == 2)
        conv<2>(x, cin, H, W, w, b, cout, y, work, band_rows_asked, chunk_asked);
    else
        conv<4>(x, cin, H, W, w, b, cout, y, work, band_rows_asked, chunk_asked);
}

}  // namespace winograd
}  // namespace s2e
