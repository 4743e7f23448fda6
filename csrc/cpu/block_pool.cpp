#include "block_pool.h"

#include <sys/mman.h>

#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <new>
#include <unordered_map>
#include <utility>
#include <vector>

namespace rnnkern::cpu {
namespace {

constexpr std::size_t kPage = 4096;
constexpr std::size_t kHugePage = std::size_t(2) << 20;
// Blocks from this size on are mapped directly, so that freeing one gives it back to the
// system (the C heap may keep freed memory mapped).
constexpr std::size_t kMapMinBytes = std::size_t(1) << 20;
// Recent demand: the most bytes live at once during the last kWindow allocations, or during
// the kWindow before them.
constexpr int kWindow = 64;

// Larger requests fail (their rounded-up size, plus alignment, would wrap around).
constexpr std::size_t kMaxBytes = SIZE_MAX / 2;

std::size_t capacity_for(std::size_t bytes) {
  return bytes <= kPage ? kPage : (bytes + kPage - 1) / kPage * kPage;
}

// Whole pages, 64-byte aligned; nullptr when there is no memory. Under AddressSanitizer every
// block comes from the C heap, whose blocks it checks.
void* system_allocate(std::size_t capacity) noexcept {
#if !defined(__SANITIZE_ADDRESS__)
  if (capacity >= kMapMinBytes) {
    // Blocks of huge-page size are aligned to it so that the kernel can back them with huge
    // pages (one fault per 2 MiB) where transparent huge pages are on request.
    const bool huge = capacity >= kHugePage;
    const std::size_t length = huge ? capacity + kHugePage : capacity;
    void* p = mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return nullptr;
    if (!huge) return p;
    const std::uintptr_t start = reinterpret_cast<std::uintptr_t>(p);
    const std::uintptr_t block = (start + kHugePage - 1) / kHugePage * kHugePage;
    if (block > start) munmap(p, block - start);
    if (start + length > block + capacity)
      munmap(reinterpret_cast<void*>(block + capacity), start + length - (block + capacity));
    madvise(reinterpret_cast<void*>(block), capacity, MADV_HUGEPAGE);
    return reinterpret_cast<void*>(block);
  }
#endif
  void* block = nullptr;
  return posix_memalign(&block, 64, capacity) == 0 ? block : nullptr;
}

void system_free(void* block, std::size_t capacity) noexcept {
#if !defined(__SANITIZE_ADDRESS__)
  if (capacity >= kMapMinBytes) {
    munmap(block, capacity);
    return;
  }
#endif
  std::free(block);
}

struct Pool {
  std::mutex mutex;
  std::unordered_map<void*, std::size_t> live;  // block -> capacity
  std::vector<std::pair<void*, std::size_t>> cached;  // oldest first
  std::size_t live_bytes = 0, cached_bytes = 0;
  std::size_t peak = 0, previous_peak = 0;  // most live bytes in this window and the last
  int allocations = 0;  // in this window

  // Frees the oldest cached blocks until live and cached bytes fit in recent demand, and an
  // eighth more: blocks never live at once (a forward's workspace, a backward's) are all
  // asked for again at the next step (with no margin, 5% slower at T=200, B=32, H=256).
  void trim() {
    const std::size_t most = peak > previous_peak ? peak : previous_peak;
    const std::size_t limit = most + most / 8;
    std::size_t n = 0;
    for (; n < cached.size() && live_bytes + cached_bytes > limit; ++n) {
      system_free(cached[n].first, cached[n].second);
      cached_bytes -= cached[n].second;
    }
    cached.erase(cached.begin(), cached.begin() + std::ptrdiff_t(n));
  }

  std::size_t free_cached() {
    for (const auto& block : cached) system_free(block.first, block.second);
    const std::size_t freed = cached_bytes;
    cached.clear();
    cached_bytes = 0;
    return freed;
  }
};

Pool& pool() {
  static Pool* p = new Pool;  // never destroyed: blocks may be released during shutdown
  return *p;
}

std::size_t free_cached_blocks() {
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mutex);
  return p.free_cached();
}

// Per-thread scratch buffers, listed (intrusively: registering allocates nothing) so that
// pool_clear can reach every thread's.
constexpr int kScratchSlots = 3;

struct Scratch {
  std::mutex mutex;  // held from scratch_acquire to scratch_release
  void* block = nullptr;
  std::size_t capacity = 0;

