// Winograd tile transforms for the weight gradient of a 3x3, stride-1, padding-1 convolution, for
// segdet.ops.winograd (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016).
//
// Plain C ABI on raw pointers, no Python or torch headers: segdet.ops.native compiles this file with
// the system's C++ compiler in about a second and loads it with ctypes.
//
// The weight gradient dW[o, i] = sum over images and 4 x 4 output tiles of F(3x3, 4x4):
//     dW[o, i] = Gᵀ [ sum_t U[o, t] ⊙ V[i, t] ] G,    U = A e Aᵀ,   V = Bᵀ d B
// with e the 4 x 4 tile of the output gradient and d the 6 x 6 input patch under it (one pixel of zero
// padding around the map), and A = (F(4x4, 3x3)'s Aᵀ)ᵀ, Bᵀ, G the matrices of Lavin's F(4x4, 3x3)
// (the transposition principle turns F(4, 3) into F(3, 4)). The sum over tiles is, for each of the 36
// transform points, a matrix product [C_out x T] [T x C_in]: torch.bmm does it. This file computes the
// two transforms, which are integer combinations (exact in float up to rounding of the sums):
//     winograd_input_f32: V[xi][c][t] from x [N, C, H, W]
//     winograd_grad_f32:  U[xi][c][t] from g [N, C, H, W]
// with xi = 6 xi_row + xi_col and t = (n th + ty) tw + tx over th x tw tiles of 4 x 4 per image.
// Each transform runs in two passes per row of tiles: along the image's columns (6 or 4 rows combined
// into 6 rows, vectorisable along x), then along each tile's 6 or 4 columns. Threads split the channels.

#include <algorithm>
#include <cstdint>
#include <vector>

#include "parallel.h"

namespace {

using segdet::split;

// Below this many input values a call stays on the calling thread (see roi_pool.cpp: a thread started
// right after a torch operation competes with torch's spinning OpenMP workers).
constexpr int64_t MIN_PARALLEL = 1 << 18;

// out[k] = (Bᵀ v)[k] for Lavin's F(4x4, 3x3) input transform, v[j] = in[j * s].
inline void input_transform(const float* in, int64_t s, float* out, int64_t os) {
  const float v0 = in[0], v1 = in[s], v2 = in[2 * s], v3 = in[3 * s], v4 = in[4 * s], v5 = in[5 * s];
  out[0] = 4.0f * v0 - 5.0f * v2 + v4;
  out[os] = -4.0f * (v1 + v2) + (v3 + v4);
  out[2 * os] = 4.0f * (v1 - v2) + (v4 - v3);
  out[3 * os] = 2.0f * (v3 - v1) + (v4 - v2);
  out[4 * os] = 2.0f * (v1 - v3) + (v4 - v2);
  out[5 * os] = 4.0f * v1 - 5.0f * v3 + v5;
}

// out[k] = (A v)[k], A = (F(4x4, 3x3)'s Aᵀ)ᵀ: the output gradient's transform, v[j] = in[j * s].
inline void grad_transform(const float* in, int64_t s, float* out, int64_t os) {
  const float v0 = in[0], v1 = in[s], v2 = in[2 * s], v3 = in[3 * s];
  out[0] = v0;
  out[os] = (v0 + v2) + (v1 + v3);
  out[2 * os] = (v0 + v2) - (v1 + v3);
  out[3 * os] = (v0 + 4.0f * v2) + 2.0f * (v1 + 4.0f * v3);
  out[4 * os] = (v0 + 4.0f * v2) - 2.0f * (v1 + 4.0f * v3);
  out[5 * os] = v3;
}

// One transform of a [N, C, H, W] map into out[36][C][T]. `rows` input rows per tile (6 for the input,
// 4 for the gradient) starting `offset` rows / columns before the tile (1: the zero padding, or 0).
template <int64_t ROWS, int64_t OFFSET, typename Transform>
void transform(const float* x, int64_t N, int64_t C, int64_t H, int64_t W, float* out, int64_t threads,
               Transform tf) {
  const int64_t th = (H + 3) / 4, tw = (W + 3) / 4, T = N * th * tw;
  const int64_t width = 4 * tw + 2;  // columns of the row buffer: the tiles' span, zero outside the map
  if (N * C * H * W < MIN_PARALLEL) threads = 1;
  split(C, threads, [&](int64_t c0, int64_t c1) {
    // one image's 36 x (th tw) transformed values are gathered here, then written out as 36 runs:
    // scattering every tile's 36 values straight into 36 planes far apart was 3x slower
    std::vector<float> rows(ROWS * width, 0.0f), cols(6 * width), tiles(36 * th * tw);
    for (int64_t c = c0; c < c1; ++c) {
      for (int64_t n = 0; n < N; ++n) {
        const float* plane = x + (n * C + c) * H * W;
        for (int64_t ty = 0; ty < th; ++ty) {
          // the tile row's input rows, zero-padded, column j of the buffer = map column j - OFFSET
          for (int64_t r = 0; r < ROWS; ++r) {
            const int64_t y = 4 * ty + r - OFFSET;
            float* dst = rows.data() + r * width;
            if (y < 0 || y >= H) {
              std::fill(dst, dst + width, 0.0f);
            } else {
              std::copy(plane + y * W, plane + (y + 1) * W, dst + OFFSET);
            }
          }
          // pass 1, down the columns: 6 rows from ROWS (vectorisable along j)
          for (int64_t j = 0; j < width; ++j) tf(rows.data() + j, width, cols.data() + j, width);
          // pass 2, across each tile's columns: 6 x 6 values per tile
          for (int64_t k = 0; k < 6; ++k) {
            const float* line = cols.data() + k * width;
            float* dst = tiles.data() + 6 * k * th * tw + ty * tw;
            for (int64_t tx = 0; tx < tw; ++tx) tf(line + 4 * tx, 1, dst + tx, th * tw);
          }
        }
        for (int64_t xi = 0; xi < 36; ++xi) {
          const float* src = tiles.data() + xi * th * tw;
          std::copy(src, src + th * tw, out + (xi * C + c) * T + n * th * tw);
        }
      }
    }
  });
}

}  // namespace

extern "C" {

// V[36][C][T] = Bᵀ d B for every 6 x 6 input patch (zero padding of 1) of x [N, C, H, W], contiguous.
void winograd_input_f32(const float* x, int64_t N, int64_t C, int64_t H, int64_t W, float* V,
                        int64_t threads) {
  transform<6, 1>(x, N, C, H, W, V, threads, input_transform);
}

// U[36][C][T] = A e Aᵀ for every 4 x 4 tile of g [N, C, H, W] (zero beyond the map), contiguous.
void winograd_grad_f32(const float* g, int64_t N, int64_t C, int64_t H, int64_t W, float* U,
                       int64_t threads) {
  transform<4, 0>(g, N, C, H, W, U, threads, grad_transform);
}

}  // extern "C"
