// Logging: named spdlog loggers ("ingest.mqtt", "push.ws") writing to stderr.
#ifndef DEVBRIDGE_COMMON_LOG_H_
#define DEVBRIDGE_COMMON_LOG_H_

#include <memory>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
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

}  // namespace devbridge::common

#endif  // DEVBRIDGE_COMMON_LOG_H_
