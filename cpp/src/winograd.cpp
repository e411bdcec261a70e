// Winograd convolutions F(m x m, r x r) for the heads (see s2e/winograd.hpp for why).
//
// Notation (Lavin and Gray's): for an a x a block d of input (a = m + r - 1) and an r x r filter g, the
// m x m block of output is A^T [(G g G^T) . (B^T d B)] A. Summed over input channels, the elementwise product
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

// The transforms of F(m x m, r x r) (a = m + r - 1), interpolation points 0, 1, -1 (F(2, 3)), 0, 1, -1, 2, -2
// (F(4, 3)), 0, -1 (F(2, 2)) and 0, 1, -1, 2 (F(4, 2)), each with the point at infinity.
template <int M, int R>
struct Transforms;
template <>
struct Transforms<2, 3> {
    static constexpr int kM = 2, kR = 3, kA = 4;
    static constexpr float BT[4][4] = {{1, 0, -1, 0}, {0, 1, 1, 0}, {0, -1, 1, 0}, {0, 1, 0, -1}};
    static constexpr float G[4][3] = {{1, 0, 0}, {0.5f, 0.5f, 0.5f}, {0.5f, -0.5f, 0.5f}, {0, 0, 1}};
    static constexpr float AT[2][4] = {{1, 1, 1, 0}, {0, 1, -1, -1}};
};
template <>
struct Transforms<4, 3> {
    static constexpr int kM = 4, kR = 3, kA = 6;
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
template <>
struct Transforms<2, 2> {
    static constexpr int kM = 2, kR = 2, kA = 3;
    static constexpr float BT[3][3] = {{1, 1, 0}, {0, 1, 0}, {0, 1, 1}};
    static constexpr float G[3][2] = {{1, 0}, {-1, 1}, {0, 1}};
    static constexpr float AT[2][3] = {{1, 1, 0}, {0, -1, 1}};
};
template <>
struct Transforms<4, 2> {
    static constexpr int kM = 4, kR = 2, kA = 5;
    static constexpr float BT[5][5] = {
        {2, -1, -2, 1, 0}, {0, -2, -1, 1, 0}, {0, 2, -3, 1, 0}, {0, -1, 0, 1, 0}, {0, 2, -1, -2, 1}};
    static constexpr float G[5][2] = {
        {1.0f / 2, 0}, {-1.0f / 2, -1.0f / 2}, {-1.0f / 6, 1.0f / 6}, {1.0f / 6, 1.0f / 3}, {0, 1}};
    static constexpr float AT[4][5] = {{1, 1, 1, 1, 0}, {0, 1, -1, 2, 0}, {0, 1, 1, 4, 0}, {0, 1, -1, 8, 1}};
};

// One output phase of a layer: a correlation of the input with an r x r filter whose tile (ti, tj) of m x m
// outputs reads the a x a input block at (m ti + oy, m tj + ox) and writes output (r, c) of channel o to
// y[r * row_step + c * col_step + o]; tap (p, q) of output channel o and input channel i is
// w[o * o_step + i * i_step + tap[p][q]]. A 3x3 convolution is one phase; a transposed convolution of
// stride 2 is four, one per parity of the output's row and column, each a 2x2 correlation of the input.
template <int R>
struct Phase {
    const float* w;
    int64_t o_step, i_step;
    int tap[R][R];
    int64_t oy, ox;
    float* y;
    int64_t row_step, col_step;
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
template <class T>
S2E_CPU_CLONES void input_block(const float* x, int64_t cin, int64_t H, int64_t W, int64_t r0, int64_t c0, float* v,
                                int64_t vs) {
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

// The m x m output block at (r0, c0) of n channels from the products m[xi * ms + o], bias added, to `out`
// from its channel 0 on; rows / columns past the H x W grid are not written.
template <class T>
S2E_CPU_CLONES void output_block(const float* m, int64_t ms, const float* b, int64_t n, const Phase<T::kR>& out,
                                 int64_t H, int64_t W, int64_t r0, int64_t c0) {
    constexpr int A = T::kA, M = T::kM;
    const int rows = static_cast<int>(std::min<int64_t>(M, H - r0));
    const int cols = static_cast<int>(std::min<int64_t>(M, W - c0));
    for (int64_t o = 0; o < n; o += kLanes) {
        const int64_t k = std::min<int64_t>(kLanes, n - o);
        float mm[A][A][kLanes], s[M][A][kLanes], res[kLanes];
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
                    res[l] = acc;
                }
                float* yp = out.y + (r0 + i) * out.row_step + (c0 + j) * out.col_step + o;
                for (int64_t l = 0; l < k; ++l) yp[l] = res[l] + (b ? b[o + l] : 0.0f);
            }
    }
}

// G g G^T of the phase's filter for output channels [o0, o0 + n) (n <= kLanes) and input channel i, into
// u (a^2, cin, un) at column c
template <class T>
S2E_CPU_CLONES void weight_block(const Phase<T::kR>& ph, int64_t cin, int64_t o0, int64_t n, int64_t i, float* u,
                                 int64_t un, int64_t c) {
    constexpr int A = T::kA, R = T::kR;
    float g[R][R][kLanes] = {}, t[A][R][kLanes], res[kLanes];
    for (int64_t k = 0; k < n; ++k)
        for (int p = 0; p < R; ++p)
            for (int q = 0; q < R; ++q) g[p][q][k] = ph.w[(o0 + k) * ph.o_step + i * ph.i_step + ph.tap[p][q]];
    for (int a = 0; a < A; ++a)  // G g
        for (int j = 0; j < R; ++j)
#pragma omp simd
            for (int l = 0; l < kLanes; ++l) {
                float acc = 0.0f;
                for (int p = 0; p < R; ++p) acc += T::G[a][p] * g[p][j][l];
                t[a][j][l] = acc;
            }
    const int64_t us = cin * un;
    for (int a = 0; a < A; ++a)  // (G g) G^T
        for (int e = 0; e < A; ++e) {
#pragma omp simd
            for (int l = 0; l < kLanes; ++l) {
                float acc = 0.0f;
                for (int q = 0; q < R; ++q) acc += t[a][q][l] * T::G[e][q];
                res[l] = acc;
            }
            std::memcpy(u + (a * A + e) * us + i * un + c, res, static_cast<size_t>(n) * sizeof(float));
        }
}

// The transformed positions of an F(m x m, r x r) phase: a x a
int64_t positions(int m, int r) { return (m + r - 1) * (m + r - 1); }

void check_tile(int m) {
    if (m != 2 && m != 4) throw UnsupportedError("Winograd tiles are 2x2 or 4x4 outputs, not " + std::to_string(m));
}

// Output channels per chunk (`asked` when positive): the chunk's transformed weights (a^2 x cin x chunk
// floats) stay near kChunkFloats (a multiple of 16 channels, at least 16).
int64_t chunk_channels(int64_t pos, int64_t cin, int64_t cout, int64_t asked) {
    if (asked > 0) return std::min(cout, asked);
    const int64_t n = std::max<int64_t>(16, kChunkFloats / (pos * cin) / 16 * 16);
    return std::min(cout, n);
}

// Rows of output tiles per band (`asked` when positive, else from kBandFloats), at most the grid's.
int64_t band_rows(int m, int64_t pos, int64_t cin, int64_t n, int64_t H, int64_t W, int64_t asked) {
    const int64_t th = (H + m - 1) / m, tw = (W + m - 1) / m;
    if (asked > 0) return std::min(th, asked);
    const int64_t tiles = std::max(kMinBandTiles, kBandFloats / (pos * (cin + n)));
    return std::max<int64_t>(1, std::min(th, tiles / tw));
}

// The work floats of a layer: one chunk of one phase's transformed weights and one band's maps (the
// phases run one after the other)
int64_t layer_work(int m, int r, int64_t cin, int64_t cout, int64_t H, int64_t W, int64_t asked_rows,
                   int64_t asked_chunk) {
    check_tile(m);
    const int64_t pos = positions(m, r), n = chunk_channels(pos, cin, cout, asked_chunk);
    return pos * (cin * n + band_rows(m, pos, cin, n, H, W, asked_rows) * ((W + m - 1) / m) * (cin + n));
}

// The transformed weights of output channels [o0, o0 + n) of one phase into u (a^2, cin, n), split between
// the threads of the enclosing parallel region, in blocks of 16 output channels of one input channel (one
// 64-byte line of each of u's a^2 planes), in the order that reads the weights in theirs: a convolution's
// (cout, cin, r, r) a block at a time through its input channels; a transposed convolution's
// (cin, cout, 4, 4) an input channel at a time, which also writes each plane's rows in order.
template <class T>
void transform_chunk(const Phase<T::kR>& ph, int64_t cin, int64_t o0, int64_t n, float* u) {
    const int64_t blocks = (n + kLanes - 1) / kLanes;
    const bool input_major = ph.i_step > ph.o_step;
#pragma omp for schedule(static)
    for (int64_t k = 0; k < blocks * cin; ++k) {
        const int64_t i = input_major ? k / blocks : k % cin, c = (input_major ? k % blocks : k / cin) * kLanes;
        weight_block<T>(ph, cin, o0 + c, std::min<int64_t>(kLanes, n - c), i, u, n, c);
    }
}

// One phase of a layer on an H x W grid of outputs, in bands of tile rows and chunks of output channels. A
// band's input is transformed once for each chunk it meets and a chunk's weights once for each band, so one
// of the two loops goes outside and the other's transform is the one repeated: bands outside where that
// repeats less (the weights' a^2 x cin x cout values once per extra band, against the input's a^2 x tiles x
// cin once per extra chunk). Measured (Zen 3, 2 threads): a 1024 -> 3072 convolution on a 64x48 map (one
// band, 28 chunks) 605 ms with chunks outside, 400 ms with bands outside; a 256 -> 512 one at 256x192 (10
// bands, 2 chunks) 269 ms with chunks outside, 312 ms with bands outside.
template <class T>
void run_phase(const float* x, int64_t cin, int64_t H, int64_t W, const Phase<T::kR>& ph, const float* b,
               int64_t cout, int64_t chunk, float* work, int64_t asked_rows) {
    constexpr int M = T::kM;
    constexpr int64_t kXi = T::kA * T::kA;
    const int64_t th = (H + M - 1) / M, tw = (W + M - 1) / M;
    const int64_t rows_per_band = band_rows(M, kXi, cin, chunk, H, W, asked_rows);
    const int64_t bands = (th + rows_per_band - 1) / rows_per_band, chunks = (cout + chunk - 1) / chunk;
    const bool bands_outside = (bands - 1) * cout <= (chunks - 1) * th * tw;
    float* u = work;                                // (a^2, cin, n)
    float* v = u + kXi * cin * chunk;               // (a^2, tiles, cin)
    float* m = v + kXi * rows_per_band * tw * cin;  // (a^2, tiles, n)
    // The steps, each split between the threads of one parallel region for the whole phase (the GEMMs one
    // per thread): barriers between steps instead of a fork and join per GEMM. An exception may not leave a
    // parallel region: the first a GEMM throws is kept and thrown after it.
    std::exception_ptr failed;
    auto input = [&](int64_t r0, int64_t tiles) {
#pragma omp for schedule(static)
        for (int64_t t = 0; t < tiles; ++t) {
            const int64_t ti = r0 + t / tw, tj = t % tw;
            input_block<T>(x, cin, H, W, M * ti + ph.oy, M * tj + ph.ox, v + t * cin, tiles * cin);
        }
    };
    auto products = [&](int64_t r0, int64_t tiles, int64_t o0, int64_t n) {
        const int64_t vs = tiles * cin, us = cin * n, ms = tiles * n;
#pragma omp for schedule(static)
        for (int64_t xi = 0; xi < kXi; ++xi) {
            try {
                onednn::matmul_f32(tiles, cin, n, v + xi * vs, cin, 1, u + xi * us, n, 1, m + xi * ms, n, 1.0f);
            } catch (...) {
#pragma omp critical(s2e_winograd_failed)
                if (!failed) failed = std::current_exception();
            }
        }
        Phase<T::kR> out = ph;
        out.y += o0;
        const float* bias = b ? b + o0 : nullptr;
#pragma omp for schedule(static)
        for (int64_t t = 0; t < tiles; ++t) {
            const int64_t ti = r0 + t / tw, tj = t % tw;
            output_block<T>(m + t * n, ms, bias, n, out, H, W, M * ti, M * tj);
        }
    };
#pragma omp parallel
    {
        single_threaded_nested_regions();  // the GEMMs: one thread each
        // every (band, chunk) pair, the outer loop's index changing least often; each transform is redone
        // only when its band or chunk changes
        const int64_t outer = bands_outside ? bands : chunks, inner = bands_outside ? chunks : bands;
        int64_t have_band = -1, have_chunk = -1;
        for (int64_t i = 0; i < outer * inner; ++i) {
            const int64_t band = bands_outside ? i / inner : i % inner;
            const int64_t chunk_index = bands_outside ? i % inner : i / inner;
            const int64_t r0 = band * rows_per_band, tiles = std::min(rows_per_band, th - r0) * tw;
            const int64_t o0 = chunk_index * chunk, n = std::min(chunk, cout - o0);
            if (band != have_band) input(r0, tiles);
            if (chunk_index != have_chunk) transform_chunk<T>(ph, cin, o0, n, u);
            have_band = band;
            have_chunk = chunk_index;
            products(r0, tiles, o0, n);
        }
    }
    if (failed) std::rethrow_exception(failed);
}

// A layer of np phases (each writing its own outputs), one after the other
template <class T>
void run_layer(const float* x, int64_t cin, int64_t H, int64_t W, const Phase<T::kR>* phases, int np, const float* b,
               int64_t cout, float* work, int64_t asked_rows, int64_t asked_chunk) {
    if (!onednn::available()) throw UnsupportedError("Winograd convolutions need oneDNN: " + onednn::load());
    const int64_t chunk = chunk_channels(positions(T::kM, T::kR), cin, cout, asked_chunk);
    for (int p = 0; p < np; ++p) run_phase<T>(x, cin, H, W, phases[p], b, cout, chunk, work, asked_rows);
}

// The one phase of a 3x3 convolution with padding 1: w (cout, cin, 3, 3), y (H, W, cout)
Phase<3> conv_phase(const float* w, int64_t cin, int64_t cout, int64_t W, float* y) {
    return {w, cin * 9, 9, {{0, 1, 2}, {3, 4, 5}, {6, 7, 8}}, -1, -1, y, W * cout, cout};
}

// The four phases of ConvTranspose2d(4, stride 2, padding 1): w (cin, cout, 4, 4), y (2H, 2W, cout).
// Output row 2j + py is sum over t of x[j + py - 1 + t] w[3 - py - 2t] (columns alike): phase (py, px)
// correlates the input at offset (py - 1, px - 1) with taps [3 - py - 2p][3 - px - 2q], and writes every
// second row and column from (py, px).
void deconv_phases(const float* w, int64_t cout, int64_t W, float* y, Phase<2> (&ph)[4]) {
    for (int py = 0; py < 2; ++py)
        for (int px = 0; px < 2; ++px) {
            Phase<2>& p = ph[py * 2 + px];
            p.w = w;
            p.o_step = 16;
            p.i_step = cout * 16;
            for (int a = 0; a < 2; ++a)
                for (int c = 0; c < 2; ++c) p.tap[a][c] = (3 - py - 2 * a) * 4 + (3 - px - 2 * c);
            p.oy = py - 1;
            p.ox = px - 1;
            p.y = y + (py * 2 * W + px) * cout;
            p.row_step = 4 * W * cout;
            p.col_step = 2 * cout;
        }
}

}  // namespace