  std::size_t free_block() {
    const std::size_t freed = capacity;
    if (block) system_free(block, capacity);
    block = nullptr;
    capacity = 0;
    return freed;
  }
};

struct ThreadScratch;

struct Registry {
  std::mutex mutex;
  ThreadScratch* first = nullptr;
};

Registry& registry() {
  static Registry* r = new Registry;  // never destroyed: threads may exit during shutdown
  return *r;
}

struct ThreadScratch {
  Scratch slots[kScratchSlots];
  ThreadScratch* prev = nullptr;
  ThreadScratch* next = nullptr;

  ThreadScratch() {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mutex);
    next = r.first;
    if (next) next->prev = this;
    r.first = this;
  }
  ~ThreadScratch() {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mutex);
    (prev ? prev->next : r.first) = next;
    if (next) next->prev = prev;
    for (Scratch& s : slots) s.free_block();
  }
};

Scratch& this_thread_slot(ScratchSlot slot) {
  thread_local ThreadScratch scratch;
  return scratch.slots[int(slot)];
}

}  // namespace

void* pool_allocate(std::size_t bytes) {
  if (bytes > kMaxBytes) return nullptr;
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mutex);
  if (++p.allocations == kWindow) {
    p.previous_peak = p.peak;
    p.peak = p.live_bytes;
    p.allocations = 0;
  }
  // The smallest cached block that fits without wasting more than half of it.
  std::size_t best = p.cached.size();
  for (std::size_t i = 0; i < p.cached.size(); ++i) {
    const std::size_t cap = p.cached[i].second;
    if (cap >= bytes && cap / 2 <= bytes && (best == p.cached.size() || cap < p.cached[best].second))
      best = i;
  }
  if (best != p.cached.size()) {
    const auto block = p.cached[best];
    try {
      p.live.emplace(block.first, block.second);
    } catch (const std::bad_alloc&) {
      return nullptr;
    }
    p.cached.erase(p.cached.begin() + std::ptrdiff_t(best));
    p.cached_bytes -= block.second;
    p.live_bytes += block.second;
    if (p.live_bytes > p.peak) p.peak = p.live_bytes;
    return block.first;
  }
  // A fresh block: first free what recent demand, with this block live, no longer covers.
  const std::size_t capacity = capacity_for(bytes);
  const std::size_t peak = p.peak;
  p.live_bytes += capacity;
  if (p.live_bytes > p.peak) p.peak = p.live_bytes;
  p.trim();
  void* block = system_allocate(capacity);
  if (!block && p.free_cached() > 0) block = system_allocate(capacity);
  if (block) {
    try {
      p.live.emplace(block, capacity);
      return block;
    } catch (const std::bad_alloc&) {
      system_free(block, capacity);
    }
  }
  p.live_bytes -= capacity;
  p.peak = peak;
  return nullptr;
}

void pool_release(void* block) {
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mutex);
  const auto it = p.live.find(block);
  if (it == p.live.end()) return;
  const std::size_t capacity = it->second;
  p.live.erase(it);
  p.live_bytes -= capacity;
  try {
    p.cached.emplace_back(block, capacity);
  } catch (const std::bad_alloc&) {
    system_free(block, capacity);
    return;
  }
  p.cached_bytes += capacity;
  p.trim();
}

std::size_t pool_clear() {
  std::size_t freed = free_cached_blocks();
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  for (ThreadScratch* t = r.first; t; t = t->next)
    for (Scratch& s : t->slots) {
      std::lock_guard<std::mutex> in_use(s.mutex);  // waits for a step that uses it
      freed += s.free_block();
    }
  return freed;
}

Workspace::Workspace(std::size_t bytes) : block_(pool_allocate(bytes)) {
  if (!block_) throw std::bad_alloc();
}

Workspace::~Workspace() { pool_release(block_); }

void* scratch_acquire(ScratchSlot slot, std::size_t bytes) noexcept {
  Scratch& s = this_thread_slot(slot);
  s.mutex.lock();
  if (bytes > kMaxBytes) {
    s.mutex.unlock();
    return nullptr;
  }
  if (bytes > s.capacity) {
    // The new block first: when there is no memory for it, the old one stays as it was.
    const std::size_t capacity = capacity_for(bytes);
    void* block = system_allocate(capacity);
    if (!block && free_cached_blocks() > 0) block = system_allocate(capacity);
    if (!block) {
      s.mutex.unlock();
      return nullptr;
    }
    s.free_block();
    s.block = block;
    s.capacity = capacity;
  }
  return s.block;
}

void scratch_release(ScratchSlot slot) noexcept { this_thread_slot(slot).mutex.unlock(); }

}  // namespace rnnkern::cpu
