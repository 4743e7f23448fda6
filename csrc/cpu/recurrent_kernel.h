// The recurrent kernels written once with GCC/Clang vector extensions. Each
// recurrent_<isa>.cpp defines RNNKERN_ISA (its namespace), RNNKERN_VECTOR_BYTES and, where the
// register file allows more than the default, the register tile (RNNKERN_TILE_*), then
// includes this file, and is compiled with that instruction set's flags. Everything here
// stays in that namespace and avoids inline library templates, so no code built for one
// instruction set can be picked by the linker for another.
#include <omp.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "block_pool.h"
#include "recurrent.h"

// Register tile: rows × panels accumulators plus a panel load each and a broadcast must fit
// in the vector registers (16 for AVX2 and SSE: 6 × 2).
#ifndef RNNKERN_TILE_ROWS
#define RNNKERN_TILE_ROWS 6
#endif
#ifndef RNNKERN_TILE_PANELS
#define RNNKERN_TILE_PANELS 2
#endif
#ifndef RNNKERN_KBLOCK
#define RNNKERN_KBLOCK 192
#endif

namespace rnnkern::cpu::RNNKERN_ISA {
namespace {

template <typename T>
struct Vec {
  typedef T type __attribute__((vector_size(RNNKERN_VECTOR_BYTES)));
  static constexpr int64_t lanes = RNNKERN_VECTOR_BYTES / sizeof(T);
};

template <typename T>
inline typename Vec<T>::type load(const T* p) {
  typename Vec<T>::type v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
inline void store(T* p, typename Vec<T>::type v) {
  __builtin_memcpy(p, &v, sizeof(v));
}

// One element of an array that may start at any address (the caller's h0, w_hh and y).
template <typename T>
inline T load1(const T* p) {
  T v;
  __builtin_memcpy(&v, p, sizeof(T));
  return v;
}

inline Vec<float>::type activate(Activation act, Vec<float>::type a) {
  return act == Activation::kTanh ? tanh_float(a) : relu(a);
}

inline Vec<double>::type activate(Activation act, Vec<double>::type a) {
  if (act == Activation::kRelu) return relu(a);
  for (int64_t i = 0; i < Vec<double>::lanes; ++i) a[i] = std::tanh(a[i]);
  return a;
}

template <typename V>
inline V backward(Activation act, V d, V h) {
  return act == Activation::kTanh ? tanh_backward(d, h) : relu_backward(d, h);
}

// Transposes the L × L block v[0..L) in registers: stage h swaps the off-diagonal h × h blocks
// of every 2h × 2h block, for h = L/2, …, 1.
template <typename T, int64_t h>
inline void transpose_block(typename Vec<T>::type* v) {
  typedef typename Vec<T>::type V;
  typedef std::conditional_t<sizeof(T) == 4, int32_t, int64_t> I;
  typedef I M __attribute__((vector_size(RNNKERN_VECTOR_BYTES)));
  constexpr int64_t L = Vec<T>::lanes;
  M lo, hi;
  for (int64_t l = 0; l < L; ++l) {
    lo[l] = (l & h) == 0 ? l : L + l - h;
    hi[l] = (l & h) == 0 ? l + h : L + l;
  }
  for (int64_t r = 0; r < L; ++r)
    if ((r & h) == 0) {
      const V a = v[r], b = v[r + h];
      v[r] = __builtin_shuffle(a, b, lo);
      v[r + h] = __builtin_shuffle(a, b, hi);
    }
  if constexpr (h > 1) transpose_block<T, h / 2>(v);
}

template <typename T>
void pack(const T* w, int64_t H, bool transpose, T* packed) {
  typedef typename Vec<T>::type V;
  constexpr int64_t L = Vec<T>::lanes;
  const int64_t panels = (H + L - 1) / L;
  for (int64_t p = 0; p < panels; ++p) {
    int64_t k = 0;
    if (transpose && (p + 1) * L <= H) {
      // packed (k, jj) = w[p·L + jj][k]: L × L blocks transposed in registers (reading w
      // column by column was 5x slower than a copy at H = 256).
      for (; k + L <= H; k += L) {
        V v[L];
        for (int64_t jj = 0; jj < L; ++jj) v[jj] = load(w + (p * L + jj) * H + k);
        transpose_block<T, L / 2>(v);
        for (int64_t kk = 0; kk < L; ++kk) store(packed + (p * H + k + kk) * L, v[kk]);
      }
    } else if ((p + 1) * L <= H) {
      for (; k < H; ++k) store(packed + (p * H + k) * L, load(w + k * H + p * L));
    }
    for (; k < H; ++k)
      for (int64_t jj = 0; jj < L; ++jj) {
        const int64_t j = p * L + jj;
        packed[(p * H + k) * L + jj] =
            j < H ? load1(transpose ? w + j * H + k : w + k * H + j) : T(0);
      }
  }
}

// The epilogue applied to sum = C (on entry) + A·B; what is stored in C.
template <typename T, Epilogue E>
inline typename Vec<T>::type finish(Activation act, typename Vec<T>::type sum,
                                    typename Vec<T>::type h) {
  if (E == Epilogue::kForward) return activate(act, sum);
  if (E == Epilogue::kBackward || E == Epilogue::kBackwardRecord)
    return backward(act, sum, h);
  return sum;
}

// A block of the k loop. Blocks after the first start from the partial sums left in C;
// only the last block applies the epilogue.
struct KBlock {
  int64_t begin, end;
  bool first, last;
};

// One register tile: MR rows × NP panels over one k block.
template <typename T, Epilogue E, int MR, int NP>
inline void tile(Activation act, int64_t H, int64_t p, KBlock kb, const T* a, int64_t lda,
                 const T* packed, T* c, const T* h, T* d) {
  constexpr bool kReadsH = E == Epilogue::kBackward || E == Epilogue::kBackwardRecord;
  typedef typename Vec<T>::type V;
  constexpr int64_t L = Vec<T>::lanes;
  const bool from_c = !(kb.first && E == Epilogue::kStore);
  V acc[MR][NP];
  for (int q = 0; q < NP; ++q) {
    const int64_t j = (p + q) * L;
    const int64_t valid = H - j < L ? H - j : L;
    for (int r = 0; r < MR; ++r) {
      acc[r][q] = V{};
      if (!from_c) continue;
      if (valid == L) {
        acc[r][q] = load(c + r * H + j);
      } else {
        for (int64_t i = 0; i < valid; ++i) acc[r][q][i] = c[r * H + j + i];
      }
    }
  }
  const T* b = packed + p * H * L;
  // Every element of C is summed over k in the same order whatever the tile (its height
  // depends on how many rows a call has, which depends on the thread count): one chain of
  // multiply-adds per accumulator, k ascending.
  int64_t k = kb.begin;
  for (; k < kb.end; ++k) {
    V bv[NP];
    for (int q = 0; q < NP; ++q) bv[q] = load(b + (q * H + k) * L);
    for (int r = 0; r < MR; ++r) {
      const T ar = load1(a + r * lda + k);
      for (int q = 0; q < NP; ++q) acc[r][q] += ar * bv[q];
    }
  }
  for (int q = 0; q < NP; ++q) {
    const int64_t j = (p + q) * L;
    const int64_t valid = H - j < L ? H - j : L;
    for (int r = 0; r < MR; ++r) {
      T* cr = c + r * H + j;
      V out = acc[r][q];
      if (kb.last) {
        V hv{};
        // Backward: row r's Hs. Forward: the bias, the same row for every row (if any).
        const T* hs = kReadsH ? h + r * H + j : (E == Epilogue::kForward && h ? h + j : nullptr);
        if (hs) {
          if (valid == L) {
            hv = load(hs);
          } else {
            for (int64_t i = 0; i < valid; ++i) hv[i] = load1(hs + i);
          }
        }
        if (E == Epilogue::kForward) out += hv;
        if (E == Epilogue::kBackwardRecord) {
          T sum = 0;
          for (int64_t i = 0; i < valid; ++i) sum += out[i] * out[i];
          d[r * norm_slots<T>(H) + p + q] = sum;
        }
        out = finish<T, E>(act, out, hv);
      }
      if (valid == L) {
        store(cr, out);
      } else {
        for (int64_t i = 0; i < valid; ++i) cr[i] = out[i];
      }
    }
  }
}

constexpr int kRowsPerTile = RNNKERN_TILE_ROWS;
constexpr int kPanelsPerTile = RNNKERN_TILE_PANELS;
// k block length: the panels' share of a block, kBlock · kPanelsPerTile vectors, stays in L1
// while every row tile reads it.
constexpr int64_t kBlock = RNNKERN_KBLOCK;

// A tile of any height up to MR and any width up to NP panels.
template <typename T, Epilogue E, int MR, int NP>
inline void any_tile(int rows, int panels, Activation act, int64_t H, int64_t p, KBlock kb,
                     const T* a, int64_t lda, const T* packed, T* c, const T* h, T* d) {
  if constexpr (NP > 1) {
    if (panels < NP)
      return any_tile<T, E, MR, NP - 1>(rows, panels, act, H, p, kb, a, lda, packed, c, h, d);
  }
  if constexpr (MR > 1) {
    if (rows < MR)
      return any_tile<T, E, MR - 1, NP>(rows, panels, act, H, p, kb, a, lda, packed, c, h, d);
  }
  tile<T, E, MR, NP>(act, H, p, kb, a, lda, packed, c, h, d);
}

// Panels [p_begin, p_end) for every row: panels outermost, then k blocks, then row tiles of
// up to MR rows and NP panels, so a block of the panels stays in cache while all rows use it.
template <typename T, Epilogue E, int MR, int NP>
void tiled_panels(Activation act, int64_t rows, int64_t H, int64_t p_begin, int64_t p_end,
                  const T* a, int64_t lda, const T* packed, T* c, const T* h, T* d) {
  // ceil(rows / MR) tiles of nearly equal height: a short tile has too few accumulators to
  // keep the FMA units busy (or, narrow, too few per load).
  const int64_t tiles = (rows + MR - 1) / MR;
  // Likewise ceil(panels / NP) groups of nearly equal width (4 panels: 2 + 2, not 3 + 1).
  const int64_t n_panels = p_end - p_begin, groups = (n_panels + NP - 1) / NP;
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t p = p_begin + n_panels * g / groups;
    const int width = int(p_begin + n_panels * (g + 1) / groups - p);
    for (int64_t k0 = 0; k0 < H; k0 += kBlock) {
      const int64_t k1 = H - k0 > kBlock ? k0 + kBlock : H;
      const KBlock kb{k0, k1, k0 == 0, k1 == H};
      for (int64_t i = 0; i < tiles; ++i) {
        const int64_t r = rows * i / tiles, height = rows * (i + 1) / tiles - r;
        const T* hr = h && E != Epilogue::kForward ? h + r * H : h;
        T* dr = d ? d + r * norm_slots<T>(H) : nullptr;
        if (height == MR && width == NP)
          tile<T, E, MR, NP>(act, H, p, kb, a + r * lda, lda, packed, c + r * H, hr, dr);
        else
          any_tile<T, E, MR, NP>(int(height), width, act, H, p, kb, a + r * lda, lda, packed,
                                 c + r * H, hr, dr);
      }
    }
  }
}

// One or two rows (a batch of one or two, the last rows of a packed sequence, or a thread's
// share of them) have too few rows per tile to hide the FMA latency: wider tiles give them
// more independent accumulators instead (no split of the k sum, which would change it).
#ifndef RNNKERN_WIDE_PANELS_1
#define RNNKERN_WIDE_PANELS_1 6
#endif
#ifndef RNNKERN_WIDE_PANELS_2
#define RNNKERN_WIDE_PANELS_2 4
#endif

template <typename T, Epilogue E>
void panels(Activation act, int64_t rows, int64_t H, int64_t p_begin, int64_t p_end,
            const T* a, int64_t lda, const T* packed, T* c, const T* h, T* d) {
  if (rows == 1)
    tiled_panels<T, E, 1, RNNKERN_WIDE_PANELS_1>(act, rows, H, p_begin, p_end, a, lda, packed,
                                                 c, h, d);
  else if (rows == 2)
    tiled_panels<T, E, 2, RNNKERN_WIDE_PANELS_2>(act, rows, H, p_begin, p_end, a, lda, packed,
                                                 c, h, d);
  else
    tiled_panels<T, E, kRowsPerTile, kPanelsPerTile>(act, rows, H, p_begin, p_end, a, lda,
                                                      packed, c, h, d);
}

// Below this many multiply-adds per step, a second thread costs more than it saves. Inside a
// parallel region (the time loop split by rows) a step always runs on its own thread.
constexpr int64_t kParallelMinWork = int64_t(1) << 19;

// Rows of A whose stride is a multiple of 1 KiB fall into a few L1 sets (at H = 512 floats,
// 64 rows share 2 of them) and evict the packed panels: those steps read a copy of A whose
// rows are one cache line further apart (measured: 101 -> 137 GFLOP/s on one core).
constexpr int64_t kConflictStrideBytes = 1024;

template <typename T>
int64_t a_stride(int64_t H) {
  return H * int64_t(sizeof(T)) % kConflictStrideBytes == 0 ? H + 64 / int64_t(sizeof(T)) : H;
}

// The calling thread's buffer for a padded copy of A (bytes > 0), or none (data == nullptr)
// when not wanted or there is no memory for it: the step then reads A where it is.
struct RowCopy {
  void* data;
  explicit RowCopy(std::size_t bytes)
      : data(bytes ? scratch_acquire(ScratchSlot::kRowCopy, bytes) : nullptr) {}
  ~RowCopy() {
    if (data) scratch_release(ScratchSlot::kRowCopy);
  }
  RowCopy(const RowCopy&) = delete;
  RowCopy& operator=(const RowCopy&) = delete;
};

template <typename T>
void copy_rows(const T* a, int64_t H, int64_t begin, int64_t end, T* to, int64_t lda) {
  for (int64_t r = begin; r < end; ++r) __builtin_memcpy(to + r * lda, a + r * H, sizeof(T) * H);
}

template <typename T, Epilogue E>
void step_epilogue(Activation act, int64_t rows, int64_t H, const T* a, const T* packed, T* c,
                   const T* h, T* d) {
  constexpr int64_t L = Vec<T>::lanes;
  const int64_t n_panels = (H + L - 1) / L;
  const int64_t n_groups = (n_panels + kPanelsPerTile - 1) / kPanelsPerTile;
  const int threads = omp_get_max_threads();
  const int64_t padded = a_stride<T>(H);
  const RowCopy copy(padded == H ? 0 : sizeof(T) * std::size_t(rows * padded));
  T* a_copy = padded == H ? nullptr : static_cast<T*>(copy.data);
  const int64_t lda = a_copy ? padded : H;
  const T* a_used = a_copy ? a_copy : a;
  if (threads < 2 || n_groups < 2 || rows * H * H < kParallelMinWork || omp_in_parallel()) {
    if (a_copy) copy_rows(a, H, 0, rows, a_copy, lda);
    panels<T, E>(act, rows, H, 0, n_panels, a_used, lda, packed, c, h, d);
    return;
  }
#pragma omp parallel num_threads(threads)
  {
    const int64_t nt = omp_get_num_threads(), id = omp_get_thread_num();
    if (a_copy) {
      copy_rows(a, H, rows * id / nt, rows * (id + 1) / nt, a_copy, lda);
#pragma omp barrier
    }
    const int64_t begin = n_groups * id / nt * kPanelsPerTile;
    int64_t end = n_groups * (id + 1) / nt * kPanelsPerTile;
    if (end > n_panels) end = n_panels;
    if (begin < end) panels<T, E>(act, rows, H, begin, end, a_used, lda, packed, c, h, d);
  }
}

template <typename T>
void step(Epilogue e, Activation act, int64_t rows, int64_t H, const T* a, const T* packed,
          T* c, const T* h, T* d) {
  if (rows <= 0) return;
  switch (e) {
    case Epilogue::kForward:
      step_epilogue<T, Epilogue::kForward>(act, rows, H, a, packed, c, h, d);
      break;
    case Epilogue::kBackward:
      step_epilogue<T, Epilogue::kBackward>(act, rows, H, a, packed, c, h, d);
      break;
    case Epilogue::kStore:
      step_epilogue<T, Epilogue::kStore>(act, rows, H, a, packed, c, h, d);
      break;
    case Epilogue::kBackwardRecord:
      step_epilogue<T, Epilogue::kBackwardRecord>(act, rows, H, a, packed, c, h, d);
      break;
    case Epilogue::kAccumulate:
      step_epilogue<T, Epilogue::kAccumulate>(act, rows, H, a, packed, c, h, d);
      break;
  }
}

// The dot-product form, for a row or two of A against W's rows as they are (no packing):
// out(r, j) = Σ_i A(r, i) · W(j, i). Each sum is L lane-wise partial sums folded in a fixed
// tree, then the scalar tail of i: the order depends only on the shapes.

// Folds vectors v[0..N) (N a power of two, N ≤ lanes) into sums[n] = Σ lanes of v[n]: each
// level merges pairs, halving the lanes each vector's partial sums occupy. The shuffle masks
// are compile-time constants (masks computed at run time cost integer divisions per call).
template <typename M, typename I, int64_t L, int64_t width, bool high, std::size_t... l>
constexpr M fold_mask(std::index_sequence<l...>) {
  constexpr int64_t groups = L / width, half = width / 2;
  return M{I((int64_t(l) / half < groups ? 0 : L) + (int64_t(l) / half % groups) * width +
             int64_t(l) % half + (high ? half : 0))...};
}

template <typename T, int N, int count, int64_t width>
inline void fold_level(typename Vec<T>::type* v, T* sums) {
  constexpr int64_t L = Vec<T>::lanes;
  if constexpr (count > 1) {
    typedef std::conditional_t<sizeof(T) == 4, int32_t, int64_t> I;
    typedef I M __attribute__((vector_size(RNNKERN_VECTOR_BYTES)));
    constexpr M lo = fold_mask<M, I, L, width, false>(std::make_index_sequence<L>{});
    constexpr M hi = fold_mask<M, I, L, width, true>(std::make_index_sequence<L>{});
    for (int i = 0; i < count / 2; ++i)
      v[i] = __builtin_shuffle(v[2 * i], v[2 * i + 1], lo) +
             __builtin_shuffle(v[2 * i], v[2 * i + 1], hi);
    fold_level<T, N, count / 2, width / 2>(v, sums);
  } else {
    for (int n = 0; n < N; ++n) {
      T s = 0;
      for (int64_t l = 0; l < width; ++l) s += v[0][n * width + l];
      sums[n] = s;
    }
  }
}

template <typename T, int N>
inline void fold(typename Vec<T>::type* v, T* sums) {
  fold_level<T, N, N, Vec<T>::lanes>(v, sums);
}

// sums[r · J + q] = Σ_i A(r, i) · W(q, i) for R rows of A and J rows of W.
template <typename T, int R, int J>
inline void dot_tile(int64_t K, const T* a, int64_t lda, const T* w, int64_t ldw, T* sums) {
  typedef typename Vec<T>::type V;
  constexpr int64_t L = Vec<T>::lanes;
  // unrolled, so that the sums stay in registers (and are zeroed there)
  V acc[R][J];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int q = 0; q < J; ++q) acc[r][q] = V{};
  int64_t i = 0;
  for (; i + L <= K; i += L) {
    V av[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) av[r] = load(a + r * lda + i);
#pragma GCC unroll 8
    for (int q = 0; q < J; ++q) {
      const V wv = load(w + q * ldw + i);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) acc[r][q] += av[r] * wv;
    }
  }
  for (int r = 0; r < R; ++r) fold<T, J>(acc[r], sums + r * J);
  for (; i < K; ++i)
    for (int r = 0; r < R; ++r)
      for (int q = 0; q < J; ++q) sums[r * J + q] += load1(a + r * lda + i) * load1(w + q * ldw + i);
}

