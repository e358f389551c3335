// Reading JSON that comes from outside (HTTP bodies, tokens, frames, heartbeats, events):
// a parse with a depth and size limit that never throws, and member accessors that return
// nothing instead of throwing when a member is missing or has another JSON type.
// nlohmann's own `value()` and `get<T>()` throw type_error on a wrong type, and an exception
// that leaves a websocketpp or gRPC handler aborts the process; use these at trust boundaries.
#ifndef DEVBRIDGE_COMMON_JSON_PARSE_H_
#define DEVBRIDGE_COMMON_JSON_PARSE_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace devbridge::common {

// CONTRACT §10.1: JSON from outside nested deeper than this is refused.
inline constexpr int kMaxJsonDepth = 64;

// OK when no array or object in `text` is nested deeper than `max_depth`; the text need not
// be valid JSON (brackets inside strings are skipped). Linear, no allocation.
absl::Status CheckJsonDepth(absl::string_view text, int max_depth = kMaxJsonDepth);

// Parses `text` as one JSON value. InvalidArgument, naming the limit, when it is longer than
// `max_bytes`, nested deeper than `max_depth`, or not valid JSON. Never throws.
absl::StatusOr<nlohmann::json> ParseJson(absl::string_view text, size_t max_bytes = SIZE_MAX,
                                         int max_depth = kMaxJsonDepth);

// Member `key` of `object` when `object` is an object and the member has the asked type;
// std::nullopt otherwise. Never throw.
const nlohmann::json* JsonMember(const nlohmann::json& object, const char* key);
std::optional<std::string> JsonString(const nlohmann::json& object, const char* key);
std::optional<bool> JsonBool(const nlohmann::json& object, const char* key);
// An integer (or a float with no fraction) that fits int64.
std::optional<int64_t> JsonInt(const nlohmann::json& object, const char* key);

}  // namespace devbridge::common

#endif  // DEVBRIDGE_COMMON_JSON_PARSE_H_
