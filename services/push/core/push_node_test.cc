// PushNode against fakes: a transport that records frames, and a fake ingest "bus" that
// sequences published messages into events (stamping stream offsets as ingest does) and
// delivers them to every node, so cluster behaviour is tested with two nodes in-process.
#include "services/push/core/push_node.h"

#include <algorithm>
#include <deque>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "events/bus_layout.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace devbridge::push {
namespace {

using Json = nlohmann::json;
const absl::Time t0 = absl::FromUnixSeconds(1800000000);

class FakeTransport : public Transport {
 public:
  size_t Send(ConnId conn, const std::shared_ptr<const std::string>& frame) override {
    frames[conn].push_back(Json::parse(*frame));
    return buffered;
  }
  void Close(ConnId conn, int code, const std::string& reason) override { closed[conn] = {code, reason}; }
  std::vector<Json> Of(ConnId conn, const std::string& type) {
    std::vector<Json> out;
    for (const auto& f : frames[conn]) {
      if (f["type"] == type) out.push_back(f);
    }
    return out;
  }
  std::map<ConnId, std::vector<Json>> frames;
  std::map<ConnId, std::pair<int, std::string>> closed;
  size_t buffered = 0;
};

class Bus;

class FakeUpstream : public Upstream {
 public:
  explicit FakeUpstream(Bus* bus) : bus_(bus) {}
  bool up() const override { return is_up; }
  void Publish(v1::PushMessage message, std::function<void(absl::Status)> done) override;
  void Dispatch(v1::Command command, std::function<void(absl::StatusOr<v1::CommandResult>)> done) override {
    dispatched.push_back(command);
    done(dispatch_error.ok() ? absl::StatusOr<v1::CommandResult>(v1::CommandResult()) : dispatch_error);
  }
  void Head(std::function<void(absl::StatusOr<v1::HeadResponse>)> done) override;
  bool Want(const std::string& system_id, const std::string& group_name) override {
    wanted.push_back(StreamKey(system_id, group_name));
    return ready_at_once;
  }
  void Unwant(const std::string& system_id, const std::string& group_name) override {
    unwanted.push_back(StreamKey(system_id, group_name));
  }
  std::vector<std::string> wanted, unwanted;
  bool ready_at_once = true;
  bool is_up = true;
  std::vector<v1::PushMessage::Kind> published;
  absl::Status dispatch_error;
  std::vector<v1::Command> dispatched;

 private:
  Bus* bus_;
};

// Sequences events like ingest: one epoch, seq, offsets per stream; delivers to every node,
// at once or, while `deferred`, when Deliver() is called (a stream that lags).
class Bus {
 public:
  void Attach(PushNode* node) { nodes_.push_back(node); }
  void Emit(v1::Event e, const std::vector<std::pair<std::string, std::string>>& streams) {
    e.set_epoch(epoch);
    e.set_at_unix_ms(absl::ToUnixMillis(t0));
    for (const auto& [system, group] : streams) {
      auto* s = e.add_streams();
      s->set_system_id(system);
      s->set_group_name(group);
      s->set_offset(++offsets_[absl::StrCat(system, "/", group)]);
    }
    if (!in_parts) {
      e.set_seq(++seq_);
      queue_.push_back(std::move(e));
    } else {
      // As on the NATS bus (events/bus_layout.h): a FANOUT part per stream, then the EFFECTS
      // part when every replica must act on it; each part has a sequence of its own.
      for (const v1::StreamOffset& stream : e.streams()) {
        v1::Event part = e;
        part.set_part(v1::Event::FANOUT);
        part.clear_streams();
        *part.add_streams() = stream;
        part.set_seq(++seq_);
        queue_.push_back(std::move(part));
      }
      if (events::HasEffectsPart(e)) {
        v1::Event part = e;
        part.set_part(v1::Event::EFFECTS);
        part.set_seq(++seq_);
        queue_.push_back(std::move(part));
      }
    }
    if (!deferred) Deliver();
  }
  void Deliver() {
    while (!queue_.empty()) {
      v1::Event e = std::move(queue_.front());
      queue_.pop_front();
      for (PushNode* n : nodes_) n->OnEvent(e, now);
    }
  }
  uint64_t seq() const { return seq_; }
  bool deferred = false;
  bool in_parts = false;  // deliver each event as its bus parts
  absl::Time now = t0;    // when the nodes get what is delivered
  void Publish(const v1::PushMessage& m) {
    v1::Event e;
    *e.mutable_push() = m;
    std::vector<std::pair<std::string, std::string>> streams;
    if (m.kind() == v1::PushMessage::SEND_TO_SYSTEM) streams = {{m.system_id(), ""}};
    if (m.kind() == v1::PushMessage::SEND_TO_GROUP || m.kind() == v1::PushMessage::BIND_GROUP ||
        m.kind() == v1::PushMessage::UNBIND_GROUP) {
      streams = {{m.system_id(), m.group_name()}};
    }
    Emit(e, streams);
  }
  std::string epoch = "ep1";

