#include "common/grpc_status.h"

#include <string>

#include "absl/strings/numbers.h"
#include "common/status.h"

namespace devbridge::common {

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  std::string details;
  if (ResultCodeOf(status) != ResultCodeOf(absl::Status(status.code(), ""))) {
    details = std::to_string(static_cast<int>(ResultCodeOf(status)));
  }
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()),
                      details);
}

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  absl::Status out(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
  int code = 0;
  if (absl::SimpleAtoi(status.error_details(), &code)) {
    out = WithResultCode(out, static_cast<ResultCode>(code));
  }
  return out;
}

}  // namespace devbridge::common
