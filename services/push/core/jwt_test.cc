#include "services/push/core/jwt.h"

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

}  // namespace
}  // namespace devbridge::push
