#include "services/push/core/jwt.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "nlohmann/json.hpp"

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
  const nlohmann::json header = nlohmann::json::parse(header_json, nullptr, false);
  if (!header.is_object() || header.value("alg", "") != "HS256") return Refuse("alg must be HS256");
  const std::string expected = HmacSha256(secret, absl::StrCat(parts[0], ".", parts[1]));
  if (signature.size() != expected.size() || CRYPTO_memcmp(signature.data(), expected.data(), expected.size()) != 0) {
    return Refuse("signature does not match");
  }
  const nlohmann::json p = nlohmann::json::parse(payload_json, nullptr, false);
  if (!p.is_object()) return Refuse("payload is not a JSON object");
  Claims c;
  auto sub = p.find("sub");
  if (sub == p.end() || !sub->is_string()) return Refuse("no sub claim");
  c.sub = sub->get<std::string>();
  if (auto cid = p.find("cid"); cid != p.end()) {
    if (!cid->is_string()) return Refuse("cid must be a string");
    c.cid = cid->get<std::string>();
  }
  if (auto groups = p.find("groups"); groups != p.end()) {
    if (!groups->is_array()) return Refuse("groups must be an array");
    c.groups.emplace();
    for (const auto& g : *groups) {
      if (!g.is_string()) return Refuse("groups must hold strings");
      c.groups->push_back(g.get<std::string>());
    }
  }
  auto flag = [&](const char* key, bool* out) -> absl::Status {
    auto it = p.find(key);
    if (it == p.end()) return absl::OkStatus();
    if (!it->is_boolean()) return Refuse(absl::StrCat(key, " must be true or false"));
    *out = it->get<bool>();
    return absl::OkStatus();
  };
  if (absl::Status s = flag("cmd", &c.cmd); !s.ok()) return s;
  if (absl::Status s = flag("api", &c.api); !s.ok()) return s;
  auto exp = p.find("exp");
  if (exp == p.end() || !exp->is_number()) return Refuse("no exp claim");
  c.exp = absl::FromUnixSeconds(static_cast<int64_t>(exp->get<double>()));
  if (c.exp <= now) return Refuse("expired");
  return c;
}

}  // namespace devbridge::push
