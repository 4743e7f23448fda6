#include "layer.h"

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

// The primitives core/recurrence.h and the cells ask of a backend.
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
  // Range bounds are multiples of `align` (or B).
  template <typename F>
  void for_row_ranges(const Problem& p, int64_t align, F&& run) const {
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
      if (done * threads >= next * N) {
        const int64_t bound = (b + align) / align * align;
        bounds[next++] = bound < B ? bound : B;
      }
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

  // Cell C's pointwise passes, as built for this CPU's instruction set.
  template <typename C>
  void forward_pass(const typename C::template ForwardPass<T>& args) const {
    kernels.passes.template of<C>().forward(args);
  }
  template <typename C>
  void backward_pass(const typename C::template BackwardPass<T>& args) const {
    kernels.passes.template of<C>().backward(args);
  }
};

}  // namespace

template <typename Cell, typename T>
int64_t forward_workspace_size(const Problem& p) {
  return rnnkern::forward_workspace_size<Cell, T, Backend<T>>(p);
}

template <typename Cell, typename T>
int64_t backward_workspace_size(const Problem& p, bool record_norms) {
  return rnnkern::backward_workspace_size<Cell, T, Backend<T>>(p, record_norms);
}

template <typename Cell, typename T>
void forward(const Problem& p, const Inputs<T>& in, const Outputs<T>& out, T* workspace) {
  Backend<T> k;
  rnnkern::forward<Cell, T>(p, in, out, workspace, k);
}

template <typename Cell, typename T>
void backward(const Problem& p, const Inputs<T>& in, const Outputs<const T>& out,
              const Gradients<T>& grads, T* workspace) {
  Backend<T> k;
  rnnkern::backward<Cell, T>(p, in, out, grads, workspace, k);
}

const char* isa() { return recurrent_kernels<float>().isa; }

#define RNNKERN_INSTANTIATE_FOR(Cell, T)                                                     \
  template int64_t forward_workspace_size<Cell, T>(const Problem&);                         \
  template int64_t backward_workspace_size<Cell, T>(const Problem&, bool);                  \
  template void forward<Cell, T>(const Problem&, const Inputs<T>&, const Outputs<T>&, T*);   \
  template void backward<Cell, T>(const Problem&, const Inputs<T>&, const Outputs<const T>&, \
                                  const Gradients<T>&, T*);
#define RNNKERN_INSTANTIATE(Cell)        \
  RNNKERN_INSTANTIATE_FOR(Cell, float) \
  RNNKERN_INSTANTIATE_FOR(Cell, double)
RNNKERN_CELLS(RNNKERN_INSTANTIATE)
#undef RNNKERN_INSTANTIATE
#undef RNNKERN_INSTANTIATE_FOR

}  // namespace rnnkern::cpu
