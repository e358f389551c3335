// A mutex and condition variable that clang's thread-safety analysis checks
// (-Wthread-safety: ABSL_GUARDED_BY and friends) and that ThreadSanitizer sees through.
//
// Why not absl::Mutex: Debian's abseil is a shared library built without ThreadSanitizer,
// so a TSan build cannot see its synchronisation and reports every guarded access as a race.
// These wrap std::mutex and std::condition_variable, whose pthread calls TSan intercepts.
//
//   common::Mutex mu_;
//   std::deque<Job> jobs_ ABSL_GUARDED_BY(mu_);
//   common::CondVar cv_;
//   ...
//   common::MutexLock lock(&mu_);
//   cv_.Wait(&mu_, [this] { mu_.AssertHeld(); return !jobs_.empty(); });
//
// A wait predicate is a lambda, which the analysis checks on its own: it starts with
// `mu_.AssertHeld()` (it is only ever called with the lock held).
#ifndef DEVBRIDGE_COMMON_MUTEX_H_
#define DEVBRIDGE_COMMON_MUTEX_H_

#include <condition_variable>
#include <mutex>

#include "absl/base/thread_annotations.h"
#include "absl/time/time.h"

namespace devbridge::common {

class ABSL_LOCKABLE Mutex {
 public:
  Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() { mu_.lock(); }
  void Unlock() ABSL_UNLOCK_FUNCTION() { mu_.unlock(); }
  // Tells the analysis the lock is held here (in a wait predicate); checks nothing at run time.
  void AssertHeld() const ABSL_ASSERT_EXCLUSIVE_LOCK() {}

 private:
  friend class CondVar;
  std::mutex mu_;
};

// Holds `mu` for its scope.
class ABSL_SCOPED_LOCKABLE MutexLock {
 public:
  explicit MutexLock(Mutex* mu) ABSL_EXCLUSIVE_LOCK_FUNCTION(mu) : mu_(mu) { mu_->Lock(); }
  ~MutexLock() ABSL_UNLOCK_FUNCTION() { mu_->Unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex* const mu_;
};

class CondVar {
 public:
  // Waits until `done()` holds. `mu` is held on entry and on return, released while waiting.
  template <typename Predicate>
  void Wait(Mutex* mu, Predicate done) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    std::unique_lock<std::mutex> lock(mu->mu_, std::adopt_lock);
    cv_.wait(lock, done);
    lock.release();  // still held: the caller's
  }
  // As Wait(), for at most `timeout`; returns done().
  template <typename Predicate>
  bool WaitFor(Mutex* mu, absl::Duration timeout, Predicate done) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    std::unique_lock<std::mutex> lock(mu->mu_, std::adopt_lock);
    const bool result = cv_.wait_for(lock, absl::ToChronoNanoseconds(timeout), done);
    lock.release();
    return result;
  }
  void NotifyOne() { cv_.notify_one(); }
  void NotifyAll() { cv_.notify_all(); }

 private:
  std::condition_variable cv_;
};

}  // namespace devbridge::common

#endif  // DEVBRIDGE_COMMON_MUTEX_H_
