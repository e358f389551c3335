// Per-stream message history for recovery (CONTRACT §5): each system and each group keeps
// its last `size` messages for `ttl`, keyed by the offsets ingest assigned, so a client
// reconnecting with (epoch, offset) gets exactly what it missed, on any replica.
// Io thread only.
#ifndef DEVBRIDGE_SERVICES_PUSH_CORE_HISTORY_H_
#define DEVBRIDGE_SERVICES_PUSH_CORE_HISTORY_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/time/time.h"

namespace devbridge::push {

// "system" for a system's stream, "system\x1fgroup" for a group's.
std::string StreamKey(const std::string& system_id, const std::string& group_name);

class History {
 public:
  History(size_t size, absl::Duration ttl) : size_(size), ttl_(ttl) {}

  // Records message `offset` (encoded frame `frame`) of stream `key`; one at or below the
  // stream's last offset is one seen before, and ignored. Whether it was new.
  bool Add(const std::string& key, uint64_t offset, std::shared_ptr<const std::string> frame, absl::Time now);

  // The messages of `key` after `after` in epoch `epoch`, oldest first, into `out`. False if
  // they are gone: another epoch, evicted or expired, or never seen here.
  bool Since(const std::string& key, const std::string& epoch, uint64_t after, absl::Time now,
             std::vector<std::shared_ptr<const std::string>>* out);

  // A new epoch (ingest restarted) or a gap in what we received: nothing held is
  // recoverable any more; offsets continue from the new events.
  void Reset(const std::string& epoch);
  // Drops every stream whose messages are all older than the ttl (CONTRACT §10.1), so a
  // stream used once does not stay forever; recovering from it afterwards gives 410.
  void Expire(absl::Time now);
  const std::string& epoch() const { return epoch_; }
  size_t streams() const { return streams_.size(); }

 private:
  struct Entry {
    uint64_t offset;
    absl::Time at;
    std::shared_ptr<const std::string> frame;
  };
  struct Stream {
    std::deque<Entry> entries;
    uint64_t last = 0;      // last offset seen, even if since evicted
    uint64_t complete_from = 1;  // the first offset after which we saw every message
  };
  void Trim(Stream& s, absl::Time now) const;

  size_t size_;
  absl::Duration ttl_;
  std::string epoch_;
  absl::flat_hash_map<std::string, Stream> streams_;
};

}  // namespace devbridge::push

#endif  // DEVBRIDGE_SERVICES_PUSH_CORE_HISTORY_H_
