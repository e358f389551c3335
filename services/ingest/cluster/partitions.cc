#include "services/ingest/cluster/partitions.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace devbridge::ingest::cluster {

int PartitionOf(absl::string_view device_id, int partitions) {
  uint32_t hash = 2166136261u;
  for (unsigned char c : device_id) {
    hash ^= c;
    hash *= 16777619u;
  }
  return static_cast<int>(hash % static_cast<uint32_t>(partitions));
}

int PartitionOfTopic(absl::string_view topic, int partitions) {
  // `<prefix>/<id>/<kind>`: the prefix may hold slashes, the id (one level of `+`) cannot.
  const size_t last = topic.rfind('/');
  if (last == absl::string_view::npos || last == 0) return -1;
  const size_t before = topic.rfind('/', last - 1);
  if (before == absl::string_view::npos || before + 1 == last) return -1;
  return PartitionOf(topic.substr(before + 1, last - before - 1), partitions);
}

std::string IntakeSubject(int partition) { return absl::StrCat(kIntakePrefix, ".", partition); }

std::string PartitionLease(int partition) { return absl::StrCat("p", partition); }

std::string NodeLease(absl::string_view node_id) {
  std::string name = absl::StrCat(kNodeLeasePrefix, node_id);
  for (char& c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
                    c == '_';
    if (!ok) c = '_';
  }
  return name;
}

std::string EncodeIntake(absl::string_view topic, absl::string_view payload, absl::Time taken_at) {
  const uint16_t topic_length = static_cast<uint16_t>(std::min<size_t>(topic.size(), 0xffff));
  const int64_t micros = absl::ToUnixMicros(taken_at);
  std::string out;
  out.resize(2 + topic_length + 8);
  out[0] = static_cast<char>(topic_length & 0xff);
  out[1] = static_cast<char>(topic_length >> 8);
  std::memcpy(out.data() + 2, topic.data(), topic_length);
  for (int i = 0; i < 8; ++i) out[2 + topic_length + i] = static_cast<char>((static_cast<uint64_t>(micros) >> (8 * i)) & 0xff);
  out.append(payload.data(), payload.size());
  return out;
}

bool DecodeIntake(absl::string_view data, absl::string_view* topic, absl::string_view* payload,
                  absl::Time* taken_at) {
  if (data.size() < 2) return false;
  const size_t topic_length = static_cast<uint8_t>(data[0]) | (size_t{static_cast<uint8_t>(data[1])} << 8);
  if (data.size() < 2 + topic_length + 8) return false;
  uint64_t micros = 0;
  for (int i = 0; i < 8; ++i) micros |= uint64_t{static_cast<uint8_t>(data[2 + topic_length + i])} << (8 * i);
  *topic = data.substr(2, topic_length);
  *payload = data.substr(2 + topic_length + 8);
  *taken_at = absl::FromUnixMicros(static_cast<int64_t>(micros));
  return true;
}

LeasePlan PlanLeases(const std::vector<std::string>& holders, const std::string& self, int members) {
  const int partitions = static_cast<int>(holders.size());
  const int share = (partitions + std::max(members, 1) - 1) / std::max(members, 1);
  std::vector<int> mine;
  for (int p = 0; p < partitions; ++p) {
    if (holders[p] == self) mine.push_back(p);
  }
  LeasePlan plan;
  int held = static_cast<int>(mine.size());
  // Give back the highest first, so replicas settle on the same split after every change.
  for (auto it = mine.rbegin(); it != mine.rend() && held > share; ++it, --held) plan.release.push_back(*it);
  for (int p = 0; p < partitions && held < share; ++p) {
    if (holders[p].empty()) {
      plan.take.push_back(p);
      ++held;
    }
  }
  return plan;
}

}  // namespace devbridge::ingest::cluster
