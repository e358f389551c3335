// The one rule for names that come from outside: device ids, system ids, client ids and
// group names (CONTRACT §3 and §5).
#ifndef DEVBRIDGE_COMMON_IDS_H_
#define DEVBRIDGE_COMMON_IDS_H_

#include "absl/strings/string_view.h"

namespace devbridge::common {

// True for 1-64 characters of [A-Za-z0-9_.:-].
bool IsValidId(absl::string_view id);

}  // namespace devbridge::common

#endif  // DEVBRIDGE_COMMON_IDS_H_
