// The one pybind11 file: checks every argument, releases the GIL, dispatches to the core.
// A wrong dtype or shape is an error, never a conversion. Only after every check passes is an
// array with other strides copied to C-contiguous memory (documented in rnnkern.forward).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "core/cells/list.h"
#include "cpu/blas.h"
#include "cpu/block_pool.h"
#include "cpu/layer.h"

namespace py = pybind11;
using rnnkern::Activation;
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

py::str nonlinearity_name(Activation act) {
  return py::str(act == Activation::kTanh ? "tanh" : "relu");
}

void check_blas_size(const char* what, int64_t n) {
  if (n > rnnkern::cpu::kMaxBlasInt)
    throw py::value_error(std::string(what) + " has " + std::to_string(n) +
                          " elements, more than the 32-bit BLAS limit of " +
                          std::to_string(rnnkern::cpu::kMaxBlasInt));
}

// rows × I, rows × H, H × I and, for a matrix w_hh (kWhhDims 2), H × H each within the 32-bit
// BLAS interface (and int64). A vector w_hh (kWhhDims 1) never goes through BLAS.
void check_sizes(int64_t rows, int64_t I, int64_t H, bool matrix_w_hh = true) {
  check_blas_size("x", checked_product("x", rows, I));
  check_blas_size("the output", checked_product("the output", rows, H));
  check_blas_size("w_ih", checked_product("w_ih", H, I));
  if (matrix_w_hh) check_blas_size("w_hh", checked_product("w_hh", H, H));
}

// Sizes from x, w_ih and batch_sizes, checked. batch_sizes_storage keeps the counts alive.
Problem make_problem(const py::array& x, const py::array& w_ih, const py::object& batch_sizes,
                     bool reverse, const py::object& nonlinearity,
                     std::vector<int64_t>& batch_sizes_storage, bool matrix_w_hh = true) {
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
  check_sizes(p.total_rows(), p.input_size, p.hidden_size, matrix_w_hh);
  return p;
}

// float32 or float64, from x.
bool is_double(const py::array& x, const char* name) {
  if (has_dtype<float>(x)) return false;
  if (has_dtype<double>(x)) return true;
  throw py::type_error(std::string(name) + " must have dtype float32 or float64, got " +
                       dtype_name(x));
}

std::vector<int64_t> with_width(const py::array& x, int64_t width) {
  auto s = shape_of(x);
  s.back() = width;
  return s;
}

// What the caller calls x, h0 and c0 (the torch-level API: input, hx and cx).
struct Names {
  const char* x;
  const char* h0;
  const char* c0;
};

// The cells of core/cells/list.h, by name.

// The names of the cells C for which pick(C{}) is true: 'rnn', 'lstm', … (quoted) or
// rnn, lstm, ….
template <typename F>
std::string cell_names(F&& pick, bool quoted = true) {
  const std::string q = quoted ? "'" : "";
  std::string names;
  rnnkern::for_each_cell([&](auto cell) {
    if (!pick(cell)) return;
    names += (names.empty() ? q : ", " + q) + std::string(decltype(cell)::kName) + q;
  });
  return names;
}

std::string all_cell_names() {
  return cell_names([](auto) { return true; });
}

// f(C{}) for the cell named `name`, or a ValueError listing the cells.
template <typename R = py::object, typename F>
R with_cell(const std::string& name, F&& f) {
  std::optional<R> result;
  rnnkern::for_each_cell([&](auto cell) {
    if (!result && name == decltype(cell)::kName) result.emplace(f(cell));
  });
  if (!result)
    throw py::value_error("cell must be one of " + all_cell_names() + ", got '" + name + "'");
  return std::move(*result);
}

// The activation of a cell that takes one, else tanh after checking that none other was asked
// for (None or 'tanh').
template <typename C>
Activation cell_activation(const py::object& nonlinearity) {
  if (C::kNonlinearity) return parse_nonlinearity(nonlinearity);
  if (!nonlinearity.is_none() &&
      !(py::isinstance<py::str>(nonlinearity) && nonlinearity.cast<std::string>() == "tanh"))
    throw py::value_error(std::string("the ") + C::kName +
                          " takes no nonlinearity: it must be None or 'tanh', got " +
                          py::repr(nonlinearity).cast<std::string>());
  return Activation::kTanh;
}

