#include "services/ingest/cluster/partitions.h"

#include <algorithm>

#include "absl/hash/hash.h"
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

namespace {

constexpr size_t kFixed = 8 + 8 + 8 + 8 + 2 + 1;  // after the topic: taken at, source, seq, session, packet id, flags

void PutU64(std::string* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
uint64_t GetU64(absl::string_view data, size_t at) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= uint64_t{static_cast<uint8_t>(data[at + i])} << (8 * i);
  return v;
}

}  // namespace

std::string EncodeIntake(const IntakeMessage& m) {
  const size_t topic_length = std::min<size_t>(m.topic.size(), 0xffff);
  std::string out;
  out.reserve(2 + topic_length + kFixed + m.payload.size());
  out.push_back(static_cast<char>(topic_length & 0xff));
  out.push_back(static_cast<char>(topic_length >> 8));
  out.append(m.topic.data(), topic_length);
  PutU64(&out, static_cast<uint64_t>(absl::ToUnixMicros(m.taken_at)));
  PutU64(&out, m.source);
  PutU64(&out, m.seq);
  PutU64(&out, m.session);
  out.push_back(static_cast<char>(m.packet_id & 0xff));
  out.push_back(static_cast<char>(m.packet_id >> 8));
  out.push_back(m.dup ? 1 : 0);
  out.append(m.payload.data(), m.payload.size());
  return out;
}

bool DecodeIntake(absl::string_view data, IntakeMessage* m) {
  if (data.size() < 2) return false;
  const size_t topic_length = static_cast<uint8_t>(data[0]) | (size_t{static_cast<uint8_t>(data[1])} << 8);
  const size_t fixed = 2 + topic_length;
  if (data.size() < fixed + kFixed) return false;
  m->topic = data.substr(2, topic_length);
  m->taken_at = absl::FromUnixMicros(static_cast<int64_t>(GetU64(data, fixed)));
  m->source = GetU64(data, fixed + 8);
  m->seq = GetU64(data, fixed + 16);
  m->session = GetU64(data, fixed + 24);
  m->packet_id = static_cast<uint16_t>(static_cast<uint8_t>(data[fixed + 32]) |
                                       (static_cast<uint8_t>(data[fixed + 33]) << 8));
  m->dup = (static_cast<uint8_t>(data[fixed + 34]) & 1) != 0;
  m->payload = data.substr(fixed + kFixed);
  return true;
}

uint64_t IntakeSource(absl::string_view spool_id) {
  uint64_t hash = 14695981039346656037ull;  // FNV-1a, 64 bits
  for (unsigned char c : spool_id) {
    hash ^= c;
    hash *= 1099511628211ull;
  }
  return hash;
}

bool IntakeWindow::Offer(const IntakeMessage& m) {
  if (m.seq != 0) {
    if (!seen_.insert({m.source, m.seq}).second) return false;
    order_.emplace_back(m.source, m.seq);
    if (order_.size() > capacity_) {
      seen_.erase(order_.front());
      order_.pop_front();
    }
  }
  if (m.session == 0 || m.packet_id == 0) return true;
  const uint64_t fingerprint = absl::Hash<std::pair<absl::string_view, absl::string_view>>{}({m.topic, m.payload}) | 1;
  auto [it, inserted] = packets_.try_emplace({m.session, m.packet_id}, Packet{fingerprint, m.dup});
  if (inserted) {
    packet_order_.emplace_back(m.session, m.packet_id);
    if (packet_order_.size() > packets_capacity_) {
      packets_.erase(packet_order_.front());
      packet_order_.pop_front();
    }
    return true;
  }
  Packet& last = it->second;
  if (last.fingerprint == fingerprint && (m.dup || last.dup)) {
    // The second copy. A DUP copy seen first waited for its original; that is this one, so
    // what follows under this packet id is judged afresh.
    if (!m.dup) last.dup = false;
    return false;
  }
  last = Packet{fingerprint, m.dup};
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
