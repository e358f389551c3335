// The register map loader (CONTRACT §3): any file an operator may point --register_map at
// is loaded or refused with a reason, and a loaded map decodes any register block.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "regmap/register_map.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<devbridge::regmap::RegisterMap> map = devbridge::regmap::RegisterMap::Parse(text, "fuzz");
  if (!map.ok()) return 0;
  std::vector<uint8_t> registers(250, 0xA5);
  std::vector<devbridge::regmap::DecodedValue> values;
  for (const auto& profile : map->profiles()) {
    for (uint32_t address : {0u, 1u, 100u, 65535u}) {
      (void)devbridge::regmap::Decode(profile, static_cast<uint16_t>(address), registers, &values);
    }
  }
  (void)map->ProfileFor("sim-0001");
  return 0;
}