// C(r, j) = [C(r, j) +] Σ_i A(r, i) · W(j, i) for r < rows, j < n: rows taken one or two at
// a time, W's rows eight (one row of A) or four (two) at a time, then one by one.
template <typename T, int R, int J>
void dot_rows_of(int64_t n, int64_t K, const T* a, int64_t lda, const T* w, int64_t ldw,
                 bool accumulate, T* c, int64_t ldc) {
  T sums[R * J];
  int64_t j = 0;
  auto put = [&](int64_t j0, int width, const T* s) {
    for (int r = 0; r < R; ++r)
      for (int q = 0; q < width; ++q) {
        T& out = c[r * ldc + j0 + q];
        out = accumulate ? out + s[r * width + q] : s[r * width + q];
      }
  };
  for (; j + J <= n; j += J) {
    dot_tile<T, R, J>(K, a, lda, w + j * ldw, ldw, sums);
    put(j, J, sums);
  }
  for (; j < n; ++j) {
    dot_tile<T, R, 1>(K, a, lda, w + j * ldw, ldw, sums);
    put(j, 1, sums);
  }
}

// W's rows in blocks of this many bytes (a multiple of 8 rows) are taken against every row of
// A in turn, so that W is read from memory once, not once per pair of rows.
constexpr int64_t kDotBlockBytes = int64_t(16) << 10;

