// ingest's disk spool (CONTRACT §10.3): every MQTT message is appended here before it is
// processed, so what the broker handed over survives a crash of ingest.
//
// Paho acknowledges a QoS 1 message to the broker when our callback returns (or earlier, when
// messages queue up inside it); from then on only ingest holds it. The callback appends the message with one write() (a kill -9 from
// then on loses nothing: the kernel has it) and the spool fsyncs in groups, at most
// `sync_interval` apart (a power cut loses at most that window), or after every message
// when the interval is zero.
//
// On disk: `DIR/spool.id` (a random name that keys this spool's checkpoint in PostgreSQL),
// `DIR/spool.lock` (flock: one ingest per folder) and segment files `DIR/<first seq>.seg`,
// each a run of records
//
//   u32 body length, top two bits set | u32 CRC-32 of body | body: u64 seq | i64 taken at (µs
//   since the epoch) | u16 MQTT packet id | u8 DUP flag | u64 session | u16 topic length |
//   topic | payload                                                 (integers little-endian)
//
// (Older records have only the top bit set and no DUP flag or session, or neither bit and no
// packet id either; they read as 0.) Sequence numbers grow by one per message across segments and
// restarts. The newest two segments are never deleted: the newest's name keeps the numbering
// going even when it is empty, and together they hold the last messages taken with their
// packet ids, so that after a restart the broker's redeliveries of messages this spool holds
// are recognised (mqtt::RedeliveryFilter). Committed() deletes older segments once
// PostgreSQL has everything in them.
//
// Threads: Append() from one thread at a time (the MQTT callback); Read() from one thread at
// a time (the io thread); Committed() and the accessors from any thread.
#ifndef DEVBRIDGE_SERVICES_INGEST_SPOOL_SPOOL_H_
#define DEVBRIDGE_SERVICES_INGEST_SPOOL_SPOOL_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/metrics.h"
#include "common/mutex.h"

namespace devbridge::ingest {

struct SpoolOptions {
  std::string dir = "devbridge-spool";
  size_t max_bytes = size_t{1024} << 20;  // Full() past this
  absl::Duration sync_interval = absl::Milliseconds(2);  // 0: fsync after every message
  size_t segment_bytes = 0;  // 0: max_bytes / 16, between 4 KiB and 64 MiB
};

struct SpooledMessage {
  uint64_t seq = 0;
  absl::Time taken_at;
  uint16_t packet_id = 0;  // the MQTT packet id it came with; 0: QoS 0, or not recorded
  bool dup = false;        // it came flagged DUP (the broker sent it again)
  uint64_t session = 0;    // the MQTT session that took it, as its user names it; 0: not recorded
  std::string topic;
  std::string payload;
};

class Spool {
 public:
  // Creates the folder if needed, locks it, and recovers it: a record torn by a crash at the
  // end of the newest segment is cut off. Fails if the folder is unusable or locked.
  static absl::StatusOr<std::unique_ptr<Spool>> Open(SpoolOptions options, common::MetricsRegistry* metrics);
  ~Spool();
  Spool(const Spool&) = delete;
  Spool& operator=(const Spool&) = delete;

  // Writes one message with a single write() and returns its sequence number. An error
  // (disk full, I/O) leaves the spool as it was. Always appends, even when Full(): the
  // caller pauses intake, but what was already on its way must be kept.
  absl::StatusOr<uint64_t> Append(absl::string_view topic, absl::string_view payload, absl::Time taken_at,
                                  uint16_t packet_id = 0, bool dup = false, uint64_t session = 0)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Call after Append(), outside any lock of the caller's: fsyncs now when sync_interval is
  // zero, else wakes the syncer, which fsyncs within sync_interval.
  void AfterAppend() ABSL_LOCKS_EXCLUDED(mu_, sync_mu_);

  // Appends up to `max` messages with seq >= `from` to `out`, in order; stops at what has
  // been appended so far. Returns the seq to read from next: past the last one read, or past
  // a stretch lost to corruption (logged and counted).
  absl::StatusOr<uint64_t> Read(uint64_t from, size_t max, std::vector<SpooledMessage>* out)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Everything up to `seq` is in PostgreSQL: deletes the segments holding nothing newer.
  void Committed(uint64_t seq) ABSL_LOCKS_EXCLUDED(mu_);

