// Tells ThreadSanitizer about an ordering it cannot see: a hand-over through a library that
// is not built with TSan (gRPC's completion queues). TsanRelease(p) on the thread that hands
// `p` over, before it does; TsanAcquire(p) first thing on the thread that receives it. Both
// do nothing outside a TSan build (scripts/test --tsan).
#ifndef DEVBRIDGE_COMMON_TSAN_H_
#define DEVBRIDGE_COMMON_TSAN_H_

#if defined(__SANITIZE_THREAD__)
#define DEVBRIDGE_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define DEVBRIDGE_TSAN 1
#endif
#endif

#ifdef DEVBRIDGE_TSAN
extern "C" void __tsan_acquire(void* addr);
extern "C" void __tsan_release(void* addr);
#endif

namespace devbridge::common {

inline void TsanRelease([[maybe_unused]] const void* p) {
#ifdef DEVBRIDGE_TSAN
  __tsan_release(const_cast<void*>(p));
#endif
}

inline void TsanAcquire([[maybe_unused]] const void* p) {
#ifdef DEVBRIDGE_TSAN
  __tsan_acquire(const_cast<void*>(p));
#endif
}

}  // namespace devbridge::common

#endif  // DEVBRIDGE_COMMON_TSAN_H_
