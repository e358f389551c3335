#include "services/push/core/registry.h"

#include "gtest/gtest.h"

namespace devbridge::push {
namespace {

Session S(ConnId conn, const std::string& client, const std::string& system) {
  Session s;
  s.conn = conn;
  s.client_id = client;
  s.system_id = system;
  return s;
}

TEST(Registry, SystemsAndGroups) {
  Registry r;
  EXPECT_FALSE(r.Add(S(1, "a", "fleet")).has_value());
  EXPECT_FALSE(r.Add(S(2, "b", "fleet")).has_value());
  EXPECT_FALSE(r.Add(S(3, "c", "sim-0001")).has_value());
  EXPECT_EQ(r.SystemConns("fleet").size(), 2u);
  EXPECT_TRUE(r.Join(1, "ops"));
  EXPECT_FALSE(r.Join(1, "ops"));
  EXPECT_EQ(r.GroupConns("fleet", "ops"), std::vector<ConnId>{1});
  EXPECT_TRUE(r.GroupConns("sim-0001", "ops").empty()) << "groups are per system";
  EXPECT_TRUE(r.Leave(1, "ops"));
  EXPECT_TRUE(r.GroupConns("fleet", "ops").empty());
  EXPECT_EQ(r.ByClient("c")->conn, 3u);
  auto gone = r.Remove(3);
  ASSERT_TRUE(gone.has_value());
  EXPECT_EQ(gone->client_id, "c");
  EXPECT_EQ(r.ByClient("c"), nullptr);
  EXPECT_TRUE(r.SystemConns("sim-0001").empty());
}

TEST(Registry, ReusedClientIdReplacesTheOldSession) {
  Registry r;
  r.Add(S(1, "a", "fleet"));
  r.Join(1, "ops");
  auto replaced = r.Add(S(2, "a", "fleet"));
  ASSERT_TRUE(replaced.has_value());
  EXPECT_EQ(*replaced, 1u);
  EXPECT_EQ(r.ByClient("a")->conn, 2u);
  EXPECT_EQ(r.ByConn(1), nullptr);
  EXPECT_TRUE(r.GroupConns("fleet", "ops").empty());
  EXPECT_EQ(r.local_sessions(), 1u);
}

TEST(Registry, ClusterViewAcrossNodes) {
  Registry r;
  r.MemberUp("a", "fleet", "n1");
  r.MemberUp("b", "fleet", "n2");
  r.MemberUp("c", "other", "n2");
  r.MemberJoin("a", "ops");
  EXPECT_EQ(r.Online("fleet", ""), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(r.Online("fleet", "ops"), std::vector<std::string>{"a"});
  r.MemberUp("a", "fleet", "n2");  // reconnected elsewhere
  r.MemberDown("a", "n1");         // the old node's late goodbye must not remove it
  EXPECT_EQ(r.FindMember("a")->node, "n2");
  r.NodeGone("n2");
  EXPECT_TRUE(r.Online("fleet", "").empty());
}

}  // namespace
}  // namespace devbridge::push
