#include "mqtt/redelivery_filter.h"

#include <functional>
#include <string_view>

namespace devbridge::mqtt {
namespace {

uint64_t Fingerprint(absl::string_view topic, absl::string_view payload) {
  const uint64_t h = std::hash<std::string_view>{}(std::string_view(topic.data(), topic.size())) * 0x9E3779B97F4A7C15ULL;
  return (h ^ std::hash<std::string_view>{}(std::string_view(payload.data(), payload.size()))) | 1;  // never 0
}

}  // namespace

bool RedeliveryFilter::Redelivered(uint16_t packet_id, bool dup, absl::string_view topic, absl::string_view payload) {
  if (packet_id == 0) return false;
  const uint64_t key = Fingerprint(topic, payload);
  if (dup && last_[packet_id] == key) return true;
  last_[packet_id] = key;
  return false;
}

void RedeliveryFilter::Taken(uint16_t packet_id, absl::string_view topic, absl::string_view payload) {
  if (packet_id != 0) last_[packet_id] = Fingerprint(topic, payload);
}

}  // namespace devbridge::mqtt