template <typename T>
void dot_serial(int64_t rows, int64_t n, int64_t K, const T* a, int64_t lda, const T* w,
                int64_t ldw, bool accumulate, T* c, int64_t ldc) {
  constexpr int L = int(Vec<T>::lanes);  // fold() takes at most L vectors
  int64_t block = n;
  if (rows > 2) {
    block = kDotBlockBytes / (K * int64_t(sizeof(T))) / 8 * 8;
    if (block < 8) block = 8;
  }
  // Blocks end at multiples of 8, so each sum is the same as without blocks.
  for (int64_t j = 0; j < n; j += block) {
    const int64_t width = n - j < block ? n - j : block;
    int64_t r = 0;
    for (; r + 2 <= rows; r += 2)
      dot_rows_of<T, 2, (L < 4 ? L : 4)>(width, K, a + r * lda, lda, w + j * ldw, ldw,
                                         accumulate, c + r * ldc + j, ldc);
    if (r < rows)
      dot_rows_of<T, 1, (L < 8 ? L : 8)>(width, K, a + r * lda, lda, w + j * ldw, ldw,
                                         accumulate, c + r * ldc + j, ldc);
  }
}

// W of at least this many bytes is read by two threads, each its half of W's rows (a row or
// two of A stream W from memory: two cores stream it twice as fast). The halves split at a
// multiple of eight rows, so each sum is the same as on one thread.
constexpr int64_t kDotSplitBytes = int64_t(1) << 19;

