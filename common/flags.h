// Command-line and environment configuration for devbridge binaries (CONTRACT §2).
//
// Flags are Abseil flags defined in each binary's main.cc. ParseFlags() gives every flag
// `--name` an environment fallback `DEVBRIDGE_<NAME>` (the command line wins), prints the
// options on `--help`, and exits with status 2 and one line on stderr naming the option
// when a value is bad. Validation after parsing uses FlagError() to fail the same way.
#ifndef DEVBRIDGE_COMMON_FLAGS_H_
#define DEVBRIDGE_COMMON_FLAGS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace devbridge::common {

// The environment variable that backs flag `flag`: "pg_dsn" → "DEVBRIDGE_PG_DSN".
std::string EnvName(absl::string_view flag);

// Parses the environment then argv into the registered flags. `program` names the binary
// in messages, `summary` is the first line of --help. Returns the positional arguments.
// Exits 0 after --help; exits 2 on an unknown option or a value that does not parse.
std::vector<std::string> ParseFlags(int argc, char** argv, absl::string_view program,
                                    absl::string_view summary);

// The --help text: `summary`, then every option with its default and environment name.
std::string UsageText(absl::string_view program, absl::string_view summary);

// Prints "PROGRAM: --flag: reason" to stderr and exits with status 2.
[[noreturn]] void FlagError(absl::string_view flag, absl::string_view reason);
// Nothing when `status` is OK; else FlagError with the flag its message starts with
// ("grpc_tls_key: cannot read /x" → flag grpc_tls_key, reason "cannot read /x").
void RequireOk(const absl::Status& status);

// Parses a duration such as "500ms", "5s", "2m" or "1h30m". Rejects negative and infinite
// values and bare numbers without a unit.
absl::StatusOr<absl::Duration> ParseDuration(absl::string_view text);

// Helpers for checks after parsing: exit 2 naming the flag when the check fails.
void RequirePositive(absl::string_view flag, absl::Duration value);
void RequireNonEmpty(absl::string_view flag, absl::string_view value);
void RequireInRange(absl::string_view flag, double value, double min, double max);

}  // namespace devbridge::common

#endif  // DEVBRIDGE_COMMON_FLAGS_H_
