// PostgreSQL persistence for ingest (CONTRACT §8) on libpqxx: migrations at start, a writer
// thread that batches records into multi-row statements, and a reader thread for queries.
//
// Push() never blocks and never refuses: the io thread checks Full() before taking more
// MQTT messages, which is how a database outage turns into broker-side buffering. While
// the database is away the writer keeps its batch, retries with backoff and loses nothing.
// A record the database refuses for its data (CONTRACT §10.3) is isolated by halving the
// batch, kept in table `rejected` with the error, and never holds up the others.
//
// With a spool (StoreOptions::spool_id), each transaction also records in table
// spool_checkpoints how far the spool is covered: PushMessage(records, seq) queues the records
// of the message at spool position seq as a unit, never split between transactions, and the
// transaction that commits the last of them moves the checkpoint to seq. A statement that hangs (PostgreSQL unreachable behind a silent network) is
// abandoned after statement_timeout by shutting its socket down.
#ifndef DEVBRIDGE_SERVICES_INGEST_STORE_STORE_H_
#define DEVBRIDGE_SERVICES_INGEST_STORE_STORE_H_

#include <atomic>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/metrics.h"
#include "common/mutex.h"
#include "devbridge/v1/events.pb.h"
#include "services/ingest/core/records.h"

namespace devbridge::ingest {

struct StoreOptions {
  std::string dsn;
  size_t max_queue_bytes = 64 << 20;  // Full() beyond this
  size_t max_batch = 2000;            // records per transaction
  // Wait this long for a fuller batch. Nothing a browser sees waits for the database, so a
  // longer linger costs only how soon a reading can be queried, and saves a commit per few
  // frames at moderate rates: with 2 ms PostgreSQL spent 871 µs per frame at 200 frames/s and
  // 204 µs at 1,000/s; with 25 ms, 220 and 72 µs (bench/e2e, fsync on).
  absl::Duration linger = absl::Milliseconds(25);
  absl::Duration min_backoff = absl::Milliseconds(100);
  absl::Duration max_backoff = absl::Seconds(5);
  // The spool whose checkpoint the writer keeps (Spool::id()); empty: no spool.
  std::string spool_id;
  // With spool_id, a fencing token (0: none): at start the writer marks the checkpoint row
  // with it, unless the row has a greater one, and every transaction commits only while the
  // row still has this one. A writer whose token was overtaken (a newer owner of the spool's
  // partition started) writes nothing more: it drops what it holds and what comes, and says
  // so (fenced()). Tokens only grow (bus::Leases::Held::revision).
  uint64_t fence = 0;
  // At the first connection, commands requested before this time and left `queued` or `sent`
  // (a crash) are marked failed with 503 (CONTRACT §10.3). InfinitePast(): skip.
  absl::Time started = absl::InfinitePast();
  // With `started`: only the commands of the devices this selects (a partition's, in a
  // cluster); null: every device's.
  std::function<bool(const std::string& device_id)> owns_device;
  // Whether this writer registers the gauges of its own queue and health; the counters and
  // histograms it shares with every writer of the registry. (A partition's writer, which
  // comes and goes with its lease, does not.)
  bool register_gauges = true;
  // A statement or a connection attempt running longer than this is abandoned.
  absl::Duration statement_timeout = absl::Seconds(10);
};

// A record waiting for the writer, and the spool position its commit completes (0: none).
struct QueuedRecord {
  StoreRecord record;
  uint64_t covers = 0;
  bool ends_unit = true;  // the last of its message's records (a transaction may end after it)
};

class Store {
 public:
  // Starts the writer and reader threads; they connect, create the database if it is
  // missing, and migrate, retrying until the database answers. Never blocks on the network.
  // `on_ready` and `on_committed` (may be null) are set before the threads start.
  static std::unique_ptr<Store> Start(StoreOptions options, common::MetricsRegistry* metrics,
                                      std::function<void(uint64_t)> on_ready = nullptr,
                                      std::function<void(uint64_t)> on_committed = nullptr);
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  // Queues a record for the writer. Thread-safe, never blocks.
  void Push(StoreRecord record) ABSL_LOCKS_EXCLUDED(mu_);
  // Queues the records one message produced (`*records`, emptied) as a unit. With `seq`, its
  // spool position, every message up to it has then pushed its records, and the commit of
  // the unit's last record (of the last one queued, or of the next one, if it has none)
  // moves the checkpoint to `seq`.
  void PushMessage(std::vector<StoreRecord>* records, uint64_t seq) ABSL_LOCKS_EXCLUDED(mu_);

  // True while the queue holds more than max_queue_bytes: stop taking new messages.
  bool Full() const { return queued_bytes_.load() > options_.max_queue_bytes; }
  // Called on the writer thread when the queue falls back under half its bound after having
  // been Full(). Set before Push() is first called.
  void SetOnSpace(std::function<void()> on_space) { on_space_ = std::move(on_space); }

  // True once a greater fencing token than options.fence was found: nothing is written any more.
  bool fenced() const { return fenced_.load(); }
  // True when the last statement (or periodic check) against the database succeeded.
  bool healthy() const { return healthy_.load(); }
  // True when records wait and none was committed for kWritesFailingAfter. Thread-safe.
  bool writes_failing(absl::Time now) const;
  static constexpr absl::Duration kWritesFailingAfter = absl::Seconds(10);
  size_t queued_bytes() const { return queued_bytes_.load(); }
  size_t queued_records() const ABSL_LOCKS_EXCLUDED(mu_);

