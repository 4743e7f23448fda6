// The one pybind11 file: checks every argument, releases the GIL, dispatches to the core.
// A wrong dtype or shape is an error, never a conversion. Only after every check passes is an
// array with other strides copied to C-contiguous memory (documented in rnnkern.forward).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "cpu/blas.h"
#include "cpu/block_pool.h"
#include "cpu/elman_cpu.h"
#include "cpu/gated_cpu.h"

namespace py = pybind11;
using rnnkern::Activation;
using rnnkern::Cell;
using rnnkern::Problem;

namespace {

std::string shape_str(const std::vector<int64_t>& dims) {
  std::ostringstream s;
  s << "(";
  for (size_t i = 0; i < dims.size(); ++i) s << (i ? ", " : "") << dims[i];
  s << (dims.size() == 1 ? ",)" : ")");
  return s.str();
}

std::vector<int64_t> shape_of(const py::array& a) {
  return std::vector<int64_t>(a.shape(), a.shape() + a.ndim());
}

std::string dtype_name(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

// By type number and byte order, not identity: a dtype that went through pickle is a new object.
template <typename T>
bool has_dtype(const py::array& a) {
  const py::dtype d = a.dtype();
  return d.num() == py::dtype::of<T>().num() && d.byteorder() != '>';
}

// a * b, or a ValueError naming what the product counts when it overflows int64.
int64_t checked_product(const char* what, int64_t a, int64_t b) {
  int64_t n;
  if (__builtin_mul_overflow(a, b, &n))
    throw py::value_error(std::string(what) + " has " + std::to_string(a) + " x " +
                          std::to_string(b) + " elements, more than 64-bit sizes can hold");
  return n;
}

// The argument as an ndarray, or a TypeError naming it.
py::array as_array(const char* name, const py::object& obj) {
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(std::string(name) + " must be a numpy.ndarray, got " +
                         py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
  return py::reinterpret_borrow<py::array>(obj);
}

// MemoryError naming what could not be allocated and its size.
[[noreturn]] void out_of_memory(const std::string& what, std::size_t bytes) {
  const std::string message = "rnnkern: out of memory allocating " + what + " (" +
                              std::to_string(bytes) + " bytes)";
  PyErr_SetString(PyExc_MemoryError, message.c_str());
  throw py::error_already_set();
}

// A new C-contiguous array (`what` names it in an out-of-memory error); large ones live in the
// block pool and go back to it when freed.
template <typename T>
py::array_t<T> new_array(const std::vector<int64_t>& shape, const std::string& what) {
  int64_t n = 1;
  for (const int64_t d : shape) n *= d;
  const std::size_t bytes = std::size_t(n) * sizeof(T);
  if (bytes < rnnkern::cpu::kPoolMinBytes) return py::array_t<T>(shape);
  void* block = rnnkern::cpu::pool_allocate(bytes);
  if (!block) out_of_memory(what + " " + shape_str(shape), bytes);
  py::capsule owner(block, [](void* b) { rnnkern::cpu::pool_release(b); });
  return py::array_t<T>(shape, static_cast<T*>(block), owner);
}

// A fresh output array and its data pointer, or None when not wanted.
template <typename T>
py::object new_output(bool wanted, const std::vector<int64_t>& shape, T*& ptr,
                      const char* name) {
  if (!wanted) return py::none();
  auto a = new_array<T>(shape, name);
  ptr = a.mutable_data();
  return std::move(a);
}

// The kernels' workspace of `bytes`, or MemoryError saying so.
rnnkern::cpu::Workspace new_workspace(std::size_t bytes) {
  try {
    return rnnkern::cpu::Workspace(bytes);
  } catch (const std::bad_alloc&) {
    out_of_memory("the kernels' workspace", bytes);
  }
}

// The argument as an ndarray of dtype T and this shape, or an error naming it.
template <typename T>
py::array checked_array(const char* name, const py::object& obj,
                        const std::vector<int64_t>& shape) {
  const py::array a = as_array(name, obj);
  if (!has_dtype<T>(a))
    throw py::type_error(std::string(name) + " must have dtype " +
                         py::str(py::dtype::of<T>()).cast<std::string>() +
                         " (the dtype of x), got " + dtype_name(a));
  if (shape_of(a) != shape)
    throw py::value_error(std::string(name) + " must have shape " + shape_str(shape) + ", got " +
                          shape_str(shape_of(a)));
  return a;
}

template <typename T>
bool is_aligned(const void* p) {
  return reinterpret_cast<std::uintptr_t>(p) % alignof(T) == 0;
}

// The argument checked for dtype and shape, then made C-contiguous and aligned (a copy only
// if it is not already). An absent optional argument stays None.
template <typename T>
py::object checked(const char* name, const py::object& obj, const std::vector<int64_t>& shape,
                  bool optional = false) {
  if (optional && obj.is_none()) return py::none();
  const py::array a = checked_array<T>(name, obj, shape);
  if ((a.flags() & py::array::c_style) && is_aligned<T>(a.data())) return a;
  py::array_t<T> copy = new_array<T>(shape, std::string("a contiguous copy of ") + name);
  static const auto* copyto = new py::object(py::module_::import("numpy").attr("copyto"));
  (*copyto)(copy, a);
  return std::move(copy);
}

// a (N rows of H, or (T, B, H)) as rnnkern::Rows without a copy when its strides allow
// (contiguous rows, or a broadcast such as the gradient of y.sum()); false otherwise.
template <typename T>
bool as_rows(const py::array& a, rnnkern::Rows<T>& rows) {
  if (!is_aligned<T>(a.data())) return false;
  for (py::ssize_t i = 0; i < a.ndim(); ++i)
    if (a.strides(i) % py::ssize_t(sizeof(T))) return false;
  auto stride = [&](py::ssize_t i) { return int64_t(a.strides(i)) / int64_t(sizeof(T)); };
  const int64_t col = stride(a.ndim() - 1);
  int64_t row = stride(0);
  if (a.ndim() == 3) {  // rows t·B + b: one stride only if step t's rows follow step t-1's
    if (a.shape(0) == 1 || a.shape(1) == 1)
      row = a.shape(1) == 1 ? stride(0) : stride(1);
    else if (stride(0) == a.shape(1) * stride(1))
      row = stride(1);
    else
      return false;
  }
  rows = rnnkern::Rows<T>{static_cast<const T*>(a.data()), row, col};
  return true;
}

template <typename T>
const T* data(const py::object& a) {
  return a.is_none() ? nullptr : static_cast<const T*>(py::reinterpret_borrow<py::array>(a).data());
}

Activation parse_nonlinearity(const py::object& obj) {
  if (py::isinstance<py::str>(obj)) {
    const std::string s = obj.cast<std::string>();
    if (s == "tanh") return Activation::kTanh;
    if (s == "relu") return Activation::kRelu;
  }
  throw py::value_error("nonlinearity must be 'tanh' or 'relu', got " +
                        py::repr(obj).cast<std::string>());
}

void check_blas_size(const char* what, int64_t n) {
  if (n > rnnkern::cpu::kMaxBlasInt)
    throw py::value_error(std::string(what) + " has " + std::to_string(n) +
                          " elements, more than the 32-bit BLAS limit of " +
                          std::to_string(rnnkern::cpu::kMaxBlasInt));
}

// rows × I, rows × H, H × I and H × H each within the 32-bit BLAS interface (and int64).
void check_sizes(int64_t rows, int64_t I, int64_t H) {
  check_blas_size("x", checked_product("x", rows, I));
  check_blas_size("the output", checked_product("the output", rows, H));
  check_blas_size("w_ih", checked_product("w_ih", H, I));
  check_blas_size("w_hh", checked_product("w_hh", H, H));
}

// Sizes from x, w_ih and batch_sizes, checked. batch_sizes_storage keeps the counts alive.
Problem make_problem(const py::array& x, const py::array& w_ih, const py::object& batch_sizes,
                     bool reverse, const py::object& nonlinearity,
                     std::vector<int64_t>& batch_sizes_storage) {
  Problem p;
  p.act = parse_nonlinearity(nonlinearity);
  p.reverse = reverse;
  const auto xs = shape_of(x);
  if (batch_sizes.is_none()) {
    if (xs.size() != 3)
      throw py::value_error("x must have 3 dimensions (T, B, I), got shape " + shape_str(xs));
    p.steps = xs[0];
    p.batch = xs[1];
    p.input_size = xs[2];
  } else {
    const py::array bs = as_array("batch_sizes", batch_sizes);
    if (!bs.dtype().is(py::dtype::of<int64_t>()))
      throw py::type_error("batch_sizes must have dtype int64, got " + dtype_name(bs));
    if (bs.ndim() != 1)
      throw py::value_error("batch_sizes must have 1 dimension, got shape " +
                            shape_str(shape_of(bs)));
    if (xs.size() != 2)
      throw py::value_error(
          "x must have 2 dimensions (N, I) when batch_sizes is given, got shape " +
          shape_str(xs));
    const int64_t steps = bs.shape(0);
    if (steps < 1) throw py::value_error("batch_sizes must have at least one entry, got 0");
    batch_sizes_storage.resize(steps);
    int64_t total = 0;
    for (int64_t t = 0; t < steps; ++t) {
      const int64_t v = *static_cast<const int64_t*>(bs.data(t));
      if (v < 1)
        throw py::value_error("batch_sizes must be positive, got batch_sizes[" +
                              std::to_string(t) + "] = " + std::to_string(v));
      if (t > 0 && v > batch_sizes_storage[t - 1])
        throw py::value_error("batch_sizes must be non-increasing, got batch_sizes[" +
                              std::to_string(t) + "] = " + std::to_string(v) + " after " +
                              std::to_string(batch_sizes_storage[t - 1]));
      batch_sizes_storage[t] = v;
      if (__builtin_add_overflow(total, v, &total))
        throw py::value_error("batch_sizes must sum to less than 2**63, got entries up to " +
                              std::to_string(batch_sizes_storage[0]));
    }
    if (xs[0] != total)
      throw py::value_error("x must have sum(batch_sizes) = " + std::to_string(total) +
                            " rows, got shape " + shape_str(xs));
    p.steps = steps;
    p.batch = batch_sizes_storage[0];
    p.input_size = xs[1];
    p.batch_sizes = batch_sizes_storage.data();
  }
  if (p.steps < 1 || p.batch < 0 || p.input_size < 1)
    throw py::value_error("x must have at least one step and one feature, got shape " +
                          shape_str(xs));
  const auto ws = shape_of(w_ih);
  if (ws.size() != 2 || ws[1] != p.input_size || ws[0] < 1)
    throw py::value_error("w_ih must have shape (hidden_size, " + std::to_string(p.input_size) +
                          "), got " + shape_str(ws));
  p.hidden_size = ws[0];
  check_sizes(p.total_rows(), p.input_size, p.hidden_size);
  return p;
}

std::vector<int64_t> output_shape(const py::array& x, const Problem& p) {
  auto s = shape_of(x);
  s.back() = p.hidden_size;
  return s;
}

// What the caller calls x and h0 (the torch-level API: input and hx).
struct Names {
  const char* x;
  const char* h0;
};

template <typename T>
py::array forward_impl(const py::array& x, const py::object& h0, const py::array& w_ih,
                       const py::object& w_hh, const py::object& b_ih, const py::object& b_hh,
                       const Problem& p, Names names) {
  const int64_t H = p.hidden_size, B = p.batch;
  const py::object xa = checked<T>(names.x, x, shape_of(x));
  const py::object h0a = checked<T>(names.h0, h0, {B, H});
  const py::object wia = checked<T>("w_ih", w_ih, {H, p.input_size});
  const py::object wha = checked<T>("w_hh", w_hh, {H, H});
  const py::object bia = checked<T>("b_ih", b_ih, {H}, true);
  const py::object bha = checked<T>("b_hh", b_hh, {H}, true);
  const T *xp = data<T>(xa), *hp = data<T>(h0a), *wi = data<T>(wia), *wh = data<T>(wha);
  const T *bi = data<T>(bia), *bh = data<T>(bha);
  py::array_t<T> y = new_array<T>(output_shape(x, p), "the output y");
  T* yp = y.mutable_data();
  const rnnkern::cpu::Workspace workspace =
      new_workspace(sizeof(T) * rnnkern::cpu::forward_workspace_size<T>(p));
  T* ws = static_cast<T*>(workspace.data());
  {
    py::gil_scoped_release release;
    rnnkern::cpu::forward<T>(p, xp, hp, wi, wh, bi, bh, yp, ws);
  }
  return y;
}

// The time-major problem of forward_pointers / backward_pointers, its sizes checked; the
// pointers in `required` must not be 0.
Problem pointer_problem(int64_t T, int64_t B, int64_t I, int64_t H,
                        const py::object& nonlinearity, bool reverse,
                        std::initializer_list<std::uintptr_t> required) {
  Problem p;
  p.act = parse_nonlinearity(nonlinearity);
  p.reverse = reverse;
  p.steps = T;
  p.batch = B;
  p.input_size = I;
  p.hidden_size = H;
  bool set = true;
  for (const std::uintptr_t ptr : required) set = set && ptr;
  if (T < 1 || B < 1 || I < 1 || H < 1 || !set)
    throw py::value_error("sizes must be positive and pointers set");
  check_sizes(checked_product("x", T, B), I, H);
  return p;
}

// The forward pass on raw pointers (torch's data_ptr()) to C-contiguous, aligned arrays of one
// dtype whose shapes the caller has checked: x (T, B, I), h0 (B, H), w_ih (H, I), w_hh (H, H),
// b_ih, b_hh (H) or 0, y (T, B, H). For rnnkern.functional's small calls, where converting six
// tensors to arrays costs more than the kernel. Sizes are checked here, pointers cannot be.
void forward_pointers(bool is_double, int64_t T, int64_t B, int64_t I, int64_t H,
                      std::uintptr_t x, std::uintptr_t h0, std::uintptr_t w_ih,
                      std::uintptr_t w_hh, std::uintptr_t b_ih, std::uintptr_t b_hh,
                      std::uintptr_t y, const py::object& nonlinearity, bool reverse) {
  const Problem p = pointer_problem(T, B, I, H, nonlinearity, reverse, {x, h0, w_ih, w_hh, y});
  auto run = [&](auto zero) {
    using T_ = decltype(zero);
    auto ptr = [](std::uintptr_t a) { return reinterpret_cast<T_*>(a); };
    const rnnkern::cpu::Workspace workspace =
        new_workspace(sizeof(T_) * rnnkern::cpu::forward_workspace_size<T_>(p));
    T_* ws = static_cast<T_*>(workspace.data());
    py::gil_scoped_release release;
    rnnkern::cpu::forward<T_>(p, ptr(x), ptr(h0), ptr(w_ih), ptr(w_hh), ptr(b_ih), ptr(b_hh),
                              ptr(y), ws);
  };
  if (is_double)
    run(double(0));
  else
    run(float(0));
}

// The backward pass on raw pointers, as forward_pointers: x, h0, w_ih, w_hh, y as given to and
// returned by forward, grad_y (T, B, H) and grad_hn (B, H) or 0 C-contiguous; each gradient
// output (grad_b: one (H,) array; norms: T·B float64) is computed where its pointer is not 0.
void backward_pointers(bool is_double, int64_t T, int64_t B, int64_t I, int64_t H,
                       std::uintptr_t x, std::uintptr_t h0, std::uintptr_t w_ih,
                       std::uintptr_t w_hh, std::uintptr_t y, std::uintptr_t grad_y,
                       std::uintptr_t grad_hn, std::uintptr_t grad_x, std::uintptr_t grad_h0,
                       std::uintptr_t grad_w_ih, std::uintptr_t grad_w_hh,
                       std::uintptr_t grad_b, std::uintptr_t norms,
                       const py::object& nonlinearity, bool reverse) {
  const Problem p =
      pointer_problem(T, B, I, H, nonlinearity, reverse, {x, h0, w_ih, w_hh, y, grad_y});
  auto run = [&](auto zero) {
    using T_ = decltype(zero);
    auto ptr = [](std::uintptr_t a) { return reinterpret_cast<T_*>(a); };
    const rnnkern::cpu::Workspace workspace = new_workspace(
        sizeof(T_) * rnnkern::cpu::backward_workspace_size<T_>(p, norms != 0));
    T_* ws = static_cast<T_*>(workspace.data());
    py::gil_scoped_release release;
    rnnkern::cpu::backward<T_>(p, ptr(x), ptr(h0), ptr(w_ih), ptr(w_hh), ptr(y),
                               rnnkern::Rows<T_>{ptr(grad_y), H, 1}, ptr(grad_hn), ptr(grad_x),
                               ptr(grad_h0), ptr(grad_w_ih), ptr(grad_w_hh), ptr(grad_b),
                               reinterpret_cast<double*>(norms), ws);
  };
  if (is_double)
    run(double(0));
  else
    run(float(0));
}

// Which gradients backward computes (the others come back as None), and whether it also
// returns ‖d_t‖₂ per row.
struct Wanted {
  bool x, h0, w_ih, w_hh, bias, grad_norms;
};

template <typename T>
py::tuple backward_impl(const py::array& x, const py::object& h0, const py::array& w_ih,
                        const py::object& w_hh, const py::object& y, const py::object& grad_y,
                        const py::object& grad_hn, const Problem& p, Wanted want,
                        Names names) {
  const int64_t H = p.hidden_size, B = p.batch, I = p.input_size;
  const auto ys = output_shape(x, p);
  const py::object xa = checked<T>(names.x, x, shape_of(x));
  const py::object h0a = checked<T>(names.h0, h0, {B, H});
  const py::object wia = checked<T>("w_ih", w_ih, {H, I}), wha = checked<T>("w_hh", w_hh, {H, H});
  const py::object ya = checked<T>("y", y, ys);
  // grad_y is read where it is when its strides allow (the core reads it once, row by row).
  py::object gya = checked_array<T>("grad_y", grad_y, ys);
  rnnkern::Rows<T> gy;
  if (!as_rows(py::reinterpret_borrow<py::array>(gya), gy)) {
    gya = checked<T>("grad_y", gya, ys);
    gy = rnnkern::Rows<T>{data<T>(gya), H, 1};
  }
  const py::object ghna = checked<T>("grad_hn", grad_hn, {B, H}, true);
  const T *xp = data<T>(xa), *hp = data<T>(h0a), *wi = data<T>(wia), *wh = data<T>(wha);
  const T *yp = data<T>(ya), *ghn = data<T>(ghna);
  T *gxp = nullptr, *gh0p = nullptr, *gwip = nullptr, *gwhp = nullptr, *gbp = nullptr;
  py::object gx = new_output(want.x, shape_of(x), gxp, "grad x");
  py::object gh0 = new_output(want.h0, {B, H}, gh0p, "grad h0");
  py::object gwi = new_output(want.w_ih, {H, I}, gwip, "grad w_ih");
  py::object gwh = new_output(want.w_hh, {H, H}, gwhp, "grad w_hh");
  py::object gb = new_output(want.bias, {H}, gbp, "grad bias");
  double* normsp = nullptr;
  py::object norms = new_output(want.grad_norms, {p.total_rows()}, normsp, "gradient norms");
  const rnnkern::cpu::Workspace workspace = new_workspace(
      sizeof(T) * rnnkern::cpu::backward_workspace_size<T>(p, want.grad_norms));
  T* ws = static_cast<T*>(workspace.data());
  {
    py::gil_scoped_release release;
    rnnkern::cpu::backward<T>(p, xp, hp, wi, wh, yp, gy, ghn, gxp, gh0p, gwip, gwhp, gbp, normsp,
                              ws);
  }
  return py::make_tuple(gx, gh0, gwi, gwh, gb, norms);
}

// float32 or float64, from x.
bool is_double(const py::array& x, const char* name) {
  if (has_dtype<float>(x)) return false;
  if (has_dtype<double>(x)) return true;
  throw py::type_error(std::string(name) + " must have dtype float32 or float64, got " +
                       dtype_name(x));
}

py::array forward(const py::object& x_, const py::object& h0, const py::object& w_ih_,
                  const py::object& w_hh, const py::object& b_ih, const py::object& b_hh,
                  const py::object& nonlinearity, const py::object& batch_sizes, bool reverse,
                  const std::string& x_name, const std::string& h0_name) {
  const Names names{x_name.c_str(), h0_name.c_str()};
  const py::array x = as_array(names.x, x_);
  const bool dbl = is_double(x, names.x);
  const py::array w_ih = as_array("w_ih", w_ih_);
  std::vector<int64_t> storage;
  const Problem p = make_problem(x, w_ih, batch_sizes, reverse, nonlinearity, storage);
  return dbl ? forward_impl<double>(x, h0, w_ih, w_hh, b_ih, b_hh, p, names)
             : forward_impl<float>(x, h0, w_ih, w_hh, b_ih, b_hh, p, names);
}

py::tuple backward(const py::object& x_, const py::object& h0, const py::object& w_ih_,
                   const py::object& w_hh, const py::object& y, const py::object& grad_y,
                   const py::object& grad_hn, const py::object& nonlinearity,
                   const py::object& batch_sizes, bool reverse, bool need_x, bool need_h0,
                   bool need_w_ih, bool need_w_hh, bool need_bias, bool grad_norms,
                   const std::string& x_name, const std::string& h0_name) {
  const Wanted want{need_x, need_h0, need_w_ih, need_w_hh, need_bias, grad_norms};
  const Names names{x_name.c_str(), h0_name.c_str()};
  const py::array x = as_array(names.x, x_);
  const bool dbl = is_double(x, names.x);
  const py::array w_ih = as_array("w_ih", w_ih_);
  std::vector<int64_t> storage;
  const Problem p = make_problem(x, w_ih, batch_sizes, reverse, nonlinearity, storage);
  return dbl ? backward_impl<double>(x, h0, w_ih, w_hh, y, grad_y, grad_hn, p, want, names)
             : backward_impl<float>(x, h0, w_ih, w_hh, y, grad_y, grad_hn, p, want, names);
}


// The gated cells (core/gated.h): LSTM (G = 4) and GRU (G = 3) blocks of W_ih, W_hh rows.

const char* cell_name(Cell cell) { return cell == Cell::kLstm ? "lstm" : "gru"; }

// Sizes from x, w_ih (G·H, I) and batch_sizes, checked: make_problem for x and batch_sizes,
// w_ih checked here first so that its error names G·H.
Problem gated_problem(Cell cell, const py::array& x, const py::array& w_ih,
                      const py::object& batch_sizes, bool reverse,
                      std::vector<int64_t>& storage) {
  const int64_t G = rnnkern::gate_count(cell);
  const auto xs = shape_of(x), ws = shape_of(w_ih);
  if ((xs.size() == 2 || xs.size() == 3) &&
      (ws.size() != 2 || ws[0] < G || ws[0] % G || ws[1] != xs.back()))
    throw py::value_error("w_ih must have shape (" + std::to_string(G) + " * hidden_size, " +
                          std::to_string(xs.back()) + ") for the " + cell_name(cell) +
                          ", got " + shape_str(ws));
  Problem p = make_problem(x, w_ih, batch_sizes, reverse, py::str("tanh"), storage);
  p.hidden_size = ws[0] / G;
  check_sizes(p.total_rows(), p.input_size, ws[0]);
  return p;
}

std::vector<int64_t> with_width(const py::array& x, int64_t width) {
  auto s = shape_of(x);
  s.back() = width;
  return s;
}

// The LSTM's proj_size P from w_hr (P, H) with 0 < P < H, or 0 without w_hr.
int64_t proj_size(Cell cell, const py::object& w_hr, const Problem& p) {
  if (w_hr.is_none()) return 0;
  if (cell != Cell::kLstm) throw py::value_error("w_hr (proj_size) is for the lstm only");
  const auto s = shape_of(as_array("w_hr", w_hr));
  if (s.size() != 2 || s[1] != p.hidden_size || s[0] < 1 || s[0] >= p.hidden_size)
    throw py::value_error("w_hr must have shape (proj_size, " + std::to_string(p.hidden_size) +
                          ") with 0 < proj_size < " + std::to_string(p.hidden_size) + ", got " +
                          shape_str(s));
  return s[0];
}

template <typename T>
py::tuple gated_forward_impl(Cell cell, const py::array& x, const py::object& h0,
                             const py::object& c0, const py::array& w_ih,
                             const py::object& w_hh, const py::object& b_ih,
                             const py::object& b_hh, const py::object& w_hr, const Problem& p,
                             Names names, const char* c0_name) {
  const bool lstm = cell == Cell::kLstm;
  const int64_t H = p.hidden_size, B = p.batch, GH = rnnkern::gate_count(cell) * H;
  const int64_t P = proj_size(cell, w_hr, p), HP = P ? P : H;
  const py::object xa = checked<T>(names.x, x, shape_of(x));
  const py::object h0a = checked<T>(names.h0, h0, {B, HP});
  const py::object c0a = lstm ? checked<T>(c0_name, c0, {B, H}) : py::object(py::none());
  const py::object wia = checked<T>("w_ih", w_ih, {GH, p.input_size});
  const py::object wha = checked<T>("w_hh", w_hh, {GH, HP});
  const py::object bia = checked<T>("b_ih", b_ih, {GH}, true);
  const py::object bha = checked<T>("b_hh", b_hh, {GH}, true);
  const py::object wra = P ? checked<T>("w_hr", w_hr, {P, H}) : py::object(py::none());
  py::array_t<T> y = new_array<T>(with_width(x, HP), "the output y");
  py::array_t<T> gates = new_array<T>(with_width(x, GH), "the gates");
  py::array_t<T> state = new_array<T>(with_width(x, H), "the saved state (c or hidden_n)");
  py::array_t<T> m = new_array<T>(P ? with_width(x, H) : std::vector<int64_t>{0}, "m");
  const T *xp = data<T>(xa), *hp = data<T>(h0a), *cp = data<T>(c0a), *wi = data<T>(wia);
  const T *wh = data<T>(wha), *bi = data<T>(bia), *bh = data<T>(bha), *wr = data<T>(wra);
  T *yp = y.mutable_data(), *gp = gates.mutable_data(), *sp = state.mutable_data();
  T* mp = m.mutable_data();
  const rnnkern::cpu::Workspace workspace = new_workspace(
      sizeof(T) * (P ? rnnkern::cpu::lstm_proj_forward_workspace_size<T>(p)
                     : rnnkern::cpu::gated_forward_workspace_size<T>(cell, p)));
  T* ws = static_cast<T*>(workspace.data());
  {
    py::gil_scoped_release release;
    if (P)
      rnnkern::cpu::lstm_proj_forward<T>(p, P, xp, hp, cp, wi, wh, bi, bh, wr, yp, gp, sp, mp,
                                         ws);
    else
      rnnkern::cpu::gated_forward<T>(cell, p, xp, hp, cp, wi, wh, bi, bh, yp, gp, sp, ws);
  }
  if (P) return py::make_tuple(y, gates, state, m);
  return py::make_tuple(y, gates, state);
}

// Which gradients gated_backward computes (the others come back as None), and which norms.
struct GatedWanted {
  bool x, h0, c0, w_ih, w_hh, bias, grad_norms, w_hr;
};

template <typename T>
py::tuple gated_backward_impl(Cell cell, const py::array& x, const py::object& h0,
                              const py::object& c0, const py::array& w_ih,
                              const py::object& w_hh, const py::object& y,
                              const py::object& gates, const py::object& state,
                              const py::object& grad_y, const py::object& grad_hn,
                              const py::object& grad_cn, const py::object& w_hr,
                              const py::object& m, const Problem& p, GatedWanted want,
                              Names names, const char* c0_name) {
  const bool lstm = cell == Cell::kLstm;
  const int64_t H = p.hidden_size, B = p.batch, I = p.input_size;
  const int64_t GH = rnnkern::gate_count(cell) * H;
  const int64_t P = proj_size(cell, w_hr, p), HP = P ? P : H;
  const auto ys = with_width(x, HP);
  const py::object xa = checked<T>(names.x, x, shape_of(x));
  const py::object h0a = checked<T>(names.h0, h0, {B, HP});
  const py::object c0a = lstm ? checked<T>(c0_name, c0, {B, H}) : py::object(py::none());
  const py::object wia = checked<T>("w_ih", w_ih, {GH, I}), wha = checked<T>("w_hh", w_hh, {GH, HP});
  const py::object ya = checked<T>("y", y, ys);
  const py::object ga = checked<T>("gates", gates, with_width(x, GH));
  const py::object sa = checked<T>("state", state, with_width(x, H));
  const py::object wra = P ? checked<T>("w_hr", w_hr, {P, H}) : py::object(py::none());
  const py::object ma = P ? checked<T>("m", m, with_width(x, H)) : py::object(py::none());
  py::object gya = checked_array<T>("grad_y", grad_y, ys);
  rnnkern::Rows<T> gy;
  if (!as_rows(py::reinterpret_borrow<py::array>(gya), gy)) {
    gya = checked<T>("grad_y", gya, ys);
    gy = rnnkern::Rows<T>{data<T>(gya), HP, 1};
  }
  const py::object ghna = checked<T>("grad_hn", grad_hn, {B, HP}, true);
  const py::object gcna = lstm ? checked<T>("grad_cn", grad_cn, {B, H}, true)
                               : py::object(py::none());
  T *gxp = nullptr, *gh0p = nullptr, *gc0p = nullptr, *gwip = nullptr, *gwhp = nullptr;
  T *gbip = nullptr, *gbhp = nullptr, *gwrp = nullptr;
  py::object gx = new_output(want.x, shape_of(x), gxp, "grad x");
  py::object gh0 = new_output(want.h0, {B, HP}, gh0p, "grad h0");
  py::object gc0 = new_output(want.c0 && lstm, {B, H}, gc0p, "grad c0");
  py::object gwi = new_output(want.w_ih, {GH, I}, gwip, "grad w_ih");
  py::object gwh = new_output(want.w_hh, {GH, HP}, gwhp, "grad w_hh");
  py::object gwr = new_output(P && want.w_hr, {P, H}, gwrp, "grad w_hr");
  py::object gbi = new_output(want.bias, {GH}, gbip, "grad b_ih");
  py::object gbh = new_output(want.bias, {GH}, gbhp, "grad b_hh");
  double *nhp = nullptr, *ncp = nullptr;
  py::object nh = new_output(want.grad_norms, {p.total_rows()}, nhp, "gradient norms");
  py::object nc = new_output(want.grad_norms && lstm, {p.total_rows()}, ncp, "gradient norms (c)");
  const rnnkern::cpu::Workspace workspace = new_workspace(
      sizeof(T) * (P ? rnnkern::cpu::lstm_proj_backward_workspace_size<T>(p, P)
                     : rnnkern::cpu::gated_backward_workspace_size<T>(cell, p)));
  T* ws = static_cast<T*>(workspace.data());
  {
    py::gil_scoped_release release;
    if (P)
      rnnkern::cpu::lstm_proj_backward<T>(p, P, data<T>(xa), data<T>(h0a), data<T>(c0a),
                                          data<T>(wia), data<T>(wha), data<T>(wra), data<T>(ya),
                                          data<T>(ga), data<T>(sa), data<T>(ma), gy,
                                          data<T>(ghna), data<T>(gcna), gxp, gh0p, gc0p, gwip,
                                          gwhp, gbip, gbhp, gwrp, nhp, ncp, ws);
    else
      rnnkern::cpu::gated_backward<T>(cell, p, data<T>(xa), data<T>(h0a), data<T>(c0a),
                                      data<T>(wia), data<T>(wha), data<T>(ya), data<T>(ga),
                                      data<T>(sa), gy, data<T>(ghna), data<T>(gcna), gxp, gh0p,
                                      gc0p, gwip, gwhp, gbip, gbhp, nhp, ncp, ws);
  }
  return py::make_tuple(gx, gh0, gc0, gwi, gwh, gbi, gbh, nh, nc, gwr);
}

Cell parse_cell(const std::string& cell) {
  if (cell == "lstm") return Cell::kLstm;
  if (cell == "gru") return Cell::kGru;
  throw py::value_error("cell must be 'lstm' or 'gru', got '" + cell + "'");
}

py::tuple gated_forward(const std::string& cell_, const py::object& x_, const py::object& h0,
                        const py::object& c0, const py::object& w_ih_, const py::object& w_hh,
                        const py::object& b_ih, const py::object& b_hh,
                        const py::object& batch_sizes, bool reverse, const std::string& x_name,
                        const std::string& h0_name, const std::string& c0_name,
                        const py::object& w_hr) {
  const Cell cell = parse_cell(cell_);
  const Names names{x_name.c_str(), h0_name.c_str()};
  const py::array x = as_array(names.x, x_);
  const bool dbl = is_double(x, names.x);
  const py::array w_ih = as_array("w_ih", w_ih_);
  std::vector<int64_t> storage;
  const Problem p = gated_problem(cell, x, w_ih, batch_sizes, reverse, storage);
  return dbl ? gated_forward_impl<double>(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, p,
                                          names, c0_name.c_str())
             : gated_forward_impl<float>(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, p,
                                         names, c0_name.c_str());
}

py::tuple gated_backward(const std::string& cell_, const py::object& x_, const py::object& h0,
                         const py::object& c0, const py::object& w_ih_,
                         const py::object& w_hh, const py::object& y, const py::object& gates,
                         const py::object& state, const py::object& grad_y,
                         const py::object& grad_hn, const py::object& grad_cn,
                         const py::object& batch_sizes, bool reverse, bool need_x,
                         bool need_h0, bool need_c0, bool need_w_ih, bool need_w_hh,
                         bool need_bias, bool grad_norms, const std::string& x_name,
                         const std::string& h0_name, const std::string& c0_name,
                         const py::object& w_hr, const py::object& m, bool need_w_hr) {
  const Cell cell = parse_cell(cell_);
  const GatedWanted want{need_x,    need_h0,   need_c0,    need_w_ih,
                         need_w_hh, need_bias, grad_norms, need_w_hr};
  const Names names{x_name.c_str(), h0_name.c_str()};
  const py::array x = as_array(names.x, x_);
  const bool dbl = is_double(x, names.x);
  const py::array w_ih = as_array("w_ih", w_ih_);
  std::vector<int64_t> storage;
  const Problem p = gated_problem(cell, x, w_ih, batch_sizes, reverse, storage);
  auto run = [&](auto zero) {
    return gated_backward_impl<decltype(zero)>(cell, x, h0, c0, w_ih, w_hh, y, gates, state,
                                               grad_y, grad_hn, grad_cn, w_hr, m, p, want,
                                               names, c0_name.c_str());
  };
  return dbl ? run(double(0)) : run(float(0));
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "rnnkern's compiled core. Use rnnkern.forward / rnnkern.backward instead.";
  m.def("forward", &forward, py::arg("x"), py::arg("h0"), py::arg("w_ih"), py::arg("w_hh"),
        py::arg("b_ih"), py::arg("b_hh"), py::arg("nonlinearity"), py::arg("batch_sizes"),
        py::arg("reverse"), py::arg("x_name") = "x", py::arg("h0_name") = "h0");
  m.def("forward_pointers", &forward_pointers, py::arg("is_double"), py::arg("T"), py::arg("B"),
        py::arg("I"), py::arg("H"), py::arg("x"), py::arg("h0"), py::arg("w_ih"),
        py::arg("w_hh"), py::arg("b_ih"), py::arg("b_hh"), py::arg("y"),
        py::arg("nonlinearity"), py::arg("reverse"),
        "forward on data_ptr()s of checked C-contiguous arrays; see bindings.cpp.");
  m.def("backward_pointers", &backward_pointers, py::arg("is_double"), py::arg("T"),
        py::arg("B"), py::arg("I"), py::arg("H"), py::arg("x"), py::arg("h0"), py::arg("w_ih"),
        py::arg("w_hh"), py::arg("y"), py::arg("grad_y"), py::arg("grad_hn"),
        py::arg("grad_x"), py::arg("grad_h0"), py::arg("grad_w_ih"), py::arg("grad_w_hh"),
        py::arg("grad_b"), py::arg("norms"), py::arg("nonlinearity"), py::arg("reverse"),
        "backward on data_ptr()s of checked C-contiguous arrays; see bindings.cpp.");
  m.def("backward", &backward, py::arg("x"), py::arg("h0"), py::arg("w_ih"), py::arg("w_hh"),
        py::arg("y"), py::arg("grad_y"), py::arg("grad_hn"), py::arg("nonlinearity"),
        py::arg("batch_sizes"), py::arg("reverse"), py::arg("need_x") = true,
        py::arg("need_h0") = true, py::arg("need_w_ih") = true, py::arg("need_w_hh") = true,
        py::arg("need_bias") = true, py::arg("grad_norms") = false,
        py::arg("x_name") = "x", py::arg("h0_name") = "h0",
        "Gradients (x, h0, w_ih, w_hh, bias), None where not needed, and the (N,) float64 "
        "norms of the whole gradient reaching each row's h_t (None unless grad_norms).");
  m.def("empty_cache", [] { return rnnkern::cpu::pool_clear(); },
        "Frees every cached block (outputs, workspaces, idle scratch); returns the bytes freed.");
  m.def("isa", [] { return std::string(rnnkern::cpu::isa()); },
        "Instruction set of the recurrent kernels in use: avx512, avx2 or generic.");
  // The gated cells: cell = "lstm" or "gru" (c0 and grad_cn are the LSTM's, None for the GRU).
  m.def("gated_forward", &gated_forward, py::arg("cell"), py::arg("x"), py::arg("h0"),
        py::arg("c0"), py::arg("w_ih"), py::arg("w_hh"), py::arg("b_ih"), py::arg("b_hh"),
        py::arg("batch_sizes"), py::arg("reverse"), py::arg("x_name") = "x",
        py::arg("h0_name") = "h0", py::arg("c0_name") = "c0", py::arg("w_hr") = py::none(),
        "(y, gates, state): every h_t, and what backward needs: the activated gates (width "
        "G·H) and state (LSTM: c_t; GRU: h_{t-1} W_hnᵀ + b_hn), shaped like x. With w_hr "
        "(the LSTM's proj_size): (y, gates, state, m), m = o ⊙ tanh(c_t), y of width P.");
  m.def("gated_backward", &gated_backward, py::arg("cell"), py::arg("x"), py::arg("h0"),
        py::arg("c0"), py::arg("w_ih"), py::arg("w_hh"), py::arg("y"), py::arg("gates"),
        py::arg("state"), py::arg("grad_y"), py::arg("grad_hn"), py::arg("grad_cn"),
        py::arg("batch_sizes"), py::arg("reverse"), py::arg("need_x") = true,
        py::arg("need_h0") = true, py::arg("need_c0") = true, py::arg("need_w_ih") = true,
        py::arg("need_w_hh") = true, py::arg("need_bias") = true,
        py::arg("grad_norms") = false, py::arg("x_name") = "x", py::arg("h0_name") = "h0",
        py::arg("c0_name") = "c0", py::arg("w_hr") = py::none(), py::arg("m") = py::none(),
        py::arg("need_w_hr") = true,
        "Gradients (x, h0, c0, w_ih, w_hh, b_ih, b_hh), None where not needed (c0: GRU), "
        "the (N,) float64 norms of ∂L/∂h_t and (LSTM) ∂L/∂c_t per row (None unless grad_norms) "
        "and the gradient of w_hr (None without it).");
}
