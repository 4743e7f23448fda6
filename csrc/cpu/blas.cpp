#include "blas.h"

#include <cblas.h>
#include <omp.h>

#include <chrono>
#include <cstddef>
#include <new>
#include <vector>

#include "block_pool.h"

namespace rnnkern::cpu {
namespace {

CBLAS_TRANSPOSE op(bool t) { return t ? CblasTrans : CblasNoTrans; }

void call(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  scipy_cblas_sgemm(CblasRowMajor, op(ta), op(tb), blasint(m), blasint(n), blasint(k), alpha, a,
                    blasint(lda), b, blasint(ldb), beta, c, blasint(ldc));
}

void call(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha, const double* a,
          int64_t lda, const double* b, int64_t ldb, double beta, double* c, int64_t ldc) {
  scipy_cblas_dgemm(CblasRowMajor, op(ta), op(tb), blasint(m), blasint(n), blasint(k), alpha, a,
                    blasint(lda), b, blasint(ldb), beta, c, blasint(ldc));
}

// The calling thread's buffer for the partial products of gemm_split_k. Throws
// std::bad_alloc when there is no memory for it: running the GEMM unsplit instead would give
// other results than the split one.
struct PartialProducts {
  void* data;
  explicit PartialProducts(std::size_t bytes)
      : data(scratch_acquire(ScratchSlot::kSplitK, bytes)) {
    if (!data) throw std::bad_alloc();
  }
  ~PartialProducts() { scratch_release(ScratchSlot::kSplitK); }
  PartialProducts(const PartialProducts&) = delete;
  PartialProducts& operator=(const PartialProducts&) = delete;
};

// Below this many multiply-adds a GEMM is one BLAS call (measured on a Zen 4 EPYC: from 2^21
// down to 2^19, the LSTM's backward of one step at B = 32, H = 256, whose per-gate products
// are 2^19 to 2^21, 470 -> 360 µs).
constexpr int64_t kParallelMinWork = int64_t(1) << 19;
constexpr int64_t kSplitAlign = 16;
// From kParallelMinWork on, a GEMM is always this many BLAS calls on fixed parts of it (of
// k, or of the rows or columns of C), whatever the thread count: OpenBLAS's result for an
// element of C depends on the shape of the call that computes it (its Haswell sgemm kernels
// give other sums for a row-split C), so the parts must not follow the threads. The threads
// share the parts; one thread runs them one after the other. Two: these machines have two
// cores.
constexpr int kParts = 2;

}  // namespace

// C = alpha · op(A) · op(B) + beta · C with k much larger than m and n (a weight gradient,
// summed over all rows): part j takes the slice [k·j/kParts, k·(j+1)/kParts) of k, so each
// thread reads only its share of A and B; C = (beta · C + part 0) + part 1 + …, added in
// that order.
template <typename T>
void gemm_split_k(int threads, bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha,
                  const T* a, int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  const int team = threads < kParts ? threads : kParts;
  // One buffer per part after the first; one thread reuses a single one.
  const int64_t buffers = team == 1 ? 1 : kParts - 1;
  const PartialProducts scratch(sizeof(T) * std::size_t(buffers * m * n));
  T* partial = static_cast<T*>(scratch.data);
  // Part j (> 0) into `out` (m × n, leading dimension n), or part 0 into C with beta.
  auto part = [&](int64_t j, T* out) {
    const int64_t begin = k * j / kParts, end = k * (j + 1) / kParts;
    T* dst = j == 0 ? c : out;
    const int64_t ldo = j == 0 ? ldc : n;
    const T* a_k = ta ? a + begin * lda : a + begin;
    const T* b_k = tb ? b + begin : b + begin * ldb;
    call(ta, tb, m, n, end - begin, alpha, a_k, lda, b_k, ldb, j == 0 ? beta : T(0), dst, ldo);
  };
  auto add = [&](const T* src, int64_t r0, int64_t r1) {  // rows [r0, r1) of C += src
    for (int64_t i = r0; i < r1; ++i) {
      const T* from = src + i * n;
      T* dst = c + i * ldc;
      for (int64_t q = 0; q < n; ++q) dst[q] += from[q];
    }
  };
  if (team == 1) {
    part(0, nullptr);
    for (int64_t j = 1; j < kParts; ++j) {
      part(j, partial);
      add(partial, 0, m);
    }
    return;
  }
#pragma omp parallel num_threads(team)
  {
    const int64_t nt = omp_get_num_threads(), id = omp_get_thread_num();
    for (int64_t j = id; j < kParts; j += nt) part(j, j ? partial + (j - 1) * m * n : nullptr);
#pragma omp barrier
    // Rows of C split over the team: every partial block added, in order.
    const int64_t r0 = m * id / nt, r1 = m * (id + 1) / nt;
    for (int64_t j = 1; j < kParts; ++j) add(partial + (j - 1) * m * n, r0, r1);
  }
}

// OpenBLAS runs single-threaded: its own pool would spin against the OpenMP threads of the
// recurrent loop (and of torch) on the same cores, and its results depend on its thread count.
// Large GEMMs are split into kParts fixed parts over OpenMP instead, by rows of C when it is
// tall and by columns when it is wide, or along k for a small C.
template <typename T>
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
          const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  static const bool single_threaded = (scipy_openblas_set_num_threads(1), true);
  (void)single_threaded;
  if (m == 0 || n == 0) return;
  if (k == 0) {  // C = beta · C; BLAS may leave C alone, so do it here
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == T(0) ? T(0) : beta * c[i * ldc + j];
    return;
  }
  if (m * n * k < kParallelMinWork) {
    call(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  const int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  // Split along k only for small outputs: from m, n = 512 on, adding the partial blocks cost
  // more than the halved reads saved (measured).
  if (m <= 256 && n <= 256 && k >= 8 * (m > n ? m : n)) {
    gemm_split_k(threads, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  const bool by_rows = m >= n;
  const int64_t extent = by_rows ? m : n;
  const int64_t chunk = (extent + kParts * kSplitAlign - 1) / (kParts * kSplitAlign) * kSplitAlign;
  auto part = [&](int64_t j) {
    const int64_t begin = j * chunk;
    const int64_t size = begin >= extent ? 0 : (extent - begin < chunk ? extent - begin : chunk);
    if (size == 0) return;
    if (by_rows)
      call(ta, tb, size, n, k, alpha, ta ? a + begin : a + begin * lda, lda, b, ldb, beta,
           c + begin * ldc, ldc);
    else
      call(ta, tb, m, size, k, alpha, a, lda, tb ? b + begin * ldb : b + begin, ldb, beta,
           c + begin, ldc);
  };
  if (threads < 2) {
    for (int64_t j = 0; j < kParts; ++j) part(j);
    return;
  }
#pragma omp parallel num_threads(threads < kParts ? threads : kParts)
  {
    const int64_t nt = omp_get_num_threads(), id = omp_get_thread_num();
    for (int64_t j = id; j < kParts; j += nt) part(j);
  }
}

template void gemm<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t,
                          const float*, int64_t, float, float*, int64_t);
template void gemm<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*,
                           int64_t, const double*, int64_t, double, double*, int64_t);

const char* blas_core() { return scipy_openblas_get_corename(); }
const char* blas_config() { return scipy_openblas_get_config(); }

template <typename T>
double gemm_gflops(int64_t n, int repeats) {
  std::vector<T> a(n * n, T(1) / T(3)), b(n * n, T(1) / T(7)), c(n * n, T(0));
  double best = 0;
  for (int r = 0; r <= repeats; ++r) {
    const auto start = std::chrono::steady_clock::now();
    gemm<T>(false, false, n, n, n, T(1), a.data(), n, b.data(), n, T(0), c.data(), n);
    const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
    const double rate = 2.0 * double(n) * double(n) * double(n) / took.count() / 1e9;
    if (r > 0 && rate > best) best = rate;
  }
  return best;
}
template double gemm_gflops<float>(int64_t, int);
template double gemm_gflops<double>(int64_t, int);

}  // namespace rnnkern::cpu