 private:
  std::vector<PushNode*> nodes_;
  std::deque<v1::Event> queue_;
  uint64_t seq_ = 0;
  std::map<std::string, uint64_t> offsets_;
};

void FakeUpstream::Head(std::function<void(absl::StatusOr<v1::HeadResponse>)> done) {
  v1::HeadResponse head;
  head.set_epoch(bus_->epoch);
  head.set_seq(bus_->seq());
  done(head);
}

void FakeUpstream::Publish(v1::PushMessage message, std::function<void(absl::Status)> done) {
  if (!is_up) return done(absl::UnavailableError("down"));
  published.push_back(message.kind());
  bus_->Publish(message);
  done(absl::OkStatus());
}

// Every test runs twice: with events whole, as ingest's gRPC stream sends them, and in the
// parts a replica reads from the NATS bus (--bus).
class PushNodeTest : public ::testing::TestWithParam<bool> {
 protected:
  PushNodeTest() : up_a_(&bus_), up_b_(&bus_) {
    bus_.in_parts = GetParam();
    a_ = Make("node-a", &ta_, &up_a_, &ma_);
    b_ = Make("node-b", &tb_, &up_b_, &mb_);
    bus_.Attach(a_.get());
    bus_.Attach(b_.get());
    // The first event of the epoch sets it on every node.
    v1::Event start;
    start.mutable_push()->set_kind(v1::PushMessage::NODE_HELLO);
    start.mutable_push()->set_origin_node("nobody");
    bus_.Emit(start, {});
  }
  std::unique_ptr<PushNode> Make(const std::string& id, Transport* t, Upstream* u, common::MetricsRegistry* m,
                                 const std::string& secret = "") {
    NodeOptions o;
    o.node_id = id;
    o.auth_secret = secret;
    o.send_queue_bytes = 1000;
    return std::make_unique<PushNode>(o, t, u, m);
  }
  // Opens a connection on `node` with query `query`; fails the test on refusal.
  void Open(PushNode* node, ConnId conn, const std::string& query) {
    auto v = node->Validate(query, "", t0);
    ASSERT_TRUE(std::holds_alternative<ConnectRequest>(v)) << std::get<Refusal>(v).message;
    node->OnOpen(conn, std::get<ConnectRequest>(v), t0);
  }
  // Online() once the node has caught up with the bus.
  static std::vector<std::string> OnlineNow(PushNode* node, const std::string& system, const std::string& group) {
    std::vector<std::string> out;
    node->Online(system, group, [&out](std::vector<std::string> ids) { out = std::move(ids); });
    return out;
  }
  v1::Event DeviceOnline(const std::string& id) {
    v1::Event e;
    e.mutable_device_state()->set_device_id(id);
    e.mutable_device_state()->set_online(true);
    return e;
  }

