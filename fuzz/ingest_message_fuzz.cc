// Any MQTT message ingest may take (CONTRACT §3): "topic\npayload", with heartbeats and data
// frames of known and unknown devices, while a command waits for a reply, and as the reply to a
// poll of a device's plan (§10.4).
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "common/log.h"
#include "services/ingest/core/ingest_core.h"

namespace {

constexpr char kMap[] = R"({"profiles":{"meter":{"unit":1,"registers":[
  {"address":0,"name":"t","type":"int16","scale":0.1},{"address":1,"name":"e","type":"uint32"},
  {"address":3,"name":"v","type":"float32","wordOrder":"little"},{"address":5,"name":"a","type":"bool","bit":3}]}},
  "devices":{"p":{"profile":"meter","poll":[{"address":0,"count":6,"every":"100ms"},{"address":5,"count":1,"every":"200ms"}]},
              "*":"meter"}})";

class NullOutputs : public devbridge::ingest::CoreOutputs {
 public:
  void PublishCommand(const std::string&, const std::string&, bool) override {}
  void Store(devbridge::ingest::StoreRecord) override {}
  void Emit(devbridge::v1::Event, const std::vector<devbridge::ingest::StreamRef>&) override {}
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Logs would cost more than the work; a registry per input keeps metrics from piling up.
  static const bool quiet = devbridge::common::SetLogLevel("off").ok();
  (void)quiet;
  devbridge::common::MetricsRegistry metrics;
  static NullOutputs outputs;
  static auto map = std::make_shared<devbridge::regmap::RegisterMap>(
      *devbridge::regmap::RegisterMap::Parse(kMap, "fuzz"));
  devbridge::ingest::IngestCore core({}, map, &outputs, &metrics);
  const absl::Time now = absl::FromUnixSeconds(1800000000);
  const std::string input(reinterpret_cast<const char*>(data), size);
  const size_t split = input.find('\n');
  const std::string topic = split == std::string::npos ? "devices/d/data" : input.substr(0, split);
  const std::string payload = split == std::string::npos ? input : input.substr(split + 1);
  core.OnMessage("devices/d/heartbeat", "{}", now);
  devbridge::v1::Command read;
  read.set_device_id("d");
  read.set_function(3);
  read.set_count(6);
  core.Submit(read, now, [](const devbridge::v1::CommandResult&) {});
  core.OnMessage(topic, payload, now);
  core.OnMessage("devices/d/data", payload, now);
  core.OnMessage("devices/d/heartbeat", payload, now);
  // The payload as the reply to a poll, then polls that go unanswered until the device is
  // unresponsive and probed.
  core.OnMessage("devices/p/heartbeat", "{}", now);
  absl::Time t = now;
  for (int i = 0; i < 8; ++i) {
    t += absl::Milliseconds(100);
    core.RunPolls(t);
    if (i == 1) core.OnMessage("devices/p/data", payload, t);
    core.ExpireCommands(t + absl::Seconds(5));
  }
  return 0;
}