  // Waits until every record pushed so far is committed, or `timeout` passes. Returns
  // whether everything was written.
  bool Flush(absl::Duration timeout) ABSL_LOCKS_EXCLUDED(mu_);
  // Flushes for at most `timeout`, then stops the threads (abandoning a statement in
  // progress); what could not be written by then is logged with its count and dropped (with
  // a spool, it is written at the next start).
  void Stop(absl::Duration timeout);

  // Readings of `device_id` received at or after `since`, the `limit` most recent, oldest
  // first. Runs on the reader thread; `done` is called there.
  using ReadingsDone = std::function<void(absl::StatusOr<std::vector<v1::CommandResult>>)>;
  void GetReadings(std::string device_id, absl::Time since, size_t limit, ReadingsDone done);

 private:
  explicit Store(StoreOptions options, common::MetricsRegistry* metrics);
  void WriterLoop() ABSL_LOCKS_EXCLUDED(mu_);
  // Once per process, at the first connection: fails commands a crash left open and reads
  // the spool checkpoint. Throws on a database error.
  uint64_t StartUp(void* conn);
  // The watchdog: a statement on slot kWriter or kReader running past statement_timeout has
  // its socket shut down, which makes libpq fail it at once.
  enum Slot { kWriter = 0, kReader = 1 };
  void Watch(Slot slot, int fd, const char* what) ABSL_LOCKS_EXCLUDED(guard_mu_);
  void Unwatch(Slot slot) ABSL_LOCKS_EXCLUDED(guard_mu_);
  // `forever`: every later statement on the slot is abandoned as soon as it starts (stopping).
  void Abandon(Slot slot, const char* why, bool forever = false) ABSL_LOCKS_EXCLUDED(guard_mu_);
  void WatchdogLoop() ABSL_LOCKS_EXCLUDED(guard_mu_);
  // Accounts for the first `n` records of `batch` as committed and removes them. Called on
  // the writer thread.
  void Committed(std::vector<QueuedRecord>& batch, size_t n, absl::Time now) ABSL_LOCKS_EXCLUDED(mu_);
  // The same for records that will never be written (fenced): counted, removed, not stored.
  void Discarded(std::vector<QueuedRecord>& batch) ABSL_LOCKS_EXCLUDED(mu_);
  // Both: takes the first `n` records of `batch` off the queue's accounts.
  void Done(std::vector<QueuedRecord>& batch, size_t n, absl::Time now, bool stored) ABSL_LOCKS_EXCLUDED(mu_);
  void ReaderLoop() ABSL_LOCKS_EXCLUDED(read_mu_);

  StoreOptions options_;
  std::function<void()> on_space_;
  std::function<void(uint64_t)> on_ready_;
  std::function<void(uint64_t)> on_committed_;

  mutable common::Mutex mu_;
  common::CondVar cv_;          // records arrived or stopping
  common::CondVar flushed_cv_;  // a batch committed
  std::deque<QueuedRecord> queue_ ABSL_GUARDED_BY(mu_);
  uint64_t pending_cover_ ABSL_GUARDED_BY(mu_) = 0;  // a mark with nothing queued: for the next record
  uint64_t pushed_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t committed_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool was_full_ ABSL_GUARDED_BY(mu_) = false;
  std::atomic<size_t> queued_bytes_{0};
  std::atomic<bool> healthy_{false};
  std::atomic<bool> fenced_{false};
  std::atomic<int64_t> last_progress_ms_{0};  // last commit, or last time nothing waited

  common::Mutex read_mu_;
  common::CondVar read_cv_;
  // Each job gets the reader's pqxx::connection* (nullptr when the database is away).
  std::deque<std::function<void(void*)>> reads_ ABSL_GUARDED_BY(read_mu_);
  bool read_stopping_ ABSL_GUARDED_BY(read_mu_) = false;

  struct Metrics {
    common::Histogram* batch_size;
    common::Histogram* batch_ms;
    common::Histogram* commit_latency_ms;
    common::Counter* rows;
    common::Counter* errors;
    common::Counter* retries;
    common::Counter* rejected;
    common::Counter* abandoned;
    common::Counter* fenced;
  } m_;

  struct Watched {
    int fd = -1;
    absl::Time since;
    const char* what = "";
  };
  common::Mutex guard_mu_;
  common::CondVar guard_cv_;
  Watched watched_[2] ABSL_GUARDED_BY(guard_mu_);
  bool closed_[2] ABSL_GUARDED_BY(guard_mu_) = {false, false};
  bool guard_stopping_ ABSL_GUARDED_BY(guard_mu_) = false;

  std::thread writer_;
  std::thread reader_;
  std::thread watchdog_;
};

// The schema migrations, in order; each runs once per database (see docs/design.md).
const std::vector<std::string>& Migrations();

// Replaces the database name of `dsn` (URI or key=value form) with `dbname`.
std::string DsnWithDatabase(const std::string& dsn, const std::string& dbname);

}  // namespace devbridge::ingest

#endif  // DEVBRIDGE_SERVICES_INGEST_STORE_STORE_H_
