// Service level: the real push app (WebSocket, HTTP, gRPC link) against a fake in-process
// Ingest gRPC server, so upstream behaviour can be driven exactly: events, resets, failing
// Dispatch, and an ingest that goes away and comes back.
#include <grpcpp/grpcpp.h>

#include <condition_variable>
#include <deque>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "devbridge/v1/ingest.grpc.pb.h"
#include "services/push/app/app.h"
#include "gtest/gtest.h"
#include "tests/component/test_env.h"
#include "tests/component/ws_client.h"

namespace devbridge::testing {
namespace {

using Json = nlohmann::json;

// Streams whatever the test pushes; records subscribe requests and publishes.
class FakeIngest final : public v1::Ingest::Service {
 public:
  grpc::Status Subscribe(grpc::ServerContext* ctx, const v1::SubscribeRequest* req,
                         grpc::ServerWriter<v1::EventBatch>* writer) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      subscribes_.push_back(*req);
    }
    ctx->AddInitialMetadata("devbridge-epoch", "fake");
    writer->SendInitialMetadata();
    while (!ctx->IsCancelled()) {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait_for(lock, std::chrono::milliseconds(20), [&] { return !queue_.empty() || stopping_; });
      if (stopping_) break;
      while (!queue_.empty()) {
        v1::EventBatch batch;
        batch.add_events(queue_.front().SerializeAsString());
        queue_.pop_front();
        lock.unlock();
        if (!writer->Write(batch)) return grpc::Status::CANCELLED;
        lock.lock();
      }
    }
    return grpc::Status::OK;
  }
  grpc::Status Publish(grpc::ServerContext*, const v1::PushMessage* m, v1::PublishResponse*) override {
    std::lock_guard<std::mutex> lock(mu_);
    published_.push_back(*m);
    return grpc::Status::OK;
  }
  grpc::Status Dispatch(grpc::ServerContext*, const v1::Command*, v1::CommandResult*) override {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "fake ingest lost the device side");
  }

  // Queues an event as ingest would stamp it: epoch "fake", the next seq, one stream.
  void Emit(v1::Event e, const std::string& system) {
    std::lock_guard<std::mutex> lock(mu_);
    e.set_epoch("fake");
    e.set_seq(++seq_);
    e.set_at_unix_ms(absl::ToUnixMillis(absl::Now()));
    if (!system.empty()) {
      auto* s = e.add_streams();
      s->set_system_id(system);
      s->set_offset(++offsets_[system]);
    }
    queue_.push_back(std::move(e));
    cv_.notify_all();
  }
  void Stop() {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    cv_.notify_all();
  }
  std::vector<v1::SubscribeRequest> subscribes() {
    std::lock_guard<std::mutex> lock(mu_);
    return subscribes_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<v1::Event> queue_;
  std::vector<v1::SubscribeRequest> subscribes_;
  std::vector<v1::PushMessage> published_;
  std::map<std::string, uint64_t> offsets_;
  uint64_t seq_ = 0;
  bool stopping_ = false;
};

struct FakeServer {
  explicit FakeServer(int listen_port = 0) {
    grpc::ServerBuilder b;
    b.AddListeningPort(absl::StrCat("127.0.0.1:", listen_port), grpc::InsecureServerCredentials(), &port);
    b.RegisterService(&service);
    server = b.BuildAndStart();
  }
  ~FakeServer() { Stop(); }
  void Stop() {
    if (!server) return;
    service.Stop();
    server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
    server.reset();
  }
  FakeIngest service;
  std::unique_ptr<grpc::Server> server;
  int port = 0;
};

v1::Event Online(const std::string& id) {
  v1::Event e;
  e.mutable_device_state()->set_device_id(id);
  e.mutable_device_state()->set_online(true);
  return e;
}

int Health(const push::App& app) {
  int status = 0;
  HttpRequest(app.port(), "GET", "/healthz", {}, "", &status);
  return status;
}

