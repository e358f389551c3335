// Two devbridge-push replicas against the real ingest, mosquitto and PostgreSQL, with
// simulated devices and real WebSocket clients.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "bus/connection.h"
#include "devbridge/v1/push.grpc.pb.h"
#include "grpcutil/security.h"
#include "services/push/app/app.h"
#include "services/push/core/jwt.h"
#include "tests/component/ingest_fixture.h"
#include "tests/component/nats_cluster.h"
#include "tests/component/test_env.h"
#include "tests/component/ws_client.h"

namespace devbridge::testing {
namespace {

using Json = nlohmann::json;

// A client that completes the handshake and then never reads.
int StalledClient(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  const int small = 4096;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) return -1;
  const std::string req =
      "GET /ws?systemId=fleet&clientId=stalled HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
  if (write(fd, req.data(), req.size()) != static_cast<ssize_t>(req.size())) return -1;
  char buf[512];
  if (read(fd, buf, sizeof buf) <= 0) return -1;  // the 101 response; then nothing more is read
  return fd;
}

// Sends `request` as it is and returns the HTTP status of the answer (0: none).
int RawStatus(int port, const std::string& request) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      write(fd, request.data(), request.size()) != static_cast<ssize_t>(request.size())) {
    close(fd);
    return 0;
  }
  timeval limit{20, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit);
  char buf[64] = {};
  const ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  return n > 12 ? std::atoi(buf + 9) : 0;
}

// A file with `text` at `path`, creating folders on the way.
void WriteFile(const std::string& path, const std::string& text) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  std::ofstream(path) << text;
}

// A token with `claims` (JSON members without braces) that expires an hour from now: the
// services read the real clock, so a fixed `exp` would make the test depend on the date.
std::string Token(absl::string_view claims, absl::string_view secret) {
  return push::SignJwt(
      absl::StrCat("{", claims, ",\"exp\":", absl::ToUnixSeconds(absl::Now() + absl::Hours(1)), "}"), secret);
}

class PushTest : public IngestFixture {
 protected:
  void TearDown() override {
    b_.reset();
    a_.reset();
    IngestFixture::TearDown();
  }
  std::unique_ptr<push::App> StartPush(const std::string& node,
                                       const std::function<void(push::PushOptions&)>& adjust = nullptr) {
    push::PushOptions o;
    o.ingest_addr = absl::StrCat("127.0.0.1:", app_->grpc_port());
    o.listen = "127.0.0.1:0";
    o.grpc_listen = "127.0.0.1:0";
    o.node_id = node;
    o.ping_interval = absl::Seconds(5);
    if (bus_) o.bus_urls = *bus::ParseBusFlag(bus_->urls());
    if (adjust) adjust(o);
    auto app = push::App::Create(o);
    EXPECT_TRUE(app.ok()) << app.status();
    if (!app.ok()) return nullptr;
    const int port = (*app)->port();
    EXPECT_TRUE(WaitFor([&] {
      int status = 0;
      HttpRequest(port, "GET", "/healthz", {}, "", &status);
      return status == 200;
    })) << node << " never healthy";
    return *std::move(app);
  }
  void StartCluster(const std::function<void(push::PushOptions&)>& adjust = nullptr) {
    StartIngestOnBusIfAny();
    a_ = StartPush("node-a", adjust);
    b_ = StartPush("node-b", adjust);
  }
  Json Api(push::App* app, const std::string& op, const Json& body, const std::string& system = "fleet",
           int* status = nullptr, const std::string& token = "") {
    std::vector<std::pair<std::string, std::string>> headers = {{"SystemId", system},
                                                                {"Content-Type", "application/json"}};
    if (!token.empty()) headers.emplace_back("Authorization", "Bearer " + token);
    return Json::parse(HttpRequest(app->port(), "POST", "/api/" + op, headers, body.dump(), status), nullptr, false);
  }
  // Waits until get_online_list on `app` shows `n` clients (membership crosses replicas).
  bool WaitOnline(push::App* app, size_t n, const std::string& system = "fleet") {
    return WaitFor([&] { return Api(app, "get_online_list", Json::object(), system)["data"]["count"] == n; });
  }

  // Ingest, on the bus when the test has one.
  void StartIngestOnBusIfAny(const std::function<void(ingest::IngestOptions&)>& adjust = nullptr) {
    StartIngest([&](ingest::IngestOptions& o) {
      if (bus_) {
        o.bus.urls = *bus::ParseBusFlag(bus_->urls());
        o.bus.replicas = bus_->size();
      }
      if (adjust) adjust(o);
    });
  }

  std::unique_ptr<NatsCluster> bus_;  // set: ingest and the replicas run with --bus on it
  std::unique_ptr<push::App> a_, b_;
};

// The same tests with the events on a NATS JetStream bus (--bus, docs/scaling.md): one
// server is enough for what the replicas see; bus_component_test and ingest_bus_test kill
// servers of a three-server cluster.
class PushModeTest : public PushTest, public ::testing::WithParamInterface<bool> {
 protected:
  void SetUp() override {
    PushTest::SetUp();
    if (GetParam()) {
      bus_ = std::make_unique<NatsCluster>(1);
      ASSERT_TRUE(bus_->WaitHealthy()) << "see " << bus_->log(0);
    }
  }
  void TearDown() override {
    PushTest::TearDown();
    bus_.reset();
  }
};
std::string ModeName(const ::testing::TestParamInfo<bool>& info) { return info.param ? "Bus" : "Ingest"; }
INSTANTIATE_TEST_SUITE_P(Upstream, PushModeTest, ::testing::Bool(), ModeName);
// What only the bus gives.
class PushOnBusTest : public PushModeTest {};
INSTANTIATE_TEST_SUITE_P(Upstream, PushOnBusTest, ::testing::Values(true), ModeName);

// For every connection to `port` this process accepted (the server's end), whether it has
// TCP_NODELAY set.
std::vector<bool> NoDelayOfAccepted(int port) {
  std::vector<bool> out;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) {
    const int fd = std::atoi(entry.path().filename().c_str());
    sockaddr_in local{}, peer{};
    socklen_t n = sizeof local, m = sizeof peer;
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &n) != 0 || local.sin_family != AF_INET ||
        ntohs(local.sin_port) != port) {
      continue;
    }
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &m) != 0) continue;  // the listening socket
    int on = 0;
    socklen_t len = sizeof on;
    if (getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, &len) == 0) out.push_back(on != 0);
  }
  return out;
}

