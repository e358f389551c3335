// Logging: named spdlog loggers ("ingest.mqtt", "push.ws") writing to stderr.
#ifndef DEVBRIDGE_COMMON_LOG_H_
#define DEVBRIDGE_COMMON_LOG_H_

#include <memory>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "spdlog/logger.h"

namespace devbridge::common {

// Returns the logger named `name`, creating it on first use. Thread-safe; cache the
// result in the component rather than calling this per message.
std::shared_ptr<spdlog::logger> Logger(const std::string& name);

// Sets the level of every logger, current and future: trace, debug, info, warn, error, off.
absl::Status SetLogLevel(absl::string_view level);

}  // namespace devbridge::common

#endif  // DEVBRIDGE_COMMON_LOG_H_