class PushServiceTest : public ::testing::Test {
 protected:
  void Start(int ingest_port) {
    push::PushOptions o;
    o.ingest_addr = absl::StrCat("127.0.0.1:", ingest_port);
    o.listen = "127.0.0.1:0";
    o.grpc_listen = "127.0.0.1:0";
    o.node_id = "solo";
    auto app = push::App::Create(o);
    ASSERT_TRUE(app.ok()) << app.status();
    app_ = *std::move(app);
  }
  std::unique_ptr<push::App> app_;
};

TEST_F(PushServiceTest, EventsResetsAndFailedDispatch) {
  FakeServer ingest;
  Start(ingest.port);
  ASSERT_TRUE(WaitFor([&] { return Health(*app_) == 200; }));
  ASSERT_FALSE(ingest.service.subscribes().empty());
  EXPECT_TRUE(ingest.service.subscribes()[0].from_oldest()) << "a new replica asks for what ingest still holds";

  auto client = WsClient::Connect(app_->port(), "systemId=fleet&clientId=c");
  ASSERT_TRUE(client->open());
  // Events reach a client from its `connected` frame on (it waits for CLIENT_UP's ack).
  ASSERT_FALSE(client->WaitForType("connected").is_null());
  ingest.service.Emit(Online("d1"), "fleet");
  Json online = client->WaitForType("device.online");
  ASSERT_FALSE(online.is_null());
  EXPECT_EQ(online["epoch"], "fake");
  EXPECT_EQ(online["offset"], 1);

  client->Send(R"({"action":"command","requestId":"r","deviceId":"d1","address":0,"count":1})");
  EXPECT_FALSE(client->WaitForType("command.accepted").is_null());
  Json failed = client->WaitForType("command.result");
  EXPECT_EQ(failed["code"], 503) << failed;
  EXPECT_NE(failed["msg"].get<std::string>().find("fake ingest lost"), std::string::npos);

  auto early = WsClient::Connect(app_->port(), "systemId=fleet&recover=%7B%22system%22%3A%5B%22fake%22%2C0%5D%7D");
  EXPECT_EQ(early->WaitForType("device.online")["offset"], 1) << "before the reset, offset 1 is recoverable";

  v1::Event reset;
  reset.mutable_reset()->set_reason("test gap");
  reset.mutable_reset()->set_oldest_seq(50);
  ingest.service.Emit(reset, "");
  // The reset reaches the replica some time after Emit: ask until it has applied it.
  EXPECT_TRUE(WaitFor([&] {
    auto late = WsClient::Connect(app_->port(), "systemId=fleet&recover=%7B%22system%22%3A%5B%22fake%22%2C1%5D%7D");
    const Json error = late->WaitForType("error", absl::Seconds(1));
    return !error.is_null() && error["code"] == 410;
  })) << "after a reset nothing before it can be recovered";
}

TEST_F(PushServiceTest, ResumesAfterIngestComesBack) {
  auto ingest = std::make_unique<FakeServer>();
  const int port = ingest->port;
  Start(port);
  ASSERT_TRUE(WaitFor([&] { return Health(*app_) == 200; }));
  auto client = WsClient::Connect(app_->port(), "systemId=fleet");
  for (int i = 0; i < 3; ++i) ingest->service.Emit(Online("d" + std::to_string(i)), "fleet");
  ASSERT_TRUE(WaitFor([&] { return client->Frames("device.online").size() == 3; }));
  ingest->Stop();
  ASSERT_TRUE(WaitFor([&] { return Health(*app_) == 503; })) << "healthz says ingest is away";
  EXPECT_TRUE(client->open());
  ingest = std::make_unique<FakeServer>(port);
  ASSERT_TRUE(WaitFor([&] { return Health(*app_) == 200; }, absl::Seconds(20)));
  auto subs = ingest->service.subscribes();
  ASSERT_FALSE(subs.empty());
  EXPECT_EQ(subs.back().resume_epoch(), "fake");
  EXPECT_EQ(subs.back().resume_after_seq(), 3u) << "resumes after the last event it saw";
}

}  // namespace
}  // namespace devbridge::testing