// Frames leave when written: push's end of a WebSocket connection has Nagle's algorithm off
// (with it on, a small frame waits for the client's delayed ACK of the one before, up to 40 ms).
TEST_F(PushTest, WebSocketConnectionsWriteWithoutNagleDelay) {
  StartCluster();
  auto viewer = WsClient::Connect(a_->port(), "systemId=fleet&clientId=nagle");
  ASSERT_TRUE(viewer->open());
  const std::vector<bool> nodelay = NoDelayOfAccepted(a_->port());
  ASSERT_FALSE(nodelay.empty()) << "found no accepted connection to port " << a_->port();
  for (bool on : nodelay) EXPECT_TRUE(on);
}

TEST_P(PushModeTest, EveryApiOperationWorksAcrossReplicas) {
  StartCluster();
  auto on_a = WsClient::Connect(a_->port(), "systemId=fleet&clientId=alice&groups=ops");
  auto on_b = WsClient::Connect(b_->port(), "systemId=fleet&clientId=bob");
  ASSERT_TRUE(on_a->open());
  ASSERT_TRUE(on_b->open());
  EXPECT_EQ(on_a->WaitForType("connected")["data"]["node"], "node-a");
  ASSERT_TRUE(WaitOnline(b_.get(), 2)) << "b must count the client on a";
  ASSERT_TRUE(WaitOnline(a_.get(), 2));

  Json r = Api(b_.get(), "send_to_client", {{"clientId", "alice"}, {"sendUserId", "ops-bot"}, {"code", 7}, {"msg", "hi"}, {"data", {{"x", 1}}}});
  ASSERT_EQ(r["code"], 0) << r;
  Json got = on_a->WaitFor([](const Json& f) { return f["type"] == "message" && f["code"] == 7; });
  EXPECT_EQ(got["messageId"], r["data"]["messageId"]);
  EXPECT_EQ(got["data"]["x"], 1);
  EXPECT_EQ(got["sendUserId"], "ops-bot");

  r = Api(a_.get(), "send_to_clients", {{"clientIds", {"alice", "bob"}}, {"data", "both"}});
  ASSERT_EQ(r["code"], 0) << r;
  EXPECT_FALSE(on_b->WaitFor([](const Json& f) { return f["type"] == "message" && f["data"] == "both"; }).is_null());

  r = Api(b_.get(), "send_to_group", {{"groupName", "ops"}, {"data", "grp"}});
  ASSERT_EQ(r["code"], 0) << r;
  Json g = on_a->WaitFor([](const Json& f) { return f["type"] == "message" && f["data"] == "grp"; });
  EXPECT_EQ(g["groupName"], "ops");
  EXPECT_GT(g["offset"].get<int>(), 0);

  r = Api(b_.get(), "bind_to_group", {{"clientId", "bob"}, {"groupName", "ops"}, {"userId", "u-bob"}, {"extend", "x"}});
  ASSERT_EQ(r["code"], 0) << r;
  Json presence = on_a->WaitFor([](const Json& f) {
    return f["type"] == "presence" && f["code"] == 1001 && f["data"]["clientId"] == "bob";
  });
  EXPECT_EQ(presence["data"]["userId"], "u-bob");
  EXPECT_TRUE(WaitFor([&] { return Api(a_.get(), "get_online_list", {{"groupName", "ops"}})["data"]["count"] == 2; }));
  r = Api(a_.get(), "send_to_system", {{"data", "all"}});
  ASSERT_EQ(r["code"], 0);
  Json sys_a = on_a->WaitFor([](const Json& f) { return f["type"] == "message" && f["data"] == "all"; });
  Json sys_b = on_b->WaitFor([](const Json& f) { return f["type"] == "message" && f["data"] == "all"; });
  EXPECT_EQ(sys_a["offset"], sys_b["offset"]) << "epoch and offset are the same on every replica";
  EXPECT_EQ(sys_a["epoch"], sys_b["epoch"]);

  r = Api(a_.get(), "unbind_from_group", {{"clientId", "bob"}, {"groupName", "ops"}});
  ASSERT_EQ(r["code"], 0);
  EXPECT_FALSE(on_a->WaitFor([](const Json& f) { return f["type"] == "presence" && f["code"] == 1002; }).is_null());

  int status = 0;
  r = Api(a_.get(), "send_to_client", {{"clientId", "nobody"}}, "fleet", &status);
  EXPECT_EQ(r["code"], 404);
  EXPECT_EQ(status, 404);
  r = Api(a_.get(), "no_such_op", Json::object(), "fleet", &status);
  EXPECT_EQ(status, 404);

  r = Api(a_.get(), "close_client", {{"clientId", "bob"}});
  ASSERT_EQ(r["code"], 0);
  EXPECT_TRUE(on_b->WaitClosed()) << "closed wherever it is";
  EXPECT_TRUE(WaitOnline(a_.get(), 1));
}

TEST_F(PushTest, GrpcPushApiAcrossReplicas) {
  StartCluster();
  auto on_a = WsClient::Connect(a_->port(), "systemId=fleet&clientId=carol");
  ASSERT_TRUE(on_a->open());
  auto channel = grpc::CreateChannel(absl::StrCat("127.0.0.1:", b_->grpc_port()), grpc::InsecureChannelCredentials());
  auto stub = v1::Push::NewStub(channel);
  ASSERT_TRUE(WaitFor([&] {
    grpc::ClientContext ctx;
    v1::ListOnlineRequest req;
    req.set_system_id("fleet");
    v1::ListOnlineReply reply;
    return stub->ListOnline(&ctx, req, &reply).ok() && reply.count() == 1;
  }));
  grpc::ClientContext ctx;
  v1::SendToClientRequest req;
  req.set_system_id("fleet");
  req.set_client_id("carol");
  req.set_data(R"({"via":"grpc"})");
  v1::SendReply reply;
  ASSERT_TRUE(stub->SendToClient(&ctx, req, &reply).ok());
  Json got = on_a->WaitFor([](const Json& f) { return f["type"] == "message"; });
  EXPECT_EQ(got["data"]["via"], "grpc");
  EXPECT_EQ(got["messageId"], reply.message_id());
  grpc::ClientContext ctx2;
  req.set_client_id("ghost");
  EXPECT_EQ(stub->SendToClient(&ctx2, req, &reply).error_code(), grpc::StatusCode::NOT_FOUND);
}

