// Conversions between absl::Status and grpc::Status that keep the contract result code.
#ifndef DEVBRIDGE_COMMON_GRPC_STATUS_H_
#define DEVBRIDGE_COMMON_GRPC_STATUS_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace devbridge::common {

// Maps the canonical code one to one (the enums share their numbers); the result code,
// if any, travels in the error details as its decimal text.
grpc::Status ToGrpcStatus(const absl::Status& status);

// The inverse of ToGrpcStatus.
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace devbridge::common

#endif  // DEVBRIDGE_COMMON_GRPC_STATUS_H_