// f(first, count) over [0, n): at once, or, where `split`, in two parts on two threads, the first
// ending at a multiple of `align`.
template <typename F>
void in_two_parts(bool split, int64_t n, int64_t align, F&& f) {
  if (split && omp_get_max_threads() > 1 && !omp_in_parallel()) {
    const int64_t half = (n / 2 + align - 1) / align * align;
#pragma omp parallel num_threads(2)
    {
      if (omp_get_num_threads() == 1)
        f(int64_t(0), n);
      else if (omp_get_thread_num() == 0)
        f(int64_t(0), half);
      else
        f(half, n - half);
    }
    return;
  }
  f(int64_t(0), n);
}

// f(first, count) for the columns of a result of n columns: all of them, or, where W (n × K
// of T) is kDotSplitBytes or more, split over two threads at a multiple of 8 (each column's
// sum is the same on either thread).
template <typename T, typename F>
void split_columns(int64_t n, int64_t K, F&& f) {
  in_two_parts(n >= 64 && n * K * int64_t(sizeof(T)) >= kDotSplitBytes, n, 8, f);
}

// The same product for several rows of A, as Cᵀ = W · Aᵀ: Aᵀ is packed into panels of L rows
// of A (rows × K values, cheap beside W), and each element of W, read once from memory, is
// broadcast against a panel; each sum is one chain of multiply-adds, k ascending. A tile is
// kPanelRowsOfW rows of W against up to kPanelsAtOnce panels.
#ifndef RNNKERN_PANEL_ROWS_OF_W
#define RNNKERN_PANEL_ROWS_OF_W 6
#endif
#ifndef RNNKERN_PANELS_AT_ONCE
#define RNNKERN_PANELS_AT_ONCE 2
#endif
constexpr int kPanelRowsOfW = RNNKERN_PANEL_ROWS_OF_W;
constexpr int kPanelsAtOnce = RNNKERN_PANELS_AT_ONCE;
// From this many rows of A on, with vectors of 32 bytes or more (AVX2, AVX-512), dot() takes
// panels.
constexpr int64_t kPanelMinRows = 8;

