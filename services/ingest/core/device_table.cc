#include "services/ingest/core/device_table.h"

#include <algorithm>

#include "absl/strings/ascii.h"

namespace devbridge::ingest {

bool DeviceTable::Touch(absl::string_view id, absl::Time now) {
  auto [it, inserted] = devices_.try_emplace(id);
  DeviceInfo& d = it->second;
  if (inserted) {
    d.id = std::string(id);
    d.first_seen = now;
  }
  d.last_seen = now;
  if (d.online) return false;
  d.online = true;
  ++online_;
  return true;
}

void DeviceTable::SetMeta(absl::string_view id, std::string meta_json) {
  auto it = devices_.find(id);
  if (it != devices_.end()) it->second.meta_json = std::move(meta_json);
}

std::vector<std::string> DeviceTable::Sweep(absl::Time now, absl::Duration timeout) {
  std::vector<std::string> gone;
  for (auto& [id, d] : devices_) {
    if (d.online && now - d.last_seen > timeout) {
      d.online = false;
      --online_;
      gone.push_back(id);
    }
  }
  std::sort(gone.begin(), gone.end());
  return gone;
}

std::vector<std::string> DeviceTable::Forget(absl::Time now, absl::Duration after) {
  std::vector<std::string> gone;
  for (const auto& [id, d] : devices_) {
    if (!d.online && now - d.last_seen > after) gone.push_back(id);
  }
  for (const std::string& id : gone) devices_.erase(id);
  return gone;
}

bool DeviceTable::MarkOffline(absl::string_view id) {
  auto it = devices_.find(id);
  if (it == devices_.end() || !it->second.online) return false;
  it->second.online = false;
  --online_;
  return true;
}

bool DeviceTable::Erase(absl::string_view id) {
  auto it = devices_.find(id);
  if (it == devices_.end()) return false;
  if (it->second.online) --online_;
  devices_.erase(it);
  return true;
}

const DeviceInfo* DeviceTable::Find(absl::string_view id) const {
  auto it = devices_.find(id);
  return it == devices_.end() ? nullptr : &it->second;
}

DeviceInfo* DeviceTable::FindMutable(absl::string_view id) {
  auto it = devices_.find(id);
  return it == devices_.end() ? nullptr : &it->second;
}

bool DeviceTable::IsOnline(absl::string_view id) const {
  const DeviceInfo* d = Find(id);
  return d != nullptr && d->online;
}

std::vector<DeviceInfo> DeviceTable::Snapshot() const {
  std::vector<DeviceInfo> out;
  out.reserve(devices_.size());
  for (const auto& [id, d] : devices_) out.push_back(d);
  std::sort(out.begin(), out.end(), [](const DeviceInfo& a, const DeviceInfo& b) { return a.id < b.id; });
  return out;
}

std::vector<const DeviceInfo*> DeviceTable::Page(absl::string_view after, size_t limit) const {
  std::vector<const DeviceInfo*> out;
  for (const auto& [id, info] : devices_) {
    if (id > after) out.push_back(&info);
  }
  auto by_id = [](const DeviceInfo* a, const DeviceInfo* b) { return a->id < b->id; };
  // Only the first `limit` need sorting: select them, then order them.
  if (out.size() > limit) {
    std::nth_element(out.begin(), out.begin() + static_cast<std::ptrdiff_t>(limit), out.end(), by_id);
    out.resize(limit);
  }
  std::sort(out.begin(), out.end(), by_id);
  return out;
}

}  // namespace devbridge::ingest
