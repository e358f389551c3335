// JWT HS256 verification for push (CONTRACT §5): signature, expiry and the claims
// devbridge uses. Never throws; every refusal says why.
#ifndef DEVBRIDGE_SERVICES_PUSH_CORE_JWT_H_
#define DEVBRIDGE_SERVICES_PUSH_CORE_JWT_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace devbridge::push {

struct Claims {
  std::string sub;                                 // the systemId the token is for
  std::string cid;                                 // clientId, if pinned
  std::optional<std::vector<std::string>> groups;  // groups it may join; absent: any
  bool cmd = false;                                // may send commands
  bool api = false;                                // may call the HTTP API
  absl::Time exp;
};

// Verifies `token` against `secret` at time `now`. Errors are Unauthenticated.
absl::StatusOr<Claims> VerifyJwt(absl::string_view token, absl::string_view secret, absl::Time now);

// Signs `claims_json` (a JSON object) with HS256: for tests, tools and the demo.
std::string SignJwt(absl::string_view claims_json, absl::string_view secret);

}  // namespace devbridge::push

#endif  // DEVBRIDGE_SERVICES_PUSH_CORE_JWT_H_