// pa(p, k, l) = A(p · L + l, k), zero past the last row.
template <typename T>
void pack_rows(int64_t rows, int64_t K, const T* a, int64_t lda, T* pa) {
  constexpr int64_t L = Vec<T>::lanes;
  const int64_t panels = (rows + L - 1) / L;
  for (int64_t p = 0; p < panels; ++p)
    for (int64_t k = 0; k < K; ++k)
      for (int64_t l = 0; l < L; ++l)
        pa[(p * K + k) * L + l] = p * L + l < rows ? load1(a + (p * L + l) * lda + k) : T(0);
}

// C(p · L + l, j + q) [+]= Σ_k pa(p, k, l) · W(j + q, k) for JR rows q of W and NP panels p
// (of `rows` valid rows in all, counted from the tile's first panel).
template <typename T, int JR, int NP>
inline void panel_tile(int64_t rows, int64_t K, const T* pa, const T* w, int64_t ldw,
                       bool accumulate, T* c, int64_t ldc) {
  typedef typename Vec<T>::type V;
  constexpr int64_t L = Vec<T>::lanes;
  V acc[JR][NP];
#pragma GCC unroll 16
  for (int q = 0; q < JR; ++q)
#pragma GCC unroll 4
    for (int p = 0; p < NP; ++p) acc[q][p] = V{};
  for (int64_t k = 0; k < K; ++k) {
    V av[NP];
#pragma GCC unroll 4
    for (int p = 0; p < NP; ++p) av[p] = load(pa + (p * K + k) * L);
#pragma GCC unroll 16
    for (int q = 0; q < JR; ++q) {
      const T wv = load1(w + q * ldw + k);
#pragma GCC unroll 4
      for (int p = 0; p < NP; ++p) acc[q][p] += wv * av[p];
    }
  }
  for (int p = 0; p < NP; ++p) {
    T sums[JR][L];
    for (int q = 0; q < JR; ++q) store(sums[q], acc[q][p]);
    const int64_t valid = rows - p * L < L ? rows - p * L : L;
    for (int64_t l = 0; l < valid; ++l) {
      T* cr = c + (p * L + l) * ldc;
      for (int q = 0; q < JR; ++q) cr[q] = accumulate ? cr[q] + sums[q][l] : sums[q][l];
    }
  }
}

