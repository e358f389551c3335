// Leases on names (a partition of the device fleet, say) in a replicated JetStream key-value
// bucket: one holder per name at a time, and a dead holder's names free again `ttl` after its
// last renewal.
//
// Every write is a compare-and-set on the bucket's last sequence, so two replicas racing for a
// name cannot both win. (Not on the entry's own revision, as kvStore_Create and kvStore_Update
// do: on a replicated bucket that check can let two racing writers through, see
// bus/offset_log.h. Lease writes are rare enough for the whole bucket to take turns.) The bucket forgets an entry `ttl` after it was last written; a holder must
// renew well within that (every ttl / 3 is usual) and must stop acting for a name once
// `ttl - margin` has passed since it *sent* its last successful renewal (HeldUntil), which is
// before the servers can give the name to anybody else. That needs clocks to run at the same
// rate, not to agree.
//
// Not thread-safe: one thread per Leases.
#ifndef DEVBRIDGE_BUS_LEASES_H_
#define DEVBRIDGE_BUS_LEASES_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "bus/connection.h"

namespace devbridge::bus {

class Leases {
 public:
  // Opens bucket `bucket`, creating it (file storage, `replicas` copies, entries kept `ttl`)
  // when it does not exist.
  static absl::StatusOr<std::unique_ptr<Leases>> Open(const Connection* connection, const std::string& bucket,
                                                      absl::Duration ttl, int replicas);
  ~Leases();
  Leases(const Leases&) = delete;
  Leases& operator=(const Leases&) = delete;

  // What a successful Hold wrote.
  struct Held {
    // The bucket's sequence of the write: it only grows, so a holding that began later has a
    // greater one. A holder's first write is its fencing token (PostgreSQL refuses writes
    // under an older one; see ingest's Store).
    uint64_t revision = 0;
    bool renewed = false;  // `holder` held it already (false: it was free and is taken now)
  };
  // Takes `name` for `holder` when nobody holds it, or renews it when `holder` does. True when
  // `holder` holds it afterwards (and `*held`, if given, says how); false when somebody else
  // does. On true the lease is good until HeldUntil(the moment the call started, on the
  // holder's clock).
  absl::StatusOr<bool> Hold(const std::string& name, const std::string& holder, Held* held = nullptr);
  // The last moment a holder whose successful Hold started at `sent` may act on the name.
  absl::Time HeldUntil(absl::Time sent) const { return sent + ttl_ - ttl_ / 5; }

  // Gives `name` up, if `holder` still holds it (a lease already taken over is left alone).
  absl::Status Release(const std::string& name, const std::string& holder);

  // Who holds `name` now ("" when nobody).
  absl::StatusOr<std::string> Holder(const std::string& name);

  // The names held now that start with `prefix` (a lease freed or run out is not listed).
  absl::StatusOr<std::vector<std::string>> Names(const std::string& prefix);

  absl::Duration ttl() const { return ttl_; }

 private:
  Leases(const Connection* connection, kvStore* kv, std::string bucket, absl::Duration ttl)
      : connection_(connection), kv_(kv), bucket_(std::move(bucket)), stream_("KV_" + bucket_), ttl_(ttl) {}

  struct Entry {
    std::string holder;  // "" when nobody holds it
  };
  absl::StatusOr<Entry> Read(const std::string& name);
  // Puts `holder` on `name` (hold) or deletes the entry (release) unless somebody else holds
  // it; false in that case.
  absl::StatusOr<bool> Write(const std::string& name, const std::string& holder, bool hold, Held* held);
  std::string Subject(const std::string& name) const { return "$KV." + bucket_ + "." + name; }

  const Connection* connection_;
  kvStore* kv_;
  std::string bucket_;
  std::string stream_;  // the bucket's stream
  absl::Duration ttl_;
};

}  // namespace devbridge::bus

#endif  // DEVBRIDGE_BUS_LEASES_H_