// grpc_tls_* with two replicas: ingest requires a client certificate signed by the CA (mutual
// TLS), the replicas present one to ingest and to each other; events, commands and membership
// cross both kinds of link. (Tokens and refusals: InternalCallsNeedTheTokenAndMutualTls.)
TEST_F(PushTest, IngestAndReplicasTalkOverMutualTls) {
  TestPki pki;
  grpcutil::Security tls;
  tls.tls_cert = pki.server_cert;  // for localhost and 127.0.0.1, as server and as client
  tls.tls_key = pki.server_key;
  tls.tls_ca = pki.ca;
  StartIngest([&](ingest::IngestOptions& o) { o.security = tls; });
  a_ = StartPush("node-a", [&](push::PushOptions& o) { o.security = tls; });
  b_ = StartPush("node-b", [&](push::PushOptions& o) { o.security = tls; });
  auto fleet = WsClient::Connect(a_->port(), "systemId=fleet&clientId=console");
  auto other = WsClient::Connect(b_->port(), "systemId=fleet&clientId=other");
  ASSERT_TRUE(fleet->open() && other->open());
  EXPECT_TRUE(WaitOnline(b_.get(), 2)) << "membership crosses the replicas' TLS link";
  auto sim = StartSim();
  const std::string id = sim->DeviceId(0);
  EXPECT_FALSE(other->WaitFor([&](const Json& f) { return f["type"] == "device.online" && f["data"]["deviceId"] == id; })
                   .is_null())
      << "device events come from ingest over TLS";
  fleet->Send(Json({{"action", "command"}, {"requestId", "r"}, {"deviceId", id}, {"address", 0}, {"count", 2}}).dump());
  EXPECT_EQ(fleet->WaitForType("command.result")["code"], 200);

  // A caller trusting another CA does not get through (ingest's certificate is not signed by it).
  grpcutil::Security wrong_ca = tls;
  wrong_ca.tls_ca = pki.other_ca;
  auto stub = v1::Ingest::NewStub(
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", app_->grpc_port()), *grpcutil::ChannelCredentials(wrong_ca)));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  v1::ListDevicesResponse response;
  EXPECT_EQ(stub->ListDevices(&ctx, v1::ListDevicesRequest(), &response).error_code(), grpc::StatusCode::UNAVAILABLE);
}

TEST_P(PushModeTest, DeviceEventsFanOutAndCommandsRoundTrip) {
  StartCluster();
  auto fleet = WsClient::Connect(a_->port(), "systemId=fleet&clientId=console");
  ASSERT_TRUE(fleet->open());
  auto sim = StartSim();
  const std::string id = sim->DeviceId(0);
  auto own = WsClient::Connect(b_->port(), "systemId=" + id);
  ASSERT_TRUE(own->open());
  Json online = fleet->WaitFor([&](const Json& f) { return f["type"] == "device.online" && f["data"]["deviceId"] == id; });
  ASSERT_FALSE(online.is_null()) << "fleet gets every device's events";
  EXPECT_EQ(online["systemId"], "fleet");

  fleet->Send(Json({{"action", "command"}, {"requestId", "req-1"}, {"deviceId", id}, {"address", 0}, {"count", 12}}).dump());
  Json accepted = fleet->WaitForType("command.accepted");
  ASSERT_FALSE(accepted.is_null());
  EXPECT_EQ(accepted["data"]["requestId"], "req-1");
  Json result = fleet->WaitForType("command.result");
  ASSERT_FALSE(result.is_null()) << "no command.result";
  EXPECT_EQ(result["code"], 200) << result;
  EXPECT_EQ(result["data"]["commandId"], accepted["data"]["commandId"]);
  EXPECT_EQ(result["data"]["deviceId"], id);
  EXPECT_TRUE(result["data"]["values"].contains("temperature"));
  EXPECT_EQ(result["data"]["values"]["temperature"]["unit"], "°C");
  EXPECT_EQ(result["data"]["request"], "01030000000C45CF");
  Json on_device = own->WaitForType("command.result");
  EXPECT_EQ(on_device["data"]["commandId"], accepted["data"]["commandId"]) << "the device's system gets it too";
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_EQ(fleet->Frames("command.result").size(), 1u) << "the asker gets it once";

  fleet->Send(Json({{"action", "command"}, {"requestId", "req-2"}, {"deviceId", id}, {"address", 0}}).dump());
  Json error = fleet->WaitFor([](const Json& f) { return f["type"] == "error" && f["data"]["requestId"] == "req-2"; });
  EXPECT_EQ(error["code"], 400);
  EXPECT_TRUE(fleet->open()) << "a malformed frame keeps the connection";
}

TEST_F(PushTest, APolledSlaveShowsAsDeviceDataAndItsPlanInTheDeviceList) {
  StartCluster();
  auto fleet = WsClient::Connect(a_->port(), "systemId=fleet&clientId=viewer");
  // The shipped register map polls slave-* on a plan (config/registers.json).
  auto sim = StartSim([](sim::SimOptions& o) { o.id_prefix = "slave-"; });
  const std::string id = sim->DeviceId(0);
  Json data = fleet->WaitFor([&](const Json& f) { return f["type"] == "device.data" && f["data"]["deviceId"] == id; });
  ASSERT_EQ(data["type"], "device.data") << "no poll result reached the browser";
  EXPECT_EQ(data["data"]["poll"], true);
  EXPECT_EQ(data["data"]["solicited"], true);
  EXPECT_EQ(data["data"]["count"], 12);
  EXPECT_TRUE(data["data"]["values"].contains("temperature"));
  int status = 0;
  Json devices = Json::parse(HttpRequest(b_->port(), "GET", "/api/devices", {}, "", &status), nullptr, false);
  ASSERT_EQ(status, 200) << devices;
  const Json& polling = devices["data"]["devices"][0]["polling"];
  ASSERT_TRUE(polling.is_object()) << devices;
  EXPECT_EQ(polling["plan"][0]["count"], 12);
  EXPECT_EQ(polling["plan"][0]["everyMs"], 2000);
  EXPECT_EQ(polling["lastCode"], 200);
  EXPECT_TRUE(polling["lastPollAt"].is_string());
  EXPECT_EQ(polling["unresponsive"], false);
}

TEST_F(PushTest, DashboardReadsDevicesAndReadingsThroughEitherReplica) {
  StartCluster([](push::PushOptions& o) { o.auth_secret = "test-secret"; });
  auto sim = StartSim();
  const std::string id = sim->DeviceId(0);
  ASSERT_EQ(Dispatch(Read(id, 0, 12)).code(), 200);
  const std::string fleet = Token(R"("sub":"fleet")", "test-secret");
  const std::string own = Token(absl::StrCat(R"("sub":")", id, R"(")"), "test-secret");
  const std::string other = Token(R"("sub":"sim-999")", "test-secret");
  auto get = [](push::App* app, const std::string& path, int* status) {
    return Json::parse(HttpRequest(app->port(), "GET", path, {}, "", status), nullptr, false);
  };
  int status = 0;
  Json devices = get(b_.get(), "/api/devices?token=" + fleet, &status);
  ASSERT_EQ(status, 200) << devices;
  ASSERT_FALSE(devices["data"]["devices"].empty()) << devices;
  EXPECT_EQ(devices["data"]["devices"][0]["deviceId"], id);
  EXPECT_EQ(devices["data"]["devices"][0]["online"], true);

  // The reply's reading is committed by ingest's writer a moment after Dispatch returns.
  Json readings;
  EXPECT_TRUE(WaitFor([&] {
    readings = get(a_.get(), "/api/readings?limit=5&deviceId=" + id + "&token=" + own, &status);
    return status == 200 && readings["data"]["readings"].size() == 1u;
  })) << status << " " << readings;
  ASSERT_EQ(readings["data"]["readings"].size(), 1u) << readings;
  EXPECT_EQ(readings["data"]["readings"][0]["deviceId"], id);
  EXPECT_TRUE(readings["data"]["readings"][0]["values"].contains("temperature"));

  get(a_.get(), "/api/devices", &status);
  EXPECT_EQ(status, 401) << "no token";
  get(a_.get(), "/api/devices?token=" + own, &status);
  EXPECT_EQ(status, 401) << "a device's token does not list the fleet";
  get(a_.get(), "/api/readings?deviceId=" + id + "&token=" + other, &status);
  EXPECT_EQ(status, 401) << "another device's token";
  EXPECT_EQ(get(a_.get(), "/api/readings?deviceId=a%20b&token=" + fleet, &status)["code"], 400);
  EXPECT_EQ(get(a_.get(), "/api/readings?limit=0&deviceId=" + id + "&token=" + fleet, &status)["code"], 400);
  HttpRequest(a_->port(), "POST", "/api/devices", {}, "", &status);
  EXPECT_EQ(status, 405);
}

// `--ingest_addr` lists several ingest replicas by name (docker-compose's `ingest-1:7070,
// ingest-2:7070`): a replica that does not answer is passed over, whatever its place.
TEST_F(PushTest, IngestAddressListTakesNamesAndPassesOverADeadReplica) {
  StartIngest();
  const std::string dead = absl::StrCat("127.0.0.1:", FreePort());
  const std::string live = absl::StrCat("localhost:", app_->grpc_port());
  for (const std::string& list : {dead + "," + live, live + ", " + dead}) {
    auto push = StartPush("node-list", [&](push::PushOptions& o) { o.ingest_addr = list; });
    ASSERT_NE(push, nullptr) << list;
    int status = 0;
    for (int i = 0; i < 5; ++i) {
      Json devices;
      EXPECT_TRUE(WaitFor([&] {
        devices = Json::parse(HttpRequest(push->port(), "GET", "/api/devices", {}, "", &status), nullptr, false);
        return status == 200;
      })) << list << ": " << status << " " << devices;
    }
  }
  push::PushOptions o;
  o.ingest_addr = " , ";
  o.node_id = "node-none";
  EXPECT_FALSE(push::App::Create(o).ok()) << "an --ingest_addr without an address";
}

TEST_P(PushModeTest, RecoveryAfterReconnectOnAnotherReplica) {
  StartCluster();
  auto first = WsClient::Connect(a_->port(), "systemId=fleet&clientId=r1&groups=ops");
  ASSERT_TRUE(first->open());
  for (int i = 0; i < 3; ++i) ASSERT_EQ(Api(a_.get(), "send_to_system", {{"data", i}})["code"], 0);
  ASSERT_TRUE(WaitFor([&] { return first->Frames("message").size() == 3; }));
  const Json last = first->Frames("message").back();
  first->Close();
  for (int i = 3; i < 6; ++i) ASSERT_EQ(Api(b_.get(), "send_to_system", {{"data", i}})["code"], 0);
  const std::string recover = absl::StrCat("%7B%22system%22%3A%5B%22", last["epoch"].get<std::string>(), "%22%2C",
                                           last["offset"].get<int>(), "%5D%7D");
  // b may not have the three messages yet: what it lacks at the handshake then comes live,
  // after what it replays, in order (on the bus, the recover waits for the stream's read-back).
  auto again = WsClient::Connect(b_->port(), "systemId=fleet&clientId=r1&recover=" + recover);
  ASSERT_TRUE(again->open());
  ASSERT_TRUE(WaitFor([&] { return again->Frames("message").size() == 3; }));
  auto replayed = again->Frames("message");
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(replayed[i]["data"], i + 3);
    EXPECT_EQ(replayed[i]["offset"], last["offset"].get<int>() + 1 + i);
  }
  auto stale = WsClient::Connect(b_->port(), "systemId=fleet&recover=%7B%22system%22%3A%5B%22nope%22%2C1%5D%7D");
  Json gone = stale->WaitForType("error");
  EXPECT_EQ(gone["code"], 410);
  EXPECT_EQ(gone["data"]["stream"], "system");
}

