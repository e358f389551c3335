#include "common/status.h"

#include <string>

#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace devbridge::common {
namespace {

constexpr absl::string_view kResultCodeUrl = "devbridge.dev/result-code";

ResultCode FromCanonical(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk:
      return kCodeSuccess;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange:
      return kCodeBadRequest;
    case absl::StatusCode::kUnauthenticated:
      return kCodeUnauthorized;
    case absl::StatusCode::kPermissionDenied:
      return kCodeForbidden;
    case absl::StatusCode::kNotFound:
      return kCodeNotFound;
    case absl::StatusCode::kResourceExhausted:
      return kCodeRateLimited;
    case absl::StatusCode::kDeadlineExceeded:
      return kCodeTimeout;
    default:
      return kCodeUnavailable;
  }
}

}  // namespace

absl::Status WithResultCode(absl::Status status, ResultCode code) {
  if (!status.ok()) status.SetPayload(kResultCodeUrl, absl::Cord(absl::StrCat(static_cast<int>(code))));
  return status;
}

absl::Status Error(ResultCode code, absl::StatusCode canonical, absl::string_view message) {
  return WithResultCode(absl::Status(canonical, message), code);
}

ResultCode ResultCodeOf(const absl::Status& status) {
  if (status.ok()) return kCodeSuccess;
  if (auto payload = status.GetPayload(kResultCodeUrl)) {
    int code = 0;
    if (absl::SimpleAtoi(std::string(*payload), &code)) return static_cast<ResultCode>(code);
  }
  return FromCanonical(status.code());
}

absl::Status Annotate(const absl::Status& status, absl::string_view context) {
  if (status.ok()) return status;
  absl::Status out(status.code(), absl::StrCat(context, ": ", status.message()));
  status.ForEachPayload(
      [&out](absl::string_view url, const absl::Cord& payload) { out.SetPayload(url, payload); });
  return out;
}

}  // namespace devbridge::common