  Bus bus_;
  FakeTransport ta_, tb_;
  FakeUpstream up_a_, up_b_;
  common::MetricsRegistry ma_, mb_;
  std::unique_ptr<PushNode> a_, b_;
};

std::string EventsName(const ::testing::TestParamInfo<bool>& param) { return param.param ? "InBusParts" : "Whole"; }
INSTANTIATE_TEST_SUITE_P(Events, PushNodeTest, ::testing::Bool(), EventsName);

TEST_P(PushNodeTest, HandshakeValidation) {
  auto refusal = [&](const std::string& q) {
    auto v = a_->Validate(q, "", t0);
    return std::holds_alternative<Refusal>(v) ? std::get<Refusal>(v) : Refusal{0, ""};
  };
  EXPECT_EQ(refusal("").status, 400);
  EXPECT_EQ(refusal("clientId=x").message, "systemId is required");
  EXPECT_EQ(refusal("systemId=a%20b").status, 400);
  EXPECT_EQ(refusal("systemId=s&clientId=bad/id").status, 400);
  EXPECT_EQ(refusal("systemId=s&groups=ok,bad%20g").status, 400);
  EXPECT_EQ(refusal("systemId=s&recover=notjson").status, 400);
  EXPECT_EQ(refusal("systemId=s&recover=%7B%22system%22%3A5%7D").status, 400);
  auto ok = a_->Validate("systemId=fleet&groups=ops,eng&recover=%7B%22system%22%3A%5B%22ep1%22%2C3%5D%7D", "", t0);
  ASSERT_TRUE(std::holds_alternative<ConnectRequest>(ok));
  const auto& req = std::get<ConnectRequest>(ok);
  EXPECT_EQ(req.groups, (std::vector<std::string>{"ops", "eng"}));
  EXPECT_EQ(req.recover.at("system").second, 3u);
  EXPECT_EQ(req.client_id.size(), 36u) << "a UUID when no clientId is given";
}

TEST_P(PushNodeTest, AuthAndOrigin) {
  FakeTransport t;
  common::MetricsRegistry m;
  auto secure = Make("s", &t, &up_a_, &m, "k");
  auto status = [&](const std::string& q) {
    auto v = secure->Validate(q, "", t0);
    return std::holds_alternative<Refusal>(v) ? std::get<Refusal>(v).status : 0;
  };
  const std::string good = SignJwt(R"({"sub":"fleet","groups":["ops"],"cmd":true,"exp":1900000000})", "k");
  EXPECT_EQ(status("systemId=fleet"), 401);
  EXPECT_EQ(status("systemId=fleet&token=garbage"), 401);
  EXPECT_EQ(status("systemId=other&token=" + good), 401);
  EXPECT_EQ(status("systemId=fleet&groups=eng&token=" + good), 403);
  EXPECT_EQ(status("systemId=fleet&groups=ops&token=" + good), 0);
  NodeOptions o;
  o.allowed_origins = {"https://ok.example"};
  PushNode strict(o, &t, &up_a_, &m);
  EXPECT_TRUE(std::holds_alternative<Refusal>(strict.Validate("systemId=s", "https://evil.example", t0)));
  EXPECT_TRUE(std::holds_alternative<ConnectRequest>(strict.Validate("systemId=s", "https://ok.example", t0)));
  auto no_origin = strict.Validate("systemId=s", "", t0);
  ASSERT_TRUE(std::holds_alternative<Refusal>(no_origin)) << "with an allow-list, no Origin is no entry";
  EXPECT_EQ(std::get<Refusal>(no_origin).status, 403);
}

TEST_P(PushNodeTest, AnApiCallOnAnyNodeSeesClientsThatGotConnectedAndBindsThatReturned) {
  bus_.deferred = true;  // the stream lags behind the API
  Open(a_.get(), 1, "systemId=fleet&clientId=c1");
  ASSERT_EQ(ta_.Of(1, "connected").size(), 1u) << "connected once ingest took the CLIENT_UP";
  // B has not seen c1 yet; it must not answer 404 but catch up first.
  std::optional<absl::StatusOr<std::string>> sent;
  v1::PushMessage m;
  m.set_kind(v1::PushMessage::SEND_TO_CLIENTS);
  m.set_system_id("fleet");
  m.add_client_ids("c1");
  m.set_data("1");
  b_->Submit(m, [&](absl::StatusOr<std::string> id) { sent = std::move(id); });
  std::optional<std::vector<std::string>> online;
  b_->Online("fleet", "", [&](std::vector<std::string> ids) { online = std::move(ids); });
  EXPECT_FALSE(sent.has_value()) << "answered before catching up";
  bus_.Deliver();
  ASSERT_TRUE(sent.has_value());
  EXPECT_TRUE(sent->ok()) << sent->status();
  ASSERT_TRUE(online.has_value());
  EXPECT_EQ(*online, std::vector<std::string>{"c1"});
  // A bind through A's API for A's own client is applied on A too, and is seen from B.
  v1::PushMessage bind;
  bind.set_kind(v1::PushMessage::BIND_GROUP);
  bind.set_system_id("fleet");
  bind.set_group_name("g");
  bind.add_client_ids("c1");
  std::optional<absl::StatusOr<std::string>> bound;
  a_->Submit(bind, [&](absl::StatusOr<std::string> id) { bound = std::move(id); });
  ASSERT_TRUE(bound.has_value() && bound->ok());
  std::optional<std::vector<std::string>> in_group;
  b_->Online("fleet", "g", [&](std::vector<std::string> ids) { in_group = std::move(ids); });
  bus_.Deliver();
  ASSERT_TRUE(in_group.has_value());
  EXPECT_EQ(*in_group, std::vector<std::string>{"c1"});
  EXPECT_EQ(OnlineNow(a_.get(), "fleet", "g"), std::vector<std::string>{"c1"});
  EXPECT_EQ(a_->registry().GroupConns("fleet", "g"), std::vector<ConnId>{1}) << "the session itself joined";
  // A client nobody has is still a 404, after catching up.
  m.set_client_ids(0, "nobody");
  std::optional<absl::StatusOr<std::string>> missing;
  b_->Submit(m, [&](absl::StatusOr<std::string> id) { missing = std::move(id); });
  bus_.Deliver();
  ASSERT_TRUE(missing.has_value());
  EXPECT_EQ(common::ResultCodeOf(missing->status()), 404);
}

TEST_P(PushNodeTest, FramesForAClientWaitForItsConnectedFrame) {
  // An upstream that answers the CLIENT_UP publish only later.
  class SlowUpstream : public FakeUpstream {
   public:
    using FakeUpstream::FakeUpstream;
    void Publish(v1::PushMessage message, std::function<void(absl::Status)> done) override {
      waiting.push_back(std::move(done));
      (void)message;
    }
    std::vector<std::function<void(absl::Status)>> waiting;
  };
  SlowUpstream slow(&bus_);
  FakeTransport t;
  common::MetricsRegistry m;
  auto node = Make("slow", &t, &slow, &m);
  bus_.Attach(node.get());
  Open(node.get(), 7, "systemId=fleet&clientId=s1&groups=ops");
  EXPECT_TRUE(t.frames[7].empty()) << "nothing before connected";
  bus_.Emit(DeviceOnline("d1"), {{"fleet", ""}});
  EXPECT_TRUE(t.frames[7].empty());
  ASSERT_FALSE(slow.waiting.empty());
  slow.waiting.front()(absl::OkStatus());
  ASSERT_EQ(t.frames[7].size(), 2u);
  EXPECT_EQ(t.frames[7][0]["type"], "connected");
  EXPECT_EQ(t.frames[7][1]["type"], "device.online");
}

TEST_P(PushNodeTest, MembershipUpdatesIngestRefusesAreCountedAndClientsStillGetConnected) {
  // An upstream whose stream is up but whose publishes fail (ingest overloaded or restarting).
  class RefusingUpstream : public FakeUpstream {
   public:
    using FakeUpstream::FakeUpstream;
    void Publish(v1::PushMessage, std::function<void(absl::Status)> done) override {
      done(absl::UnavailableError("ingest is restarting"));
    }
  };
  RefusingUpstream refusing(&bus_);
  FakeTransport t;
  common::MetricsRegistry m;
  auto node = Make("refused", &t, &refusing, &m);
  bus_.Attach(node.get());
  for (ConnId c = 1; c <= 50; ++c) Open(node.get(), c, absl::StrCat("systemId=fleet&clientId=r", c));
  for (ConnId c = 1; c <= 50; ++c) {
    ASSERT_FALSE(t.frames[c].empty()) << c;
    EXPECT_EQ(t.frames[c][0]["type"], "connected") << c;
  }
  EXPECT_NE(m.Render().find("devbridge_push_membership_unpublished_total 50\n"), std::string::npos) << m.Render();
}

TEST_P(PushNodeTest, GroupsPerClientAreBoundedForJoinsAndBinds) {
  FakeTransport t;
  common::MetricsRegistry m;
  NodeOptions o;
  o.node_id = "small";
  o.max_groups_per_client = 2;
  PushNode node(o, &t, &up_a_, &m);
  bus_.Attach(&node);
  Open(&node, 1, "systemId=fleet&clientId=c1");
  for (const char* g : {"g1", "g2", "g3"}) node.OnMessage(1, absl::StrCat(R"({"action":"join","group":")", g, "\"}"), t0);
  ASSERT_EQ(t.Of(1, "joined").size(), 2u);
  auto errors = t.Of(1, "error");
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0]["code"], 429);
  EXPECT_EQ(errors[0]["data"]["group"], "g3");
  EXPECT_TRUE(t.closed.empty()) << "the connection stays";
  node.OnMessage(1, R"({"action":"join","group":"g1"})", t0);
  EXPECT_EQ(t.Of(1, "error").size(), 1u) << "joining a group it is in is no new group";
  v1::PushMessage bind;
  bind.set_kind(v1::PushMessage::BIND_GROUP);
  bind.set_system_id("fleet");
  bind.set_group_name("g4");
  bind.add_client_ids("c1");
  std::optional<absl::StatusOr<std::string>> result;
  node.Submit(bind, [&](absl::StatusOr<std::string> r) { result = std::move(r); });
  ASSERT_TRUE(result.has_value());
  EXPECT_EQ(common::ResultCodeOf(result->status()), 429);
}

TEST_P(PushNodeTest, TokensWithWrongJsonTypesAre401NotACrash) {
  FakeTransport t;
  common::MetricsRegistry m;
  auto secure = Make("s", &t, &up_a_, &m, "k");
  for (const char* header : {R"({"alg":1})", R"({"alg":null})", R"({"alg":["HS256"]})"}) {
    const std::string token = absl::StrCat(absl::WebSafeBase64Escape(header), ".",
                                           absl::WebSafeBase64Escape(R"({"sub":"fleet","exp":1900000000})"), ".x");
    auto v = secure->Validate("systemId=fleet&token=" + token, "", t0);
    ASSERT_TRUE(std::holds_alternative<Refusal>(v)) << header;
    EXPECT_EQ(std::get<Refusal>(v).status, 401) << header;
    EXPECT_EQ(secure->CheckApiToken("Bearer " + token, "fleet", t0).code(), absl::StatusCode::kUnauthenticated);
  }
}

