#include "services/push/core/jwt.h"

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace devbridge::push {
namespace {

const absl::Time kNow = absl::FromUnixSeconds(1800000000);

TEST(Jwt, VerifiesSignatureAndClaims) {
  const std::string token =
      SignJwt(R"({"sub":"fleet","cid":"c1","groups":["ops"],"cmd":true,"exp":1800000100})", "s3cret");
  auto claims = VerifyJwt(token, "s3cret", kNow);
  ASSERT_TRUE(claims.ok()) << claims.status();
  EXPECT_EQ(claims->sub, "fleet");
  EXPECT_EQ(claims->cid, "c1");
  ASSERT_TRUE(claims->groups.has_value());
  EXPECT_EQ(*claims->groups, std::vector<std::string>{"ops"});
  EXPECT_TRUE(claims->cmd);
  EXPECT_FALSE(claims->api);
}

TEST(Jwt, KnownVectorFromAnotherImplementation) {
  // HS256 of {"sub":"1234567890","name":"John Doe","iat":1516239022} with secret
  // "your-256-bit-secret" (the jwt.io example), plus our required exp missing → refused for
  // exp, which proves the signature itself was accepted.
  const char* token =
      "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ."
      "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
  auto claims = VerifyJwt(token, "your-256-bit-secret", kNow);
  EXPECT_EQ(claims.status().message(), "bad token: no exp claim");
  EXPECT_EQ(VerifyJwt(token, "other", kNow).status().message(), "bad token: signature does not match");
}

TEST(Jwt, Refusals) {
  EXPECT_EQ(VerifyJwt("abc", "k", kNow).status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_FALSE(VerifyJwt("a.b.c", "k", kNow).ok());
  EXPECT_EQ(VerifyJwt(SignJwt(R"({"sub":"s","exp":1700000000})", "k"), "k", kNow).status().message(),
            "bad token: expired");
  EXPECT_EQ(VerifyJwt(SignJwt(R"({"exp":1900000000})", "k"), "k", kNow).status().message(), "bad token: no sub claim");
  EXPECT_EQ(VerifyJwt(SignJwt(R"({"sub":"s","exp":1900000000,"cmd":"yes"})", "k"), "k", kNow).status().message(),
            "bad token: cmd must be true or false");
  EXPECT_EQ(VerifyJwt(SignJwt(R"([1])", "k"), "k", kNow).status().message(), "bad token: payload is not a JSON object");
}

// A token signed by anyone: the header is checked before the signature, so these need no key.
std::string Unsigned(absl::string_view header, absl::string_view claims) {
  return absl::StrCat(absl::WebSafeBase64Escape(header), ".", absl::WebSafeBase64Escape(claims), ".c2ln");
}

TEST(Jwt, WrongJsonTypesInTheHeaderAreRefusedNotThrown) {
  for (const char* header : {R"({"alg":1})", R"({"alg":null})", R"({"alg":["HS256"]})", R"({"alg":{"a":1}})",
                             R"({"alg":true})", "[1]", "1", "\"HS256\"", "{", ""}) {
    absl::StatusOr<Claims> claims = VerifyJwt(Unsigned(header, R"({"sub":"s","exp":1900000000})"), "k", kNow);
    EXPECT_EQ(claims.status().code(), absl::StatusCode::kUnauthenticated) << header;
  }
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  EXPECT_EQ(VerifyJwt(Unsigned(deep, "{}"), "k", kNow).status().code(), absl::StatusCode::kUnauthenticated);
}

TEST(Jwt, WrongJsonTypesInTheClaimsAreRefusedNotThrown) {
  const std::pair<const char*, const char*> cases[] = {
      {R"({"sub":1,"exp":1900000000})", "bad token: sub must be a string"},
      {R"({"sub":null,"exp":1900000000})", "bad token: sub must be a string"},
      {R"({"sub":"s","cid":7,"exp":1900000000})", "bad token: cid must be a string"},
      {R"({"sub":"s","groups":"ops","exp":1900000000})", "bad token: groups must be an array"},
      {R"({"sub":"s","groups":[1],"exp":1900000000})", "bad token: groups must hold strings"},
      {R"({"sub":"s","api":1,"exp":1900000000})", "bad token: api must be true or false"},
      {R"({"sub":"s","exp":"1900000000"})", "bad token: exp must be a number"},
      {R"({"sub":"s","exp":[1]})", "bad token: exp must be a number"},
  };
  for (const auto& [claims, why] : cases) {
    EXPECT_EQ(VerifyJwt(SignJwt(claims, "k"), "k", kNow).status().message(), why) << claims;
  }
  // Far-future and negative exp: clamped, not an undefined conversion.
  EXPECT_TRUE(VerifyJwt(SignJwt(R"({"sub":"s","exp":1e300})", "k"), "k", kNow).ok());
  EXPECT_FALSE(VerifyJwt(SignJwt(R"({"sub":"s","exp":-1e300})", "k"), "k", kNow).ok());
  const std::string deep = R"({"sub":"s","exp":1900000000,"x":)" + std::string(1000, '[') + std::string(1000, ']') + "}";
  EXPECT_EQ(VerifyJwt(SignJwt(deep, "k"), "k", kNow).status().message(), "bad token: payload is not a JSON object");
}

}  // namespace
}  // namespace devbridge::push
