#include "common/ids.h"

#include <algorithm>

#include "absl/strings/ascii.h"

namespace devbridge::common {

bool IsValidId(absl::string_view id) {
  if (id.empty() || id.size() > 64) return false;
  return std::all_of(id.begin(), id.end(), [](char c) {
    return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == ':' || c == '-';
  });
}

}  // namespace devbridge::common
