#include "elman_cpu.h"

#include <omp.h>

#include <cstring>
#include <vector>

#include "blas.h"
#include "recurrent.h"

namespace rnnkern::cpu {
namespace {

// Splitting the time loop by rows pays from this many rows per thread and this much work, and
// up to this hidden size; above it each thread streaming all of W_hh every step costs more
// than sharing h between cores, and each step is split by columns instead (measured).
constexpr int64_t kMinRowsPerThread = 4;
constexpr int64_t kRowSplitMinWork = int64_t(1) << 20;
constexpr int64_t kRowSplitMaxHidden = 512;

// The primitives core/elman.h asks of a backend.
template <typename T>
struct Backend {
  const RecurrentKernels<T>& kernels = recurrent_kernels<T>();

  static int64_t packed_size(int64_t H) { return cpu::packed_size<T>(H); }
  static int64_t norm_slots(int64_t H) { return cpu::norm_slots<T>(H); }

  void pack(const T* w, int64_t H, bool transpose, T* packed) const {
    kernels.pack(w, H, transpose, packed);
  }
  void step(Epilogue e, Activation act, int64_t rows, int64_t H, const T* a, const T* packed,
            T* c, const T* h, T* d) const {
    kernels.step(e, act, rows, H, a, packed, c, h, d);
  }
  void scale_by_derivative(Activation act, int64_t rows, int64_t H, T* c, const T* h) const {
    kernels.scale_by_derivative(act, rows, H, c, h);
  }
  void row_square_sums(int64_t rows, int64_t H, const T* d, T* slots) const {
    kernels.row_square_sums(rows, H, d, slots);
  }
  void row_norms(int64_t rows, int64_t H, const T* slots, double* out) const {
    kernels.row_norms(rows, H, slots, out);
  }
  void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
            const T* b, int64_t ldb, T beta, T* c, int64_t ldc) const {
    cpu::gemm<T>(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }
  // The time loop on row ranges, one per thread, with equal work (a packed sequence's rows
  // are live for different numbers of steps). Rows never wait for each other, so there is
  // no synchronisation between steps and h never moves between cores.
  template <typename F>
  void for_row_ranges(const Problem& p, F&& run) const {
    const int64_t B = p.batch, H = p.hidden_size, N = p.total_rows();
    const int threads = omp_get_max_threads();
    if (threads < 2 || B < kMinRowsPerThread * 2 || N * H * H < kRowSplitMinWork ||
        H > kRowSplitMaxHidden) {
      run(RowRange{0, B});
      return;
    }
    // length[b]: steps at which row b is live; split where the running sum crosses i·N/threads.
    std::vector<int64_t> length(B, 0);
    for (int64_t t = 0; t < p.steps; ++t) length[p.rows_at(t) - 1] += 1;
    for (int64_t b = B - 2; b >= 0; --b) length[b] += length[b + 1];
    std::vector<int64_t> bounds(threads + 1, B);
    bounds[0] = 0;
    int64_t done = 0, next = 1;
    for (int64_t b = 0; b < B && next < threads; ++b) {
      done += length[b];
      if (done * threads >= next * N) bounds[next++] = b + 1;
    }
#pragma omp parallel num_threads(threads)
    {
      // The runtime may give a smaller team than asked for: every range must still run.
      for (int r = omp_get_thread_num(); r < threads; r += omp_get_num_threads())
        if (bounds[r] < bounds[r + 1]) run(RowRange{bounds[r], bounds[r + 1]});
    }
  }

  void column_sums(int64_t rows, int64_t H, const T* a, T* out) const {
    std::memset(out, 0, sizeof(T) * H);
    for (int64_t r = 0; r < rows; ++r) kernels.accumulate(H, a + r * H, out);
  }
  void accumulate(int64_t n, const T* src, T* dst) const { kernels.accumulate(n, src, dst); }
};

}  // namespace

template <typename T>
int64_t forward_workspace_size(const Problem& p) {
  return rnnkern::forward_workspace_size<T>(p, Backend<T>{});
}

template <typename T>
int64_t backward_workspace_size(const Problem& p, bool record_norms) {
  return rnnkern::backward_workspace_size<T>(p, Backend<T>{}, record_norms);
}

template <typename T>
int64_t packed_w_hh_size(int64_t H) {
  return Backend<T>::packed_size(H);
}

template <typename T>
void pack_w_hh(const T* w_hh, int64_t H, bool for_forward, T* packed) {
  Backend<T>{}.pack(w_hh, H, /*transpose=*/for_forward, packed);
}

template <typename T>
void forward(const Problem& p, const T* x, const T* h0, const T* w_ih, const T* w_hh,
             const T* b_ih, const T* b_hh, T* y, T* workspace, const T* packed_w_hh) {
  Backend<T> k;
  rnnkern::forward<T>(p, x, h0, w_ih, w_hh, b_ih, b_hh, y, workspace, k, packed_w_hh);
}

template <typename T>
void backward(const Problem& p, const T* x, const T* h0, const T* w_ih, const T* w_hh,
              const T* y, Rows<T> grad_y, const T* grad_hn, T* grad_x, T* grad_h0,
              T* grad_w_ih, T* grad_w_hh, T* grad_b, double* grad_norms, T* workspace,
              const T* packed_w_hh) {
  Backend<T> k;
  rnnkern::backward<T>(p, x, h0, w_ih, w_hh, y, grad_y, grad_hn, grad_x, grad_h0, grad_w_ih,
                       grad_w_hh, grad_b, grad_norms, workspace, k, packed_w_hh);
}

const char* isa() { return recurrent_kernels<float>().isa; }

#define RNNKERN_INSTANTIATE(T)                                                               \
  template int64_t forward_workspace_size<T>(const Problem&);                               \
  template int64_t backward_workspace_size<T>(const Problem&, bool);                        \
  template int64_t packed_w_hh_size<T>(int64_t);                                            \
  template void pack_w_hh<T>(const T*, int64_t, bool, T*);                                  \
  template void forward<T>(const Problem&, const T*, const T*, const T*, const T*, const T*, \
                           const T*, T*, T*, const T*);                                      \
  template void backward<T>(const Problem&, const T*, const T*, const T*, const T*,          \
                            const T*, Rows<T>, const T*, T*, T*, T*, T*, T*, double*, T*,    \
                            const T*);
RNNKERN_INSTANTIATE(float)
RNNKERN_INSTANTIATE(double)
#undef RNNKERN_INSTANTIATE

}  // namespace rnnkern::cpu
