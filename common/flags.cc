#include "common/flags.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/reflection.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace devbridge::common {
namespace {

std::string& ProgramName() {
  static std::string name = "devbridge";
  return name;
}

// Our flags are the ones defined outside Abseil itself (which registers --flagfile etc.).
bool IsOurs(const absl::CommandLineFlag& flag) {
  return !absl::StrContains(flag.Filename(), "absl/");
}

std::vector<absl::CommandLineFlag*> OurFlags() {
  std::vector<absl::CommandLineFlag*> flags;
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    if (IsOurs(*flag)) flags.push_back(flag);
  }
  std::sort(flags.begin(), flags.end(),
            [](const absl::CommandLineFlag* a, const absl::CommandLineFlag* b) {
              return a->Name() < b->Name();
            });
  return flags;
}

}  // namespace

std::string UsageText(absl::string_view program, absl::string_view summary) {
  std::string out = absl::StrCat(program, ": ", summary, "\n\n",
                                 "Usage: ", program, " [--name=value ...]\n",
                                 "Every option may also come from the environment as "
                                 "DEVBRIDGE_<NAME>; the command line wins.\n\nOptions:\n");
  for (const absl::CommandLineFlag* flag : OurFlags()) {
    std::string def = flag->DefaultValue();
    if (def.empty()) def = "\"\"";
    absl::StrAppendFormat(&out, "  --%s (default: %s; env %s)\n      %s\n", flag->Name(), def,
                          EnvName(flag->Name()), flag->Help());
  }
  return out;
}

namespace {

void SetOrDie(absl::CommandLineFlag& flag, absl::string_view value, absl::string_view source) {
  std::string error;
  if (!flag.ParseFrom(value, &error)) {
    FlagError(flag.Name(), absl::StrCat("bad value \"", value, "\"", source, ": ", error));
  }
}

}  // namespace

std::string EnvName(absl::string_view flag) {
  return absl::StrCat("DEVBRIDGE_", absl::AsciiStrToUpper(flag));
}

void FlagError(absl::string_view flag, absl::string_view reason) {
  std::fprintf(stderr, "%s: --%.*s: %.*s\n", ProgramName().c_str(), static_cast<int>(flag.size()),
               flag.data(), static_cast<int>(reason.size()), reason.data());
  std::exit(2);
}

std::vector<std::string> ParseFlags(int argc, char** argv, absl::string_view program,
                                    absl::string_view summary) {
  ProgramName() = std::string(program);

  for (absl::CommandLineFlag* flag : OurFlags()) {
    const std::string env = EnvName(flag->Name());
    if (const char* value = std::getenv(env.c_str())) {
      SetOrDie(*flag, value, absl::StrCat(" (from ", env, ")"));
    }
  }

  std::vector<std::string> positional;
  bool flags_done = false;
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    if (flags_done || arg.size() < 2 || arg[0] != '-') {
      positional.emplace_back(arg);
      continue;
    }
    if (arg == "--") {
      flags_done = true;
      continue;
    }
    arg.remove_prefix(arg[1] == '-' ? 2 : 1);
    absl::string_view name = arg;
    absl::string_view value;
    const size_t eq = arg.find('=');
    const bool has_value = eq != absl::string_view::npos;
    if (has_value) {
      name = arg.substr(0, eq);
      value = arg.substr(eq + 1);
    }
    if (name == "help" || name == "helpfull" || name == "h") {
      std::fputs(UsageText(program, summary).c_str(), stdout);
      std::exit(0);
    }
    absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    if (flag == nullptr && !has_value && absl::StartsWith(name, "no")) {
      flag = absl::FindCommandLineFlag(name.substr(2));
      if (flag != nullptr && flag->IsOfType<bool>()) {
        SetOrDie(*flag, "false", "");
        continue;
      }
      flag = nullptr;
    }
    if (flag == nullptr || !IsOurs(*flag)) {
      FlagError(name, "unknown option (see --help)");
    }
    if (!has_value) {
      if (flag->IsOfType<bool>()) {
        value = "true";
      } else if (i + 1 < argc) {
        value = argv[++i];
      } else {
        FlagError(name, "missing value");
      }
    }
    SetOrDie(*flag, value, "");
  }
  return positional;
}

absl::StatusOr<absl::Duration> ParseDuration(absl::string_view text) {
  absl::Duration d;
  absl::string_view trimmed = absl::StripAsciiWhitespace(text);
  if (trimmed.empty() || std::isdigit(static_cast<unsigned char>(trimmed.back()))) {
    if (trimmed != "0") {
      return absl::InvalidArgumentError(
          absl::StrCat("bad duration \"", text, "\": want a number with a unit, e.g. 500ms, 5s, 2m"));
    }
  }
  if (!absl::ParseDuration(trimmed, &d)) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad duration \"", text, "\": want e.g. 500ms, 5s, 2m"));
  }
  if (d < absl::ZeroDuration() || d == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError(absl::StrCat("bad duration \"", text, "\": must be finite and >= 0"));
  }
  return d;
}

void RequirePositive(absl::string_view flag, absl::Duration value) {
  if (value <= absl::ZeroDuration() || value == absl::InfiniteDuration()) {
    FlagError(flag, absl::StrCat("must be a positive duration, got ", absl::FormatDuration(value)));
  }
}

void RequireNonEmpty(absl::string_view flag, absl::string_view value) {
  if (absl::StripAsciiWhitespace(value).empty()) FlagError(flag, "is required");
}

void RequireInRange(absl::string_view flag, double value, double min, double max) {
  if (!(value >= min && value <= max)) {
    // Whole numbers print as such (1000000, not 1e+06).
    auto text = [](double v) {
      return v == std::floor(v) && std::fabs(v) < 1e15 ? absl::StrCat(static_cast<int64_t>(v))
                                                       : absl::StrFormat("%g", v);
    };
    FlagError(flag, absl::StrCat("must be between ", text(min), " and ", text(max), ", got ", text(value)));
  }
}

void RequireOk(const absl::Status& status) {
  if (status.ok()) return;
  const absl::string_view message = status.message();
  const size_t colon = message.find(": ");
  if (colon == absl::string_view::npos) FlagError("?", message);
  FlagError(message.substr(0, colon), message.substr(colon + 2));
}

}  // namespace devbridge::common