// The proj_size P from w_hr (P, H) with 0 < P < H, or 0 without w_hr.
template <typename C>
int64_t proj_size(const py::object& w_hr, const Problem& p) {
  if (w_hr.is_none()) return 0;
  if (!C::kProjection)
    throw py::value_error("w_hr (proj_size) is for the " +
                          cell_names([](auto c) { return decltype(c)::kProjection; }, false) +
                          " only");
  const auto s = shape_of(as_array("w_hr", w_hr));
  if (s.size() != 2 || s[1] != p.hidden_size || s[0] < 1 || s[0] >= p.hidden_size)
    throw py::value_error("w_hr must have shape (proj_size, " + std::to_string(p.hidden_size) +
                          ") with 0 < proj_size < " + std::to_string(p.hidden_size) + ", got " +
                          shape_str(s));
  return s[0];
}

// Sizes from x, w_ih (G·H, I), batch_sizes and w_hr, checked: make_problem for x and
// batch_sizes, w_ih checked here first (G > 1) so that its error names G·H.
template <typename C>
Problem cell_problem(const py::array& x, const py::array& w_ih, const py::object& batch_sizes,
                     bool reverse, const py::object& nonlinearity, const py::object& w_hr,
                     std::vector<int64_t>& storage) {
  constexpr int64_t G = C::kGates;
  constexpr bool matrix_w_hh = C::kWhhDims == 2;
  const Activation act = cell_activation<C>(nonlinearity);
  if (G == 1) {
    Problem p = make_problem(x, w_ih, batch_sizes, reverse, nonlinearity_name(act), storage,
                             matrix_w_hh);
    p.proj_size = proj_size<C>(w_hr, p);
    return p;
  }
  const auto xs = shape_of(x), ws = shape_of(w_ih);
  if ((xs.size() == 2 || xs.size() == 3) &&
      (ws.size() != 2 || ws[0] < G || ws[0] % G || ws[1] != xs.back()))
    throw py::value_error("w_ih must have shape (" + std::to_string(G) + " * hidden_size, " +
                          std::to_string(xs.back()) + ") for the " + C::kName + ", got " +
                          shape_str(ws));
  Problem p = make_problem(x, w_ih, batch_sizes, reverse, nonlinearity_name(act), storage,
                           matrix_w_hh);
  p.hidden_size = ws[0] / G;
  check_sizes(p.total_rows(), p.input_size, ws[0], matrix_w_hh);
  p.proj_size = proj_size<C>(w_hr, p);
  return p;
}

// The shape of w_hh: (G·H, H) or (G·H, P), or (G·H,).
template <typename C>
std::vector<int64_t> w_hh_shape(const Problem& p) {
  const int64_t GH = C::kGates * p.hidden_size;
  if (C::kWhhDims == 1) return {GH};
  return {GH, p.state_size()};
}

// Which gradients layer_backward computes (the others come back as None), and which norms.
struct Wanted {
  bool x, h0, c0, w_ih, w_hh, bias, w_hr, grad_norms, weight_norms;
};

template <typename C, typename T>
py::tuple forward_impl(const py::array& x, const py::object& h0, const py::object& c0,
                       const py::array& w_ih, const py::object& w_hh, const py::object& b_ih,
                       const py::object& b_hh, const py::object& w_hr, const Problem& p,
                       Names names) {
  const int64_t H = p.hidden_size, B = p.batch, GH = C::kGates * H, W = p.state_size();
  const py::object xa = checked<T>(names.x, x, shape_of(x));
  const py::object h0a = checked<T>(names.h0, h0, {B, W});
  const py::object c0a = C::kStates == 2 ? checked<T>(names.c0, c0, {B, H}) : py::none();
  const py::object wia = checked<T>("w_ih", w_ih, {GH, p.input_size});
  const py::object wha = checked<T>("w_hh", w_hh, w_hh_shape<C>(p));
  const py::object bia = checked<T>("b_ih", b_ih, {GH}, true);
  const py::object bha = checked<T>("b_hh", b_hh, {GH}, true);
  const py::object wra = p.proj_size ? checked<T>("w_hr", w_hr, {p.proj_size, H}) : py::none();
  rnnkern::Inputs<T> in;
  in.x = data<T>(xa), in.h0 = data<T>(h0a), in.c0 = data<T>(c0a), in.w_ih = data<T>(wia);
  in.w_hh = data<T>(wha), in.b_ih = data<T>(bia), in.b_hh = data<T>(bha), in.w_hr = data<T>(wra);
  py::array_t<T> y = new_array<T>(with_width(x, W), "the output y");
  rnnkern::Outputs<T> out;
  out.y = y.mutable_data();
  const int count = rnnkern::saved_count<C>(p);
  py::tuple saved(count);
  for (int i = 0; i < count; ++i) {
    const rnnkern::SavedArray s = C::kSaved[i];
    py::array_t<T> a = new_array<T>(with_width(x, s.width * H), std::string("the saved ") + s.name);
    out.saved[i] = a.mutable_data();
    saved[i] = std::move(a);
  }
  const rnnkern::cpu::Workspace workspace =
      new_workspace(sizeof(T) * rnnkern::cpu::forward_workspace_size<C, T>(p));
  T* ws = static_cast<T*>(workspace.data());
  {
    py::gil_scoped_release release;
    rnnkern::cpu::forward<C, T>(p, in, out, ws);
  }
  return py::make_tuple(y, saved);
}