  // fsyncs what is pending and stops the syncer. The destructor calls it.
  void Close() ABSL_LOCKS_EXCLUDED(mu_, sync_mu_);

  const std::string& id() const { return id_; }
  const std::string& dir() const { return options_.dir; }
  uint64_t next_seq() const ABSL_LOCKS_EXCLUDED(mu_);   // the seq the next Append gets
  uint64_t first_seq() const ABSL_LOCKS_EXCLUDED(mu_);  // the oldest seq still on disk
  // Bytes of the segments PostgreSQL does not have in full: the backlog that max_bytes
  // bounds. (A segment kept only for its packet ids does not count.) The two counts are read
  // apart from Committed(), which moves both: never below zero.
  size_t bytes() const {
    const size_t all = bytes_.load();
    const size_t history = history_bytes_.load();
    return all > history ? all - history : 0;
  }
  bool Full() const { return bytes() > options_.max_bytes; }
  // Messages appended but not yet fsynced: what a power cut would lose now. The time the
  // oldest of them waited (window start to fsync done: spool_sync plus the fsync itself) is
  // histogram devbridge_ingest_spool_sync_wait_ms.
  uint64_t unsynced() const;

 private:
  struct Segment {
    uint64_t first_seq = 0;
    size_t size = 0;  // bytes of whole records
  };
  // The reader's position, kept between Read() calls (they are sequential).
  struct Cursor {
    uint64_t segment = 0;  // first_seq of the segment it is in; 0: none
    int fd = -1;
    size_t offset = 0;
    uint64_t next_seq = 0;
  };

  explicit Spool(SpoolOptions options, common::MetricsRegistry* metrics);
  absl::Status Recover() ABSL_LOCKS_EXCLUDED(mu_);
  absl::Status OpenSegmentForAppend(uint64_t first_seq, bool create) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Rotate() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::string SegmentPath(uint64_t first_seq) const;
  void SyncLoop() ABSL_LOCKS_EXCLUDED(mu_, sync_mu_);
  void SyncNow() ABSL_LOCKS_EXCLUDED(mu_, sync_mu_);
  void CloseCursor();

  SpoolOptions options_;
  std::string id_;
  int lock_fd_ = -1;

  mutable common::Mutex mu_;
  std::map<uint64_t, Segment> segments_ ABSL_GUARDED_BY(mu_);  // by first seq; the last is appended to
  int fd_ ABSL_GUARDED_BY(mu_) = -1;                          // the newest segment, open for append
  uint64_t next_seq_ ABSL_GUARDED_BY(mu_) = 1;
  std::string record_ ABSL_GUARDED_BY(mu_);                   // reused buffer for one record
  std::atomic<size_t> bytes_{0};          // all segments
  std::atomic<size_t> history_bytes_{0};  // the older of the two kept, when wholly committed

  // Segments rotated out, fsynced and closed by the next SyncNow().
  std::vector<int> retired_fds_ ABSL_GUARDED_BY(mu_);

  // fsync runs under sync_mu_ (never under mu_, so Append() does not wait for a disk flush);
  // a segment's fd is closed only there, so it is never fsynced after it was closed.
  common::Mutex sync_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  common::CondVar sync_cv_;
  std::atomic<uint64_t> appended_{0};  // seq of the last message written
  std::atomic<uint64_t> synced_{0};    // seq of the last message fsynced
  std::atomic<int64_t> oldest_unsynced_us_{0};  // when the oldest unsynced message was written
  uint64_t sync_target_ ABSL_GUARDED_BY(mu_) = 0;  // what the fsync under way covers
  bool sync_stopping_ ABSL_GUARDED_BY(sync_mu_) = false;
  std::thread syncer_;

  Cursor cursor_;  // the reader's alone
  std::string read_buffer_;

  struct Metrics {
    common::Counter* appended;
    common::Counter* append_errors;
    common::Counter* fsyncs;
    common::Counter* corrupt;
    common::Counter* segments_deleted;
    common::Histogram* sync_wait_ms;
  } m_;
};

}  // namespace devbridge::ingest

#endif  // DEVBRIDGE_SERVICES_INGEST_SPOOL_SPOOL_H_
