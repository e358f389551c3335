// Proves the harness hands tests a real, reachable mosquitto and PostgreSQL, and that it can
// take each away and bring it back on the same address; and that a process a test spawns does
// not outlive the test.
#include <MQTTClient.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>

#include <pqxx/pqxx>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/component/test_env.h"

namespace devbridge::testing {
namespace {

// A synchronous Paho client: enough to prove the broker routes a message.
class SyncClient {
 public:
  explicit SyncClient(const std::string& id) {
    MQTTClient_create(&client_, MqttUrl().c_str(), id.c_str(), MQTTCLIENT_PERSISTENCE_NONE, nullptr);
  }
  ~SyncClient() {
    if (MQTTClient_isConnected(client_)) MQTTClient_disconnect(client_, 100);
    MQTTClient_destroy(&client_);
  }
  int Connect() {
    MQTTClient_connectOptions opts = MQTTClient_connectOptions_initializer;
    opts.cleansession = 1;
    opts.connectTimeout = 2;
    return MQTTClient_connect(client_, &opts);
  }
  MQTTClient get() { return client_; }

 private:
  MQTTClient client_ = nullptr;
};

// Whether `pid` runs (a zombie, dead and not yet reaped by whoever adopted it, does not).
bool Running(int pid) {
  std::ifstream stat(absl::StrCat("/proc/", pid, "/stat"));
  std::string pid_field, comm, state;
  return stat >> pid_field >> comm >> state && state != "Z" && state != "X";
}

// A test that crashes, or is killed on a timeout, takes what it spawned with it.
TEST(Harness, ASpawnedProcessDiesWithItsTest) {
  int pipe_fds[2];
  ASSERT_EQ(pipe(pipe_fds), 0);
  const pid_t test = fork();
  if (test == 0) {  // the "test": spawns a server, says its pid, and dies without stopping it
    const int child = Spawn({"/bin/sleep", "300"}, "/dev/null");
    (void)!write(pipe_fds[1], &child, sizeof child);
    _exit(0);
  }
  close(pipe_fds[1]);
  int child = -1;
  ASSERT_EQ(read(pipe_fds[0], &child, sizeof child), static_cast<ssize_t>(sizeof child));
  close(pipe_fds[0]);
  waitpid(test, nullptr, 0);
  ASSERT_GT(child, 0);
  const bool gone = WaitFor([&] { return !Running(child); }, absl::Seconds(10));
  if (!gone) kill(child, SIGKILL);
  EXPECT_TRUE(gone) << "pid " << child << " outlived the process that spawned it";
}

TEST(Harness, MosquittoRoutesAPublishToASubscriber) {
  SyncClient sub("harness-sub"), pub("harness-pub");
  ASSERT_EQ(sub.Connect(), MQTTCLIENT_SUCCESS);
  ASSERT_EQ(pub.Connect(), MQTTCLIENT_SUCCESS);
  const std::string topic = UniqueTopicPrefix() + "/ping";
  ASSERT_EQ(MQTTClient_subscribe(sub.get(), topic.c_str(), 1), MQTTCLIENT_SUCCESS);
  std::string payload = "01 03 04 00 0A 00 64 DB DA";
  MQTTClient_deliveryToken token;
  ASSERT_EQ(MQTTClient_publish(pub.get(), topic.c_str(), static_cast<int>(payload.size()),
                               payload.data(), 1, 0, &token),
            MQTTCLIENT_SUCCESS);
  ASSERT_EQ(MQTTClient_waitForCompletion(pub.get(), token, 5000), MQTTCLIENT_SUCCESS);
  char* got_topic = nullptr;
  int topic_len = 0;
  MQTTClient_message* msg = nullptr;
  ASSERT_EQ(MQTTClient_receive(sub.get(), &got_topic, &topic_len, &msg, 5000), MQTTCLIENT_SUCCESS);
  ASSERT_NE(msg, nullptr) << "no message within 5 s";
  EXPECT_EQ(std::string(static_cast<char*>(msg->payload), msg->payloadlen), payload);
  EXPECT_EQ(std::string(got_topic), topic);
  MQTTClient_freeMessage(&msg);
  MQTTClient_free(got_topic);
}

TEST(Harness, PostgresAcceptsWritesInAFreshDatabase) {
  const std::string dsn = CreateTestDatabase();
  pqxx::connection conn(dsn);
  pqxx::work tx(conn);
  tx.exec0("CREATE TABLE probe (id serial primary key, raw bytea)");
  tx.exec0("INSERT INTO probe (raw) VALUES ('\\x0103'::bytea)");
  EXPECT_EQ(tx.exec1("SELECT count(*) FROM probe")[0].as<int>(), 1);
  EXPECT_EQ(tx.exec1("SELECT current_database()")[0].as<std::string>(),
            dsn.substr(dsn.rfind('/') + 1));
  tx.commit();
}

TEST(Harness, BrokerStopsAndComesBackOnTheSameAddress) {
  ASSERT_TRUE(Harness("stop-mqtt"));
  {
    SyncClient c("harness-down");
    EXPECT_NE(c.Connect(), MQTTCLIENT_SUCCESS) << "broker still accepting after stop-mqtt";
  }
  ASSERT_TRUE(Harness("start-mqtt"));
  SyncClient c("harness-up");
  EXPECT_TRUE(WaitFor([&] { return c.Connect() == MQTTCLIENT_SUCCESS; }));
}

TEST(Harness, DatabaseStopsAndComesBackWithItsData) {
  const std::string dsn = CreateTestDatabase();
  {
    pqxx::connection conn(dsn);
    pqxx::work tx(conn);
    tx.exec0("CREATE TABLE kept (v int)");
    tx.exec0("INSERT INTO kept VALUES (42)");
    tx.commit();
  }
  ASSERT_TRUE(Harness("stop-pg"));
  EXPECT_THROW(pqxx::connection{dsn}, pqxx::broken_connection);
  ASSERT_TRUE(Harness("start-pg"));
  pqxx::connection conn(dsn);
  pqxx::work tx(conn);
  EXPECT_EQ(tx.exec1("SELECT v FROM kept")[0].as<int>(), 42);
}

}  // namespace
}  // namespace devbridge::testing
