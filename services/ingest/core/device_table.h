// Liveness of devices (CONTRACT §3): online from the first message, offline after
// heartbeat_timeout of silence. Owned by the ingest io thread; not thread-safe.
#ifndef DEVBRIDGE_SERVICES_INGEST_CORE_DEVICE_TABLE_H_
#define DEVBRIDGE_SERVICES_INGEST_CORE_DEVICE_TABLE_H_

#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace devbridge::ingest {

struct DeviceInfo {
  std::string id;
  bool online = false;
  absl::Time first_seen;
  absl::Time last_seen;
  std::string meta_json;  // the last heartbeat that was a JSON object; "" if none
  absl::Time stored_at = absl::InfinitePast();  // when its row was last sent to the store
};

class DeviceTable {
 public:
  // Records a message from `id` at `now`. Returns true when the device was unknown or
  // offline and is now online.
  bool Touch(absl::string_view id, absl::Time now);
  void SetMeta(absl::string_view id, std::string meta_json);

  // Marks offline, and returns, every online device silent for longer than `timeout`.
  std::vector<std::string> Sweep(absl::Time now, absl::Duration timeout);
  // Removes, and returns, every offline device whose last message is older than `after`.
  std::vector<std::string> Forget(absl::Time now, absl::Duration after);
  // Marks one device offline (e.g. at shutdown); false if it was not online.
  bool MarkOffline(absl::string_view id);
  // Drops the device from memory, online or not (its rows stay); false if unknown.
  bool Erase(absl::string_view id);

  const DeviceInfo* Find(absl::string_view id) const;
  DeviceInfo* FindMutable(absl::string_view id);
  bool IsOnline(absl::string_view id) const;
  std::vector<DeviceInfo> Snapshot() const;
  // Up to `limit` devices whose id sorts after `after` ("" for the first page), in id order.
  // Pointers stay valid until the table next changes.
  std::vector<const DeviceInfo*> Page(absl::string_view after, size_t limit) const;
  size_t size() const { return devices_.size(); }
  size_t online_count() const { return online_; }

 private:
  absl::flat_hash_map<std::string, DeviceInfo> devices_;
  size_t online_ = 0;
};

}  // namespace devbridge::ingest

#endif  // DEVBRIDGE_SERVICES_INGEST_CORE_DEVICE_TABLE_H_