TEST_F(PushTest, AuthAcceptsAndRejects) {
  StartCluster([](push::PushOptions& o) { o.auth_secret = "test-secret"; });
  const std::string good = Token(R"("sub":"fleet","cmd":true,"groups":["ops"])", "test-secret");
  const std::string wrong = Token(R"("sub":"fleet")", "other-secret");
  EXPECT_EQ(WsClient::Connect(a_->port(), "systemId=fleet")->http_status(), 401);
  EXPECT_EQ(WsClient::Connect(a_->port(), "systemId=fleet&token=" + wrong)->http_status(), 401);
  EXPECT_EQ(WsClient::Connect(a_->port(), "systemId=other&token=" + good)->http_status(), 401);
  EXPECT_EQ(WsClient::Connect(a_->port(), "systemId=fleet&groups=eng&token=" + good)->http_status(), 403);
  EXPECT_EQ(WsClient::Connect(a_->port(), "clientId=x")->http_status(), 400);
  auto ok = WsClient::Connect(a_->port(), "systemId=fleet&groups=ops&token=" + good);
  EXPECT_TRUE(ok->open());
  int status = 0;
  Api(a_.get(), "send_to_system", {{"data", 1}}, "fleet", &status);
  EXPECT_EQ(status, 401) << "the API needs a token with api: true";
  const std::string api = Token(R"("sub":"fleet","api":true)", "test-secret");
  EXPECT_EQ(Api(a_.get(), "send_to_system", {{"data", 1}}, "fleet", &status, api)["code"], 0);
}

