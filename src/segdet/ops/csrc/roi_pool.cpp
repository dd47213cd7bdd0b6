// RoI max pooling on the CPU for segdet.ops.roi_pool (Girshick, "Fast R-CNN", ICCV 2015).
//
// Plain C ABI on raw pointers, no Python or torch headers: segdet.ops.native compiles this file with
// the system's C++ compiler in about a second and loads it with ctypes.
//
// Forward. RoI k = (n, x1, y1, x2, y2) is quantised and cut into PH x PW bins in T arithmetic exactly
// as torchvision's CPU kernel does (r = C's round, halves away from zero; s the spatial scale):
//     x1' = r(x1 s), ...;  roi_h = max(y2' - y1' + 1, 1);  bin_h = roi_h / PH
//     rows of bin p: [clip(floor(p bin_h) + y1', 0, H), clip(ceil((p + 1) bin_h) + y1', 0, H))
// (columns alike), and for every channel c:
//     out[k, c, p, q]    = max of x[n, c, h, w] over the bin     (0 for an empty bin)
//     argmax[k, c, p, q] = h W + w of the FIRST maximum in row-major order (-1: empty, or no value
//                          above -FLT_MAX, i.e. only NaN / -inf: the output is then -FLT_MAX)
// torchvision's rule: start at -FLT_MAX, replace on a strict ">" (NaN never replaces). The map is read
// channels-last ([N, H, W, C]; an NCHW map is transposed first) so that each cell of a bin updates the
// running maxima of many channels in a few SIMD instructions; per RoI, the results are transposed to
// torchvision's [K, C, PH, PW] layout (the arg-max, ours only, kept for the backward pass, too). RoIs
// are shared among threads dynamically (their sizes vary).
//
// Backward: grad_input[n, c, argmax[k, c, p, q]] += grad[k, c, p, q], skipping -1. Threads split the
// channels, and each adds its terms in torchvision's order (ascending RoI, then bin), so every element
// of grad_input receives the same float additions in the same order: the sums are equal bit for bit.

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <new>
#include <type_traits>
#include <vector>

#include "parallel.h"

#ifdef __AVX2__
#include <immintrin.h>
#endif

