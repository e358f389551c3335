#include "common/json_parse.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace devbridge::common {

absl::Status CheckJsonDepth(absl::string_view text, int max_depth) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') {
        ++i;  // whatever is escaped cannot end the string
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    switch (c) {
      case '"':
        in_string = true;
        break;
      case '[':
      case '{':
        if (++depth > max_depth) {
          return absl::InvalidArgumentError(absl::StrCat("JSON nested deeper than ", max_depth, " levels"));
        }
        break;
      case ']':
      case '}':
        if (depth > 0) --depth;
        break;
      default:
        break;
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<nlohmann::json> ParseJson(absl::string_view text, size_t max_bytes, int max_depth) {
  if (text.size() > max_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("JSON longer than ", max_bytes, " bytes"));
  }
  if (absl::Status depth = CheckJsonDepth(text, max_depth); !depth.ok()) return depth;
  nlohmann::json j = nlohmann::json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError("not valid JSON");
  return j;
}

const nlohmann::json* JsonMember(const nlohmann::json& object, const char* key) {
  if (!object.is_object()) return nullptr;
  auto it = object.find(key);
  return it == object.end() ? nullptr : &*it;
}

std::optional<std::string> JsonString(const nlohmann::json& object, const char* key) {
  const nlohmann::json* m = JsonMember(object, key);
  if (m == nullptr || !m->is_string()) return std::nullopt;
  return m->get_ref<const std::string&>();
}

std::optional<bool> JsonBool(const nlohmann::json& object, const char* key) {
  const nlohmann::json* m = JsonMember(object, key);
  if (m == nullptr || !m->is_boolean()) return std::nullopt;
  return m->get<bool>();
}

std::optional<int64_t> JsonInt(const nlohmann::json& object, const char* key) {
  const nlohmann::json* m = JsonMember(object, key);
  if (m == nullptr) return std::nullopt;
  if (m->is_number_unsigned()) {
    const uint64_t u = m->get<uint64_t>();
    if (u > static_cast<uint64_t>(INT64_MAX)) return std::nullopt;
    return static_cast<int64_t>(u);
  }
  if (m->is_number_integer()) return m->get<int64_t>();
  if (m->is_number_float()) {
    const double d = m->get<double>();
    // 2^63 is exactly representable; anything at or past it does not fit.
    if (!std::isfinite(d) || d != std::floor(d) || d < -9.2233720368547758e18 || d >= 9.2233720368547758e18) {
      return std::nullopt;
    }
    return static_cast<int64_t>(d);
  }
  return std::nullopt;
}

}  // namespace devbridge::common
