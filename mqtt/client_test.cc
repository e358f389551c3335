#include "mqtt/client.h"

#include "gtest/gtest.h"

namespace devbridge::mqtt {
namespace {

TEST(PortOf, ReadsThePortOrTheSchemesDefault) {
  EXPECT_EQ(PortOf("tcp://127.0.0.1:18830"), 18830);
  EXPECT_EQ(PortOf("tcp://broker"), 1883) << "no port: the default, not 0";
  EXPECT_EQ(PortOf("broker"), 1883);
  EXPECT_EQ(PortOf("ssl://broker"), 8883);
  EXPECT_EQ(PortOf("mqtts://broker:9999"), 9999);
  EXPECT_EQ(PortOf("tcp://[::1]:1884"), 1884);
  EXPECT_EQ(PortOf("tcp://[::1]"), 1883);
  EXPECT_EQ(PortOf("tcp://host:notaport"), 1883);
}

}  // namespace
}  // namespace devbridge::mqtt
