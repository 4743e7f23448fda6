// Row-major GEMM on OpenBLAS (scipy-openblas32): C = alpha · op(A) · op(B) + beta · C.
#pragma once

#include <cstdint>

namespace rnnkern::cpu {

template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
          int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc);

// OpenBLAS's kernel set in use (its "core", e.g. Haswell, SkylakeX, Zen) and its build line.
const char* blas_core();
const char* blas_config();

// OpenBLAS's GEMM rate (GFLOP/s) on n × n × n of T through gemm() above: the best of
// `repeats` calls after one to warm up.
template <typename T>
double gemm_gflops(int64_t n, int repeats);

// OpenBLAS's 32-bit integer interface: every size and leading dimension must stay below this.
constexpr int64_t kMaxBlasInt = 2147483647;

}  // namespace rnnkern::cpu
