#include "mqtt/redelivery_filter.h"

#include "gtest/gtest.h"

namespace devbridge::mqtt {
namespace {

TEST(RedeliveryFilter, ARedeliveryCarriesDupAndTheSamePacketId) {
  RedeliveryFilter f;
  EXPECT_FALSE(f.Redelivered(7, false, "d/1/data", "0103"));
  EXPECT_TRUE(f.Redelivered(7, true, "d/1/data", "0103")) << "the broker did not see our ack and sent it again";
  EXPECT_TRUE(f.Redelivered(7, true, "d/1/data", "0103")) << "and again, after another reconnect";
}

TEST(RedeliveryFilter, EqualPayloadsAreDistinctMessages) {
  RedeliveryFilter f;
  EXPECT_FALSE(f.Redelivered(1, false, "d/1/data", "same"));
  EXPECT_FALSE(f.Redelivered(2, false, "d/1/data", "same")) << "a meter reading the same values twice";
  EXPECT_FALSE(f.Redelivered(3, true, "d/1/data", "same")) << "a first copy flagged DUP (its first send was lost)";
  EXPECT_FALSE(f.Redelivered(1, false, "d/1/data", "same")) << "without DUP it is new, whatever it holds";
}

TEST(RedeliveryFilter, APacketIdReusedForAnotherMessage) {
  RedeliveryFilter f;
  EXPECT_FALSE(f.Redelivered(9, false, "d/1/data", "a"));
  EXPECT_FALSE(f.Redelivered(9, true, "d/1/data", "b")) << "another message's first copy, flagged DUP";
  EXPECT_TRUE(f.Redelivered(9, true, "d/1/data", "b"));
  EXPECT_FALSE(f.Redelivered(9, true, "d/2/data", "b")) << "another topic";
}

TEST(RedeliveryFilter, QosZeroIsNeverARedelivery) {
  RedeliveryFilter f;
  EXPECT_FALSE(f.Redelivered(0, false, "t", "p"));
  EXPECT_FALSE(f.Redelivered(0, true, "t", "p"));
}

TEST(RedeliveryFilter, ThousandsOfMessagesBetweenTheCopiesDoNotMatter) {
  // Paho can hold thousands of taken-but-undelivered messages across a reconnect; the old
  // window of the last 4,096 fingerprints lost track of the originals (issue 10, case 5).
  RedeliveryFilter f;
  for (uint32_t i = 1; i <= 30000; ++i) EXPECT_FALSE(f.Redelivered(static_cast<uint16_t>(i), false, "t", std::to_string(i)));
  int dropped = 0;
  for (uint32_t i = 1; i <= 30000; ++i) dropped += f.Redelivered(static_cast<uint16_t>(i), true, "t", std::to_string(i));
  EXPECT_EQ(dropped, 30000);
}

TEST(RedeliveryFilter, WhatAnEarlierRunTookIsRecognised) {
  // Seeded from the spool at start: the broker resends to the new run what the old one took.
  RedeliveryFilter f;
  f.Taken(7, "d/1/data", "a");
  f.Taken(0, "d/1/data", "qos 0 has no packet id");
  EXPECT_TRUE(f.Redelivered(7, true, "d/1/data", "a"));
  EXPECT_FALSE(f.Redelivered(8, true, "d/1/data", "a")) << "another packet id: another message";
  EXPECT_FALSE(f.Redelivered(0, true, "d/1/data", "qos 0 has no packet id"));
}

}  // namespace
}  // namespace devbridge::mqtt