int choose_tile(int64_t cin, int64_t cout, int64_t H, int64_t W, bool deconv, bool avx512, bool forced) {
    const int64_t tiles = ((H + 3) / 4) * ((W + 3) / 4);  // of 4x4 outputs (per phase)
    if (avx512) {
        if (forced) return 4;
        if (cin * cout < kChannelProduct || tiles < kAvx512Tiles) return 0;
        return !deconv || cin * cout >= kAvx512DeconvChannels * (cin + cout) ? 4 : 0;
    }
    if (!forced && cin * cout < kChannelProduct) return 0;
    return tiles >= (deconv ? kDeconv4x4Tiles : k4x4Tiles) ? 4 : 2;
}

void transform_weights(const float* w, int64_t cin, int64_t o0, int64_t n, float* u, int m) {
    check_tile(m);
    const Phase<3> ph = conv_phase(w, cin, 0, 0, nullptr);
#pragma omp parallel
    {
        if (m == 2) transform_chunk<Transforms<2, 3>>(ph, cin, o0, n, u);
        else transform_chunk<Transforms<4, 3>>(ph, cin, o0, n, u);
    }
}

int64_t work_floats(int64_t cin, int64_t cout, int64_t H, int64_t W, int m, int64_t band_rows_asked,
                    int64_t chunk_asked) {
    return layer_work(m, 3, cin, cout, H, W, band_rows_asked, chunk_asked);
}