namespace {

using segdet::split;

// Below this many outputs (about a millisecond of work) a call runs on the calling thread alone: a
// thread of ours started right after a torch operation competes for the cores with torch's OpenMP
// workers, which spin for a while before they sleep, and the call takes longer than on one thread.
constexpr int64_t MIN_PARALLEL = 1 << 20;
// The backward pass adds into a block of channel planes at a time, sized to stay in a core's L2.
constexpr int64_t PLANES_BYTES = 1 << 18;

// SIMD through GCC / Clang vector extensions: V holds the 32 bytes of an AVX register of T (8 floats
// or 4 doubles; the compiler splits it on narrower machines), I the integers of the same width, so
// that a comparison's lane masks select between both.
template <typename T> struct Simd;
template <> struct Simd<float> {
  typedef float V __attribute__((vector_size(32)));
  typedef int32_t I __attribute__((vector_size(32)));
  using Lane = int32_t;
};
template <> struct Simd<double> {
  typedef double V __attribute__((vector_size(32)));
  typedef int64_t I __attribute__((vector_size(32)));
  using Lane = int64_t;
};

constexpr int VECTORS = 4;  // vectors of channels updated together (independent chains for the CPU)

// One bin's maxima over channels [c0, c0 + VECTORS L), L = 32 / sizeof(T), for the cells of rows
// [t, b) and columns [l, r) of the channels-last map: results into m[c0 ..], a[c0 ..] (a may be null).
template <typename T>
inline void bin_block(const T* map, int64_t W, int64_t C, int64_t c0, int64_t t, int64_t b, int64_t l,
                      int64_t r, T* m, int32_t* a) {
  using V = typename Simd<T>::V;
  using I = typename Simd<T>::I;
  constexpr int L = sizeof(V) / sizeof(T);
  V best[VECTORS];
  I where[VECTORS];
  for (int v = 0; v < VECTORS; ++v) {
    for (int j = 0; j < L; ++j) best[v][j] = T(-FLT_MAX);
    where[v] = I{} - 1;
  }
  for (int64_t h = t; h < b; ++h) {
    for (int64_t w = l; w < r; ++w) {
      const T* cell = map + (h * W + w) * C + c0;
      const I position = I{} + static_cast<typename Simd<T>::Lane>(h * W + w);
      for (int v = 0; v < VECTORS; ++v) {
        V x;
        std::memcpy(&x, cell + v * L, sizeof x);
        const I above = x > best[v];  // all ones where x is larger; never for NaN
        best[v] = (V)((above & (I)x) | (~above & (I)best[v]));
        where[v] = (above & position) | (~above & where[v]);
      }
    }
  }
  for (int v = 0; v < VECTORS; ++v) {
    std::memcpy(m + c0 + v * L, &best[v], sizeof(V));
    if (a) {
      for (int j = 0; j < L; ++j) a[c0 + v * L + j] = static_cast<int32_t>(where[v][j]);
    }
  }
}

// The same for one channel c (the channels left over by the blocks).
template <typename T>
inline void bin_channel(const T* map, int64_t W, int64_t C, int64_t c, int64_t t, int64_t b, int64_t l,
                        int64_t r, T* m, int32_t* a) {
  T best = T(-FLT_MAX);
  int32_t where = -1;
  for (int64_t h = t; h < b; ++h) {
    for (int64_t w = l; w < r; ++w) {
      const T x = map[(h * W + w) * C + c];
      if (x > best) {
        best = x;
        where = static_cast<int32_t>(h * W + w);
      }
    }
  }
  m[c] = best;
  if (a) a[c] = where;
}

#ifdef __AVX2__
// 8 x 8 tile of 4-byte values (float or int32: moved as bits): rows of `src` `ld` apart -> columns of
// `dst`, rows `stride` apart; the classic unpack / shuffle / permute transposition.
inline void transpose8x8(const void* src, int64_t ld, void* dst, int64_t stride) {
  const float* s = static_cast<const float*>(src);
  float* d = static_cast<float*>(dst);
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(s + i * ld);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(d + i * stride, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
    _mm256_storeu_ps(d + (i + 4) * stride, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
  }
}
#endif

// dst[c * ld_dst + r] = src[r * ld_src + c] for r < rows, c < cols: a transposition (with AVX2,
// 4-byte values go by 8 x 8 tiles, the edges one by one).
template <typename V>
void transpose(const V* __restrict src, int64_t rows, int64_t cols, int64_t ld_src, V* __restrict dst,
               int64_t ld_dst) {
  int64_t r0 = 0;
#ifdef __AVX2__
  if constexpr (sizeof(V) == 4) {
    const int64_t c0 = cols - cols % 8;
    for (r0 = 0; r0 + 8 <= rows; r0 += 8) {
      for (int64_t c = 0; c < c0; c += 8) {
        transpose8x8(src + r0 * ld_src + c, ld_src, dst + c * ld_dst + r0, ld_dst);
      }
    }
    // left: columns [c0, cols) of rows [0, r0), and all of rows [r0, rows)
    for (int64_t c = c0; c < cols; ++c) {
      for (int64_t r = 0; r < r0; ++r) dst[c * ld_dst + r] = src[r * ld_src + c];
    }
  }
#endif
  for (int64_t c = 0; c < cols; ++c) {
    for (int64_t r = r0; r < rows; ++r) dst[c * ld_dst + r] = src[r * ld_src + c];
  }
}

// The NCHW map x ([N, C, HW]) channels-last into cells ([N, HW, C]), by column ranges on the threads.
template <typename T>
void to_channels_last(const T* x, int64_t N, int64_t C, int64_t HW, T* cells, int64_t threads) {
  constexpr int64_t COLUMNS = 256;
  const int64_t parts = (HW + COLUMNS - 1) / COLUMNS;
  std::atomic<int64_t> next{0};
  split(threads, threads, [&](int64_t, int64_t) {
    for (int64_t j = next++; j < N * parts; j = next++) {
      const int64_t n = j / parts, p0 = j % parts * COLUMNS, p1 = std::min(HW, p0 + COLUMNS);
      transpose(x + n * C * HW + p0, C, p1 - p0, HW, cells + (n * HW + p0) * C, C);
    }
  });
}

// Edges [lo[i], hi[i]) of the `bins` bins of a RoI side from `start` to `end` (quantised), clipped to
// [0, limit): torchvision's formulas in T.
template <typename T>
void edges(int64_t start, int64_t end, int64_t bins, int64_t limit, int64_t* lo, int64_t* hi) {
  const T size = static_cast<T>(std::max<int64_t>(end - start + 1, 1)) / static_cast<T>(bins);
  for (int64_t i = 0; i < bins; ++i) {
    const int64_t a = static_cast<int64_t>(std::floor(static_cast<T>(i) * size)) + start;
    const int64_t b = static_cast<int64_t>(std::ceil(static_cast<T>(i + 1) * size)) + start;
    lo[i] = std::min(std::max<int64_t>(a, 0), limit);
    hi[i] = std::min(std::max<int64_t>(b, 0), limit);
  }
}

// T: the map's float type; A: the arg-max's integer type (int16 while H W < 2^15: half the memory
// traffic of int32 in the arg-max's [K, C, PH, PW] array).
template <typename T, typename A>
void pool_forward(const T* input, int64_t channels_last, int64_t N, int64_t H, int64_t W, int64_t C,
                  const T* rois, T scale, int64_t K, int64_t PH, int64_t PW, T* out, A* argmax,
                  int64_t threads) {
  constexpr int64_t BLOCK = VECTORS * 32 / sizeof(T);
  const int64_t bins = PH * PW;
  std::vector<T> copy;
  if (!channels_last) {
    copy.resize(N * H * W * C);
    to_channels_last(input, N, C, H * W, copy.data(), N * H * W * C < MIN_PARALLEL ? 1 : threads);
  }
  const T* __restrict x = channels_last ? input : copy.data();
  if (K * bins * C < MIN_PARALLEL) threads = 1;
  std::atomic<int64_t> next{0};
  auto work = [&](int64_t, int64_t) {
    std::vector<int64_t> top(PH), bottom(PH), left(PW), right(PW);
    // one RoI's maxima and arg-maxima, bin-major ([bins, C]), before their transpositions; int16
    // arg-maxima go through `column` (channel-major, [C, bins]) to be narrowed, int32 ones straight
    // to their place
    constexpr bool narrow = !std::is_same_v<A, int32_t>;
    std::vector<T> best(bins * C);
    std::vector<int32_t> where(argmax ? bins * C : 0), column(argmax && narrow ? bins * C : 0);
    for (int64_t k = next++; k < K; k = next++) {
      const T* roi = rois + k * 5;
      const auto corner = [&](int i) { return static_cast<int64_t>(std::round(roi[i] * scale)); };
      edges<T>(corner(2), corner(4), PH, H, top.data(), bottom.data());
      edges<T>(corner(1), corner(3), PW, W, left.data(), right.data());
      const T* map = x + static_cast<int64_t>(roi[0]) * H * W * C;
      for (int64_t p = 0; p < PH; ++p) {
        const int64_t t = top[p], b = bottom[p];
        for (int64_t q = 0; q < PW; ++q) {
          const int64_t l = left[q], r = right[q];
          T* m = best.data() + (p * PW + q) * C;
          int32_t* a = argmax ? where.data() + (p * PW + q) * C : nullptr;
          if (b <= t || r <= l) {  // empty bin: 0, no arg-max
            std::fill(m, m + C, T(0));
            if (a) std::fill(a, a + C, -1);
            continue;
          }
          int64_t c = 0;
          for (; c + BLOCK <= C; c += BLOCK) bin_block(map, W, C, c, t, b, l, r, m, a);
          for (; c < C; ++c) bin_channel(map, W, C, c, t, b, l, r, m, a);
        }
      }
      transpose(best.data(), bins, C, C, out + k * C * bins, bins);
      if (argmax) {
        if constexpr (narrow) {
          transpose(where.data(), bins, C, C, column.data(), bins);
          std::copy(column.begin(), column.end(), argmax + k * C * bins);  // converts to A
        } else {
          transpose(where.data(), bins, C, C, argmax + k * C * bins, bins);
        }
      }
    }
  };
  split(threads, threads, work);
}

template <typename T, typename A>
void pool_backward(const T* grad, const A* argmax, const int64_t* image, int64_t K, int64_t C,
                   int64_t bins, int64_t HW, T* grad_input, int64_t threads) {
  if (K * bins * C < MIN_PARALLEL) threads = 1;
  const int64_t block = std::max<int64_t>(1, std::min<int64_t>(64, PLANES_BYTES / (HW * sizeof(T) + 1)));
  split(C, threads, [&](int64_t c0, int64_t c1) {
    // a block of channels at a time (their planes stay in L2), each RoI's terms for them together
    // (contiguous rows of grad and argmax); for every element the terms still come in torchvision's
    // order (RoI, then bin)
    for (int64_t b0 = c0; b0 < c1; b0 += block) {
      const int64_t b1 = std::min(c1, b0 + block);
      for (int64_t k = 0; k < K; ++k) {
        for (int64_t c = b0; c < b1; ++c) {
          T* plane = grad_input + (image[k] * C + c) * HW;
          const A* a = argmax + (k * C + c) * bins;
          const T* g = grad + (k * C + c) * bins;
          for (int64_t i = 0; i < bins; ++i) {
            if (a[i] >= 0) plane[a[i]] += g[i];
          }
        }
      }
    }
  });
}

}  // namespace

// One forward and one backward entry point per (float type, arg-max type), each returning 0, or 1 when
// memory ran out (the caller raises):
// roi_pool_forward_{f32,f64}_{i16,i32}(x, channels_last, N, H, W, C, rois, scale, K, PH, PW, out,
//                                      argmax, threads)
//   x: the map, [N, C, H, W] contiguous, or [N, H, W, C] with channels_last = 1;
//   rois [K, 5] (n, x1, y1, x2, y2); out [K, C, PH, PW]; argmax [K, C, PH, PW] or null (inference).
// roi_pool_backward_{f32,f64}_{i16,i32}(grad, argmax, image, K, C, bins, HW, grad_input, threads)
//   grad and argmax [K, C, bins], image [K]; grad_input [N, C, HW], zeroed by the caller.
#define SEGDET_ROI_POOL(T, A, SUFFIX)                                                              \
  extern "C" int roi_pool_forward_##SUFFIX(const T* x, int64_t channels_last, int64_t N,          \
                                           int64_t H, int64_t W, int64_t C, const T* rois,         \
                                           T scale, int64_t K, int64_t PH, int64_t PW, T* out,     \
                                           A* argmax, int64_t threads) {                           \
    try {                                                                                          \
      pool_forward(x, channels_last, N, H, W, C, rois, scale, K, PH, PW, out, argmax, threads);    \
    } catch (const std::bad_alloc&) {                                                              \
      return 1;                                                                                    \
    }                                                                                              \
    return 0;                                                                                      \
  }                                                                                                \
  extern "C" int roi_pool_backward_##SUFFIX(const T* grad, const A* argmax, const int64_t* image,  \
                                            int64_t K, int64_t C, int64_t bins, int64_t HW,        \
                                            T* grad_input, int64_t threads) {                      \
    pool_backward(grad, argmax, image, K, C, bins, HW, grad_input, threads);                       \
    return 0;                                                                                      \
  }

SEGDET_ROI_POOL(float, int16_t, f32_i16)
SEGDET_ROI_POOL(float, int32_t, f32_i32)
SEGDET_ROI_POOL(double, int16_t, f64_i16)
SEGDET_ROI_POOL(double, int32_t, f64_i32)