// The saved arrays of forward (a tuple of kSaved's arrays), or an error naming what is wanted.
template <typename C>
py::tuple saved_tuple(const py::object& saved, const Problem& p) {
  const int count = rnnkern::saved_count<C>(p);
  std::string names;
  for (int i = 0; i < count; ++i) names += (i ? ", " : "") + std::string(C::kSaved[i].name);
  if (!py::isinstance<py::tuple>(saved) || py::len(saved) != size_t(count))
    throw py::type_error("saved must be the tuple of " + std::to_string(count) +
                         " arrays (" + names + ") that layer_forward returned for the " +
                         C::kName + ", got " + py::repr(saved).cast<std::string>().substr(0, 80));
  return py::reinterpret_borrow<py::tuple>(saved);
}

template <typename C, typename T>
py::tuple backward_impl(const py::array& x, const py::object& h0, const py::object& c0,
                        const py::array& w_ih, const py::object& w_hh, const py::object& w_hr,
                        const py::object& y, const py::object& saved_, const py::object& grad_y,
                        const py::object& grad_hn, const py::object& grad_cn, const Problem& p,
                        Wanted want, Names names) {
  constexpr bool two = C::kStates == 2;
  const int64_t H = p.hidden_size, B = p.batch, I = p.input_size, GH = C::kGates * H;
  const int64_t W = p.state_size(), P = p.proj_size;
  const auto ys = with_width(x, W);
  const py::tuple saved = saved_tuple<C>(saved_, p);
  const py::object xa = checked<T>(names.x, x, shape_of(x));
  const py::object h0a = checked<T>(names.h0, h0, {B, W});
  const py::object c0a = two ? checked<T>(names.c0, c0, {B, H}) : py::none();
  const py::object wia = checked<T>("w_ih", w_ih, {GH, I});
  const py::object wha = checked<T>("w_hh", w_hh, w_hh_shape<C>(p));
  const py::object ya = checked<T>("y", y, ys);
  std::vector<py::object> sa;
  rnnkern::Outputs<const T> out;
  out.y = data<T>(ya);
  for (size_t i = 0; i < py::len(saved); ++i) {
    const rnnkern::SavedArray s = C::kSaved[i];
    sa.push_back(checked<T>(s.name, saved[i], with_width(x, s.width * H)));
    out.saved[i] = data<T>(sa.back());
  }
  const py::object wra = P ? checked<T>("w_hr", w_hr, {P, H}) : py::none();
  // grad_y is read where it is when its strides allow (the core reads it once, row by row).
  py::object gya = checked_array<T>("grad_y", grad_y, ys);
  rnnkern::Gradients<T> g;
  if (!as_rows(py::reinterpret_borrow<py::array>(gya), g.grad_y)) {
    gya = checked<T>("grad_y", gya, ys);
    g.grad_y = rnnkern::Rows<T>{data<T>(gya), W, 1};
  }
  const py::object ghna = checked<T>("grad_hn", grad_hn, {B, W}, true);
  const py::object gcna = two ? checked<T>("grad_cn", grad_cn, {B, H}, true) : py::none();
  g.grad_hn = data<T>(ghna);
  g.grad_cn = data<T>(gcna);
  rnnkern::Inputs<T> in;
  in.x = data<T>(xa), in.h0 = data<T>(h0a), in.c0 = data<T>(c0a), in.w_ih = data<T>(wia);
  in.w_hh = data<T>(wha), in.w_hr = data<T>(wra);
  py::object gx = new_output(want.x, shape_of(x), g.x, "grad x");
  py::object gh0 = new_output(want.h0, {B, W}, g.h0, "grad h0");
  py::object gc0 = new_output(want.c0 && two, {B, H}, g.c0, "grad c0");
  py::object gwi = new_output(want.w_ih, {GH, I}, g.w_ih, "grad w_ih");
  py::object gwh = new_output(want.w_hh, w_hh_shape<C>(p), g.w_hh, "grad w_hh");
  py::object gbi = new_output(want.bias, {GH}, g.b_ih, "grad b_ih");
  py::object gbh = new_output(want.bias, {GH}, g.b_hh, "grad b_hh");
  py::object gwr = new_output(P && want.w_hr, {P, H}, g.w_hr, "grad w_hr");
  py::object nh = new_output(want.grad_norms, {p.total_rows()}, g.norm_h, "gradient norms");
  py::object nc =
      new_output(want.grad_norms && two, {p.total_rows()}, g.norm_c, "gradient norms (c)");
  py::object nw = new_output(want.weight_norms, {p.steps}, g.norm_w, "weight gradient norms");
  const rnnkern::cpu::Workspace workspace = new_workspace(
      sizeof(T) *
      rnnkern::cpu::backward_workspace_size<C, T>(p, want.grad_norms, want.weight_norms));
  T* ws = static_cast<T*>(workspace.data());
  {
    py::gil_scoped_release release;
    rnnkern::cpu::backward<C, T>(p, in, out, g, ws);
  }
  return py::make_tuple(gx, gh0, gc0, gwi, gwh, gbi, gbh, gwr, nh, nc, nw);
}