TEST_F(PushTest, HostileRequestsGetTheirErrorsAndTheReplicasStayUp) {
  const std::string root = std::filesystem::temp_directory_path() / absl::StrCat("devbridge-web-", getpid());
  WriteFile(root + "/index.html", "<!doctype html>");
  WriteFile(root + "/js/app.js", "export {};");
  WriteFile(root + "/test/app.test.mjs", "secret test");
  WriteFile(root + "/.env", "SECRET=1");
  StartIngest();
  a_ = StartPush("node-a", [&](push::PushOptions& o) {
    o.auth_secret = "test-secret";
    o.web_root = root;
  });
  b_ = StartPush("node-b", [&](push::PushOptions& o) { o.web_root = root; });
  ASSERT_TRUE(a_ && b_);
  // Tokens whose header has the wrong JSON types, on every way in (no valid token needed).
  for (const char* header : {R"({"alg":1})", R"({"alg":null})", R"({"alg":["HS256"]})"}) {
    const std::string token = absl::StrCat(absl::WebSafeBase64Escape(header), ".",
                                           absl::WebSafeBase64Escape(R"({"sub":"fleet","exp":4102444800})"), ".c2ln");
    EXPECT_EQ(WsClient::Connect(a_->port(), "systemId=fleet&token=" + token)->http_status(), 401) << header;
    int status = 0;
    HttpRequest(a_->port(), "GET", "/api/devices?token=" + token, {}, "", &status);
    EXPECT_EQ(status, 401) << header;
    HttpRequest(a_->port(), "POST", "/api/send_to_system", {{"SystemId", "fleet"}, {"Authorization", "Bearer " + token}},
                "{}", &status);
    EXPECT_EQ(status, 401) << header;
  }
  // Bodies: nested 100,000 deep, chunked, repeated or non-numeric lengths, too large.
  int status = 0;
  // 32,000 levels fit in max_message_bytes (64 KiB); deeper ones are refused as too large.
  const std::string deep = std::string(32000, '[') + std::string(32000, ']');
  HttpRequest(b_->port(), "POST", "/api/send_to_system", {{"SystemId", "fleet"}}, deep, &status);
  EXPECT_EQ(status, 400);
  HttpRequest(b_->port(), "POST", "/api/send_to_system", {{"SystemId", "fleet"}},
              absl::StrCat(R"({"data":)", std::string(32000, '{'), "}"), &status);
  EXPECT_EQ(status, 400);
  const std::string post = "POST /api/send_to_system HTTP/1.1\r\nHost: t\r\nSystemId: fleet\r\n";
  EXPECT_EQ(RawStatus(b_->port(), post + "Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"), 411);
  EXPECT_EQ(RawStatus(b_->port(), post + "Content-Length: 2\r\nContent-Length: 2\r\n\r\n{}"), 400);
  EXPECT_EQ(RawStatus(b_->port(), post + "Content-Length: two\r\n\r\n{}"), 400);
  EXPECT_EQ(RawStatus(b_->port(), post + "\r\n"), 400) << "a POST without Content-Length";
  HttpRequest(b_->port(), "POST", "/api/send_to_system", {{"SystemId", "fleet"}},
              absl::StrCat(R"({"data":")", std::string(70000, 'x'), R"("})"), &status);
  EXPECT_EQ(status, 413) << "past max_message_bytes";
  // Static files: only regular files, never hidden ones or the dashboard's tests.
  EXPECT_EQ(HttpRequest(b_->port(), "GET", "/", {}, "", &status), "<!doctype html>");
  EXPECT_EQ(status, 200);
  HttpRequest(b_->port(), "GET", "/js/app.js", {}, "", &status);
  EXPECT_EQ(status, 200);
  for (const char* path : {"/js", "/js/", "/.", "/.env", "/test/app.test.mjs", "/test", "/index.html%00.png"}) {
    HttpRequest(b_->port(), "GET", path, {}, "", &status);
    EXPECT_EQ(status, 404) << path;
  }
  static const char kNul[] = "GET /index.html\0.png HTTP/1.1\r\nHost: t\r\n\r\n";
  const int nul = RawStatus(b_->port(), std::string(kNul, sizeof kNul - 1));
  EXPECT_TRUE(nul == 400 || nul == 404) << nul;
  HttpRequest(b_->port(), "GET", "/../../etc/passwd", {}, "", &status);
  EXPECT_TRUE(status == 400 || status == 404) << status;
  // Paging arguments that are not valid (found by fuzz/push_http_fuzz.cc: answered through a
  // reply that had been handed on, which ended the process).
  HttpRequest(b_->port(), "GET", "/api/devices?after=a%20b", {}, "", &status);
  EXPECT_EQ(status, 400);
  HttpRequest(b_->port(), "GET", "/api/devices?limit=0", {}, "", &status);
  EXPECT_EQ(status, 400);
  HttpRequest(b_->port(), "GET", "/api/readings?deviceId=d&since=9223372036854775807", {}, "", &status);
  EXPECT_EQ(status, 400);
  // go-websocket clients register first.
  EXPECT_EQ(Api(b_.get(), "register", {{"systemId", "fleet"}}, "", &status)["code"], 0);
  // Both replicas are still up and serving.
  for (push::App* app : {a_.get(), b_.get()}) {
    HttpRequest(app->port(), "GET", "/healthz", {}, "", &status);
    EXPECT_EQ(status, 200);
  }
  EXPECT_TRUE(WsClient::Connect(b_->port(), "systemId=fleet")->open());
  std::filesystem::remove_all(root);
}

