// Conv2d(3x3, stride 1, padding 1) by Winograd's minimal filtering F(m x m, 3 x 3), and ConvTranspose2d(4x4,
// stride 2, padding 1) by F(m x m, 2 x 2) on each of its four output phases; channels last, float32.
//
// Why: the dense heads (normal, pointmap, albedo) are 3x3 convolutions at up to full resolution, most of
// those tasks' work (two thirds of a 0.1b normal forward at 512x384), and every runtime we measured runs
// them as direct convolutions at the CPU's float32 roof. F(m x m, 3 x 3) computes each m x m block of
// outputs from an (m + 2) x (m + 2) block of inputs: the products become (m + 2)^2 GEMMs of (tiles, cin) x
// (cin, cout), (m + 2)^2 multiply-adds per m^2 outputs instead of 9 per output: 4x fewer at m = 4 (36 per
// 16 outputs), 2.25x at m = 2.
// oneDNN has Winograd kernels only for AVX-512; these run their GEMMs on oneDNN's matmul on any CPU. The
// transforms' constants (0, +-1, +-2, 4, 5, 8, 1/4, 1/6, 1/12, 1/24 at m = 4) round differently from a
// direct convolution's sums: the error stays of float32's order (measured in cpp/tests/test_winograd.cpp and
// against the torch model in tests/test_native_winograd.py).
// The transposed convolutions of the pose and seg heads: each output row 2j + p (p = 0, 1) sums two input
// rows with two of the four kernel rows, so every parity (p, q) of the output's rows and columns is a 2x2
// correlation of the input, and F(m x m, 2 x 2) computes its m x m blocks from (m + 1)^2 products: 25 per
// 16 outputs at m = 4 instead of 64 (2.56x fewer), 9 per 4 at m = 2 (1.78x).
#pragma once

#include <cstdint>

namespace s2e {
namespace winograd {

// Where Winograd pays, measured against oneDNN's direct float32 kernels on one layer at a time (the heads'
// layers of 0.1b / 0.4b at 512x384 / 1024x768, 2 threads):
// - AVX2 CPUs (Zen 3): 3x3 convolutions from 256 x 128 channel pairs up (1.2-2.5x; 128 -> 64 loses), 4x4 tiles
//   on maps of at least 128 of them, else 2x2; transposed convolutions from the same channel product (1.2-1.8x),
//   4x4 tiles from 48 per phase.
// - AVX-512 CPUs (Zen 5), whose direct kernels run nearer their roof: 4x4 tiles beat 2x2 ones on every layer;
//   3x3 convolutions gain 1.24-2.36x on maps of at least 192 tiles (64x48) and tie on 32x24 ones (48 tiles:
//   the transformed weights, 4x the weights, cost as much as the products saved); transposed convolutions
//   gain 1.05-1.31x where both channel counts are large (cin cout / (cin + cout) >= 256: 1024 -> 512, 768,
//   1024 on maps of 192 tiles or more) and run at 0.55-1.04x on narrower or smaller ones (a tile's transforms
//   cost cin + cout, its products cin cout). Measured by benchmarks/native/head_layers.cpp; the tables are in
//   benchmarks/results/cpu_peers.md.
constexpr int64_t kChannelProduct = 256 * 128;
constexpr int64_t k4x4Tiles = 128, kDeconv4x4Tiles = 48;  // AVX2
constexpr int64_t kAvx512Tiles = 192, kAvx512DeconvChannels = 256;

// The tile side (4 or 2) a float32 layer from cin to cout channels on an H x W map (a transposed
// convolution's input map: `deconv`) runs its Winograd products with, or 0 where the direct kernel is
// faster (the rules above). `avx512`: whether the CPU's float32 kernels are AVX-512 ones. `forced`: every
// layer by Winograd (the tile alone chosen).
int choose_tile(int64_t cin, int64_t cout, int64_t H, int64_t W, bool deconv, bool avx512, bool forced = false);

// Output channels [o0, o0 + n) of w (cout, cin, 3, 3) (a torch weight) into u ((m + 2)^2, cin, n): G g G^T
// for every pair of channels. m is 2 or 4 (UnsupportedError otherwise), as below.
void transform_weights(const float* w, int64_t cin, int64_t o0, int64_t n, float* u, int m = 4);

// The floats of work conv3x3 needs for these sizes: one chunk of `chunk` output channels' transformed
// weights (0: as many as fit 16 MB) and the transformed inputs and products of one band of `band_rows`
// rows of m x m output tiles (0: as many as keep them near 16 MB, at least 256 tiles). Tests set both small
// to cross chunk and band boundaries on small layers.
int64_t work_floats(int64_t cin, int64_t cout, int64_t H, int64_t W, int m = 4, int64_t band_rows = 0,
                    int64_t chunk = 0);

// y (H, W, cout) = conv3x3(x (H, W, cin), w (cout, cin, 3, 3)) + b (b may be null), `work` of
// work_floats(cin, cout, H, W, m, band_rows, chunk) floats. Needs oneDNN (onednn::available()).
void conv3x3(const float* x, int64_t cin, int64_t H, int64_t W, const float* w, const float* b, int64_t cout,
             float* y, float* work, int m = 4, int64_t band_rows = 0, int64_t chunk = 0);

// The floats of work deconv4x4s2 needs: as work_floats, for one phase (the four run one after the other).
int64_t deconv_work_floats(int64_t cin, int64_t cout, int64_t H, int64_t W, int m = 4, int64_t band_rows = 0,
                           int64_t chunk = 0);

// y (2H, 2W, cout) = conv_transpose2d(x (H, W, cin), w (cin, cout, 4, 4), stride 2, padding 1) (no bias),
// `work` of deconv_work_floats(cin, cout, H, W, m, band_rows, chunk) floats; m (2 or 4) is the side of each
// phase's tiles (an m x m tile of a phase is 2m x 2m outputs of the layer, every second one). Needs oneDNN.
void deconv4x4s2(const float* x, int64_t cin, int64_t H, int64_t W, const float* w, int64_t cout, float* y,
                 float* work, int m = 4, int64_t band_rows = 0, int64_t chunk = 0);

}  // namespace winograd
}  // namespace s2e
