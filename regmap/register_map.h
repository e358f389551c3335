// The register map (CONTRACT §3): named, typed values over Modbus holding/input registers,
// grouped into profiles, with device-id globs choosing a device's profile.
//
// RegisterMap is immutable once loaded and safe to share between threads. Decode() turns
// the registers of a read reply into named values without allocating once `out` has grown.
#ifndef DEVBRIDGE_REGMAP_REGISTER_MAP_H_
#define DEVBRIDGE_REGMAP_REGISTER_MAP_H_

#include <array>
#include <cstdint>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

namespace devbridge::regmap {

enum class ValueType { kBool, kInt16, kUint16, kInt32, kUint32, kFloat32, kInt64, kUint64, kFloat64 };

absl::string_view TypeName(ValueType type);
// Registers (16-bit words) a value of `type` spans: 1, 2 or 4.
int WordCount(ValueType type);

struct Register {
  uint16_t address = 0;
  std::string name;
  ValueType type = ValueType::kUint16;
  uint8_t bit = 0;             // kBool only
  bool little_word_order = false;  // least significant word first
  double scale = 1;
  double offset = 0;
  std::string unit;

  // One past the last register address the value spans.
  uint32_t End() const { return address + static_cast<uint32_t>(WordCount(type)); }
};

// One block of a polling plan (CONTRACT §10.4): read `count` registers from `address` with
// `function` (3 or 4) every `every`.
struct PollBlock {
  uint8_t function = 3;
  uint16_t address = 0;
  uint16_t count = 1;
  absl::Duration every = absl::Seconds(1);

  uint32_t End() const { return uint32_t{address} + count; }
  bool operator==(const PollBlock& o) const {
    return function == o.function && address == o.address && count == o.count && every == o.every;
  }
};

// At most this many blocks in one plan, and `every` at least kMinPollEvery.
inline constexpr size_t kMaxPollBlocks = 64;
inline constexpr absl::Duration kMinPollEvery = absl::Milliseconds(100);

struct Profile {
  std::string name;
  uint8_t unit = 1;                 // the Modbus unit id commands use by default
  std::vector<Register> registers;  // sorted by address, then by file order
  std::vector<PollBlock> poll;      // the profile's polling plan; empty: not polled
};

// A decoded value: exact for integers when scale is 1 and offset 0, else a double.
struct Value {
  enum Kind { kBool, kInt, kUint, kDouble };
  Kind kind = kDouble;
  bool b = false;
  int64_t i = 0;
  uint64_t u = 0;
  double d = 0;
  uint8_t digits = 15;  // significant digits worth printing for kDouble

  double AsDouble() const;
  // The value as JSON text: true/false, an integer, or a number (null for NaN/infinity).
  std::string ToJson() const;
};

struct DecodedValue {
  const Register* reg = nullptr;  // points into the map, which outlives the value
  Value value;
  std::array<uint16_t, 4> raw{};  // the words read, in register order
  uint8_t raw_count = 0;
};

class RegisterMap {
 public:
  // Loads and validates a map file. Errors name the file, the line and the reason:
  // "config/registers.json:12: profiles.meter.registers[1].type: unknown type \"int8\" ...".
  static absl::StatusOr<RegisterMap> LoadFile(const std::string& path);
  // Same from text; `source` stands for the file name in messages.
  static absl::StatusOr<RegisterMap> Parse(absl::string_view json, absl::string_view source);

  // The profile for `device_id`: an exact pattern wins over globs, then the glob with the
  // most literal characters, then the one with fewer '*', then the first in the file.
  // nullptr when no pattern matches.
  const Profile* ProfileFor(absl::string_view device_id) const;
  // The polling plan of `device_id`: its `devices` entry's own "poll" when it has one, else
  // its profile's; empty when the device has no profile or no plan. Valid as long as the map.
  const std::vector<PollBlock>& PollPlanFor(absl::string_view device_id) const;
  const Profile* FindProfile(absl::string_view name) const;
  const std::vector<Profile>& profiles() const { return profiles_; }

 private:
  struct Route {
    std::string pattern;
    size_t profile = 0;
    bool own_poll = false;         // the entry was an object with "poll": it replaces the profile's
    std::vector<PollBlock> poll;
    bool exact = false;
    int literals = 0;
    int stars = 0;
    size_t order = 0;
  };
  std::vector<Profile> profiles_;
  std::vector<Route> routes_;  // most specific first

  const Route* RouteFor(absl::string_view device_id) const;
};

// Shell-style glob: '*' matches any run of characters, '?' any one.
bool GlobMatch(absl::string_view pattern, absl::string_view text);

// Decodes every register of `profile` lying wholly inside the `count` registers starting at
// `address`, whose big-endian bytes are `data` (2 * count bytes, as in a read reply).
// Appends to `out` (cleared first). None inside the range → result code 2005.
absl::Status Decode(const Profile& profile, uint16_t address, absl::Span<const uint8_t> data,
                    std::vector<DecodedValue>* out);

}  // namespace devbridge::regmap

#endif  // DEVBRIDGE_REGMAP_REGISTER_MAP_H_