// The bus has been seen to deliver a message again around a server's restart; a client
// gets each offset of a stream once, and the next new one after it.
TEST_P(PushNodeTest, AStreamMessageDeliveredAgainReachesNoClientTwice) {
  Open(a_.get(), 1, "systemId=fleet&clientId=c1");
  auto message = [](uint64_t offset, const std::string& data) {
    v1::Event e;
    e.set_epoch("ep1");
    e.mutable_push()->set_kind(v1::PushMessage::SEND_TO_SYSTEM);
    e.mutable_push()->set_system_id("fleet");
    e.mutable_push()->set_origin_node("node-b");
    e.mutable_push()->set_data(data);
    v1::StreamOffset* s = e.add_streams();
    s->set_system_id("fleet");
    s->set_offset(offset);
    return e;
  };
  a_->OnEvent(message(1, "1"), t0);
  a_->OnEvent(message(2, "2"), t0);
  a_->OnEvent(message(2, "2"), t0);  // again
  a_->OnEvent(message(1, "1"), t0);  // an older one again
  a_->OnEvent(message(3, "3"), t0);
  std::vector<uint64_t> offsets;
  for (const Json& f : ta_.Of(1, "message")) offsets.push_back(f["offset"].get<uint64_t>());
  EXPECT_EQ(offsets, (std::vector<uint64_t>{1, 2, 3}));
  EXPECT_NE(ma_.Render().find("devbridge_push_frames_repeated_total 2"), std::string::npos) << ma_.Render();
}

TEST_P(PushNodeTest, APoisonEventIsCountedAndSkippedAndTheNextOneApplies) {
  Open(a_.get(), 1, "systemId=fleet&clientId=c1");
  const std::vector<std::pair<v1::PushMessage::Kind, std::string>> poison = {
      {v1::PushMessage::NODE_SNAPSHOT, "[1]"},                        // members that are not objects
      {v1::PushMessage::NODE_SNAPSHOT, R"([{"c":["x"],"s":"fleet"}])"},  // wrong member types
      {v1::PushMessage::NODE_SNAPSHOT, std::string(100000, '[')},      // nested past any limit
      {v1::PushMessage::SEND_TO_SYSTEM, R"({"a":)"},                   // would break every frame
      {v1::PushMessage::SEND_TO_SYSTEM, R"(1,"type":"device.online")"},  // would inject a second type
      {static_cast<v1::PushMessage::Kind>(77), "1"},                   // unknown kind
  };
  for (const auto& [kind, data] : poison) {
    v1::Event e;
    e.set_epoch(bus_.epoch);
    e.mutable_push()->set_kind(kind);
    e.mutable_push()->set_system_id("fleet");
    e.mutable_push()->set_origin_node("node-x");
    e.mutable_push()->set_data(data);
    e.add_streams()->set_system_id("fleet");
    a_->OnEvent(e, t0);
  }
  EXPECT_NE(ma_.Render().find("devbridge_push_events_rejected_total 6"), std::string::npos) << ma_.Render();
  EXPECT_TRUE(ta_.Of(1, "message").empty()) << "nothing of a poison event reaches a client";
  EXPECT_EQ(a_->registry().FindMember("x"), nullptr);
  // The stream goes on.
  v1::PushMessage m;
  m.set_kind(v1::PushMessage::SEND_TO_SYSTEM);
  m.set_system_id("fleet");
  m.set_origin_node("node-b");
  m.set_data(R"({"ok":true})");
  bus_.Publish(m);
  ASSERT_EQ(ta_.Of(1, "message").size(), 1u);
  EXPECT_EQ(ta_.Of(1, "message")[0]["data"]["ok"], true);
}

TEST_P(PushNodeTest, ConnectedFramePingAndErrors) {
  Open(a_.get(), 1, "systemId=fleet&clientId=c1");
  auto connected = ta_.Of(1, "connected");
  ASSERT_EQ(connected.size(), 1u);
  EXPECT_EQ(connected[0]["code"], 0);
  EXPECT_EQ(connected[0]["data"]["clientId"], "c1");
  EXPECT_EQ(connected[0]["data"]["node"], "node-a");
  EXPECT_EQ(connected[0]["data"]["epoch"], "ep1");
  a_->OnMessage(1, R"({"action":"ping"})", t0);
  EXPECT_EQ(ta_.Of(1, "pong").size(), 1u);
  a_->OnMessage(1, "garbage", t0);
  auto errors = ta_.Of(1, "error");
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0]["code"], 400);
  EXPECT_TRUE(ta_.closed.empty()) << "one error keeps the connection";
  for (int i = 0; i < 20; ++i) a_->OnMessage(1, "{}", t0 + absl::Milliseconds(i));
  ASSERT_EQ(ta_.closed.count(1), 1u);
  EXPECT_EQ(ta_.closed[1].first, 1008);
}

TEST_P(PushNodeTest, ErrorsOutsideTheWindowAreForgiven) {
  Open(a_.get(), 1, "systemId=fleet");
  for (int i = 0; i < 40; ++i) a_->OnMessage(1, "{}", t0 + absl::Seconds(i));
  EXPECT_TRUE(ta_.closed.empty());
}

TEST_P(PushNodeTest, DeviceEventsReachTheDeviceSystemAndTheFleetWithOffsets) {
  Open(a_.get(), 1, "systemId=fleet");
  Open(b_.get(), 2, "systemId=sim-0001");
  Open(b_.get(), 3, "systemId=sim-0002");
  bus_.Emit(DeviceOnline("sim-0001"), {{"sim-0001", ""}, {"fleet", ""}});
  auto fleet = ta_.Of(1, "device.online");
  auto own = tb_.Of(2, "device.online");
  ASSERT_EQ(fleet.size(), 1u);
  ASSERT_EQ(own.size(), 1u);
  EXPECT_TRUE(tb_.Of(3, "device.online").empty());
  EXPECT_EQ(fleet[0]["systemId"], "fleet");
  EXPECT_EQ(fleet[0]["offset"], 1);
  EXPECT_EQ(fleet[0]["epoch"], "ep1");
  EXPECT_EQ(fleet[0]["data"]["deviceId"], "sim-0001");
  EXPECT_EQ(own[0]["systemId"], "sim-0001");
}

