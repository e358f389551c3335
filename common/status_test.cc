#include "common/status.h"

#include "common/grpc_status.h"
#include "gtest/gtest.h"

namespace devbridge::common {
namespace {

absl::StatusOr<int> Half(int x) {
  if (x % 2 != 0) return absl::InvalidArgumentError("odd");
  return x / 2;
}

absl::StatusOr<int> Quarter(int x) {
  ASSIGN_OR_RETURN(int half, Half(x));
  ASSIGN_OR_RETURN(int quarter, Half(half));
  return quarter;
}

absl::Status CheckEven(int x) {
  RETURN_IF_ERROR(Half(x).status());
  return absl::OkStatus();
}

TEST(StatusMacros, AssignOrReturnPassesValuesAndErrors) {
  EXPECT_EQ(*Quarter(8), 2);
  EXPECT_EQ(Quarter(6).status().message(), "odd");
  EXPECT_EQ(Quarter(3).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(StatusMacros, ReturnIfErrorReturnsFirstError) {
  EXPECT_TRUE(CheckEven(4).ok());
  EXPECT_EQ(CheckEven(5).message(), "odd");
}

TEST(ResultCode, AttachedCodeWinsOverCanonical) {
  absl::Status s = Error(kCodeFrameError, absl::StatusCode::kInvalidArgument, "CRC mismatch");
  EXPECT_EQ(ResultCodeOf(s), kCodeFrameError);
  EXPECT_EQ(ResultCodeOf(absl::InvalidArgumentError("x")), kCodeBadRequest);
  EXPECT_EQ(ResultCodeOf(absl::NotFoundError("x")), kCodeNotFound);
  EXPECT_EQ(ResultCodeOf(absl::UnavailableError("x")), kCodeUnavailable);
  EXPECT_EQ(ResultCodeOf(absl::PermissionDeniedError("x")), kCodeForbidden);
  EXPECT_EQ(ResultCodeOf(absl::UnauthenticatedError("x")), kCodeUnauthorized);
  EXPECT_EQ(ResultCodeOf(absl::OkStatus()), kCodeSuccess);
}

TEST(ResultCode, AnnotateKeepsCodeAndPrefixesMessage) {
  absl::Status s = Annotate(Error(kCodeTimeout, absl::StatusCode::kDeadlineExceeded, "no reply"),
                            "device d1");
  EXPECT_EQ(s.message(), "device d1: no reply");
  EXPECT_EQ(ResultCodeOf(s), kCodeTimeout);
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded);
}

TEST(GrpcStatus, RoundTripKeepsCanonicalCodeMessageAndResultCode) {
  absl::Status s = Error(kCodeQueueFull, absl::StatusCode::kResourceExhausted, "queue full");
  grpc::Status g = ToGrpcStatus(s);
  EXPECT_EQ(g.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(g.error_message(), "queue full");
  absl::Status back = FromGrpcStatus(g);
  EXPECT_EQ(back.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(ResultCodeOf(back), kCodeQueueFull);
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
  EXPECT_EQ(ResultCodeOf(FromGrpcStatus(ToGrpcStatus(absl::UnavailableError("down")))),
            kCodeUnavailable);
}

}  // namespace
}  // namespace devbridge::common

#include "common/uuid.h"

namespace devbridge::common {
namespace {

TEST(Uuid, CanonicalVersion4AndUnique) {
  const std::string a = NewUuid();
  const std::string b = NewUuid();
  EXPECT_TRUE(IsUuid(a)) << a;
  EXPECT_NE(a, b);
  EXPECT_EQ(a[14], '4');
  EXPECT_NE(std::string("89ab").find(a[19]), std::string::npos) << a;
  EXPECT_FALSE(IsUuid("not-a-uuid"));
  EXPECT_FALSE(IsUuid("123e4567-e89b-12d3-a456-42661417400g"));
  EXPECT_TRUE(IsUuid("123E4567-E89B-12D3-A456-426614174000"));
  EXPECT_EQ(RandomToken(12).size(), 12u);
  EXPECT_EQ(RandomToken(12).find(':'), std::string::npos);
}

}  // namespace
}  // namespace devbridge::common

#include "common/json.h"

namespace devbridge::common {
namespace {

TEST(Json, StringsAndStringObjectsAreEscaped) {
  std::string out;
  AppendJsonString(&out, "a\"b\\c\n\x01");
  EXPECT_EQ(out, R"("a\"b\\c\n\u0001")");
  EXPECT_EQ(JsonStringObject({{"k", "v"}, {"q", "\""}}), R"({"k":"v","q":"\""})");
  EXPECT_EQ(JsonStringObject({}), "{}");
}

}  // namespace
}  // namespace devbridge::common
