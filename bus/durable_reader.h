// Reads one subject of a JetStream stream in order, from a given position on, through a
// durable pull consumer, acknowledging it only as far as the caller says its work is safe
// (Commit). It is how an ingest replica reads a partition of the intake stream
// (services/ingest/app): acknowledged after PostgreSQL's commit.
//
// The consumer lives on one server. When it does not answer (deleted, or its
// server died), the reader reads on from the stream itself, one request per message, and asks
// for another consumer every few seconds under a new name (right after a kill -9 the servers
// refused creations for 30 s and more). Why not a replicated consumer: each is a raft group of
// its own, and nats-server 2.9.10 left several of them "not current" for good after they were
// created and dropped around a server's restart; that server never reported healthy again.
//
// Order, and nothing skipped: messages go to `on_message` in stream order, each once. A
// delivery lost on the way (the server the client talked to died with it in flight) shows as
// a jump in the consumer's delivery sequence; the messages of the subject between the last
// one handed over and the one that came are then read from the stream itself, before it; and
// after 5 s with no delivery the reader looks at the stream for a lost tail the same way.
// Copies (a redelivery of what was handed over but not yet committed) are dropped. The
// consumer's acknowledgement policy is "all": acknowledging a message covers every one before
// it, so its acknowledged floor is the caller's commit, and what is left unacknowledged past
// it is delivered again after `ack_wait` (and dropped as a copy).
#ifndef DEVBRIDGE_BUS_DURABLE_READER_H_
#define DEVBRIDGE_BUS_DURABLE_READER_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "bus/connection.h"
#include "common/metrics.h"

namespace devbridge::bus {

struct DurableReaderOptions {
  std::string stream;
  std::string subject;
  // The durable consumer's name (unique to this reading: reused, see Start). Created by Start.
  std::string consumer;
  uint64_t from = 1;     // the first stream sequence to read (1: from the stream's start)
  absl::Duration ack_wait = absl::Seconds(30);
  int max_ack_pending = 8192;  // delivered and not acknowledged, at most, before the bus waits
  int batch = 256;             // messages asked for at a time
  common::Counter* read_back = nullptr;  // counts the messages read from the stream (may be null)
  // A consumer nobody fetched from for this long is removed by the servers: what a reader
  // killed with its process leaves. (One blocked in on_message longer is created again.)
  absl::Duration inactive_threshold = absl::Minutes(5);
};

class DurableReader {
 public:
  // A message: its stream sequence and data. Runs on the reader's thread, one at a time; it
  // may block (the bus then holds what follows).
  using OnMessage = std::function<void(uint64_t sequence, absl::string_view data)>;

  // Creates the consumer named `options.consumer` to start at `options.from` (deleting one of
  // that name another reader left, with its floor), then starts reading; if the servers refuse
  // or do not answer, it reads from the stream until they do (it never fails now). Give each reading a
  // name of its own (ingest: intake-<partition>-<fence>): nats-server 2.9.10 mixes up a
  // consumer deleted and created again while one of its servers was down (that server stays
  // unhealthy). Created again after a loss, it takes a suffix (-1, -2, ...).
  static absl::StatusOr<std::unique_ptr<DurableReader>> Start(const Connection* connection,
                                                              DurableReaderOptions options, OnMessage on_message);
  // Stops reading; `on_message` is not running and will not run once this returns. The
  // consumer stays, acknowledged as far as Commit said.
  ~DurableReader();
  DurableReader(const DurableReader&) = delete;
  DurableReader& operator=(const DurableReader&) = delete;

  // Every message up to stream sequence `sequence` is safe: acknowledge them (soon, from the
  // reader's thread). Any thread.
  void Commit(uint64_t sequence);

  // Messages read from the stream to fill a gap in the deliveries, and copies dropped.
  uint64_t filled() const { return filled_; }
  uint64_t copies() const { return copies_; }

 private:
  DurableReader(const Connection* connection, DurableReaderOptions options, OnMessage on_message);
  absl::Status Create();  // the consumer, anew, from last_ + 1
  absl::Status Bind();    // sub_ to it
  // Create and Bind; on failure (logged) none is bound and next_create_ says when to try again.
  bool TakeConsumer();
  void Run();
  void Handle(natsMsg* msg);
  // Hands over the subject's messages after last_ and before stream sequence `until`.
  void Fill(uint64_t until);
  void Acknowledge();
  void Unbind();

  const Connection* connection_;
  DurableReaderOptions options_;
  OnMessage on_message_;
  std::string name_;      // the consumer's name now
  int recreations_ = 0;
  natsSubscription* sub_ = nullptr;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> committed_{0};
  std::atomic<uint64_t> filled_{0};
  std::atomic<uint64_t> copies_{0};
  // The reader's thread only:
  uint64_t last_ = 0;            // the stream sequence handed over last
  absl::Time next_create_ = absl::InfinitePast();  // without a consumer: when to ask for one
  uint64_t next_delivery_ = 1;   // the consumer's delivery sequence expected next
  struct Delivered {
    uint64_t sequence;
    std::string reply;  // where its acknowledgement goes
  };
  std::deque<Delivered> unacknowledged_;  // handed over, in order
};

}  // namespace devbridge::bus

#endif  // DEVBRIDGE_BUS_DURABLE_READER_H_
