#include "blas.h"

#include <cblas.h>
#include <omp.h>

#include <cstddef>

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

// The calling thread's buffer for the partial products of gemm_split_k, or none (data ==
// nullptr) when there is no memory for it.
struct PartialProducts {
  void* data;
  explicit PartialProducts(std::size_t bytes)
      : data(scratch_acquire(ScratchSlot::kSplitK, bytes)) {}
  ~PartialProducts() {
    if (data) scratch_release(ScratchSlot::kSplitK);
  }
  PartialProducts(const PartialProducts&) = delete;
  PartialProducts& operator=(const PartialProducts&) = delete;
};

// Below this many multiply-adds a GEMM runs on one thread.
constexpr int64_t kParallelMinWork = int64_t(1) << 21;
constexpr int64_t kSplitAlign = 16;

}  // namespace

// C = alpha · op(A) · op(B) + beta · C with k much larger than m and n (a weight gradient,
// summed over all rows): each thread takes a slice of k, so each reads only its share of A
// and B; the partial products are then added up. False, with nothing done, when there is no
// memory for the partial products.
template <typename T>
bool gemm_split_k(int threads, bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha,
                  const T* a, int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  const PartialProducts scratch(sizeof(T) * std::size_t((threads - 1) * m * n));
  if (!scratch.data) return false;
  T* partial = static_cast<T*>(scratch.data);
#pragma omp parallel num_threads(threads)
  {
    const int64_t nt = omp_get_num_threads(), id = omp_get_thread_num();
    const int64_t begin = k * id / nt, end = k * (id + 1) / nt;
    // Thread 0 writes C itself; thread i > 0 its own m × n block of partial.
    T* out = id == 0 ? c : partial + (id - 1) * m * n;
    const int64_t ldo = id == 0 ? ldc : n;
    const T* a_k = ta ? a + begin * lda : a + begin;
    const T* b_k = tb ? b + begin : b + begin * ldb;
    if (end > begin)
      call(ta, tb, m, n, end - begin, alpha, a_k, lda, b_k, ldb, id == 0 ? beta : T(0), out, ldo);
    else if (id > 0)
      for (int64_t i = 0; i < m * n; ++i) out[i] = T(0);
#pragma omp barrier
    // Rows of C split over the team: add every partial block.
    const int64_t r0 = m * id / nt, r1 = m * (id + 1) / nt;
    for (int64_t j = 1; j < nt; ++j)
      for (int64_t i = r0; i < r1; ++i) {
        const T* src = partial + (j - 1) * m * n + i * n;
        T* dst = c + i * ldc;
        for (int64_t q = 0; q < n; ++q) dst[q] += src[q];
      }
  }
  return true;
}

// OpenBLAS runs single-threaded: its own pool would spin against the OpenMP threads of the
// recurrent loop (and of torch) on the same cores. Large GEMMs are split over OpenMP instead,
// by rows of C when it is tall and by columns when it is wide.
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
  const int threads = omp_get_max_threads();
  if (threads < 2 || m * n * k < kParallelMinWork) {
    call(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  // Split along k only for small outputs: from m, n = 512 on, adding the partial blocks cost
  // more than the halved reads saved (measured).
  if (m <= 256 && n <= 256 && k >= 8 * (m > n ? m : n) &&
      gemm_split_k(threads, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc))
    return;
  const bool by_rows = m >= n;
  const int64_t extent = by_rows ? m : n;
#pragma omp parallel num_threads(threads)
  {
    const int64_t nt = omp_get_num_threads(), id = omp_get_thread_num();
    const int64_t chunk = (extent + nt * kSplitAlign - 1) / (nt * kSplitAlign) * kSplitAlign;
    const int64_t begin = id * chunk;
    const int64_t size = begin >= extent ? 0 : (extent - begin < chunk ? extent - begin : chunk);
    if (size > 0) {
      if (by_rows)
        call(ta, tb, size, n, k, alpha, ta ? a + begin : a + begin * lda, lda, b, ldb, beta,
             c + begin * ldc, ldc);
      else
        call(ta, tb, m, size, k, alpha, a, lda, tb ? b + begin * ldb : b + begin, ldb, beta,
             c + begin, ldc);
    }
  }
}

template void gemm<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t,
                          const float*, int64_t, float, float*, int64_t);
template void gemm<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*,
                           int64_t, const double*, int64_t, double, double*, int64_t);

}  // namespace rnnkern::cpu