py::object layer_forward(const std::string& cell, const py::object& x_, const py::object& h0,
                        const py::object& c0, const py::object& w_ih_, const py::object& w_hh,
                        const py::object& b_ih, const py::object& b_hh, const py::object& w_hr,
                        const py::object& nonlinearity, const py::object& batch_sizes,
                        bool reverse, const std::string& x_name, const std::string& h0_name,
                        const std::string& c0_name) {
  return with_cell(cell, [&](auto c) {
    using C = decltype(c);
    const Names names{x_name.c_str(), h0_name.c_str(), c0_name.c_str()};
    const py::array x = as_array(names.x, x_);
    const bool dbl = is_double(x, names.x);
    const py::array w_ih = as_array("w_ih", w_ih_);
    std::vector<int64_t> storage;
    const Problem p =
        cell_problem<C>(x, w_ih, batch_sizes, reverse, nonlinearity, w_hr, storage);
    return dbl ? forward_impl<C, double>(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, p, names)
               : forward_impl<C, float>(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, p, names);
  });
}

py::object layer_backward(const std::string& cell, const py::object& x_, const py::object& h0,
                         const py::object& c0, const py::object& w_ih_, const py::object& w_hh,
                         const py::object& w_hr, const py::object& y, const py::object& saved,
                         const py::object& grad_y, const py::object& grad_hn,
                         const py::object& grad_cn, const py::object& nonlinearity,
                         const py::object& batch_sizes, bool reverse, bool need_x,
                         bool need_h0, bool need_c0, bool need_w_ih, bool need_w_hh,
                         bool need_bias, bool need_w_hr, bool grad_norms, bool weight_norms,
                         const std::string& x_name, const std::string& h0_name,
                         const std::string& c0_name) {
  return with_cell(cell, [&](auto c) {
    using C = decltype(c);
    const Wanted want{need_x,    need_h0,   need_c0,   need_w_ih,
                      need_w_hh, need_bias, need_w_hr, grad_norms, weight_norms};
    const Names names{x_name.c_str(), h0_name.c_str(), c0_name.c_str()};
    const py::array x = as_array(names.x, x_);
    const bool dbl = is_double(x, names.x);
    const py::array w_ih = as_array("w_ih", w_ih_);
    std::vector<int64_t> storage;
    const Problem p =
        cell_problem<C>(x, w_ih, batch_sizes, reverse, nonlinearity, w_hr, storage);
    auto run = [&](auto zero) {
      return backward_impl<C, decltype(zero)>(x, h0, c0, w_ih, w_hh, w_hr, y, saved, grad_y,
                                              grad_hn, grad_cn, p, want, names);
    };
    return dbl ? run(double(0)) : run(float(0));
  });
}

// The time-major problem of the pointer variants, its sizes checked; the pointers in
// `required` must not be 0.
template <typename C>
Problem pointer_problem(int64_t T, int64_t B, int64_t I, int64_t H,
                        const py::object& nonlinearity, bool reverse,
                        const std::vector<std::uintptr_t>& required) {
  Problem p;
  p.act = cell_activation<C>(nonlinearity);
  p.reverse = reverse;
  p.steps = T;
  p.batch = B;
  p.input_size = I;
  p.hidden_size = H;
  bool set = true;
  for (const std::uintptr_t ptr : required) set = set && ptr;
  if (T < 1 || B < 1 || I < 1 || H < 1 || !set)
    throw py::value_error("sizes must be positive and pointers set");
  check_sizes(checked_product("x", T, B), I, checked_product("w_ih", C::kGates, H),
              C::kWhhDims == 2);
  return p;
}

