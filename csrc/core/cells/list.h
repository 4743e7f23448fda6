// The cells: the one place that lists them. Everything that enumerates cells (the CPU
// kernels' passes per instruction set, the CPU backend's instantiations, the bindings' cell
// names and rnnkern._core.cells()) goes through RNNKERN_CELLS or Cells. A new cell is its
// header and one entry here.
#pragma once

#include "elman.h"
#include "gru.h"
#include "indrnn.h"
#include "lstm.h"

// X(Cell) for every cell, in the order rnnkern._core.cells() lists them.
#define RNNKERN_CELLS(X) X(Elman) X(Lstm) X(Gru) X(IndRnn)

namespace rnnkern {

template <typename... C>
struct CellList {};

namespace detail {
template <typename Ignored, typename... C>
struct MakeCellList {
  using type = CellList<C...>;
};
}  // namespace detail

#define RNNKERN_CELL_ARGUMENT(C) , C
using Cells = detail::MakeCellList<void RNNKERN_CELLS(RNNKERN_CELL_ARGUMENT)>::type;
#undef RNNKERN_CELL_ARGUMENT

namespace detail {
template <typename F, typename... C>
void for_each_of(CellList<C...>, F& f) {
  (f(C{}), ...);
}
}  // namespace detail

// f(C{}) for every cell C of the list, in order.
template <typename F>
void for_each_cell(F&& f) {
  detail::for_each_of(Cells{}, f);
}

}  // namespace rnnkern