TEST_P(PushNodeTest, PollResultsAreDeviceDataAndResponsivenessHasItsOwnTypes) {
  Open(a_.get(), 1, "systemId=fleet");
  v1::Event poll;
  v1::CommandResult* r = poll.mutable_data();
  r->set_device_id("m-1");
  r->set_solicited(true);
  r->set_poll(true);
  r->set_code(200);
  r->set_address(0);
  r->set_count(12);
  bus_.Emit(poll, {{"m-1", ""}, {"fleet", ""}});
  auto data = ta_.Of(1, "device.data");
  ASSERT_EQ(data.size(), 1u) << "a poll's result is device.data, not command.result";
  EXPECT_EQ(data[0]["data"]["solicited"], true);
  EXPECT_EQ(data[0]["data"]["poll"], true);
  EXPECT_EQ(data[0]["data"]["count"], 12);
  EXPECT_TRUE(ta_.Of(1, "command.result").empty());

  v1::Event down;
  down.mutable_responsive()->set_device_id("m-1");
  down.mutable_responsive()->set_responsive(false);
  down.mutable_responsive()->set_failures(3);
  down.mutable_responsive()->set_backoff_ms(2000);
  bus_.Emit(down, {{"m-1", ""}, {"fleet", ""}});
  v1::Event up;
  up.mutable_responsive()->set_device_id("m-1");
  up.mutable_responsive()->set_responsive(true);
  bus_.Emit(up, {{"m-1", ""}, {"fleet", ""}});
  auto unresponsive = ta_.Of(1, "device.unresponsive");
  ASSERT_EQ(unresponsive.size(), 1u);
  EXPECT_EQ(unresponsive[0]["code"], 2002);
  EXPECT_EQ(unresponsive[0]["data"]["deviceId"], "m-1");
  EXPECT_EQ(unresponsive[0]["data"]["responsive"], false);
  EXPECT_EQ(unresponsive[0]["data"]["failures"], 3);
  EXPECT_EQ(unresponsive[0]["data"]["backoffMs"], 2000);
  EXPECT_EQ(unresponsive[0]["offset"], 2) << "a message of the stream like any device event";
  auto responsive = ta_.Of(1, "device.responsive");
  ASSERT_EQ(responsive.size(), 1u);
  EXPECT_EQ(responsive[0]["code"], 200);
  EXPECT_EQ(responsive[0]["data"]["responsive"], true);
}

TEST_P(PushNodeTest, ApiReachesClientsOnEveryNodeAndListOnlineCountsThem) {
  Open(a_.get(), 1, "systemId=fleet&clientId=on-a");
  Open(b_.get(), 2, "systemId=fleet&clientId=on-b");
  EXPECT_EQ(OnlineNow(a_.get(), "fleet", ""), (std::vector<std::string>{"on-a", "on-b"}));
  EXPECT_EQ(OnlineNow(b_.get(), "fleet", ""), (std::vector<std::string>{"on-a", "on-b"}));
  v1::PushMessage to_a;
  to_a.set_kind(v1::PushMessage::SEND_TO_CLIENTS);
  to_a.set_system_id("fleet");
  to_a.add_client_ids("on-a");
  to_a.set_data(R"({"hello":1})");
  to_a.set_send_user_id("u7");
  absl::StatusOr<std::string> id;
  b_->Submit(to_a, [&](absl::StatusOr<std::string> r) { id = std::move(r); });  // through the other node
  ASSERT_TRUE(id.ok()) << id.status();
  auto got = ta_.Of(1, "message");
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0]["messageId"], *id);
  EXPECT_EQ(got[0]["data"]["hello"], 1);
  EXPECT_EQ(got[0]["sendUserId"], "u7");
  EXPECT_TRUE(tb_.Of(2, "message").empty());

  v1::PushMessage all;
  all.set_kind(v1::PushMessage::SEND_TO_SYSTEM);
  all.set_system_id("fleet");
  all.set_data("\"hi\"");
  a_->Submit(all, [](const absl::StatusOr<std::string>&) {});
  EXPECT_EQ(ta_.Of(1, "message").size(), 2u);
  EXPECT_EQ(tb_.Of(2, "message").size(), 1u);
  EXPECT_EQ(tb_.Of(2, "message")[0]["offset"], ta_.Of(1, "message")[1]["offset"]) << "same offset on every node";

  v1::PushMessage nobody = to_a;
  nobody.set_client_ids(0, "ghost");
  b_->Submit(nobody, [&](absl::StatusOr<std::string> r) { id = std::move(r); });
  EXPECT_EQ(common::ResultCodeOf(id.status()), common::kCodeNotFound);
  v1::PushMessage bad = all;
  bad.set_data("{not json");
  b_->Submit(bad, [&](absl::StatusOr<std::string> r) { id = std::move(r); });
  EXPECT_EQ(common::ResultCodeOf(id.status()), common::kCodeBadRequest);

  v1::PushMessage close;
  close.set_kind(v1::PushMessage::CLOSE_CLIENT);
  close.set_system_id("fleet");
  close.add_client_ids("on-a");
  b_->Submit(close, [&](absl::StatusOr<std::string> r) { id = std::move(r); });
  ASSERT_TRUE(id.ok());
  EXPECT_EQ(ta_.closed.count(1), 1u) << "closed wherever it is";
}

TEST_P(PushNodeTest, JoinSendsPresenceToGroupMembersOnEveryNode) {
  Open(a_.get(), 1, "systemId=fleet&clientId=x&groups=ops");
  Open(b_.get(), 2, "systemId=fleet&clientId=y");
  b_->OnMessage(2, R"({"action":"join","group":"ops"})", t0);
  EXPECT_EQ(tb_.Of(2, "joined").size(), 1u);
  auto presence = ta_.Of(1, "presence");
  ASSERT_GE(presence.size(), 1u);
  EXPECT_EQ(presence.back()["code"], 1001);
  EXPECT_EQ(presence.back()["data"]["clientId"], "y");
  EXPECT_EQ(presence.back()["groupName"], "ops");
  EXPECT_EQ(OnlineNow(a_.get(), "fleet", "ops"), (std::vector<std::string>{"x", "y"}));
  v1::PushMessage g;
  g.set_kind(v1::PushMessage::SEND_TO_GROUP);
  g.set_system_id("fleet");
  g.set_group_name("ops");
  a_->Submit(g, [](const absl::StatusOr<std::string>&) {});
  EXPECT_EQ(ta_.Of(1, "message").size(), 1u);
  EXPECT_EQ(tb_.Of(2, "message").size(), 1u);
  b_->OnMessage(2, R"({"action":"leave","group":"ops"})", t0);
  EXPECT_EQ(ta_.Of(1, "presence").back()["code"], 1002);
  EXPECT_EQ(OnlineNow(a_.get(), "fleet", "ops"), std::vector<std::string>{"x"});
}

