// Logging: named spdlog loggers ("ingest.mqtt", "push.ws") writing to stderr.
#ifndef DEVBRIDGE_COMMON_LOG_H_
#define DEVBRIDGE_COMMON_LOG_H_

#include <memory>
#include <string>
#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/mutex.h"
#include "spdlog/logger.h"

// Lets log lines take absl::string_view (a distinct type in Debian's C++14 Abseil build).
template <>
struct fmt::formatter<absl::string_view> : fmt::formatter<fmt::string_view> {
  template <typename Context>
  auto format(absl::string_view s, Context& ctx) const {
    return fmt::formatter<fmt::string_view>::format(fmt::string_view(s.data(), s.size()), ctx);
  }
};

namespace devbridge::common {

// Returns the logger named `name`, creating it on first use. Thread-safe; cache the
// result in the component rather than calling this per message.
std::shared_ptr<spdlog::logger> Logger(const std::string& name);

// Sets the level of every logger, current and future: trace, debug, info, warn, error, off.
absl::Status SetLogLevel(absl::string_view level);

// At most one line per `every` for a condition that may repeat at message rate (a failing
// disk, a peer that is down): the first one logs, the rest are counted until the next one
// may, which says how many were left out. Thread-safe.
//
//   uint64_t skipped = 0;
//   if (limiter.Allow(absl::Now(), &skipped)) log->warn("... ({} more not logged)", skipped);
class LogLimiter {
 public:
  explicit LogLimiter(absl::Duration every) : every_(every) {}
  // True if a line may be logged now; then `*skipped` (if given) gets the number of calls
  // refused since the last line.
  bool Allow(absl::Time now, uint64_t* skipped = nullptr);

 private:
  const absl::Duration every_;
  Mutex mu_;
  absl::Time last_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  uint64_t skipped_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace devbridge::common

#endif  // DEVBRIDGE_COMMON_LOG_H_
