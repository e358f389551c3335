#include "services/push/core/history.h"

#include "absl/strings/str_cat.h"

namespace devbridge::push {

std::string StreamKey(const std::string& system_id, const std::string& group_name) {
  return group_name.empty() ? system_id : absl::StrCat(system_id, "\x1f", group_name);
}

void History::Trim(Stream& s, absl::Time now) const {
  while (!s.entries.empty() && (s.entries.size() > size_ || now - s.entries.front().at > ttl_)) {
    s.entries.pop_front();
  }
}

bool History::Add(const std::string& key, uint64_t offset, std::shared_ptr<const std::string> frame, absl::Time now) {
  auto [it, inserted] = streams_.try_emplace(key);
  Stream& s = it->second;
  if (inserted) s.complete_from = offset;  // we have seen this stream from `offset` on
  // Seen before: a stream read back again from the bus after its last client here left and
  // a new one came (interest routing) starts with messages this history may still hold.
  if (s.last != 0 && offset <= s.last) return false;
  if (s.last != 0 && offset != s.last + 1) {
    // A gap (we missed messages): only what follows is complete.
    s.entries.clear();
    s.complete_from = offset;
  }
  s.last = offset;
  s.entries.push_back({offset, now, std::move(frame)});
  Trim(s, now);
  return true;
}

bool History::Since(const std::string& key, const std::string& epoch, uint64_t after, absl::Time now,
                    std::vector<std::shared_ptr<const std::string>>* out) {
  out->clear();
  if (epoch != epoch_) return false;
  auto it = streams_.find(key);
  if (it == streams_.end()) return after == 0;  // nothing was ever sent on it here
  Stream& s = it->second;
  Trim(s, now);
  if (after == s.last) return true;  // nothing missed
  if (after > s.last) return false;  // an offset we never issued
  const uint64_t first = s.entries.empty() ? s.last + 1 : s.entries.front().offset;
  if (after + 1 < first || after + 1 < s.complete_from) return false;
  for (const Entry& e : s.entries) {
    if (e.offset > after) out->push_back(e.frame);
  }
  return true;
}

void History::Expire(absl::Time now) {
  for (auto it = streams_.begin(); it != streams_.end();) {
    Trim(it->second, now);
    if (it->second.entries.empty()) {
      streams_.erase(it++);
    } else {
      ++it;
    }
  }
}

void History::Reset(const std::string& epoch) {
  epoch_ = epoch;
  streams_.clear();
}

}  // namespace devbridge::push
