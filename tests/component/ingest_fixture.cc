#include "tests/component/ingest_fixture.h"

#include <set>

#include <MQTTClient.h>

#include <asio.hpp>
#include <pqxx/pqxx>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "common/uuid.h"
#include "grpcutil/security.h"
#include "tests/component/test_env.h"

namespace devbridge::testing {

EventCollector::EventCollector(v1::Ingest::Stub* stub, v1::SubscribeRequest request) {
  thread_ = std::thread([this, stub, request] {
    std::unique_ptr<grpc::ClientReader<v1::EventBatch>> reader = stub->Subscribe(&ctx_, request);
    v1::EventBatch batch;
    while (reader->Read(&batch)) {
      std::lock_guard<std::mutex> lock(mu_);
      for (const std::string& bytes : batch.events()) {
        v1::Event e;
        e.ParseFromString(bytes);
        events_.push_back(std::move(e));
      }
    }
    grpc::Status status = reader->Finish();
    std::lock_guard<std::mutex> lock(mu_);
    status_ = status;
  });
}

EventCollector::~EventCollector() { Stop(); }

void EventCollector::Stop() {
  if (!thread_.joinable()) return;
  ctx_.TryCancel();
  thread_.join();
}

grpc::Status EventCollector::status() const {
  std::lock_guard<std::mutex> lock(mu_);
  return status_;
}

std::vector<v1::Event> EventCollector::Events() const {
  std::lock_guard<std::mutex> lock(mu_);
  return events_;
}

v1::Event EventCollector::WaitFor(const std::function<bool(const v1::Event&)>& match,
                                  absl::Duration timeout) const {
  v1::Event found;
  devbridge::testing::WaitFor(
      [&] {
        std::lock_guard<std::mutex> lock(mu_);
        for (const auto& e : events_) {
          if (match(e)) {
            found = e;
            return true;
          }
        }
        return false;
      },
      timeout);
  return found;
}

void IngestFixture::SetUp() {
  auto map = regmap::RegisterMap::LoadFile(DEVBRIDGE_SOURCE_DIR "/config/registers.json");
  ASSERT_TRUE(map.ok()) << map.status();
  map_ = std::make_shared<const regmap::RegisterMap>(*std::move(map));
  dsn_ = CreateTestDatabase();
  prefix_ = UniqueTopicPrefix();
  // One spool per test, kept across StartIngest() calls of the test like a real data folder.
  const char* dir = std::getenv("DEVBRIDGE_TEST_DIR");
  spool_dir_ = absl::StrCat(dir != nullptr ? dir : "/tmp", "/spool-", absl::StrReplaceAll(prefix_, {{"/", "-"}}));
}

void IngestFixture::TearDown() {
  stub_.reset();
  channel_.reset();
  StopIngest();
}

void IngestFixture::StartIngest(const std::function<void(ingest::IngestOptions&)>& adjust) {
  ingest::IngestOptions o;
  o.mqtt_url = MqttUrl();
  o.mqtt_client_id = absl::StrCat("ingest-", prefix_);
  o.topic_prefix = prefix_;
  o.pg_dsn = dsn_;
  o.grpc_listen = "127.0.0.1:0";
  o.http_listen = "127.0.0.1:0";
  o.heartbeat_timeout = absl::Seconds(3);
  o.sweep_interval = absl::Milliseconds(100);
  o.register_map = map_;
  o.command_timeout = absl::Seconds(2);
  o.replay_buffer = 10000;
  o.spool_dir = spool_dir_;
  if (adjust) adjust(o);
  auto app = ingest::App::Create(o);
  ASSERT_TRUE(app.ok()) << app.status();
  app_ = *std::move(app);
  // As a push replica would call it: with its TLS options (and certificate, for mutual TLS).
  auto credentials = grpcutil::ChannelCredentials(o.security);
  ASSERT_TRUE(credentials.ok()) << credentials.status();
  channel_ = grpc::CreateChannel(absl::StrCat("127.0.0.1:", app_->grpc_port()), *credentials);
  stub_ = v1::Ingest::NewStub(channel_);
  ASSERT_TRUE(WaitFor([&] { return HttpGet("/healthz").rfind("ok", 0) == 0; }))
      << "ingest not healthy: " << HttpGet("/healthz");
}

void IngestFixture::StopIngest() {
  if (app_) app_->Shutdown();
  app_.reset();
}

std::unique_ptr<sim::Simulator> IngestFixture::StartSim(const std::function<void(sim::SimOptions&)>& adjust) {
  sim::SimOptions o;
  o.mqtt_url = MqttUrl();
  o.topic_prefix = prefix_;
  o.devices = 1;
  o.register_map = map_;
  o.heartbeat_interval = absl::Milliseconds(500);
  if (adjust) adjust(o);
  auto s = sim::Simulator::Start(o);
  EXPECT_TRUE(s.ok()) << s.status();
  if (!s.ok()) return nullptr;
  EXPECT_TRUE(WaitFor([&] { return (*s)->connected(); }));
  if (stub_ != nullptr && o.heartbeat_interval > absl::ZeroDuration()) {
    // Connected is not yet online: ingest takes the devices' first heartbeats a moment later,
    // and a command sent before that is refused with 2004.
    EXPECT_TRUE(WaitFor([&] { return OnlineCount(**s, o.devices) == o.devices; }))
        << "the simulated devices did not come online";
  }
  return *std::move(s);
}

int IngestFixture::OnlineCount(const sim::Simulator& sim, int devices) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  v1::ListDevicesRequest request;
  request.set_limit(10000);
  v1::ListDevicesResponse response;
  if (!stub_->ListDevices(&ctx, request, &response).ok()) return -1;
  std::set<std::string> ids;
  for (int i = 0; i < devices; ++i) ids.insert(sim.DeviceId(i));
  int online = 0;
  for (const v1::Device& d : response.devices()) online += d.online() && ids.count(d.device_id()) > 0;
  return online;
}

