#include "events/bus_layout.h"

#include "gtest/gtest.h"

namespace devbridge::events {
namespace {

v1::PushMessage Op(v1::PushMessage::Kind kind) {
  v1::PushMessage m;
  m.set_kind(kind);
  m.set_system_id("fleet");
  m.set_group_name("ops");
  m.add_client_ids("c1");
  return m;
}

TEST(BusLayout, SendsToStreamsAreFanOutOnlyAndEverythingElseReachesEveryReplica) {
  v1::Event event;
  *event.mutable_push() = Op(v1::PushMessage::SEND_TO_SYSTEM);
  ASSERT_EQ(PushStreams(event.push()).size(), 1u);
  EXPECT_EQ(PushStreams(event.push())[0].group_name, "");
  EXPECT_FALSE(AffectsCluster(event));
  *event.mutable_push() = Op(v1::PushMessage::SEND_TO_GROUP);
  EXPECT_EQ(PushStreams(event.push())[0].group_name, "ops");
  EXPECT_FALSE(AffectsCluster(event));
  // A bind is a presence frame on the group's stream and a membership change everywhere.
  *event.mutable_push() = Op(v1::PushMessage::BIND_GROUP);
  EXPECT_EQ(PushStreams(event.push()).size(), 1u);
  EXPECT_TRUE(AffectsCluster(event));
  for (auto kind : {v1::PushMessage::SEND_TO_CLIENTS, v1::PushMessage::CLOSE_CLIENT, v1::PushMessage::CLIENT_UP,
                    v1::PushMessage::NODE_SNAPSHOT, v1::PushMessage::NODE_DOWN}) {
    *event.mutable_push() = Op(kind);
    EXPECT_TRUE(PushStreams(event.push()).empty()) << kind;
    EXPECT_TRUE(AffectsCluster(event)) << kind;
  }
  // Device events: fan-out only, unless a client asked for the result.
  v1::Event data;
  data.mutable_data()->set_device_id("d1");
  EXPECT_FALSE(AffectsCluster(data));
  data.mutable_data()->set_solicited(true);
  data.mutable_data()->set_client_id("console");
  EXPECT_TRUE(AffectsCluster(data));
  v1::Event state;
  state.mutable_device_state()->set_online(true);
  EXPECT_FALSE(AffectsCluster(state));
  // An event of no stream has an EFFECTS part all the same.
  EXPECT_TRUE(HasEffectsPart(state));
  state.add_streams()->set_system_id("fleet");
  EXPECT_FALSE(HasEffectsPart(state));
}

TEST(BusLayout, APartDecodesAsTheEventWithItsOneStreamOrItsStreamNames) {
  v1::Event event;
  event.set_epoch("bus-1");
  event.set_seq(42);  // ingest's own: not carried on the bus
  event.set_at_unix_us(1234);
  event.mutable_data()->set_device_id("d1");
  for (const char* system : {"d1", "fleet"}) {
    v1::StreamOffset* s = event.add_streams();
    s->set_system_id(system);
    s->set_offset(7);
  }
  const std::string base = EncodeFanoutBase(event);
  v1::Event fanout;
  ASSERT_TRUE(fanout.ParseFromString(EncodeFanout(base, {"fleet", "ops"}, 99)));
  EXPECT_EQ(fanout.part(), v1::Event::FANOUT);
  EXPECT_EQ(fanout.seq(), 0u);
  EXPECT_EQ(fanout.epoch(), "bus-1");
  EXPECT_EQ(fanout.at_unix_us(), 1234);
  EXPECT_EQ(fanout.data().device_id(), "d1");
  ASSERT_EQ(fanout.streams_size(), 1);
  EXPECT_EQ(fanout.streams(0).system_id(), "fleet");
  EXPECT_EQ(fanout.streams(0).group_name(), "ops");
  EXPECT_EQ(fanout.streams(0).offset(), 99u);

  v1::Event effects;
  ASSERT_TRUE(effects.ParseFromString(EncodeEffects(event)));
  EXPECT_EQ(effects.part(), v1::Event::EFFECTS);
  ASSERT_EQ(effects.streams_size(), 2);
  EXPECT_EQ(effects.streams(1).system_id(), "fleet");
  EXPECT_EQ(effects.streams(1).offset(), 0u) << "the bus's offsets are the FANOUT parts'";
}

}  // namespace
}  // namespace devbridge::events
