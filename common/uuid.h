// Random (version 4) UUIDs in their canonical text form.
#ifndef DEVBRIDGE_COMMON_UUID_H_
#define DEVBRIDGE_COMMON_UUID_H_

#include <string>

#include "absl/strings/string_view.h"

namespace devbridge::common {

// "xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx", lower case. Thread-safe.
std::string NewUuid();

// True for the canonical 36-character form (any version, any case).
bool IsUuid(absl::string_view text);

// A short random token of `hex_digits` lower-case hex digits (no ':'), e.g. for epochs.
std::string RandomToken(int hex_digits);

}  // namespace devbridge::common

#endif  // DEVBRIDGE_COMMON_UUID_H_
