#include "common/log.h"

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "common/mutex.h"
#include "spdlog/sinks/stdout_sinks.h"
#include "spdlog/spdlog.h"

namespace devbridge::common {
namespace {

// Makes "look up or create a logger" atomic, and guards the level new loggers start with.
ABSL_CONST_INIT Mutex log_mu;
spdlog::level::level_enum log_level ABSL_GUARDED_BY(log_mu) = spdlog::level::info;

}  // namespace

std::shared_ptr<spdlog::logger> Logger(const std::string& name) {
  MutexLock lock(&log_mu);
  if (auto existing = spdlog::get(name)) return existing;
  static auto sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
  auto logger = std::make_shared<spdlog::logger>(name, sink);
  logger->set_pattern("%Y-%m-%dT%H:%M:%S.%eZ %^%-5l%$ [%n] %v", spdlog::pattern_time_type::utc);
  logger->set_level(log_level);
  logger->flush_on(spdlog::level::warn);
  spdlog::register_logger(logger);
  return logger;
}

absl::Status SetLogLevel(absl::string_view level) {
  auto parsed = spdlog::level::from_str(std::string(level));
  if (parsed == spdlog::level::off && level != "off") {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown log level \"", level, "\": want trace, debug, info, warn, error or off"));
  }
  MutexLock lock(&log_mu);
  log_level = parsed;
  spdlog::set_level(parsed);
  return absl::OkStatus();
}

bool LogLimiter::Allow(absl::Time now, uint64_t* skipped) {
  MutexLock lock(&mu_);
  if (now - last_ < every_) {
    ++skipped_;
    return false;
  }
  last_ = now;
  if (skipped != nullptr) *skipped = skipped_;
  skipped_ = 0;
  return true;
}

}  // namespace devbridge::common
