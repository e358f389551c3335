// A running ingest (in process, real gRPC/HTTP ports) against the harness's broker and a
// fresh database, with helpers to talk to it: a gRPC stub, an event-stream collector, raw
// MQTT publishes and SQL counts.
#ifndef DEVBRIDGE_TESTS_COMPONENT_INGEST_FIXTURE_H_
#define DEVBRIDGE_TESTS_COMPONENT_INGEST_FIXTURE_H_

#include <grpcpp/grpcpp.h>

#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "devbridge/v1/ingest.grpc.pb.h"
#include "gtest/gtest.h"
#include "services/ingest/app/app.h"
#include "sim/simulator.h"

namespace devbridge::testing {

// Reads the event stream in the background and keeps every event.
class EventCollector {
 public:
  EventCollector(v1::Ingest::Stub* stub, v1::SubscribeRequest request);
  ~EventCollector();
  std::vector<v1::Event> Events() const;
  // Waits until some event satisfies `match`; returns it (or an empty event on timeout).
  v1::Event WaitFor(const std::function<bool(const v1::Event&)>& match,
                    absl::Duration timeout = absl::Seconds(10)) const;
  void Stop();
  grpc::Status status() const;

 private:
  grpc::ClientContext ctx_;
  mutable std::mutex mu_;
  std::vector<v1::Event> events_;
  grpc::Status status_;
  std::thread thread_;
};

class IngestFixture : public ::testing::Test {
 protected:
  void SetUp() override;
  void TearDown() override;

  // Starts (or restarts) ingest with `options` adjusted by the test.
  void StartIngest(const std::function<void(ingest::IngestOptions&)>& adjust = nullptr);
  void StopIngest();
  // Starts simulated devices id_prefix0001.. on this test's topic prefix; with ingest running
  // (and heartbeats on), returns once ingest has them all online.
  std::unique_ptr<sim::Simulator> StartSim(const std::function<void(sim::SimOptions&)>& adjust = nullptr);
  // How many of `sim`'s first `devices` devices ingest lists as online (-1: it did not answer).
  int OnlineCount(const sim::Simulator& sim, int devices);

  v1::CommandResult Dispatch(const v1::Command& command);
  static v1::Command Read(const std::string& device, uint32_t address, uint32_t count);
  // Publishes raw bytes on `topic` (relative to the prefix) with QoS 1 and waits for the ack.
  void PublishRaw(const std::string& topic, const std::string& payload);
  int64_t Count(const std::string& sql) const;
  std::string HttpGet(const std::string& path, int* status = nullptr) const;

  std::shared_ptr<const regmap::RegisterMap> map_;
  std::string dsn_;
  std::string prefix_;
  std::string spool_dir_;
  std::unique_ptr<ingest::App> app_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Ingest::Stub> stub_;
};

}  // namespace devbridge::testing

#endif  // DEVBRIDGE_TESTS_COMPONENT_INGEST_FIXTURE_H_
