// The JWT verifier: any token, with the right key or not, is accepted or refused as a 401.
// The input is taken both as a whole token and as header and claims JSON that get signed,
// so the claim checks behind the signature are reached too.
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "services/push/core/jwt.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  const absl::Time now = absl::FromUnixSeconds(1800000000);
  (void)devbridge::push::VerifyJwt(input, "k", now);
  const size_t split = input.find('\n');
  if (split == std::string::npos) {
    (void)devbridge::push::VerifyJwt(devbridge::push::SignJwt(input, "k"), "k", now);
    return 0;
  }
  // "header\nclaims": a token with this header, signed with the right key.
  const std::string signing = absl::StrCat(absl::WebSafeBase64Escape(input.substr(0, split)), ".",
                                           absl::WebSafeBase64Escape(input.substr(split + 1)));
  (void)devbridge::push::VerifyJwt(signing + ".x", "k", now);
  return 0;
}