TEST_F(PushTest, InternalCallsNeedTheTokenAndMutualTls) {
  const TestPki pki;
  grpcutil::Security security{"s3cret-token", pki.server_cert, pki.server_key, pki.ca};
  StartIngest([&](ingest::IngestOptions& o) { o.security = security; });
  a_ = StartPush("node-a", [&](push::PushOptions& o) { o.security = security; });
  ASSERT_TRUE(a_);
  int status = 0;
  EXPECT_TRUE(WaitFor([&] {
    HttpRequest(a_->port(), "GET", "/healthz", {}, "", &status);
    return status == 200;
  })) << "push reaches ingest over mutual TLS with the token";
  auto publish = [](const std::shared_ptr<grpc::ChannelCredentials>& credentials, int port, const std::string& token) {
    auto stub = v1::Ingest::NewStub(grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), credentials));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    grpcutil::AddToken(&ctx, token);
    v1::PushMessage m;
    m.set_kind(v1::PushMessage::SEND_TO_SYSTEM);
    m.set_system_id("fleet");
    m.set_data("1");
    v1::PublishResponse resp;
    return stub->Publish(&ctx, m, &resp).error_code();
  };
  const auto tls = *grpcutil::ChannelCredentials(security);
  const int port = app_->grpc_port();
  EXPECT_EQ(publish(tls, port, "s3cret-token"), grpc::StatusCode::OK);
  EXPECT_EQ(publish(tls, port, ""), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(publish(tls, port, "wrong"), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_NE(publish(grpc::InsecureChannelCredentials(), port, "s3cret-token"), grpc::StatusCode::OK) << "plain text";
  grpcutil::Security no_client_cert{"", "", "", pki.ca};
  EXPECT_NE(publish(*grpcutil::ChannelCredentials(no_client_cert), port, "s3cret-token"), grpc::StatusCode::OK)
      << "TLS without a client certificate";
  EXPECT_NE(HttpGet("/metrics").find("devbridge_ingest_rpc_unauthenticated_total 2"), std::string::npos);
  // push's own gRPC API: the same token.
  auto push_stub = v1::Push::NewStub(grpc::CreateChannel(absl::StrCat("127.0.0.1:", a_->grpc_port()), tls));
  for (const std::string& token : {std::string(""), std::string("s3cret-token")}) {
    grpc::ClientContext ctx;
    grpcutil::AddToken(&ctx, token);
    v1::SendToSystemRequest req;
    req.set_system_id("fleet");
    req.set_data("{}");
    v1::SendReply reply;
    EXPECT_EQ(push_stub->SendToSystem(&ctx, req, &reply).error_code(),
              token.empty() ? grpc::StatusCode::UNAUTHENTICATED : grpc::StatusCode::OK);
  }
}

TEST_F(PushTest, SlowConsumerIsClosedWhileAFastOneKeepsReceiving) {
  StartIngest();
  a_ = StartPush("node-a", [](push::PushOptions& o) {
    // Frames waiting for the next round of writes count as unsent too: room for 16 of these
    // 16 KiB messages, so a fast client on a busy machine is not taken for a slow one, while
    // the stalled client (6.4 MB sent its way) passes it by far.
    o.send_queue_bytes = 256 * 1024;
    o.flush_interval = absl::ZeroDuration();
  });
  auto fast = WsClient::Connect(a_->port(), "systemId=fleet&clientId=fast");
  ASSERT_TRUE(fast->open());
  const int stalled = StalledClient(a_->port());
  ASSERT_GE(stalled, 0);
  ASSERT_TRUE(WaitOnline(a_.get(), 2));
  const std::string big(16 * 1024, 'x');
  constexpr int kMessages = 400;
  for (int i = 0; i < kMessages; ++i) ASSERT_EQ(Api(a_.get(), "send_to_system", {{"data", big}})["code"], 0);
  EXPECT_TRUE(WaitFor([&] { return fast->Frames("message").size() == kMessages; }, absl::Seconds(30)))
      << "fast got " << fast->Frames("message").size();
  EXPECT_TRUE(WaitFor([&] {
    const std::string m = HttpRequest(a_->port(), "GET", "/metrics");
    return m.find("devbridge_push_slow_consumer_closes_total 1") != std::string::npos;
  })) << "the stalled client was not closed";
  EXPECT_TRUE(WaitOnline(a_.get(), 1));
  close(stalled);
}

TEST_F(PushTest, AClientThatNeverAnswersPingsIsClosed) {
  StartIngest();
  a_ = StartPush("node-a", [](push::PushOptions& o) {
    o.ping_interval = absl::Milliseconds(300);
    o.pong_timeout = absl::Milliseconds(300);
  });
  auto alive = WsClient::Connect(a_->port(), "systemId=fleet&clientId=alive");  // answers pings itself
  ASSERT_TRUE(alive->open());
  const int mute = StalledClient(a_->port());
  ASSERT_GE(mute, 0);
  ASSERT_TRUE(WaitOnline(a_.get(), 2));
  EXPECT_TRUE(WaitOnline(a_.get(), 1)) << "the silent client must be closed after pong_timeout";
  EXPECT_TRUE(alive->open());
  const auto online = Api(a_.get(), "get_online_list", Json::object())["data"]["list"];
  EXPECT_EQ(online, Json::array({"alive"}));
  close(mute);
}

TEST_F(PushTest, OversizeFramesAndTooManyErrorsClose) {
  StartIngest();
  a_ = StartPush("node-a", [](push::PushOptions& o) { o.max_message_bytes = 1024; });
  auto big = WsClient::Connect(a_->port(), "systemId=fleet");
  ASSERT_TRUE(big->open());
  big->Send(std::string(4096, ' '));
  ASSERT_TRUE(big->WaitClosed());
  EXPECT_EQ(big->close_code(), 1009);
  auto noisy = WsClient::Connect(a_->port(), "systemId=fleet");
  for (int i = 0; i < 25; ++i) noisy->Send("nonsense");
  ASSERT_TRUE(noisy->WaitClosed());
  EXPECT_EQ(noisy->close_code(), 1008);
  EXPECT_GE(noisy->Frames("error").size(), 20u);
}

// A round of writes hands frames to websocketpp 64 connections at a time and lets other work
// run in between (ws_server.cc): with more clients than that, every client still gets every
// frame once and in order, and a close goes out after the frames queued before it.
TEST_F(PushTest, AFanOutWiderThanOneWriteStepKeepsOrderAndClosesLast) {
  StartIngest();
  a_ = StartPush("node-a");
  ASSERT_NE(a_, nullptr);
  constexpr int kClients = 150, kMessages = 40;
  std::vector<std::unique_ptr<WsClient>> clients;
  for (int i = 0; i < kClients; ++i) {
    clients.push_back(WsClient::Connect(a_->port(), absl::StrCat("systemId=fleet&clientId=c", i)));
    ASSERT_TRUE(clients.back()->open()) << i;
  }
  ASSERT_TRUE(WaitOnline(a_.get(), kClients));
  // Every message but the last is sent without waiting for the one before to arrive, so they
  // pile up in the same rounds; the last goes to c0 alone and is followed at once by its close.
  for (int m = 0; m < kMessages; ++m) ASSERT_EQ(Api(a_.get(), "send_to_system", {{"data", m}})["code"], 0) << m;
  ASSERT_EQ(Api(a_.get(), "send_to_client", {{"clientId", "c0"}, {"data", "last"}})["code"], 0);
  ASSERT_EQ(Api(a_.get(), "close_client", {{"clientId", "c0"}})["code"], 0);

  for (int i = 0; i < kClients; ++i) {
    WsClient& c = *clients[i];
    ASSERT_FALSE(c.WaitFor([](const Json& f) { return f["type"] == "message" && f["data"] == kMessages - 1; }).is_null())
        << "client " << i;
    std::vector<int> got;
    int64_t last_offset = 0;
    for (const Json& f : c.Frames("message")) {
      if (!f["data"].is_number()) continue;
      got.push_back(f["data"].get<int>());
      EXPECT_GT(f["offset"].get<int64_t>(), last_offset) << "client " << i;
      last_offset = f["offset"].get<int64_t>();
    }
    std::vector<int> want(kMessages);
    for (int m = 0; m < kMessages; ++m) want[m] = m;
    EXPECT_EQ(got, want) << "client " << i;
  }
  ASSERT_TRUE(clients[0]->WaitClosed());
  EXPECT_EQ(clients[0]->close_code(), 4000);
  EXPECT_FALSE(clients[0]->WaitFor([](const Json& f) { return f["data"] == "last"; }, absl::ZeroDuration()).is_null())
      << "the frame queued before the close arrives before it";
  EXPECT_TRUE(WaitOnline(a_.get(), kClients - 1));
}

TEST_F(PushTest, ReusedClientIdReplacesTheOldSession) {
  StartCluster();
  auto first = WsClient::Connect(a_->port(), "systemId=fleet&clientId=dup");
  ASSERT_TRUE(first->open());
  auto second = WsClient::Connect(b_->port(), "systemId=fleet&clientId=dup");
  ASSERT_TRUE(second->open());
  ASSERT_TRUE(first->WaitClosed());
  EXPECT_EQ(first->close_code(), 4009);
  EXPECT_TRUE(second->open());
}

TEST_F(PushTest, IngestRestartKeepsClientsAndCommandsGet503Meanwhile) {
  StartCluster();
  auto client = WsClient::Connect(a_->port(), "systemId=fleet&clientId=keeper");
  ASSERT_TRUE(client->open());
  auto sim = StartSim();
  ASSERT_FALSE(client->WaitForType("device.online").is_null());
  const int grpc_port = app_->grpc_port();
  StopIngest();
  int status = 0;
  EXPECT_TRUE(WaitFor([&] {
    HttpRequest(a_->port(), "GET", "/healthz", {}, "", &status);
    return status == 503;
  })) << "healthz must say ingest is away";
  client->Send(Json({{"action", "command"}, {"requestId", "r"}, {"deviceId", sim->DeviceId(0)}, {"address", 0}, {"count", 1}}).dump());
  Json refused = client->WaitFor([](const Json& f) { return f["type"] == "error" && f["data"]["requestId"] == "r"; });
  EXPECT_EQ(refused["code"], 503);
  EXPECT_TRUE(client->open()) << "clients stay connected while ingest is away";
  StartIngest([&](ingest::IngestOptions& o) { o.grpc_listen = absl::StrCat("127.0.0.1:", grpc_port); });
  EXPECT_TRUE(WaitFor([&] {
    HttpRequest(a_->port(), "GET", "/healthz", {}, "", &status);
    return status == 200;
  }, absl::Seconds(20))) << "push reconnects to ingest";
  // The new ingest knows nothing yet; the device comes back online with its next heartbeat.
  EXPECT_FALSE(client->WaitFor([](const Json& f) { return f["type"] == "device.online"; }).is_null());
  EXPECT_TRUE(WaitFor([&] { return client->Frames("device.online").size() >= 2; })) << "events flow again";
  EXPECT_TRUE(client->open());
}

// On the bus the replicas do not hang on ingest: while it restarts, clients stay connected,
// the API works, and the fleet's stream goes on with the same epoch and no offset missing
// (no 410, no reset); only commands, which ingest carries out, get 503 meanwhile.
TEST_P(PushOnBusTest, IngestRestartResetsNoStreamAndTheApiGoesOn) {
  StartCluster();
  auto client = WsClient::Connect(a_->port(), "systemId=fleet&clientId=keeper");
  ASSERT_TRUE(client->open());
  auto sim = StartSim([](sim::SimOptions& o) {
    o.devices = 3;
    o.data_interval = absl::Milliseconds(50);
  });
  ASSERT_TRUE(WaitFor([&] { return client->Frames("device.data").size() >= 20; }, absl::Seconds(20)));
  StopIngest();
  int status = 0;
  HttpRequest(a_->port(), "GET", "/healthz", {}, "", &status);
  EXPECT_EQ(status, 200) << "the replica's events come from the bus, not from ingest";
  client->Send(Json({{"action", "command"}, {"requestId", "r"}, {"deviceId", sim->DeviceId(0)}, {"address", 0}, {"count", 1}}).dump());
  // Accepted (the bus is up), then failed: the replica cannot reach ingest.
  Json failed = client->WaitFor([](const Json& f) { return f["type"] == "command.result"; });
  EXPECT_EQ(failed["code"], 503) << failed;
  Json r = Api(b_.get(), "send_to_system", {{"data", "while ingest is away"}});
  EXPECT_EQ(r["code"], 0) << r;
  EXPECT_FALSE(client->WaitFor([](const Json& f) { return f["data"] == "while ingest is away"; }).is_null());

  const size_t before = client->Frames("device.data").size();
  StartIngestOnBusIfAny();
  ASSERT_TRUE(WaitFor([&] { return client->Frames("device.data").size() >= before + 20; }, absl::Seconds(30)));
  EXPECT_TRUE(client->open());
  EXPECT_TRUE(client->Frames("error").empty()) << client->Frames("error").front();
  // The fleet's stream: one epoch, every offset once, in order.
  std::string epoch;
  int64_t last = 0;
  size_t seen = 0;
  for (const Json& f : client->Frames()) {
    if (!f.contains("offset") || f["systemId"] != "fleet" || f.contains("groupName")) continue;
    if (epoch.empty()) epoch = f["epoch"];
    EXPECT_EQ(f["epoch"], epoch) << f;
    if (last > 0) {
      EXPECT_EQ(f["offset"].get<int64_t>(), last + 1) << f;
    }
    last = f["offset"].get<int64_t>();
    ++seen;
  }
  EXPECT_GE(seen, 41u);
  EXPECT_EQ(epoch.rfind("bus-", 0), 0u) << epoch;
}

// A replica killed with SIGKILL says nothing: on the bus the others stop hearing its
// NODE_ALIVE and forget its clients after node_timeout, and its clients, reconnecting to
// another replica with `recover`, get what they missed meanwhile without a gap.
TEST_P(PushOnBusTest, AKilledReplicasClientsAreForgottenAndRecoverOnAnother) {
  StartCluster([](push::PushOptions& o) { o.node_timeout = absl::Seconds(3); });
  const std::string log = absl::StrCat(std::getenv("DEVBRIDGE_TEST_DIR"), "/push-c-", getpid(), ".log");
  const int pid = Spawn({DEVBRIDGE_PUSH_BIN, "--bus=" + bus_->urls(), "--node_timeout=3s", "--node_id=node-c",
                         absl::StrCat("--ingest_addr=127.0.0.1:", app_->grpc_port()), "--listen=127.0.0.1:0",
                         "--grpc_listen=127.0.0.1:0"},
                        log);
  ASSERT_GT(pid, 0);
  int port = 0;
  ASSERT_TRUE(WaitFor([&] {
    const std::string out = ReadFile(log);
    const size_t at = out.find("WebSocket and HTTP on 127.0.0.1:0 (port ");
    if (at == std::string::npos || out.find("upstream bus up") == std::string::npos) return false;
    port = std::atoi(out.c_str() + at + 40);
    return true;
  })) << ReadFile(log);
  auto doomed = WsClient::Connect(port, "systemId=fleet&clientId=doomed");
  ASSERT_TRUE(doomed->open());
  ASSERT_TRUE(WaitOnline(a_.get(), 1));
  ASSERT_EQ(Api(a_.get(), "send_to_system", {{"data", 0}})["code"], 0);
  const Json last = doomed->WaitFor([](const Json& f) { return f["type"] == "message"; });
  ASSERT_FALSE(last.is_null());

  kill(pid, SIGKILL);
  WaitExit(pid, absl::Seconds(10));
  for (int i = 1; i <= 3; ++i) ASSERT_EQ(Api(b_.get(), "send_to_system", {{"data", i}})["code"], 0);
  EXPECT_TRUE(WaitOnline(a_.get(), 0)) << "the killed replica's client is forgotten after node_timeout";
  EXPECT_TRUE(WaitOnline(b_.get(), 0));
  EXPECT_GE(MetricValue(HttpRequest(a_->port(), "GET", "/metrics", {}, ""), "devbridge_push_nodes_lost_total"), 1);

  const std::string recover = absl::StrCat("%7B%22system%22%3A%5B%22", last["epoch"].get<std::string>(), "%22%2C",
                                           last["offset"].get<int>(), "%5D%7D");
  auto again = WsClient::Connect(b_->port(), "systemId=fleet&clientId=doomed&recover=" + recover);
  ASSERT_TRUE(again->open());
  ASSERT_TRUE(WaitFor([&] { return again->Frames("message").size() == 3; })) << again->Frames().size();
  auto replayed = again->Frames("message");
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(replayed[i]["data"], i + 1);
    EXPECT_EQ(replayed[i]["offset"], last["offset"].get<int>() + 1 + i);
  }
  EXPECT_TRUE(WaitOnline(a_.get(), 1)) << "and counted again where it is now";
}