TEST_P(PushNodeTest, RecoverReplaysMissedMessagesOnAnotherNodeOr410) {
  Open(a_.get(), 1, "systemId=fleet&clientId=c");
  for (int i = 0; i < 3; ++i) bus_.Emit(DeviceOnline("d" + std::to_string(i)), {{"fleet", ""}});
  const auto seen = ta_.Of(1, "device.online");
  ASSERT_EQ(seen.size(), 3u);
  a_->OnClose(1);
  for (int i = 3; i < 5; ++i) bus_.Emit(DeviceOnline("d" + std::to_string(i)), {{"fleet", ""}});
  // Reconnect to the other node, recovering after offset 3 of ep1.
  Open(b_.get(), 2, "systemId=fleet&clientId=c&recover=%7B%22system%22%3A%5B%22ep1%22%2C3%5D%7D");
  auto replayed = tb_.Of(2, "device.online");
  ASSERT_EQ(replayed.size(), 2u);
  EXPECT_EQ(replayed[0]["offset"], 4);
  EXPECT_EQ(replayed[1]["offset"], 5);
  EXPECT_EQ(replayed[0]["data"]["deviceId"], "d3");
  bus_.Emit(DeviceOnline("d5"), {{"fleet", ""}});
  EXPECT_EQ(tb_.Of(2, "device.online").back()["offset"], 6) << "then live, no gap or duplicate";
  Open(b_.get(), 3, "systemId=fleet&recover=%7B%22system%22%3A%5B%22old%22%2C3%5D%7D");
  auto gone = tb_.Of(3, "error");
  ASSERT_EQ(gone.size(), 1u);
  EXPECT_EQ(gone[0]["code"], 410);
  EXPECT_EQ(gone[0]["data"]["stream"], "system");
}

TEST_P(PushNodeTest, ConnectedClientsGetA410PerStreamWhenIngestRestarts) {
  Open(a_.get(), 1, "systemId=fleet&groups=g1");
  Open(b_.get(), 2, "systemId=sim-0001");
  bus_.Emit(DeviceOnline("sim-0001"), {{"sim-0001", ""}, {"fleet", ""}});
  EXPECT_TRUE(ta_.Of(1, "error").empty());
  bus_.epoch = "ep2";  // ingest restarted
  bus_.Emit(DeviceOnline("sim-0001"), {{"sim-0001", ""}, {"fleet", ""}});
  auto a_errors = ta_.Of(1, "error");
  ASSERT_EQ(a_errors.size(), 2u);
  EXPECT_EQ(a_errors[0]["code"], 410);
  EXPECT_EQ(a_errors[0]["data"]["stream"], "system");
  EXPECT_EQ(a_errors[1]["data"]["stream"], "group:g1");
  auto b_errors = tb_.Of(2, "error");
  ASSERT_EQ(b_errors.size(), 1u);
  EXPECT_EQ(b_errors[0]["data"]["stream"], "system");
  auto live = tb_.Of(2, "device.online");
  ASSERT_EQ(live.size(), 2u);
  EXPECT_EQ(live[1]["epoch"], "ep2") << "and goes on live";
  bus_.Emit(DeviceOnline("sim-0001"), {{"sim-0001", ""}});
  EXPECT_EQ(tb_.Of(2, "error").size(), 1u) << "once per restart";
}

TEST_P(PushNodeTest, SlowConsumerIsClosedWith4008) {
  Open(a_.get(), 1, "systemId=fleet");
  Open(a_.get(), 2, "systemId=fleet");
  ta_.buffered = 5000;  // more than send_queue_bytes
  bus_.Emit(DeviceOnline("d"), {{"fleet", ""}});
  EXPECT_EQ(ta_.closed[1].first, 4008);
  EXPECT_EQ(ta_.closed[1].second, "slow consumer");
}

TEST_P(PushNodeTest, ReusedClientIdReplacesTheOldSessionAcrossNodes) {
  Open(a_.get(), 1, "systemId=fleet&clientId=same");
  Open(a_.get(), 2, "systemId=fleet&clientId=same");
  EXPECT_EQ(ta_.closed[1].first, 4009);
  Open(b_.get(), 3, "systemId=fleet&clientId=same");
  EXPECT_EQ(ta_.closed[2].first, 4009) << "the session on the other node is replaced too";
  EXPECT_EQ(OnlineNow(a_.get(), "fleet", ""), std::vector<std::string>{"same"});
}

TEST_P(PushNodeTest, CommandIsAcceptedAtOnceAndItsResultReachesTheAskerOnce) {
  Open(a_.get(), 1, "systemId=fleet&clientId=asker");
  a_->OnMessage(1, R"({"action":"command","requestId":"r1","deviceId":"sim-0001","address":0,"count":2})", t0);
  auto accepted = ta_.Of(1, "command.accepted");
  ASSERT_EQ(accepted.size(), 1u);
  EXPECT_EQ(accepted[0]["data"]["requestId"], "r1");
  ASSERT_EQ(up_a_.dispatched.size(), 1u);
  const v1::Command& sent = up_a_.dispatched[0];
  EXPECT_EQ(sent.command_id(), accepted[0]["data"]["commandId"]);
  EXPECT_EQ(sent.client_id(), "asker");
  EXPECT_EQ(sent.origin_node(), "node-a");
  // Ingest emits the result on the device's and the fleet's streams.
  v1::Event result;
  v1::CommandResult* r = result.mutable_data();
  r->set_command_id(sent.command_id());
  r->set_request_id("r1");
  r->set_device_id("sim-0001");
  r->set_code(200);
  r->set_msg("success");
  r->set_solicited(true);
  r->set_origin_node("node-a");
  r->set_client_id("asker");
  r->set_system_id("fleet");
  r->set_request(std::string("\x01\x03", 2));
  auto* v = r->add_values();
  v->set_name("temperature");
  v->set_json_value("21.5");
  v->set_unit("°C");
  v->add_raw(215);
  bus_.Emit(result, {{"sim-0001", ""}, {"fleet", ""}});
  auto results = ta_.Of(1, "command.result");
  ASSERT_EQ(results.size(), 1u) << "once, though the asker is in the fleet stream too";
  EXPECT_EQ(results[0]["code"], 200);
  EXPECT_EQ(results[0]["data"]["values"]["temperature"]["value"], 21.5);
  EXPECT_EQ(results[0]["data"]["request"], "0103");
  EXPECT_TRUE(results[0]["data"]["exception"].is_null());
}

