// A simulated Modbus device built from a register-map profile: register values that drift
// over time like a real meter, correct replies to requests, exception 02 outside the
// profile, and writes that stick. Pure logic, no network; not thread-safe.
#ifndef DEVBRIDGE_SIM_DEVICE_MODEL_H_
#define DEVBRIDGE_SIM_DEVICE_MODEL_H_

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "absl/types/span.h"
#include "regmap/register_map.h"

namespace devbridge::sim {

class DeviceModel {
 public:
  // Where the model reads the time: absl::Now in the simulator, a fixed or stepped clock in
  // tests, so that no result depends on the day it runs.
  using Clock = std::function<absl::Time()>;

  // `seed` varies the waveforms between devices.
  DeviceModel(const regmap::Profile& profile, uint32_t seed, Clock clock);

  // Moves every register to its value at time `now`.
  void Update(absl::Time now);

  // The reply frame to request `frame` (CRC included): the registers asked for, a write echo,
  // exception 02 for addresses outside the profile, 01 for other functions. An empty
  // result means "no answer" (a frame for another unit, or one that does not parse).
  std::vector<uint8_t> Answer(absl::Span<const uint8_t> frame);

  // A read reply covering the profile's registers from its first address (at most 125),
  // as an unsolicited data frame.
  std::vector<uint8_t> UnsolicitedRead();

  uint8_t unit() const { return profile_.unit; }
  // The raw word at `address`, or -1 if the profile does not cover it.
  int Word(uint16_t address) const;

 private:
  void Store(const regmap::Register& reg, double value);

  const regmap::Profile& profile_;
  uint32_t seed_;
  Clock clock_;
  std::map<uint16_t, uint16_t> words_;           // every address the profile covers
  std::map<std::string, absl::Time> written_;    // register name → when a write pinned it
};

}  // namespace devbridge::sim

#endif  // DEVBRIDGE_SIM_DEVICE_MODEL_H_