// The saved arrays' pointers: as many as the cell saves (without proj_size).
template <typename C>
std::vector<std::uintptr_t> saved_pointers(const py::sequence& saved) {
  const size_t count = size_t(rnnkern::saved_count<C>(Problem{}));
  if (py::len(saved) != count)
    throw py::value_error(std::string("saved must hold ") + std::to_string(count) +
                          " pointers for the " + C::kName + ", got " +
                          std::to_string(py::len(saved)));
  std::vector<std::uintptr_t> out;
  for (const auto& s : saved) out.push_back(s.cast<std::uintptr_t>());
  return out;
}

// layer_forward on raw pointers (torch's data_ptr()) to C-contiguous, aligned arrays of one
// dtype whose shapes the caller has checked: x (T, B, I), h0, c0 (B, H), w_ih (G·H, I), w_hh
// (G·H, H), or (G·H,) for a cell whose kWhhDims is 1 (cell_info's w_hh_shape), b_ih, b_hh
// (G·H) or 0, y (T, B, H), saved (T, B, width). No batch_sizes, no w_hr.
// For rnnkern.functional's small calls, where converting tensors to arrays costs more than
// the kernel. Sizes are checked here, pointers cannot be.
void layer_forward_pointers(const std::string& cell, bool is_double, int64_t T, int64_t B,
                            int64_t I, int64_t H, std::uintptr_t x, std::uintptr_t h0,
                            std::uintptr_t c0, std::uintptr_t w_ih, std::uintptr_t w_hh,
                            std::uintptr_t b_ih, std::uintptr_t b_hh, std::uintptr_t y,
                            const py::sequence& saved_, const py::object& nonlinearity,
                            bool reverse) {
  with_cell<int>(cell, [&](auto c) {
    using C = decltype(c);
    const auto saved = saved_pointers<C>(saved_);
    std::vector<std::uintptr_t> required{x, h0, w_ih, w_hh, y};
    if (C::kStates == 2) required.push_back(c0);
    required.insert(required.end(), saved.begin(), saved.end());
    const Problem p = pointer_problem<C>(T, B, I, H, nonlinearity, reverse, required);
    auto run = [&](auto zero) {
      using T_ = decltype(zero);
      auto ptr = [](std::uintptr_t a) { return reinterpret_cast<T_*>(a); };
      rnnkern::Inputs<T_> in;
      in.x = ptr(x), in.h0 = ptr(h0), in.c0 = ptr(c0), in.w_ih = ptr(w_ih);
      in.w_hh = ptr(w_hh), in.b_ih = ptr(b_ih), in.b_hh = ptr(b_hh);
      rnnkern::Outputs<T_> out;
      out.y = ptr(y);
      for (size_t i = 0; i < saved.size(); ++i) out.saved[i] = ptr(saved[i]);
      const rnnkern::cpu::Workspace workspace =
          new_workspace(sizeof(T_) * rnnkern::cpu::forward_workspace_size<C, T_>(p));
      T_* ws = static_cast<T_*>(workspace.data());
      py::gil_scoped_release release;
      rnnkern::cpu::forward<C, T_>(p, in, out, ws);
    };
    if (is_double)
      run(double(0));
    else
      run(float(0));
    return 0;
  });
}

