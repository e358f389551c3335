// Peers of a push node that accept everything and keep nothing, for the fuzz targets: a
// transport that reports some bytes waiting (so the slow-consumer path runs too), an
// upstream whose Publish succeeds and whose Dispatch fails, and an empty device directory.
#ifndef DEVBRIDGE_FUZZ_NULL_PEERS_H_
#define DEVBRIDGE_FUZZ_NULL_PEERS_H_

#include <memory>
#include <string>

#include "services/push/core/directory.h"
#include "services/push/core/push_node.h"

namespace devbridge::fuzz {

class NullTransport : public push::Transport {
 public:
  size_t Send(push::ConnId, const std::shared_ptr<const std::string>& frame) override { return frame->size() % 5000; }
  void Close(push::ConnId, int, const std::string&) override {}
};

class NullUpstream : public push::Upstream, public push::DeviceDirectory {
 public:
  bool up() const override { return true; }
  void Publish(v1::PushMessage, std::function<void(absl::Status)> done) override { done(absl::OkStatus()); }
  void Dispatch(v1::Command, std::function<void(absl::StatusOr<v1::CommandResult>)> done) override {
    done(absl::UnavailableError("fuzz"));
  }
  void ListDevices(v1::ListDevicesRequest, std::function<void(absl::StatusOr<v1::ListDevicesResponse>)> done) override {
    v1::ListDevicesResponse r;
    r.add_devices()->set_meta_json(R"({"fw":"1"})");
    done(r);
  }
  void GetReadings(v1::GetReadingsRequest, std::function<void(absl::StatusOr<v1::GetReadingsResponse>)> done) override {
    done(v1::GetReadingsResponse());
  }
};

}  // namespace devbridge::fuzz

#endif  // DEVBRIDGE_FUZZ_NULL_PEERS_H_