// A tile of JR rows of W or fewer (W's last rows).
template <typename T, int JR, int NP>
inline void any_panel_tile(int width, int64_t rows, int64_t K, const T* pa, const T* w,
                           int64_t ldw, bool accumulate, T* c, int64_t ldc) {
  if constexpr (JR > 1) {
    if (width < JR)
      return any_panel_tile<T, JR - 1, NP>(width, rows, K, pa, w, ldw, accumulate, c, ldc);
  }
  panel_tile<T, JR, NP>(rows, K, pa, w, ldw, accumulate, c, ldc);
}

// Columns [first, first + count) of C from the packed panels pa of all `rows` rows.
template <typename T>
void panels_serial(int64_t rows, int64_t first, int64_t count, int64_t K, const T* pa,
                   const T* w, int64_t ldw, bool accumulate, T* c, int64_t ldc) {
  constexpr int64_t L = Vec<T>::lanes;
  const int64_t panels = (rows + L - 1) / L;
  for (int64_t p = 0; p < panels; p += kPanelsAtOnce) {
    const int64_t left = rows - p * L;
    const T* pp = pa + p * K * L;
    T* cp = c + p * L * ldc;
    for (int64_t j = first; j < first + count; j += kPanelRowsOfW) {
      const int width = int(first + count - j < kPanelRowsOfW ? first + count - j
                                                                : kPanelRowsOfW);
      if (panels - p >= kPanelsAtOnce)
        any_panel_tile<T, kPanelRowsOfW, kPanelsAtOnce>(width, left, K, pp, w + j * ldw, ldw,
                                                        accumulate, cp + j, ldc);
      else
        any_panel_tile<T, kPanelRowsOfW, 1>(width, left, K, pp, w + j * ldw, ldw, accumulate,
                                            cp + j, ldc);
    }
  }
}

template <typename T>
void dot(int64_t rows, int64_t n, int64_t K, const T* a, int64_t lda, const T* w, int64_t ldw,
         bool accumulate, T* c, int64_t ldc) {
  const bool split = n >= 64 && (n * K * int64_t(sizeof(T)) >= kDotSplitBytes ||
                                 rows * n * K >= kParallelMinWork);
  constexpr int64_t L = Vec<T>::lanes;
  if (rows >= kPanelMinRows && L * sizeof(T) >= 32 && K > 0) {
    const std::size_t bytes = sizeof(T) * std::size_t((rows + L - 1) / L * L * K);
    T* pa = static_cast<T*>(scratch_acquire(ScratchSlot::kPackedRows, bytes));
    if (pa) {  // else (no memory for it) the dot products below
      pack_rows(rows, K, a, lda, pa);
      in_two_parts(split, n, kPanelRowsOfW, [&](int64_t first, int64_t count) {
        panels_serial(rows, first, count, K, pa, w, ldw, accumulate, c, ldc);
      });
      scratch_release(ScratchSlot::kPackedRows);
      return;
    }
  }
  in_two_parts(split, n, 8, [&](int64_t first, int64_t count) {
    dot_serial(rows, count, K, a, lda, w + first * ldw, ldw, accumulate, c + first, ldc);
  });
}

// C (rows × n) = [C +] op(A) (rows × K) · W, W (K × n) as it is: W's rows streamed once per row
// of C, each added to C's row times its A entry, in the order of K (so the same sums on one
// thread or two). op(A) = A (rows × K, lda), or with transpose_a Aᵀ, A (K × rows, lda): an outer
// product's sum for a small K. Split over two threads by split_columns.
template <typename T>
void times_serial(int64_t rows, int64_t n, int64_t K, const T* a, int64_t lda, bool transpose_a,
                  const T* w, int64_t ldw, bool accumulate, T* c, int64_t ldc) {
  const int64_t a_row = transpose_a ? 1 : lda, a_col = transpose_a ? lda : 1;
  typedef typename Vec<T>::type V;
  constexpr int64_t L = Vec<T>::lanes;
  for (int64_t r = 0; r < rows; ++r) {
    T* cr = c + r * ldc;
    for (int64_t i = 0; i < K; ++i) {
      const T s = load1(a + r * a_row + i * a_col);
      const T* wi = w + i * ldw;
      const V sv = V{} + s;
      int64_t j = 0;
      if (i == 0 && !accumulate) {  // the first term stored, not added to zeros (one pass)
        for (; j + L <= n; j += L) store(cr + j, sv * load(wi + j));
        for (; j < n; ++j) cr[j] = s * load1(wi + j);
        continue;
      }
      for (; j + L <= n; j += L) store(cr + j, load(cr + j) + sv * load(wi + j));
      for (; j < n; ++j) cr[j] += s * load1(wi + j);
    }
    if (K == 0 && !accumulate)
      for (int64_t j = 0; j < n; ++j) cr[j] = T(0);
  }
}

