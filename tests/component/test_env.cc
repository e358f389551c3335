#include "tests/component/test_env.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <pqxx/pqxx>

#include "absl/strings/ascii.h"
#include "absl/time/clock.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "gtest/gtest.h"

namespace devbridge::testing {
namespace {

std::string Required(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') {
    std::fprintf(stderr,
                 "%s is not set: run component tests through tests/harness/with-services "
                 "(ctest does this for you)\n",
                 name);
    std::abort();
  }
  return value;
}

// "Suite.Name/0" → "suite_name_0", usable in identifiers.
std::string TestSlug() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string slug = info ? absl::StrCat(info->test_suite_name(), "_", info->name()) : "none";
  for (char& c : slug) c = absl::ascii_isalnum(c) ? absl::ascii_tolower(c) : '_';
  return slug.substr(0, 40);
}

}  // namespace

std::string MqttUrl() { return Required("DEVBRIDGE_TEST_MQTT_URL"); }

std::string PgDsn() { return Required("DEVBRIDGE_TEST_PG_DSN"); }

std::string CreateTestDatabase() {
  const std::string name = absl::StrCat("t_", TestSlug(), "_", getpid());
  pqxx::connection admin(PgDsn());
  pqxx::nontransaction tx(admin);
  tx.exec0("DROP DATABASE IF EXISTS " + tx.quote_name(name));
  tx.exec0("CREATE DATABASE " + tx.quote_name(name));
  const std::string dsn = PgDsn();
  return dsn.substr(0, dsn.rfind('/') + 1) + name;
}

std::string UniqueTopicPrefix() { return absl::StrCat("test/", TestSlug(), "/", getpid()); }

bool Harness(const std::string& action) {
  const std::string cmd = absl::StrCat(DEVBRIDGE_SOURCE_DIR, "/tests/harness/svc ", action);
  return std::system(cmd.c_str()) == 0;
}

bool WaitFor(const std::function<bool()>& condition, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (condition()) return true;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return condition();
}

}  // namespace devbridge::testing
