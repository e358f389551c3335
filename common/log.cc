#include "common/log.h"

#include <mutex>

#include "absl/strings/str_cat.h"
#include "spdlog/sinks/stdout_sinks.h"
#include "spdlog/spdlog.h"

namespace devbridge::common {
namespace {

std::mutex& Mutex() {
  static std::mutex mu;
  return mu;
}

spdlog::level::level_enum& Level() {
  static spdlog::level::level_enum level = spdlog::level::info;
  return level;
}

}  // namespace

std::shared_ptr<spdlog::logger> Logger(const std::string& name) {
  std::lock_guard<std::mutex> lock(Mutex());
  if (auto existing = spdlog::get(name)) return existing;
  static auto sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
  auto logger = std::make_shared<spdlog::logger>(name, sink);
  logger->set_pattern("%Y-%m-%dT%H:%M:%S.%eZ %^%-5l%$ [%n] %v", spdlog::pattern_time_type::utc);
  logger->set_level(Level());
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
  std::lock_guard<std::mutex> lock(Mutex());
  Level() = parsed;
  spdlog::set_level(parsed);
  return absl::OkStatus();
}

}  // namespace devbridge::common