// An outer products' sum (transpose_a) writing a C of at least this many bytes splits C's rows
// over two threads (each element's sum is the same on either thread).
constexpr int64_t kOuterSplitBytes = int64_t(1) << 16;

template <typename T>
void times(int64_t rows, int64_t n, int64_t K, const T* a, int64_t lda, bool transpose_a,
           const T* w, int64_t ldw, bool accumulate, T* c, int64_t ldc) {
  if (transpose_a) {
    in_two_parts(rows >= 16 && rows * n * int64_t(sizeof(T)) >= kOuterSplitBytes, rows, 1,
                 [&](int64_t first, int64_t count) {
                   times_serial(count, n, K, a + first, lda, true, w, ldw, accumulate,
                                c + first * ldc, ldc);
                 });
    return;
  }
  split_columns<T>(n, K, [&](int64_t first, int64_t count) {
    times_serial(rows, count, K, a, lda, false, w + first, ldw, accumulate, c + first, ldc);
  });
}

// C = φ(C + b) for rows × H of C (b: one bias row, or nullptr): the forward epilogue kForward
// after a product computed elsewhere, the same vector code as the packed step's.
template <typename T>
void bias_activate(Activation act, int64_t rows, int64_t H, T* c, const T* h) {
  typedef typename Vec<T>::type V;
  constexpr int64_t L = Vec<T>::lanes;
  for (int64_t r = 0; r < rows; ++r) {
    T* cr = c + r * H;
    for (int64_t j = 0; j < H; j += L) {
      const int64_t valid = H - j < L ? H - j : L;
      V v{}, b{};
      for (int64_t i = 0; i < valid; ++i) {
        v[i] = cr[j + i];
        if (h) b[i] = load1(h + j + i);
      }
      v = finish<T, Epilogue::kForward>(act, v + b, b);
      for (int64_t i = 0; i < valid; ++i) cr[j + i] = v[i];
    }
  }
}

// step() for W_hh's rows as they are (the forward's Bm = W_hhᵀ unpacked): the forward
// epilogues only (kForward, kStore, kAccumulate), the same vector code as the packed step.
template <typename T>
void step_rows(Epilogue e, Activation act, int64_t rows, int64_t H, const T* a, const T* w,
               T* c, const T* h, T*) {
  if (rows <= 0) return;
  dot(rows, H, H, a, H, w, H, e != Epilogue::kStore, c, H);
  if (e == Epilogue::kForward) bias_activate(act, rows, H, c, h);
}

// The FMA peak's loop: kFmaChains (12) independent chains c = c · m + a, each one vector, in
// named registers (an array of them would live in memory).
#ifdef __AVX512F__
#define RNNKERN_REG "+v"
#else
#define RNNKERN_REG "+x"
#endif
template <typename T>
T fma_loop(int64_t iterations, T seed) {
  static_assert(kFmaChains == 12, "fma_loop's chains are written out");
  typedef typename Vec<T>::type V;
  constexpr int64_t L = Vec<T>::lanes;
  V m, a, c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11;
  for (int64_t l = 0; l < L; ++l) m[l] = T(0.999999), a[l] = seed * T(1e-7);
  c0 = c1 = c2 = c3 = c4 = c5 = c6 = c7 = c8 = c9 = c10 = c11 = a + seed;
  for (int64_t i = 0; i < iterations; ++i) {
    c0 = c0 * m + a, c1 = c1 * m + a, c2 = c2 * m + a, c3 = c3 * m + a;
    c4 = c4 * m + a, c5 = c5 * m + a, c6 = c6 * m + a, c7 = c7 * m + a;
    c8 = c8 * m + a, c9 = c9 * m + a, c10 = c10 * m + a, c11 = c11 * m + a;
    // keeps the compiler from folding the loop
    __asm__ volatile("" : RNNKERN_REG(c0), RNNKERN_REG(c1), RNNKERN_REG(c2), RNNKERN_REG(c3),
                     RNNKERN_REG(c4), RNNKERN_REG(c5), RNNKERN_REG(c6), RNNKERN_REG(c7),
                     RNNKERN_REG(c8), RNNKERN_REG(c9), RNNKERN_REG(c10), RNNKERN_REG(c11));
  }
  const V s = ((c0 + c1) + (c2 + c3)) + ((c4 + c5) + (c6 + c7)) + ((c8 + c9) + (c10 + c11));
  T total = 0;
  for (int64_t l = 0; l < L; ++l) total += s[l];
  return total;
}
#undef RNNKERN_REG

template <typename T>
void scale_by_derivative(Activation act, int64_t rows, int64_t H, T* c, const T* h) {
  constexpr int64_t L = Vec<T>::lanes;
  const int64_t n = rows * H;
  int64_t i = 0;
  for (; i + L <= n; i += L) store(c + i, backward(act, load(c + i), load(h + i)));
  for (; i < n; ++i) c[i] = activation_backward(act, c[i], load1(h + i));
}

