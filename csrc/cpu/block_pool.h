// Large host buffers kept for reuse after release. Every fresh large allocation is page-
// faulted in one 4 KiB page at a time (about 1 µs each here), which at mid sizes costs more
// than the kernels: a train step's outputs and workspaces come back to the pool when freed
// and are handed out again at the next step. What the pool keeps is capped by recent demand:
// live and cached blocks together stay within an eighth more than the most that was live at
// once lately.
#pragma once

#include <cstddef>

namespace rnnkern::cpu {

// Outputs of at least this many bytes come from the pool; smaller ones are cheap to allocate.
constexpr std::size_t kPoolMinBytes = std::size_t(1) << 16;

// 64-byte aligned memory for `bytes` bytes (a cached block when one fits), or nullptr if the
// system is out of memory.
void* pool_allocate(std::size_t bytes);
// Gives a block from pool_allocate back; it is cached for reuse within the pool's limit.
void pool_release(void* block);
// Frees every cached block and every per-thread scratch buffer not in use; returns the bytes
// freed.
std::size_t pool_clear();

// A block of the pool for the length of one call (a kernel's workspace), given back when this
// object is destroyed. Throws std::bad_alloc when there is no memory for it.
class Workspace {
 public:
  explicit Workspace(std::size_t bytes);
  ~Workspace();
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  void* data() const { return block_; }

 private:
  void* block_;
};

// Per-thread scratch buffers kept between calls (used inside parallel regions, so nothing
// here throws). scratch_acquire locks the calling thread's buffer for `slot`, grows it to
// `bytes` if needed and returns it; it returns nullptr, unlocked and with the old buffer
// kept, when there is no memory for it. A non-null buffer stays the thread's until
// scratch_release; pool_clear frees it only when it is released.
enum class ScratchSlot : int { kRowCopy = 0, kSplitK = 1, kPackedRows = 2 };
void* scratch_acquire(ScratchSlot slot, std::size_t bytes) noexcept;
void scratch_release(ScratchSlot slot) noexcept;

}  // namespace rnnkern::cpu