v1::CommandResult IngestFixture::Dispatch(const v1::Command& command) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  v1::CommandResult result;
  grpc::Status status = stub_->Dispatch(&ctx, command, &result);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return result;
}

v1::Command IngestFixture::Read(const std::string& device, uint32_t address, uint32_t count) {
  v1::Command c;
  c.set_device_id(device);
  c.set_function(3);
  c.set_address(address);
  c.set_count(count);
  c.set_request_id(common::NewUuid());
  return c;
}

void IngestFixture::PublishRaw(const std::string& topic, const std::string& payload) {
  MQTTClient client;
  MQTTClient_create(&client, MqttUrl().c_str(), ("raw-" + common::RandomToken(8)).c_str(),
                    MQTTCLIENT_PERSISTENCE_NONE, nullptr);
  MQTTClient_connectOptions opts = MQTTClient_connectOptions_initializer;
  ASSERT_EQ(MQTTClient_connect(client, &opts), MQTTCLIENT_SUCCESS);
  const std::string full = absl::StrCat(prefix_, "/", topic);
  MQTTClient_deliveryToken token;
  ASSERT_EQ(MQTTClient_publish(client, full.c_str(), static_cast<int>(payload.size()),
                               payload.data(), 1, 0, &token),
            MQTTCLIENT_SUCCESS);
  MQTTClient_waitForCompletion(client, token, 5000);
  MQTTClient_disconnect(client, 1000);
  MQTTClient_destroy(&client);
}

int64_t IngestFixture::Count(const std::string& sql) const {
  try {
    pqxx::connection conn(dsn_);
    pqxx::read_transaction tx(conn);
    return tx.exec1(sql)[0].as<int64_t>();
  } catch (const std::exception&) {
    return -1;
  }
}

std::string IngestFixture::HttpGet(const std::string& path, int* status) const {
  try {
    asio::io_context io;
    asio::ip::tcp::socket socket(io);
    socket.connect({asio::ip::make_address("127.0.0.1"), static_cast<uint16_t>(app_->http_port())});
    asio::write(socket, asio::buffer("GET " + path + " HTTP/1.1\r\nHost: t\r\n\r\n"));
    std::string out;
    std::error_code ec;
    asio::read(socket, asio::dynamic_buffer(out), ec);
    if (status != nullptr) *status = std::atoi(out.substr(9, 3).c_str());
    const size_t body = out.find("\r\n\r\n");
    return body == std::string::npos ? "" : out.substr(body + 4);
  } catch (const std::exception& e) {
    return e.what();
  }
}

}  // namespace devbridge::testing
