// Any MQTT message ingest may take (CONTRACT §3): "topic\npayload", with heartbeats and data
// frames of known and unknown devices, while a command waits for a reply.
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
  "devices":{"*":"meter"}})";

class NullOutputs : public devbridge::ingest::CoreOutputs {
 public:
  void PublishCommand(const std::string&, const std::string&) override {}
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
  return 0;
}
