#include "services/push/core/jwt.h"

#include <cmath>
#include <optional>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/json_parse.h"

namespace devbridge::push {
namespace {

absl::Status Refuse(absl::string_view why) { return absl::UnauthenticatedError(absl::StrCat("bad token: ", why)); }

std::string HmacSha256(absl::string_view key, absl::string_view data) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(data.data()),
       data.size(), out, &len);
  return std::string(reinterpret_cast<char*>(out), len);
}

}  // namespace

std::string SignJwt(absl::string_view claims_json, absl::string_view secret) {
  const std::string signing = absl::StrCat(absl::WebSafeBase64Escape(R"({"alg":"HS256","typ":"JWT"})"), ".",
                                           absl::WebSafeBase64Escape(claims_json));
  return absl::StrCat(signing, ".", absl::WebSafeBase64Escape(HmacSha256(secret, signing)));
}

absl::StatusOr<Claims> VerifyJwt(absl::string_view token, absl::string_view secret, absl::Time now) {
  std::vector<absl::string_view> parts = absl::StrSplit(token, '.');
  if (parts.size() != 3) return Refuse("not a JWT (want header.payload.signature)");
  std::string header_json, payload_json, signature;
  if (!absl::WebSafeBase64Unescape(parts[0], &header_json) || !absl::WebSafeBase64Unescape(parts[1], &payload_json) ||
      !absl::WebSafeBase64Unescape(parts[2], &signature)) {
    return Refuse("not base64url");
  }
  // Header and claims come from whoever sent the token: parsed with the depth limit and read
  // with accessors that refuse a wrong JSON type instead of throwing (CONTRACT §10.1: 401).
  absl::StatusOr<nlohmann::json> header = common::ParseJson(header_json);
  if (!header.ok() || !header->is_object()) return Refuse("header is not a JSON object");
  if (common::JsonString(*header, "alg") != "HS256") return Refuse("alg must be HS256");
  const std::string expected = HmacSha256(secret, absl::StrCat(parts[0], ".", parts[1]));
  if (signature.size() != expected.size() || CRYPTO_memcmp(signature.data(), expected.data(), expected.size()) != 0) {
    return Refuse("signature does not match");
  }
  absl::StatusOr<nlohmann::json> payload = common::ParseJson(payload_json);
  if (!payload.ok() || !payload->is_object()) return Refuse("payload is not a JSON object");
  const nlohmann::json& p = *payload;
  Claims c;
  if (common::JsonMember(p, "sub") == nullptr) return Refuse("no sub claim");
  std::optional<std::string> sub = common::JsonString(p, "sub");
  if (!sub) return Refuse("sub must be a string");
  c.sub = *std::move(sub);
  if (common::JsonMember(p, "cid") != nullptr) {
    std::optional<std::string> cid = common::JsonString(p, "cid");
    if (!cid) return Refuse("cid must be a string");
    c.cid = *std::move(cid);
  }
  if (const nlohmann::json* groups = common::JsonMember(p, "groups"); groups != nullptr) {
    if (!groups->is_array()) return Refuse("groups must be an array");
    c.groups.emplace();
    for (const auto& g : *groups) {
      if (!g.is_string()) return Refuse("groups must hold strings");
      c.groups->push_back(g.get<std::string>());
    }
  }
  auto flag = [&](const char* key, bool* out) -> absl::Status {
    if (common::JsonMember(p, key) == nullptr) return absl::OkStatus();
    std::optional<bool> value = common::JsonBool(p, key);
    if (!value) return Refuse(absl::StrCat(key, " must be true or false"));
    *out = *value;
    return absl::OkStatus();
  };
  if (absl::Status s = flag("cmd", &c.cmd); !s.ok()) return s;
  if (absl::Status s = flag("api", &c.api); !s.ok()) return s;
  const nlohmann::json* exp = common::JsonMember(p, "exp");
  if (exp == nullptr) return Refuse("no exp claim");
  if (!exp->is_number()) return Refuse("exp must be a number");
  // Seconds as a double, clamped before the conversion: a cast of 1e300 to int64 is undefined.
  const double exp_seconds = std::fmin(std::fmax(exp->get<double>(), 0.0), 1e15);
  c.exp = absl::FromUnixSeconds(static_cast<int64_t>(exp_seconds));
  if (c.exp <= now) return Refuse("expired");
  return c;
}

}  // namespace devbridge::push