TEST_P(PushNodeTest, CommandResultReachesAnAskerOutsideTheStreamsDirectly) {
  Open(a_.get(), 1, "systemId=console&clientId=asker");
  a_->OnMessage(1, R"({"action":"command","requestId":"r1","deviceId":"sim-0001","address":0,"count":1})", t0);
  v1::Event result;
  result.mutable_data()->set_solicited(true);
  result.mutable_data()->set_origin_node("node-a");
  result.mutable_data()->set_client_id("asker");
  result.mutable_data()->set_code(2004);
  bus_.Emit(result, {{"sim-0001", ""}, {"fleet", ""}});
  auto results = ta_.Of(1, "command.result");
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0]["code"], 2004);
  EXPECT_FALSE(results[0].contains("offset")) << "direct copies are not stream messages";
}

TEST_P(PushNodeTest, CommandRefusals) {
  FakeTransport t;
  common::MetricsRegistry m;
  auto secure = Make("s", &t, &up_a_, &m, "k");
  auto open = [&](ConnId conn, const std::string& claims, const std::string& system) {
    auto v = secure->Validate("systemId=" + system + "&token=" + SignJwt(claims, "k"), "", t0);
    ASSERT_TRUE(std::holds_alternative<ConnectRequest>(v));
    secure->OnOpen(conn, std::get<ConnectRequest>(v), t0);
  };
  open(1, R"({"sub":"sim-0001","exp":1900000000})", "sim-0001");
  open(2, R"({"sub":"sim-0001","cmd":true,"exp":1900000000})", "sim-0001");
  const std::string to_other = R"({"action":"command","requestId":"r","deviceId":"sim-0002","address":0,"count":1})";
  const std::string to_own = R"({"action":"command","requestId":"r","deviceId":"sim-0001","address":0,"count":1})";
  secure->OnMessage(1, to_own, t0);
  EXPECT_EQ(t.Of(1, "error").back()["code"], 403);
  secure->OnMessage(2, to_other, t0);
  EXPECT_EQ(t.Of(2, "error").back()["code"], 403);
  EXPECT_EQ(t.Of(2, "error").back()["data"]["requestId"], "r");
  up_a_.is_up = false;
  secure->OnMessage(2, to_own, t0);
  EXPECT_EQ(t.Of(2, "error").back()["code"], 503);
  absl::StatusOr<std::string> id;
  v1::PushMessage all;
  all.set_kind(v1::PushMessage::SEND_TO_SYSTEM);
  all.set_system_id("fleet");
  a_->Submit(all, [&](absl::StatusOr<std::string> r) { id = std::move(r); });
  EXPECT_EQ(common::ResultCodeOf(id.status()), common::kCodeUnavailable);
}

TEST_P(PushNodeTest, ApiTokens) {
  FakeTransport t;
  common::MetricsRegistry m;
  auto secure = Make("s", &t, &up_a_, &m, "k");
  EXPECT_FALSE(secure->CheckApiToken("", "fleet", t0).ok());
  EXPECT_FALSE(secure->CheckApiToken("Bearer " + SignJwt(R"({"sub":"fleet","exp":1900000000})", "k"), "fleet", t0).ok());
  EXPECT_TRUE(secure->CheckApiToken("Bearer " + SignJwt(R"({"sub":"fleet","api":true,"exp":1900000000})", "k"), "fleet", t0).ok());
  EXPECT_FALSE(secure->CheckApiToken("Bearer " + SignJwt(R"({"sub":"x","api":true,"exp":1900000000})", "k"), "fleet", t0).ok());
  EXPECT_TRUE(a_->CheckApiToken("", "fleet", t0).ok()) << "no auth configured";
}

// On the bus a bind is a FANOUT part (the presence frame) and an EFFECTS part (the
// membership): each does its share once. What a replica reads back at start (past events)
// fills the recovery history and reaches nobody: no frame, no membership, no send.
TEST_P(PushNodeTest, OnTheBusEachPartDoesItsShareOnceAndPastEventsOnlyFillTheHistory) {
  if (!GetParam()) GTEST_SKIP() << "parts and past events exist on the bus only";
  Open(a_.get(), 1, "systemId=fleet&clientId=x&groups=night");
  Open(b_.get(), 2, "systemId=fleet&clientId=y");
  v1::PushMessage bind;
  bind.set_kind(v1::PushMessage::BIND_GROUP);
  bind.set_system_id("fleet");
  bind.set_group_name("night");
  bind.add_client_ids("y");
  const size_t before = ta_.Of(1, "presence").size();  // x's own join
  b_->Submit(bind, [](const absl::StatusOr<std::string>&) {});
  EXPECT_EQ(ta_.Of(1, "presence").size(), before + 1) << "from the FANOUT part, and none from the EFFECTS part";
  EXPECT_EQ(OnlineNow(a_.get(), "fleet", "night"), (std::vector<std::string>{"x", "y"}));

  FakeTransport tc;
  FakeUpstream down(&bus_);
  down.is_up = false;
  common::MetricsRegistry mc;
  std::unique_ptr<PushNode> c = Make("node-c", &tc, &down, &mc);
  Open(c.get(), 5, "systemId=fleet&clientId=z");
  for (uint64_t offset = 1; offset <= 3; ++offset) {
    v1::Event e = DeviceOnline(absl::StrCat("d", offset));
    e.set_epoch("ep1");
    e.set_seq(offset);
    e.set_at_unix_ms(absl::ToUnixMillis(t0));
    e.set_part(v1::Event::FANOUT);
    auto* s = e.add_streams();
    s->set_system_id("fleet");
    s->set_offset(offset);
    c->OnPastEvent(e);
  }
  v1::Event ghost;
  ghost.set_epoch("ep1");
  ghost.set_seq(4);
  ghost.set_part(v1::Event::EFFECTS);
  ghost.mutable_push()->set_kind(v1::PushMessage::CLIENT_UP);
  ghost.mutable_push()->set_system_id("fleet");
  ghost.mutable_push()->add_client_ids("ghost");
  ghost.mutable_push()->set_origin_node("node-x");
  c->OnPastEvent(ghost);
  v1::Event send = ghost;
  send.set_seq(5);
  send.mutable_push()->set_kind(v1::PushMessage::SEND_TO_CLIENTS);
  send.mutable_push()->set_client_ids(0, "z");
  c->OnPastEvent(send);
  EXPECT_TRUE(tc.Of(5, "device.online").empty());
  EXPECT_TRUE(tc.Of(5, "message").empty());
  EXPECT_EQ(OnlineNow(c.get(), "fleet", ""), std::vector<std::string>{"z"});
  Open(c.get(), 6, "systemId=fleet&clientId=w&recover=%7B%22system%22%3A%5B%22ep1%22%2C1%5D%7D");
  auto recovered = tc.Of(6, "device.online");
  ASSERT_EQ(recovered.size(), 2u);
  EXPECT_EQ(recovered[0]["offset"], 2);
  EXPECT_EQ(recovered[1]["offset"], 3);
}

