// Small JSON writing helpers for hot paths that build JSON text by hand.
#ifndef DEVBRIDGE_COMMON_JSON_H_
#define DEVBRIDGE_COMMON_JSON_H_

#include <initializer_list>
#include <string>
#include <utility>

#include "absl/strings/string_view.h"

namespace devbridge::common {

// Appends `text` to `out` as a JSON string literal, quotes included, escaping what JSON
// requires (quote, backslash, control characters). UTF-8 passes through unchanged.
void AppendJsonString(std::string* out, absl::string_view text);

// {"k1":"v1","k2":"v2",...}: an object whose values are all strings, in the given order.
std::string JsonStringObject(std::initializer_list<std::pair<absl::string_view, absl::string_view>> fields);

}  // namespace devbridge::common

#endif  // DEVBRIDGE_COMMON_JSON_H_