// Interest routing: a replica reads the cluster subject and the streams its clients hold,
// not every event on the bus, and stops reading a stream when its last client leaves.
TEST_P(PushOnBusTest, AReplicaReadsOnlyTheStreamsItsClientsHold) {
  StartCluster();
  auto fleet = WsClient::Connect(a_->port(), "systemId=fleet&clientId=console");
  ASSERT_TRUE(fleet->open());
  auto sim = StartSim([](sim::SimOptions& o) {
    o.devices = 4;
    o.data_interval = absl::Milliseconds(50);
  });
  const std::string id = sim->DeviceId(0);
  auto own = WsClient::Connect(b_->port(), "systemId=" + id + "&clientId=own");
  ASSERT_TRUE(own->open());
  ASSERT_TRUE(WaitFor([&] { return own->Frames("device.data").size() >= 20; }, absl::Seconds(20)));
  ASSERT_TRUE(WaitFor([&] { return fleet->Frames("device.data").size() >= 80; }, absl::Seconds(20)));
  auto metric = [](push::App* app, const std::string& name) {
    return MetricValue(HttpRequest(app->port(), "GET", "/metrics", {}, ""), name);
  };
  EXPECT_EQ(metric(a_.get(), "devbridge_push_bus_streams"), 1) << "the fleet's";
  EXPECT_EQ(metric(b_.get(), "devbridge_push_bus_streams"), 1) << "one device's";
  const double read_a = metric(a_.get(), "devbridge_push_bus_read_total");
  const double read_b = metric(b_.get(), "devbridge_push_bus_read_total");
  EXPECT_LT(read_b, read_a * 0.6) << "b reads one device of four, a the fleet (all four)";
  for (const Json& f : own->Frames("device.data")) EXPECT_EQ(f["data"]["deviceId"], id) << f;

  own->Close();
  EXPECT_TRUE(WaitFor([&] { return metric(b_.get(), "devbridge_push_bus_streams") == 0; }))
      << "the device's stream is not read once its last client left";
}

// While the bus is away, membership updates fail (counted); when the client library has
// reconnected, the replica announces itself again and its clients are known everywhere.
TEST_P(PushOnBusTest, ClientsThatConnectedWhileTheBusWasAwayAreKnownOnceItIsBack) {
  StartCluster();
  bus_->Kill(0);
  auto client = WsClient::Connect(a_->port(), "systemId=fleet&clientId=during");
  ASSERT_TRUE(client->open()) << "clients connect while the bus is away";
  ASSERT_TRUE(bus_->Rejoin(0));
  EXPECT_TRUE(WaitOnline(b_.get(), 1, "fleet")) << "b learns of the client from a's snapshot";
  EXPECT_GE(MetricValue(HttpRequest(a_->port(), "GET", "/metrics", {}, ""), "devbridge_push_membership_unpublished_total"),
            1);
}

}  // namespace
}  // namespace devbridge::testing