// layer_backward on raw pointers, as layer_forward_pointers: x, h0, c0, w_ih, w_hh, y and saved
// as given to and returned by it, grad_y (T, B, H) and grad_hn, grad_cn (B, H) or 0
// C-contiguous; each gradient (norms: T·B float64) is computed where its pointer is not 0.
void layer_backward_pointers(const std::string& cell, bool is_double, int64_t T, int64_t B,
                             int64_t I, int64_t H, std::uintptr_t x, std::uintptr_t h0,
                             std::uintptr_t c0, std::uintptr_t w_ih, std::uintptr_t w_hh,
                             std::uintptr_t y, const py::sequence& saved_,
                             std::uintptr_t grad_y, std::uintptr_t grad_hn,
                             std::uintptr_t grad_cn, std::uintptr_t grad_x,
                             std::uintptr_t grad_h0, std::uintptr_t grad_c0,
                             std::uintptr_t grad_w_ih, std::uintptr_t grad_w_hh,
                             std::uintptr_t grad_b_ih, std::uintptr_t grad_b_hh,
                             std::uintptr_t norm_h, std::uintptr_t norm_c,
                             std::uintptr_t norm_w, const py::object& nonlinearity,
                             bool reverse) {
  with_cell<int>(cell, [&](auto c) {
    using C = decltype(c);
    const auto saved = saved_pointers<C>(saved_);
    std::vector<std::uintptr_t> required{x, h0, w_ih, w_hh, y, grad_y};
    if (C::kStates == 2) required.push_back(c0);
    required.insert(required.end(), saved.begin(), saved.end());
    const Problem p = pointer_problem<C>(T, B, I, H, nonlinearity, reverse, required);
    auto run = [&](auto zero) {
      using T_ = decltype(zero);
      auto ptr = [](std::uintptr_t a) { return reinterpret_cast<T_*>(a); };
      rnnkern::Inputs<T_> in;
      in.x = ptr(x), in.h0 = ptr(h0), in.c0 = ptr(c0), in.w_ih = ptr(w_ih), in.w_hh = ptr(w_hh);
      rnnkern::Outputs<const T_> out;
      out.y = ptr(y);
      for (size_t i = 0; i < saved.size(); ++i) out.saved[i] = ptr(saved[i]);
      rnnkern::Gradients<T_> g;
      g.grad_y = rnnkern::Rows<T_>{ptr(grad_y), H, 1};
      g.grad_hn = ptr(grad_hn), g.grad_cn = C::kStates == 2 ? ptr(grad_cn) : nullptr;
      g.x = ptr(grad_x), g.h0 = ptr(grad_h0), g.c0 = C::kStates == 2 ? ptr(grad_c0) : nullptr;
      g.w_ih = ptr(grad_w_ih), g.w_hh = ptr(grad_w_hh);
      g.b_ih = ptr(grad_b_ih), g.b_hh = ptr(grad_b_hh);
      g.norm_h = reinterpret_cast<double*>(norm_h);
      g.norm_c = C::kStates == 2 ? reinterpret_cast<double*>(norm_c) : nullptr;
      g.norm_w = reinterpret_cast<double*>(norm_w);
      const rnnkern::cpu::Workspace workspace = new_workspace(
          sizeof(T_) * rnnkern::cpu::backward_workspace_size<C, T_>(p, norm_h != 0, norm_w != 0));
      T_* ws = static_cast<T_*>(workspace.data());
      py::gil_scoped_release release;
      rnnkern::cpu::backward<C, T_>(p, in, out, g, ws);
    };
    if (is_double)
      run(double(0));
    else
      run(float(0));
    return 0;
  });
}

// A whole stack's inference (cpu::stack_forward) on raw pointers, as layer_forward_pointers:
// x (T, B, I); h0, c0 (L·D, B, H) (c0 0 for a cell of one state); weights: 4 pointers per
// layer-direction (w_ih, w_hh, b_ih, b_hh; biases 0 for none); y (T, B, D·H); h_n, c_n like h0.
// For the modules' calls that need no gradient.
void stack_forward_pointers(const std::string& cell, bool is_double, int64_t T, int64_t B,
                            int64_t I, int64_t H, int64_t layers, int64_t directions,
                            std::uintptr_t x, std::uintptr_t h0, std::uintptr_t c0,
                            const py::sequence& weights_, std::uintptr_t y,
                            std::uintptr_t h_n, std::uintptr_t c_n,
                            const py::object& nonlinearity) {
  std::vector<std::uintptr_t> weights;
  for (const auto& w : weights_) weights.push_back(w.cast<std::uintptr_t>());
  with_cell<int>(cell, [&](auto c) {
    using C = decltype(c);
    if (layers < 1 || (directions != 1 && directions != 2))
      throw py::value_error("layers must be positive and directions 1 or 2, got " +
                            std::to_string(layers) + " and " + std::to_string(directions));
    if (int64_t(weights.size()) != 4 * layers * directions)
      throw py::value_error("weights must hold 4 pointers per layer and direction (" +
                            std::to_string(4 * layers * directions) + "), got " +
                            std::to_string(weights.size()));
    std::vector<std::uintptr_t> required{x, h0, y, h_n};
    if (C::kStates == 2) required.insert(required.end(), {c0, c_n});
    for (int64_t i = 0; i < layers * directions; ++i)
      required.insert(required.end(), {weights[4 * i], weights[4 * i + 1]});
    // The widest layer input: I, or D·H from the second layer on.
    const int64_t widest = layers > 1 && directions * H > I ? directions * H : I;
    const Problem p = pointer_problem<C>(T, B, widest, H, nonlinearity, false, required);
    checked_product("y", checked_product("y", T * B, directions), H);
    rnnkern::cpu::Stack s;
    s.steps = T, s.batch = B, s.input_size = I, s.hidden_size = H;
    s.layers = layers, s.directions = directions, s.act = p.act;
    auto run = [&](auto zero) {
      using T_ = decltype(zero);
      auto ptr = [](std::uintptr_t a) { return reinterpret_cast<T_*>(a); };
      std::vector<const T_*> w(weights.size());
      for (size_t i = 0; i < weights.size(); ++i) w[i] = ptr(weights[i]);
      const rnnkern::cpu::Workspace workspace =
          new_workspace(sizeof(T_) * rnnkern::cpu::stack_workspace_size<C, T_>(s));
      T_* ws = static_cast<T_*>(workspace.data());
      py::gil_scoped_release release;
      rnnkern::cpu::stack_forward<C, T_>(s, ptr(x), ptr(h0), C::kStates == 2 ? ptr(c0) : nullptr,
                                         w.data(), ptr(y), ptr(h_n),
                                         C::kStates == 2 ? ptr(c_n) : nullptr, ws);
    };
    if (is_double)
      run(double(0));
    else
      run(float(0));
    return 0;
  });
}