void conv3x3(const float* x, int64_t cin, int64_t H, int64_t W, const float* w, const float* b, int64_t cout,
             float* y, float* work, int m, int64_t band_rows_asked, int64_t chunk_asked) {
    check_tile(m);
    if (cin == 0 || cout == 0 || H == 0 || W == 0) return;
    const Phase<3> ph = conv_phase(w, cin, cout, W, y);
    if (m == 2)
        run_layer<Transforms<2, 3>>(x, cin, H, W, &ph, 1, b, cout, work, band_rows_asked, chunk_asked);
    else
        run_layer<Transforms<4, 3>>(x, cin, H, W, &ph, 1, b, cout, work, band_rows_asked, chunk_asked);
}

int64_t deconv_work_floats(int64_t cin, int64_t cout, int64_t H, int64_t W, int m, int64_t band_rows_asked,
                           int64_t chunk_asked) {
    return layer_work(m, 2, cin, cout, H, W, band_rows_asked, chunk_asked);
}

void deconv4x4s2(const float* x, int64_t cin, int64_t H, int64_t W, const float* w, int64_t cout, float* y,
                 float* work, int m, int64_t band_rows_asked, int64_t chunk_asked) {
    check_tile(m);
    if (cin == 0 || cout == 0 || H == 0 || W == 0) return;
    Phase<2> ph[4];
    deconv_phases(w, cout, W, y, ph);
    if (m == 2)
        run_layer<Transforms<2, 2>>(x, cin, H, W, ph, 4, nullptr, cout, work, band_rows_asked, chunk_asked);
    else
        run_layer<Transforms<4, 2>>(x, cin, H, W, ph, 4, nullptr, cout, work, band_rows_asked, chunk_asked);
}

}  // namespace winograd
}  // namespace s2e
