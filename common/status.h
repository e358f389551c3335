// Status helpers shared by every devbridge library: the RETURN_IF_ERROR / ASSIGN_OR_RETURN
// pair (Abseil 20220623 has none) and the contract's result codes carried on a Status.
#ifndef DEVBRIDGE_COMMON_STATUS_H_
#define DEVBRIDGE_COMMON_STATUS_H_

#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace devbridge::common {

// Result codes of CONTRACT §4, as carried in `code` fields on the wire.
enum ResultCode : int {
  kCodeProtocol = 0,
  kCodeSuccess = 200,
  kCodeJoined = 1001,
  kCodeLeft = 1002,
  kCodeFrameError = 2001,
  kCodeTimeout = 2002,
  kCodeQueueFull = 2003,
  kCodeDeviceOffline = 2004,
  kCodeNoRegister = 2005,
  kCodeModbusException = 2006,
  kCodeBadRequest = 400,
  kCodeUnauthorized = 401,
  kCodeForbidden = 403,
  kCodeNotFound = 404,
  kCodeGone = 410,
  kCodeTooLarge = 413,
  kCodeRateLimited = 429,
  kCodeUnavailable = 503,
};

// Returns `status` with the contract result code `code` attached as a payload.
absl::Status WithResultCode(absl::Status status, ResultCode code);

// Shorthand for an error with a result code: Error(kCodeFrameError, kInvalidArgument, "...").
absl::Status Error(ResultCode code, absl::StatusCode canonical, absl::string_view message);

// The result code of `status`: 200 for OK, the attached code if any, else a code derived
// from the canonical code (InvalidArgument → 400, NotFound → 404, Unavailable → 503, …).
ResultCode ResultCodeOf(const absl::Status& status);

// Prefixes the status message with `context` ("what we were doing: original message").
absl::Status Annotate(const absl::Status& status, absl::string_view context);

}  // namespace devbridge::common

#define DEVBRIDGE_STATUS_CONCAT_INNER_(a, b) a##b
#define DEVBRIDGE_STATUS_CONCAT_(a, b) DEVBRIDGE_STATUS_CONCAT_INNER_(a, b)

// Evaluates `expr` (an absl::Status) and returns it from the enclosing function if not OK.
#define RETURN_IF_ERROR(expr)                                                \
  do {                                                                       \
    ::absl::Status devbridge_status_ = (expr);                               \
    if (!devbridge_status_.ok()) return devbridge_status_;                   \
  } while (false)

// Evaluates `rexpr` (an absl::StatusOr<T>); returns its status if not OK, else moves the
// value into `lhs`, which may be a declaration: ASSIGN_OR_RETURN(auto x, MakeX());
#define ASSIGN_OR_RETURN(lhs, rexpr) \
  DEVBRIDGE_ASSIGN_OR_RETURN_IMPL_(DEVBRIDGE_STATUS_CONCAT_(devbridge_statusor_, __LINE__), lhs, rexpr)

#define DEVBRIDGE_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                                     \
  if (!statusor.ok()) return std::move(statusor).status();     \
  lhs = *std::move(statusor)

#endif  // DEVBRIDGE_COMMON_STATUS_H_