// What the cell's policy says of itself (core/cells/).
template <typename C>
py::dict cell_info_of() {
  py::dict d;
  d["name"] = C::kName;
  d["gates"] = C::kGates;
  d["states"] = C::kStates;
  d["takes_nonlinearity"] = C::kNonlinearity;
  d["projection"] = C::kProjection;
  py::list saved;
  for (int i = 0; i < C::kSavedCount; ++i)
    saved.append(py::make_tuple(C::kSaved[i].name, C::kSaved[i].width,
                                C::kSaved[i].projection_only));
  d["saved"] = saved;
  const std::string rows = C::kGates == 1 ? "hidden_size"
                                          : std::to_string(C::kGates) + " * hidden_size";
  if (C::kWhhDims == 1)
    d["w_hh_shape"] = py::make_tuple(rows);
  else
    d["w_hh_shape"] = py::make_tuple(rows, "hidden_size");
  return d;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "rnnkern's compiled core. Use rnnkern.numpy_api or rnnkern.functional instead.";
  m.def("cells", [] {
    py::list names;
    rnnkern::for_each_cell([&](auto cell) { names.append(decltype(cell)::kName); });
    return names;
  }, "The names of the cells, in the order of csrc/core/cells/list.h.");
  m.def("cell_info", [](const std::string& cell) {
    return with_cell(cell, [](auto c) { return cell_info_of<decltype(c)>(); });
  }, py::arg("cell"),
        "A cell's facts: name, gates (G), states (1: h; 2: h and c), takes_nonlinearity, "
        "projection (takes w_hr), saved ((name, width in units of H, with w_hr only) of each "
        "array layer_forward saves), w_hh_shape (without w_hr; with it the last is proj_size).");
  m.def("layer_forward", &layer_forward, py::arg("cell"), py::arg("x"), py::arg("h0"),
        py::arg("c0"), py::arg("w_ih"), py::arg("w_hh"), py::arg("b_ih"), py::arg("b_hh"),
        py::arg("w_hr"), py::arg("nonlinearity"), py::arg("batch_sizes"), py::arg("reverse"),
        py::arg("x_name") = "x", py::arg("h0_name") = "h0", py::arg("c0_name") = "c0",
        "One layer-direction of `cell` (see cells()) forward: (y, saved). y (T, B, H) or packed "
        "(N, H) (width proj_size with w_hr) holds every h_t; saved is the tuple of arrays "
        "backward reads, shaped like x with cell_info's widths: () for the rnn, (gates, c) or "
        "(gates, c, m) with w_hr for the lstm, (gates, hidden_n) for the gru. c0 is None for "
        "cells of one state, w_hr None but for the lstm's proj_size, nonlinearity 'tanh' or "
        "'relu' (None or 'tanh' for cells that take none).");
  m.def("layer_backward", &layer_backward, py::arg("cell"), py::arg("x"), py::arg("h0"),
        py::arg("c0"), py::arg("w_ih"), py::arg("w_hh"), py::arg("w_hr"), py::arg("y"),
        py::arg("saved"), py::arg("grad_y"), py::arg("grad_hn"), py::arg("grad_cn"),
        py::arg("nonlinearity"), py::arg("batch_sizes"), py::arg("reverse"),
        py::arg("need_x") = true, py::arg("need_h0") = true, py::arg("need_c0") = true,
        py::arg("need_w_ih") = true, py::arg("need_w_hh") = true, py::arg("need_bias") = true,
        py::arg("need_w_hr") = true, py::arg("grad_norms") = false,
        py::arg("weight_norms") = false, py::arg("x_name") = "x", py::arg("h0_name") = "h0",
        py::arg("c0_name") = "c0",
        "Backward of layer_forward: (grad_x, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_b_ih, "
        "grad_b_hh, grad_w_hr, norm_h, norm_c, norm_w), None where not wanted or not the "
        "cell's. grad_hn, grad_cn may be None (zero). norm_h / norm_c (unless grad_norms is "
        "False): the (N,) float64 norms of the whole ∂L/∂h_t and ∂L/∂c_t per row. norm_w "
        "(unless weight_norms is False): the (T,) float64 norms ‖δ_tᵀ h_{t-1}‖_F of each "
        "step's term of ∂L/∂W_hh, in time order.");
  m.def("layer_forward_pointers", &layer_forward_pointers, py::arg("cell"),
        py::arg("is_double"), py::arg("T"), py::arg("B"), py::arg("I"), py::arg("H"),
        py::arg("x"), py::arg("h0"), py::arg("c0"), py::arg("w_ih"), py::arg("w_hh"),
        py::arg("b_ih"), py::arg("b_hh"), py::arg("y"), py::arg("saved"),
        py::arg("nonlinearity"), py::arg("reverse"),
        "layer_forward on data_ptr()s of checked C-contiguous arrays (no batch_sizes, no "
        "w_hr): saved holds the pointers of the saved arrays; see bindings.cpp.");
  m.def("layer_backward_pointers", &layer_backward_pointers, py::arg("cell"),
        py::arg("is_double"), py::arg("T"), py::arg("B"), py::arg("I"), py::arg("H"),
        py::arg("x"), py::arg("h0"), py::arg("c0"), py::arg("w_ih"), py::arg("w_hh"),
        py::arg("y"), py::arg("saved"), py::arg("grad_y"), py::arg("grad_hn"),
        py::arg("grad_cn"), py::arg("grad_x"), py::arg("grad_h0"), py::arg("grad_c0"),
        py::arg("grad_w_ih"), py::arg("grad_w_hh"), py::arg("grad_b_ih"),
        py::arg("grad_b_hh"), py::arg("norm_h"), py::arg("norm_c"), py::arg("norm_w"),
        py::arg("nonlinearity"), py::arg("reverse"),
        "layer_backward on data_ptr()s of checked C-contiguous arrays; a gradient is computed "
        "where its pointer is not 0; see bindings.cpp.");
  m.def("stack_forward_pointers", &stack_forward_pointers, py::arg("cell"),
        py::arg("is_double"), py::arg("T"), py::arg("B"), py::arg("I"), py::arg("H"),
        py::arg("layers"), py::arg("directions"), py::arg("x"), py::arg("h0"), py::arg("c0"),
        py::arg("weights"), py::arg("y"), py::arg("h_n"), py::arg("c_n"),
        py::arg("nonlinearity"),
        "A stack of layers and directions forward, no gradient, on data_ptr()s of checked "
        "C-contiguous arrays (time-major, no batch_sizes, no w_hr); see bindings.cpp.");
  m.def("empty_cache", [] { return rnnkern::cpu::pool_clear(); },
        "Frees every cached block (outputs, workspaces, idle scratch); returns the bytes freed.");
  m.def(
      "fma_peak_gflops",
      [](bool is_double, int threads, double seconds) {
        if (threads < 1)
          throw py::value_error("threads must be at least 1, got " + std::to_string(threads));
        if (!(seconds > 0 && seconds <= 60))
          throw py::value_error("seconds must be in (0, 60], got " + std::to_string(seconds));
        py::gil_scoped_release release;
        return is_double ? rnnkern::cpu::fma_peak_gflops<double>(threads, seconds)
                         : rnnkern::cpu::fma_peak_gflops<float>(threads, seconds);
      },
      py::arg("is_double"), py::arg("threads"), py::arg("seconds") = 0.3,
      "The FMA peak in GFLOP/s of the kernels' instruction set on `threads` threads: vector "
      "FMA chains for about `seconds` (a warm-up, then the best of three runs).");
  m.def(
      "blas_gemm_gflops",
      [](bool is_double, int64_t n, int repeats) {
        if (n < 1 || n > 8192)
          throw py::value_error("n must be in [1, 8192], got " + std::to_string(n));
        if (repeats < 1)
          throw py::value_error("repeats must be at least 1, got " + std::to_string(repeats));
        py::gil_scoped_release release;
        return is_double ? rnnkern::cpu::gemm_gflops<double>(n, repeats)
                         : rnnkern::cpu::gemm_gflops<float>(n, repeats);
      },
      py::arg("is_double"), py::arg("n") = 2048, py::arg("repeats") = 3,
      "rnnkern's OpenBLAS GEMM rate in GFLOP/s on n x n x n (the best of `repeats` calls).");
  m.def(
      "blas_info",
      [] {
        py::dict d;
        d["core"] = std::string(rnnkern::cpu::blas_core());
        d["config"] = std::string(rnnkern::cpu::blas_config());
        return d;
      },
      "What rnnkern's OpenBLAS says of itself: its kernel set in use (core) and build (config).");
  m.def("isa", [] { return std::string(rnnkern::cpu::isa()); },
        "Instruction set of the recurrent kernels in use: avx512, avx2 or generic.");
}