template <typename T>
void row_square_sums(int64_t rows, int64_t H, const T* d, T* slots) {
  typedef typename Vec<T>::type V;
  constexpr int64_t L = Vec<T>::lanes;
  const int64_t used = (H + L - 1) / L, stride = norm_slots<T>(H);
  for (int64_t r = 0; r < rows; ++r) {
    const T* row = d + r * H;
    V acc{};
    int64_t j = 0;
    for (; j + L <= H; j += L) {
      const V v = load(row + j);
      acc += v * v;
    }
    T sum = 0;
    for (int64_t i = 0; i < L; ++i) sum += acc[i];
    for (; j < H; ++j) sum += row[j] * row[j];
    slots[r * stride] = sum;
    for (int64_t s = 1; s < used; ++s) slots[r * stride + s] = 0;
  }
}

template <typename T>
void row_norms(int64_t rows, int64_t H, const T* slots, double* out) {
  const int64_t used = (H + Vec<T>::lanes - 1) / Vec<T>::lanes, stride = norm_slots<T>(H);
  for (int64_t r = 0; r < rows; ++r) {
    double sum = 0;
    for (int64_t s = 0; s < used; ++s) sum += double(slots[r * stride + s]);
    out[r] = std::sqrt(sum);
  }
}

template <typename T>
void accumulate(int64_t n, const T* src, T* dst) {
  constexpr int64_t L = Vec<T>::lanes;
  int64_t i = 0;
  for (; i + L <= n; i += L) store(dst + i, load(dst + i) + load(src + i));
  for (; i < n; ++i) dst[i] += src[i];
}

// What the cells' passes (core/cells/) are written against: this instruction set's vectors.
struct Isa {
  // sigmoid and tanh of vectors of float or double lanes, and of scalars (ScalarMath's).
  struct Math {
    Vec<float>::type tanh(Vec<float>::type a) const { return tanh_float(a); }
    Vec<float>::type sigmoid(Vec<float>::type a) const { return sigmoid_float(a); }
    Vec<double>::type tanh(Vec<double>::type a) const {
      for (int64_t i = 0; i < Vec<double>::lanes; ++i) a[i] = std::tanh(a[i]);
      return a;
    }
    Vec<double>::type sigmoid(Vec<double>::type a) const {
      for (int64_t i = 0; i < Vec<double>::lanes; ++i) a[i] = 1.0 / (1.0 + std::exp(-a[i]));
      return a;
    }
    float tanh(float a) const { return ScalarMath().tanh(a); }
    double tanh(double a) const { return ScalarMath().tanh(a); }
    float sigmoid(float a) const { return ScalarMath().sigmoid(a); }
    double sigmoid(double a) const { return ScalarMath().sigmoid(a); }
  };

  // φ(a) and d ⊙ φ'(a) (from h = φ(a)) of a vector or a scalar.
  template <typename V>
  static V activation(Activation act, V a) {
    if constexpr (std::is_arithmetic_v<V>)
      return rnnkern::activation(act, a);
    else
      return activate(act, a);
  }
  template <typename V>
  static V activation_backward(Activation act, V d, V h) {
    return act == Activation::kTanh ? tanh_backward(d, h) : relu_backward(d, h);
  }

  // f(j, tag) for every column j of a row: vector steps (tag true), then a scalar tail (false).
  template <typename T, typename F>
  static void columns(int64_t H, F&& f) {
    constexpr int64_t L = Vec<T>::lanes;
    int64_t j = 0;
    for (; j + L <= H; j += L) f(j, std::integral_constant<bool, true>{});
    for (; j < H; ++j) f(j, std::integral_constant<bool, false>{});
  }

  // Vector or scalar load / store by the tag that columns() passes.
  template <typename T, bool kVector>
  static auto get(const T* p) {
    if constexpr (kVector) return load(p); else return load1(p);
  }
  template <typename T, typename V>
  static void put(T* p, V v) {
    __builtin_memcpy(p, &v, sizeof(v));
  }

  // The sum of a vector's lanes, or the scalar.
  template <typename T, typename V>
  static T lane_sum(V v) {
    if constexpr (std::is_arithmetic_v<V>) {
      return v;
    } else {
      T s = 0;
      for (int64_t i = 0; i < Vec<T>::lanes; ++i) s += v[i];
      return s;
    }
  }
};

// Cell C's passes as this instruction set builds them.
template <typename T, typename C>
void set_passes(RecurrentKernels<T>& k) {
  if constexpr (!std::is_empty_v<PassesOf<T, C>>) {
    k.passes.template of<C>().forward = &C::template forward_pass<T, Isa>;
    k.passes.template of<C>().backward = &C::template backward_pass<T, Isa>;
  }
}

template <typename T>
RecurrentKernels<T> make(const char* name) {
  RecurrentKernels<T> k{name,          RNNKERN_VECTOR_BYTES,    &pack<T>,
                        &step<T>,      &step_rows<T>,           &dot<T>,
                        &times<T>,
                        &bias_activate<T>,
                        &scale_by_derivative<T>,                &row_square_sums<T>,
                        &row_norms<T>, &accumulate<T>,          &fma_loop<T>,
                        {}};
  for_each_cell([&](auto cell) { set_passes<T, decltype(cell)>(k); });
  return k;
}

}  // namespace

RecurrentKernels<float> kernels_float() { return make<float>(RNNKERN_ISA_NAME); }
RecurrentKernels<double> kernels_double() { return make<double>(RNNKERN_ISA_NAME); }

}  // namespace rnnkern::cpu::RNNKERN_ISA