// On the bus nobody announces a replica that crashed: each says NODE_ALIVE, and one not heard
// from for node_timeout has its clients forgotten; when it speaks again, every replica is
// asked for its clients (NODE_HELLO) and it answers with a snapshot.
TEST_P(PushNodeTest, AReplicaNotHeardFromIsForgottenAndAskedForItsClientsWhenItSpeaksAgain) {
  FakeTransport tc;
  FakeUpstream up_c(&bus_);
  common::MetricsRegistry mc;
  NodeOptions o;
  o.node_id = "node-c";
  o.node_timeout = absl::Seconds(15);
  o.alive_interval = absl::Seconds(5);
  PushNode c(o, &tc, &up_c, &mc);
  bus_.Attach(&c);
  Open(b_.get(), 2, "systemId=fleet&clientId=y");
  EXPECT_EQ(OnlineNow(&c, "fleet", ""), std::vector<std::string>{"y"});
  c.Sweep(t0 + absl::Seconds(10));
  EXPECT_EQ(OnlineNow(&c, "fleet", ""), std::vector<std::string>{"y"}) << "10 s of silence is not 15";
  c.Sweep(t0 + absl::Seconds(16));
  EXPECT_TRUE(OnlineNow(&c, "fleet", "").empty()) << "node-b was silent for 16 s";
  EXPECT_EQ(OnlineNow(a_.get(), "fleet", ""), std::vector<std::string>{"y"}) << "a node without node_timeout keeps it";
  bus_.now = t0 + absl::Seconds(17);
  Open(b_.get(), 3, "systemId=fleet&clientId=z");
  EXPECT_EQ(OnlineNow(&c, "fleet", ""), (std::vector<std::string>{"y", "z"})) << "b's snapshot after c's hello";
  // c itself says it is alive once per alive_interval (last at 16 s: then at 21 and 26).
  up_c.published.clear();
  for (int s = 20; s < 30; ++s) c.Sweep(t0 + absl::Seconds(s));
  EXPECT_EQ(std::count(up_c.published.begin(), up_c.published.end(), v1::PushMessage::NODE_ALIVE), 2);
}

// Interest routing: the node tells its upstream which streams it has connections to, and a
// recover into a stream the upstream is still reading back waits until it has.
TEST_P(PushNodeTest, StreamsAreWantedWhileConnectionsHoldThemAndRecoverWaitsForTheReadBack) {
  up_a_.ready_at_once = false;
  Open(a_.get(), 1, "systemId=s1&clientId=x&groups=g1");
  EXPECT_EQ(up_a_.wanted, (std::vector<std::string>{StreamKey("s1", "g1"), StreamKey("s1", "")}));
  for (int i = 0; i < 3; ++i) bus_.Emit(DeviceOnline(absl::StrCat("d", i)), {{"s1", ""}});
  EXPECT_EQ(ta_.Of(1, "device.online").size(), 3u) << "live messages go out while the stream is read back";
  Open(a_.get(), 2, "systemId=s1&clientId=y&recover=%7B%22system%22%3A%5B%22ep1%22%2C1%5D%7D");
  EXPECT_EQ(up_a_.wanted.size(), 2u) << "s1 was wanted already";
  EXPECT_TRUE(ta_.Of(2, "device.online").empty()) << "the recover waits for the read-back";
  a_->OnStreamReady("s1", "");
  auto recovered = ta_.Of(2, "device.online");
  ASSERT_EQ(recovered.size(), 2u);
  EXPECT_EQ(recovered[0]["offset"], 2);
  EXPECT_EQ(recovered[1]["offset"], 3);
  a_->OnClose(1);
  EXPECT_EQ(up_a_.unwanted, std::vector<std::string>{StreamKey("s1", "g1")}) << "y still holds s1";
  a_->OnClose(2);
  EXPECT_EQ(up_a_.unwanted.back(), StreamKey("s1", ""));
}

// A hello or snapshot the upstream did not take (it was just coming back) is sent again at
// the next sweep, so the other replicas learn of this one's clients.
TEST_P(PushNodeTest, AHelloTheUpstreamDidNotTakeIsSentAgain) {
  up_a_.published.clear();  // the snapshot that answered the fixture's first hello
  up_a_.is_up = false;
  a_->OnUpstream(true);
  EXPECT_TRUE(up_a_.published.empty());
  a_->Sweep(t0);
  EXPECT_TRUE(up_a_.published.empty()) << "not while the upstream is down";
  up_a_.is_up = true;
  a_->Sweep(t0);
  EXPECT_EQ(up_a_.published,
            (std::vector<v1::PushMessage::Kind>{v1::PushMessage::NODE_HELLO, v1::PushMessage::NODE_SNAPSHOT}));
  a_->Sweep(t0);
  EXPECT_EQ(up_a_.published.size(), 2u) << "once";
}

}  // namespace
}  // namespace devbridge::push
