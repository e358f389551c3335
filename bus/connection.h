// A connection to a NATS cluster with JetStream (the NATS C client, libnats), for
// `--bus=nats://HOST:PORT[,…]`: it reconnects on its own to any server of the list, and
// hands this folder's classes the raw handles. The C client is thread-safe; so is this.
#ifndef DEVBRIDGE_BUS_CONNECTION_H_
#define DEVBRIDGE_BUS_CONNECTION_H_

#include <nats/nats.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace devbridge::bus {

// The servers of a `--bus` flag: "nats://h1:4222,nats://h2:4222" → each URL, in order.
// Fails (InvalidArgument, saying what is wrong) for anything else: another scheme, a
// missing or out-of-range port, an empty entry.
absl::StatusOr<std::vector<std::string>> ParseBusFlag(absl::string_view flag);

// An error of the C client as a Status: `what` failed, with the client's text and, for a
// JetStream API error, its code. NATS_TIMEOUT → DeadlineExceeded, NATS_NOT_FOUND →
// NotFound, a JetStream "wrong last sequence" → FailedPrecondition, connection problems →
// Unavailable, the rest → Internal.
absl::Status FromNats(natsStatus status, absl::string_view what, int js_error = 0);

struct ConnectionOptions {
  std::vector<std::string> urls;           // nats://host:port, from ParseBusFlag
  std::string name;                        // how the servers list this client
  absl::Duration timeout = absl::Seconds(5);  // connect, and each JetStream API call
};

class Connection {
 public:
  // Connects to one of the servers (trying each), or fails with Unavailable.
  static absl::StatusOr<std::unique_ptr<Connection>> Connect(const ConnectionOptions& options);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  natsConnection* nc() const { return nc_; }
  jsCtx* js() const { return js_; }
  absl::Duration timeout() const { return timeout_; }
  // True while connected (false while the client reconnects).
  bool connected() const;
  // How many times the client has connected again since its first connection: a loss and
  // return too quick for anyone looking at connected() now and then still shows here.
  uint64_t reconnects() const;
  // Closes the connection (and so every subscription on it) without waiting for the servers:
  // a reader stopped afterwards does not ask the bus to delete its consumer (which, while
  // the bus is away, waits the timeout for every reader). The servers drop such consumers
  // on their own. Destroying the Connection closes it too.
  void Close();

 private:
  Connection(natsConnection* nc, jsCtx* js, absl::Duration timeout)
      : nc_(nc), js_(js), timeout_(timeout) {}
  natsConnection* nc_;
  jsCtx* js_;
  absl::Duration timeout_;
};

// A JetStream stream as devbridge wants it: file storage, `replicas` copies (1 on a single
// server, 3 on a cluster), messages kept for `max_age` (zero: for ever) and at most
// `max_bytes` bytes (-1: no bound).
struct StreamSpec {
  std::string name;
  std::vector<std::string> subjects;
  int replicas = 1;
  absl::Duration max_age = absl::ZeroDuration();
  int64_t max_bytes = -1;
  // Kept in the stream's configuration, the same on every server (NewEpochDescription).
  std::string description = "";
};

// Creates the stream, or leaves it as it is when one of that name exists. Safe when several
// processes do it at once. A replicated stream's creation can outlast a request's timeout
// (its servers elect a leader first, slowly on a busy machine), JetStream may not answer at
// all for a moment after a server's start, a cluster just started may not know its servers
// yet ("no suitable peers"), and another process's creation shows only once agreed on: all
// are tried again, for up to `patience`.
absl::Status EnsureStream(const Connection& connection, const StreamSpec& spec,
                          absl::Duration patience = absl::Seconds(60));

// The newest sequence number of stream `name` (0 when it is empty).
absl::StatusOr<uint64_t> LastSequence(const Connection& connection, const std::string& name);

// A message read back from a stream through JetStream's API (answered by the stream's leader).
struct StoredMessage {
  uint64_t sequence = 0;
  std::string subject;
  std::string headers;  // "NATS/1.0\r\nKey: value\r\n…"; empty for a message without headers
  std::string data;
};
// The first message of `subject` (wildcards allowed) at stream sequence `from` or later, or
// nullopt when the stream holds none (yet).
absl::StatusOr<std::optional<StoredMessage>> ReadNext(const Connection& connection, const std::string& stream,
                                                      const std::string& subject, uint64_t from);

// Opens key-value bucket `name`, creating it when there is none (one entry per key; entries
// forgotten `ttl` after they were written, zero: kept; `replicas` copies). Safe when several
// processes do it at once; tries again, for up to `patience`, while it cannot: JetStream not
// answering yet, a cluster just started that does not know its servers yet, another process's
// creation not yet agreed on, a replicated bucket's creation outlasting a request. The
// caller destroys the store.
absl::StatusOr<kvStore*> EnsureBucket(const Connection& connection, const std::string& name, absl::Duration ttl,
                                      int replicas, absl::Duration patience = absl::Seconds(30));

// The keys of key-value bucket `bucket` that begin with `prefix`, deleted ones included (a
// deletion is a key's last entry), from the bucket stream's own state (STREAM.INFO with a
// subject filter). Not kvStore_Keys: it creates a consumer per call, a request to the
// cluster's metadata leader, which a lost server holds up for seconds and every restarted
// server must catch up with.
absl::StatusOr<std::vector<std::string>> BucketKeys(const Connection& connection, const std::string& bucket,
                                                    const std::string& prefix);

// The epoch of the push streams kept in stream `name`, so that it changes only when the
// stream (and its history) is created anew and every writer and reader of the stream agrees
// on it: "bus-" and the id its creator wrote in its description (NewEpochDescription).
// nats-server 2.9 gives each server's copy of a replicated stream its own creation time, so
// that time names no epoch: two ingest replicas started together, or a reader answered by
// another server after a leader change, would see two and tell every client 410. Streams
// created before the description carried the id keep their epoch of old: "bus-" and the
// creation time in hex. NotFound while there is no such stream. While JetStream does not
// answer (a cluster busy electing leaders right after its start), asks again for `patience`.
absl::StatusOr<std::string> StreamEpoch(const Connection& connection, const std::string& name,
                                        absl::Duration patience = absl::ZeroDuration());
// A description for StreamSpec that gives the stream a new epoch: random, so that two
// processes creating the stream at once propose different ones and both keep the winner's.
std::string NewEpochDescription();

}  // namespace devbridge::bus

#endif  // DEVBRIDGE_BUS_CONNECTION_H_
