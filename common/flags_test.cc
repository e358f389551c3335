#include "common/flags.h"

#include <cstdlib>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "gtest/gtest.h"

ABSL_FLAG(std::string, test_dsn, "postgresql://default", "a string option");
ABSL_FLAG(int, test_depth, 16, "an integer option");
ABSL_FLAG(bool, test_verbose, false, "a boolean option");
ABSL_FLAG(absl::Duration, test_timeout, absl::Seconds(5), "a duration option");

namespace devbridge::common {
namespace {

// Runs ParseFlags over `args` (program name added) and returns the positional arguments.
std::vector<std::string> Parse(std::vector<std::string> args) {
  args.insert(args.begin(), "prog");
  std::vector<char*> argv;
  argv.reserve(args.size());
  for (auto& a : args) argv.push_back(a.data());
  return ParseFlags(static_cast<int>(argv.size()), argv.data(), "prog", "a test program");
}

class FlagsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    unsetenv("DEVBRIDGE_TEST_DSN");
    unsetenv("DEVBRIDGE_TEST_DEPTH");
    absl::SetFlag(&FLAGS_test_dsn, "postgresql://default");
    absl::SetFlag(&FLAGS_test_depth, 16);
    absl::SetFlag(&FLAGS_test_verbose, false);
    absl::SetFlag(&FLAGS_test_timeout, absl::Seconds(5));
  }
};

TEST(EnvName, UpperCasesWithPrefix) { EXPECT_EQ(EnvName("pg_dsn"), "DEVBRIDGE_PG_DSN"); }

TEST_F(FlagsTest, EnvironmentFillsAndCommandLineWins) {
  setenv("DEVBRIDGE_TEST_DSN", "postgresql://from-env", 1);
  setenv("DEVBRIDGE_TEST_DEPTH", "4", 1);
  Parse({"--test_depth=8"});
  EXPECT_EQ(absl::GetFlag(FLAGS_test_dsn), "postgresql://from-env");
  EXPECT_EQ(absl::GetFlag(FLAGS_test_depth), 8);
}

TEST_F(FlagsTest, AcceptsSeparateValuesBoolsAndPositionals) {
  auto rest = Parse({"--test_depth", "3", "--test_verbose", "--test_timeout=500ms", "file", "--",
                     "--not-a-flag"});
  EXPECT_EQ(absl::GetFlag(FLAGS_test_depth), 3);
  EXPECT_TRUE(absl::GetFlag(FLAGS_test_verbose));
  EXPECT_EQ(absl::GetFlag(FLAGS_test_timeout), absl::Milliseconds(500));
  EXPECT_EQ(rest, (std::vector<std::string>{"file", "--not-a-flag"}));
  Parse({"--notest_verbose"});
  EXPECT_FALSE(absl::GetFlag(FLAGS_test_verbose));
}

TEST_F(FlagsTest, BadValueExitsTwoNamingTheOption) {
  EXPECT_EXIT(Parse({"--test_depth=lots"}), ::testing::ExitedWithCode(2),
              "prog: --test_depth: bad value \"lots\"");
  EXPECT_EXIT(Parse({"--test_timeout=5"}), ::testing::ExitedWithCode(2), "--test_timeout");
  EXPECT_EXIT(Parse({"--no_such_option=1"}), ::testing::ExitedWithCode(2),
              "--no_such_option: unknown option");
}

TEST_F(FlagsTest, BadEnvironmentValueExitsTwoNamingTheVariable) {
  setenv("DEVBRIDGE_TEST_DEPTH", "deep", 1);
  EXPECT_EXIT(Parse({}), ::testing::ExitedWithCode(2), "--test_depth: .*DEVBRIDGE_TEST_DEPTH");
}

TEST_F(FlagsTest, HelpListsEveryOptionWithDefaultAndEnvName) {
  const std::string help = UsageText("prog", "a test program");
  EXPECT_NE(help.find("prog: a test program"), std::string::npos);
  EXPECT_NE(help.find("--test_dsn (default: postgresql://default; env DEVBRIDGE_TEST_DSN)"),
            std::string::npos);
  EXPECT_NE(help.find("--test_timeout (default: 5s; env DEVBRIDGE_TEST_TIMEOUT)"), std::string::npos);
  EXPECT_NE(help.find("a boolean option"), std::string::npos);
  EXPECT_EQ(help.find("flagfile"), std::string::npos) << "Abseil's own flags are not ours";
  EXPECT_EXIT(Parse({"--help"}), ::testing::ExitedWithCode(0), "");
}

TEST(ParseDuration, AcceptsUnitsAndRejectsTheRest) {
  EXPECT_EQ(*ParseDuration("500ms"), absl::Milliseconds(500));
  EXPECT_EQ(*ParseDuration("5s"), absl::Seconds(5));
  EXPECT_EQ(*ParseDuration("2m"), absl::Minutes(2));
  EXPECT_EQ(*ParseDuration("1h30m"), absl::Minutes(90));
  EXPECT_EQ(*ParseDuration("0"), absl::ZeroDuration());
  EXPECT_FALSE(ParseDuration("5").ok());
  EXPECT_FALSE(ParseDuration("").ok());
  EXPECT_FALSE(ParseDuration("-1s").ok());
  EXPECT_FALSE(ParseDuration("inf").ok());
  EXPECT_FALSE(ParseDuration("five seconds").ok());
}

TEST(Require, FailuresExitTwo) {
  EXPECT_EXIT(RequirePositive("sweep_interval", absl::ZeroDuration()),
              ::testing::ExitedWithCode(2), "--sweep_interval: must be a positive duration");
  EXPECT_EXIT(RequireNonEmpty("pg_dsn", " "), ::testing::ExitedWithCode(2), "--pg_dsn: is required");
  EXPECT_EXIT(RequireInRange("drop_rate", 1.5, 0, 1), ::testing::ExitedWithCode(2),
              "--drop_rate: must be between 0 and 1");
}

}  // namespace
}  // namespace devbridge::common
