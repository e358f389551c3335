// URL query strings: percent-decoding and splitting into name → value.
#ifndef DEVBRIDGE_COMMON_URL_H_
#define DEVBRIDGE_COMMON_URL_H_

#include <map>
#include <string>

#include "absl/strings/string_view.h"

namespace devbridge {

// Decodes %XX escapes and '+' (as a space). A malformed escape is kept as it is.
std::string UrlDecode(absl::string_view in);

// "a=1&b=x%20y" → {a: "1", b: "x y"}. A name without '=' maps to ""; the last one wins.
std::map<std::string, std::string> ParseQuery(absl::string_view query);

}  // namespace devbridge

#endif  // DEVBRIDGE_COMMON_URL_H_
