// What ingest knows of the devices, as the dashboard reads it through push: the device
// list and stored readings. IngestLink implements it over gRPC; tests use fakes.
#ifndef DEVBRIDGE_SERVICES_PUSH_CORE_DIRECTORY_H_
#define DEVBRIDGE_SERVICES_PUSH_CORE_DIRECTORY_H_

#include <functional>

#include "absl/status/statusor.h"
#include "devbridge/v1/ingest.pb.h"

namespace devbridge::push {

// Thread-safe; `done` callbacks run on the io thread.
class DeviceDirectory {
 public:
  virtual ~DeviceDirectory() = default;
  virtual void ListDevices(v1::ListDevicesRequest request,
                           std::function<void(absl::StatusOr<v1::ListDevicesResponse>)> done) = 0;
  virtual void GetReadings(v1::GetReadingsRequest request,
                           std::function<void(absl::StatusOr<v1::GetReadingsResponse>)> done) = 0;
};

}  // namespace devbridge::push

#endif  // DEVBRIDGE_SERVICES_PUSH_CORE_DIRECTORY_H_
