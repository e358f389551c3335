#include "services/ingest/app/app.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <asio.hpp>
#include <deque>
#include <future>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/mutex.h"
#include "common/status.h"
#include "common/uuid.h"
#include "httpd/http_server.h"
#include "mqtt/client.h"
#include "regmap/register_map.h"
#include "bus/offset_log.h"
#include "bus/durable_reader.h"
#include "services/ingest/cluster/command_router.h"
#include "services/ingest/cluster/device_directory.h"
#include "services/ingest/cluster/intake_forwarder.h"
#include "services/ingest/cluster/partition_owner.h"
#include "services/ingest/cluster/partitions.h"
#include "services/ingest/cluster/session_adopter.h"
#include "services/ingest/core/event_log.h"
#include "services/ingest/core/ingest_core.h"
#include "services/ingest/rpc/ingest_service.h"
#include "services/ingest/spool/spool.h"
#include "services/ingest/store/store.h"

namespace devbridge::ingest {
namespace {

constexpr size_t kDrainBatch = 512;
constexpr absl::Duration kCommandTick = absl::Milliseconds(10);

struct Message {
  std::string topic;
  std::string payload;
  absl::Time taken_at;
  uint64_t seq = 0;  // position in the spool; 0: not spooled
  // How the broker delivered it (for the partitions' owners, cluster::IntakeMessage): the
  // MQTT session (0: this replica's own), the packet id and the DUP flag.
  uint64_t session = 0;
  uint16_t packet_id = 0;
  bool dup = false;
};

// A partition this replica owns (--partitions): its messages come from the intake stream,
// and its records go to a writer of its own, whose checkpoint (table spool_checkpoints, key
// "partition-<N>") is the intake stream position PostgreSQL has: the next owner starts
// reading after it, so a message is stored once whoever processes it. It reads through a
// replicated consumer of its own ("intake-<N>-<fence>", bus::DurableReader), acknowledged up to that
// checkpoint, which goes on through a bus server's loss.
struct Partition {
  int id = 0;
  uint64_t fence = 0;  // the lease's revision when this replica took it
  std::unique_ptr<Store> store;  // set before `ready`
  common::Mutex mu;
  common::CondVar cv;  // ready, lost, or room for more
  uint64_t checkpoint = 0;       // set before the reader starts
  cluster::IntakeWindow window;  // the reader's delivery thread
  bool past_checkpoint = false;  // the reader's delivery thread: the first message to process came
  bool ready ABSL_GUARDED_BY(mu) = false;
  bool lost ABSL_GUARDED_BY(mu) = false;
  size_t in_flight ABSL_GUARDED_BY(mu) = 0;  // read, not yet processed by the io thread
  std::unique_ptr<bus::DurableReader> reader ABSL_GUARDED_BY(mu);
};

// Messages of one partition read but not yet processed, at most: the reader waits (and the
// bus's flow control holds the rest) while the io thread or PostgreSQL is behind.
constexpr size_t kPartitionWindow = 2048;
// Intake stream positions read back before a partition's checkpoint to fill its window.
constexpr uint64_t kReadBack = 20000;

}  // namespace

struct App::Impl : public CoreOutputs {
  explicit Impl(IngestOptions o) : options(std::move(o)), log(common::Logger("ingest")) {}

  // CoreOutputs, called on the io thread.
  void PublishCommand(const std::string& device_id, const std::string& hex, bool poll) override {
    const std::string topic = absl::StrCat(options.topic_prefix, "/", device_id, "/command");
    if (absl::Status s = mqtt->Publish(topic, hex, poll ? options.poll_qos : options.mqtt_qos); !s.ok()) {
      log->warn("[{}] command not published: {}", device_id, s.message());
    }
  }
  void Store(StoreRecord record) override {
    if (!store) return;
    if (in_message) {
      message_records.push_back(std::move(record));
    } else if (ingest::Store* partition = PartitionStore(record)) {
      partition->Push(std::move(record));
    } else {
      store->Push(std::move(record));
    }
  }
  // In a cluster, the writer of the record's device's partition when this replica owns it:
  // a command's row is inserted outside any message and completed by the reply's, and the two
  // must reach PostgreSQL in that order, through one writer.
  ingest::Store* PartitionStore(const StoreRecord& record) {
    if (options.partitions == 0) return nullptr;
    const std::string& device = std::visit([](const auto& r) -> const std::string& { return r.device_id; }, record);
    common::MutexLock lock(&partitions_mu);
    const std::shared_ptr<Partition>& part = partitions[cluster::PartitionOf(device, options.partitions)];
    return part ? part->store.get() : nullptr;
  }

  // Io thread: one message through the core; what it stores goes to the writer as one unit
  // with the message's spool position (0: not spooled).
  void Process(absl::string_view topic, absl::string_view payload, absl::Time taken_at, uint64_t seq,
               ingest::Store* target) {
    intake_ms->Observe(absl::ToDoubleMilliseconds(absl::Now() - taken_at));
    in_message = true;
    core->OnMessage(topic, payload, taken_at);
    in_message = false;
    if (target) target->PushMessage(&message_records, seq);
  }
  // Io thread: a message taken from the broker. Alone, this replica processes it; in a
  // cluster, it goes to the intake stream, for its partition's owner.
  void Take(Message& m) {
    if (options.partitions > 0) {
      // Once the forwarder is gone (stopping), the spool keeps the message for the next start.
      if (forwarder) {
        cluster::IntakeMessage forward;
        forward.topic = m.topic;
        forward.payload = m.payload;
        forward.taken_at = m.taken_at;
        forward.seq = m.seq;
        forward.session = m.session != 0 ? m.session : own_session;
        forward.packet_id = m.packet_id;
        forward.dup = m.dup;
        forwarder->Forward(forward);
      }
    } else {
      Process(m.topic, m.payload, m.taken_at, m.seq, store.get());
    }
  }

  // Owner's thread: partition `id` is ours, under fencing token `fence`. Its writer reads the
  // checkpoint (and marks it with the fence, which refuses an earlier owner's writes from then
  // on); then its reader starts after it.
  void GainPartition(int id, uint64_t fence) {
    auto part = std::make_shared<Partition>();
    part->id = id;
    part->fence = fence;
    StoreOptions so;
    so.dsn = options.pg_dsn;
    so.max_queue_bytes = options.db_queue_bytes;
    so.spool_id = absl::StrCat("partition-", id);
    so.fence = fence;
    // Commands a dead owner left open in the partition fail (503), as a restart does for its own.
    so.started = absl::Now();
    so.owns_device = [partitions = options.partitions, id](const std::string& device) {
      return cluster::PartitionOf(device, partitions) == id;
    };
    std::weak_ptr<Partition> weak = part;
    so.register_gauges = false;  // its counters add up with the other writers'
    part->store = Store::Start(
        so, &metrics,
        [this, weak](uint64_t checkpoint) {
          if (std::shared_ptr<Partition> p = weak.lock()) StartReading(p, checkpoint);
        },
        [weak](uint64_t checkpoint) {
          // PostgreSQL has it: the bus may forget it for this partition (the consumer's floor).
          if (std::shared_ptr<Partition> p = weak.lock()) {
            common::MutexLock lock(&p->mu);
            if (p->reader) p->reader->Commit(checkpoint);
          }
        });
    {
      common::MutexLock lock(&part->mu);
      part->ready = true;
    }
    part->cv.NotifyAll();
    {
      common::MutexLock lock(&partitions_mu);
      partitions[id] = std::move(part);
    }
    // Commands for its devices come here now (the reader may still be catching up: the
    // device answers through the intake, after what was already there).
    common::MutexLock lock(&router_mu);
    if (router) {
      if (absl::Status served = router->Serve(id); !served.ok()) {
        log->warn("partition {}: its commands cannot reach this replica: {}", id, served.message());
      }
    }
  }

  // The partition's writer thread, once PostgreSQL said where it is: read from just after.
  // Not under the partition's lock while the reader starts: its first messages may come (and
  // take that lock) before the bus has answered the start.
  void StartReading(const std::shared_ptr<Partition>& part, uint64_t checkpoint) {
    const std::string subject = cluster::IntakeSubject(part->id);
    std::weak_ptr<Partition> weak = part;
    {
      common::MutexLock lock(&part->mu);
      part->cv.Wait(&part->mu, [&part] {
        part->mu.AssertHeld();
        return part->ready || part->lost;
      });
      if (part->lost) return;
    }
    // From a little before the checkpoint: those messages only fill the window that drops a
    // copy stored again on both sides of it.
    part->checkpoint = checkpoint;
    const uint64_t from = checkpoint > kReadBack ? checkpoint + 1 - kReadBack : 1;
    bus::DurableReaderOptions reading;
    reading.stream = cluster::kIntakeStream;
    reading.subject = subject;
    // A name of this holding's own (see bus::DurableReader::Start); an earlier holder's
    // consumer is removed by the servers once nobody reads from it.
    reading.consumer = absl::StrCat("intake-", part->id, "-", part->fence);
    reading.from = from;
    reading.read_back = intake_read_back;
    for (int attempt = 0;; ++attempt) {
      absl::StatusOr<std::unique_ptr<bus::DurableReader>> reader = bus::DurableReader::Start(
          cluster_bus.get(), reading, [this, weak](uint64_t sequence, absl::string_view data) {
            if (std::shared_ptr<Partition> p = weak.lock()) Deliver(p, sequence, data);
          });
      common::MutexLock lock(&part->mu);
      if (reader.ok()) {
        if (part->lost) {
          // Let go meanwhile: stop it outside the lock its deliveries take.
          std::unique_ptr<bus::DurableReader> late = *std::move(reader);
          part->mu.Unlock();
          late.reset();
          part->mu.Lock();
          return;
        }
        part->reader = *std::move(reader);
        log->info("partition {}: reading {} from {} (PostgreSQL has it up to there)", part->id, subject,
                  checkpoint + 1);
        return;
      }
      if (attempt % 10 == 0) {
        log->warn("partition {}: cannot read {} yet: {}; retrying", part->id, subject, reader.status().message());
      }
      if (part->cv.WaitFor(&part->mu, absl::Seconds(1), [&part] {
            part->mu.AssertHeld();
            return part->lost;
          })) {
        return;
      }
    }
  }

  // The partition reader's thread: one message of an owned partition, for the io thread.
  void Deliver(const std::shared_ptr<Partition>& part, uint64_t sequence, absl::string_view data) {
    cluster::IntakeMessage m;
    if (!cluster::DecodeIntake(data, &m)) {
      undecodable_intake->Inc();
      return;  // the next message's checkpoint covers it
    }
    // The delivery thread owns the window. Messages up to the checkpoint (read back to fill
    // it) are PostgreSQL's already.
    if (!part->window.Offer(m)) {
      if (sequence > part->checkpoint) duplicate_intake->Inc();
      return;
    }
    if (sequence <= part->checkpoint) return;
    if (!part->past_checkpoint) {
      part->past_checkpoint = true;
      log->info("partition {}: processing from {} on", part->id, sequence);
    }
    {
      common::MutexLock lock(&part->mu);
      part->cv.Wait(&part->mu, [&part] {
        part->mu.AssertHeld();
        return part->lost || (part->in_flight < kPartitionWindow && !part->store->Full());
      });
      if (part->lost) return;
      ++part->in_flight;
    }
    Post([this, part, topic = std::string(m.topic), payload = std::string(m.payload), taken_at = m.taken_at,
          sequence] {
      bool lost = false;
      {
        common::MutexLock lock(&part->mu);
        lost = part->lost;
      }
      // A partition let go: its new owner reads this message again from the checkpoint.
      if (!lost) Process(topic, payload, taken_at, sequence, part->store.get());
      common::MutexLock lock(&part->mu);
      --part->in_flight;
      part->cv.NotifyAll();
    });
  }

  // Owner's thread: partition `id` is no longer ours. Stop reading, let the io thread finish
  // what it has, drop its devices, and commit what was processed, before the lease goes.
  void LosePartition(int id) {
    std::shared_ptr<Partition> part;
    {
      common::MutexLock lock(&partitions_mu);
      part = partitions[id];
    }
    if (!part) return;
    {
      common::MutexLock lock(&router_mu);
      if (router) router->Unserve(id);
    }
    std::unique_ptr<bus::DurableReader> reader;
    {
      common::MutexLock lock(&part->mu);
      part->lost = true;
      reader = std::move(part->reader);
    }
    part->cv.NotifyAll();
    reader.reset();  // no delivery runs once this returns
    std::promise<void> released;
    Post([this, id, &released] {
      core->Release([this, id](absl::string_view device) {
        return cluster::PartitionOf(device, options.partitions) == id;
      }, absl::Now(), "the device's partition moved to another ingest replica");
      released.set_value();
    });
    released.get_future().wait();
    {
      common::MutexLock lock(&part->mu);
      part->cv.Wait(&part->mu, [&part] {
        part->mu.AssertHeld();
        return part->in_flight == 0;
      });
    }
    // Only now: the records Release() made (failed commands) went to this writer, behind the
    // rows they complete.
    {
      common::MutexLock lock(&partitions_mu);
      partitions[id].reset();
    }
    part->store->Stop(absl::Seconds(5));
  }
  void Emit(v1::Event event, const std::vector<StreamRef>& streams) override {
    event_log->Append(std::move(event), streams, absl::Now());
  }

  void Post(std::function<void()> fn) { asio::post(io, std::move(fn)); }

  // Messages the last run took may come again: the broker resends, flagged DUP, what it had
  // not seen acknowledged when that run's connection closed (Paho sends acknowledgements
  // after the messages, and queues them when the socket is busy: at a stop under load,
  // hundreds to tens of thousands were measured). The spool's last messages carry their
  // packet ids; the MQTT client drops a redelivery whose packet id last came with the same
  // message. Runs before the client starts, and before the io thread (the spool's reader) does.
  void RememberTakenFromSpool() {
    constexpr uint64_t kRecent = 65536;  // one message per packet id
    const uint64_t next = spool->next_seq();
    uint64_t from = std::max(spool->first_seq(), next > kRecent ? next - kRecent : 1);
    std::vector<SpooledMessage> batch;
    uint64_t remembered = 0;
    while (from < next) {
      batch.clear();
      absl::StatusOr<uint64_t> read = spool->Read(from, 4096, &batch);
      if (!read.ok()) {
        log->warn("cannot read the spool's last messages ({}): redeliveries of them may be stored twice",
                  read.status().message());
        return;
      }
      for (const SpooledMessage& m : batch) {
        if (m.packet_id == 0) continue;
        mqtt->RememberTaken(m.packet_id, m.topic, m.payload);
        ++remembered;
      }
      if (*read <= from) break;
      from = *read;
    }
    if (remembered > 0) {
      log->info("spool: the last {} message(s) taken are remembered by packet id; the broker's redeliveries of "
                "them are dropped", remembered);
    }
  }

  // Paho thread: take the message. Paho has acknowledged it to the broker (or queued the
  // acknowledgement), so it must be kept: first in the spool, with its packet id (one
  // write(); a crash of ingest from here on loses nothing), then in memory for the io
  // thread, or, past max_pending_messages or while older messages wait on disk, on disk only.
  // Intake pauses when the spool is full (or, without a spool, when memory is); the broker
  // holds what follows, and only what was already on its way arrives after that.
  //
  // `session`: the MQTT session it came through, when that is a dead replica's this one
  // adopted (cluster::SessionAdopter); 0 for our own.
  void OnMessage(absl::string_view topic, absl::string_view payload, uint16_t packet_id, bool dup,
                 uint64_t session = 0) {
    const absl::Time now = absl::Now();
    bool pause = false;
    bool appended = false;
    absl::Status spool_error;
    {
      common::MutexLock lock(&intake_mu);
      uint64_t seq = 0;
      if (spool) {
        absl::StatusOr<uint64_t> r = spool->Append(topic, payload, now, packet_id, dup, session);
        if (r.ok()) {
          seq = *r;
          appended = true;
        } else {
          spool_error = r.status();
        }
      }
      if (seq != 0 && (on_disk || intake.size() >= options.max_pending_messages)) {
        if (!on_disk) {
          on_disk = true;
          disk_next = seq;
        }
      } else {
        intake.push_back({std::string(topic), std::string(payload), now, seq, session, packet_id, dup});
        intake_depth->Set(static_cast<int64_t>(intake.size()));
      }
      pause = (spool && spool->Full()) || intake.size() > options.max_pending_messages;
    }
    if (appended) spool->AfterAppend();
    if (!spool_error.ok() && spool_log.Allow(now)) {
      log->error("spool write failed, message kept in memory only (a crash would lose it): {}",
                 spool_error.message());
    }
    if (pause && !pause_requested.exchange(true)) {
      pushbacks->Inc();
      Post([this] {
        if (spool && spool->Full()) {
          log->warn("intake paused: the spool holds {:.2f} MiB, more than spool_max_mb ({:.2f} MiB); the broker "
                    "keeps what follows until PostgreSQL catches up",
                    static_cast<double>(spool->bytes()) / (1 << 20),
                    static_cast<double>(options.spool_max_bytes) / (1 << 20));
        } else {
          log->warn("intake paused: {} messages wait in memory (max_pending_messages); the broker keeps what follows",
                    options.max_pending_messages);
        }
        mqtt->Pause();
        if (adopter) adopter->Pause();
      });
    }
    ScheduleDrain();
  }

  void ScheduleDrain() {
    if (!drain_scheduled.exchange(true)) Post([this] { Drain(false); });
  }

  // Io thread: feed taken messages to the core, from memory, else from the spool on disk,
  // in spool order, unless the store is full (then the store's on_space schedules us again).
  // `all` ignores the store bound and takes all of memory, nothing from disk (shutdown: the
  // spool keeps the rest for the next start).
  void Drain(bool all) {
    drain_scheduled = false;
    if (!replay_ready) return;  // waiting for the checkpoint; OnReady schedules us
    // The store full, or the bus's queue: the messages wait in memory and the spool (their
    // on_space schedules us again).
    if (!all && ((store && store->Full()) || (bus && bus->Full()) || (forwarder && forwarder->Full()))) {
      drain_blocked = true;
      return;
    }
    drain_blocked = false;
    std::vector<Message> batch;
    size_t left = 0;
    bool from_disk = false;
    uint64_t from = 0;
    {
      common::MutexLock lock(&intake_mu);
      const size_t n = all ? intake.size() : std::min(intake.size(), kDrainBatch);
      batch.reserve(n);
      for (size_t i = 0; i < n; ++i) {
        batch.push_back(std::move(intake.front()));
        intake.pop_front();
      }
      left = intake.size();
      intake_depth->Set(static_cast<int64_t>(left));
      // Memory holds only messages older than those on disk: disk comes after it.
      if (batch.empty() && on_disk && !all) {
        from_disk = true;
        from = disk_next;
      }
    }
    for (Message& m : batch) Take(m);
    if (from_disk) {
      std::vector<SpooledMessage> read;
      absl::StatusOr<uint64_t> next = spool->Read(from, kDrainBatch, &read);
      if (!next.ok()) {
        if (spool_log.Allow(absl::Now())) log->error("cannot read the spool, retrying: {}", next.status().message());
        RetryDrainLater(absl::Seconds(1));
        return;
      }
      for (SpooledMessage& m : read) {
        Message taken{std::move(m.topic), std::move(m.payload), m.taken_at, m.seq, m.session, m.packet_id, m.dup};
        Take(taken);
      }
      replayed->Inc(read.size());
      common::MutexLock lock(&intake_mu);
      disk_next = *next;
      if (disk_next >= spool->next_seq()) on_disk = false;  // caught up: new messages go to memory again
      if (on_disk) left = 1;
    }
    ReportReplay();
    if (left > 0) ScheduleDrain();
    MaybeResume(left);
  }

  // Io thread: resumes paused intake once memory, the store and the spool have room again
  // (memory and spool below half their bounds: a broker's backlog refills them at once).
  void MaybeResume(size_t in_memory) {
    if (mqtt && mqtt->paused() && !stopping && in_memory <= options.max_pending_messages / 2 &&
        !(store && store->Full()) && !(spool && spool->bytes() > options.spool_max_bytes / 2)) {
      pause_requested = false;
      log->info("intake resumed");
      mqtt->Resume();
      if (adopter) adopter->Resume();
    }
  }

  void RetryDrainLater(absl::Duration after) {
    if (drain_scheduled.exchange(true)) return;
    drain_timer.expires_after(absl::ToChronoMicroseconds(after));
    drain_timer.async_wait([this](std::error_code ec) {
      if (!ec) Drain(false);
    });
  }

  // Writer thread: PostgreSQL answered and told us how far it has the spool.
  void OnStoreReady(uint64_t checkpoint) {
    Post([this, checkpoint] {
      if (spool) {
        common::MutexLock lock(&intake_mu);
        const uint64_t first = spool->first_seq();
        const uint64_t end = spool->next_seq();
        disk_next = std::max(checkpoint + 1, first);
        on_disk = disk_next < end;
        replay_end = on_disk ? end : 0;
        replay_started = absl::Now();
        if (on_disk) {
          log->info("replaying {} message(s) from the spool ({}..{}); PostgreSQL has everything up to {}",
                    end - disk_next, disk_next, end - 1, checkpoint);
        } else {
          log->info("spool: nothing to replay (PostgreSQL has everything up to {})", checkpoint);
        }
      }
      replay_ready = true;
      ScheduleDrain();
    });
  }

  // Io thread: progress of the start-up replay, every 5 s and at its end.
  void ReportReplay() {
    if (replay_end == 0) return;
    uint64_t at = 0;
    {
      common::MutexLock lock(&intake_mu);
      at = on_disk ? disk_next : replay_end;
    }
    const absl::Time now = absl::Now();
    if (at >= replay_end) {
      log->info("replay done in {}", absl::FormatDuration(absl::Trunc(now - replay_started, absl::Milliseconds(1))));
      replay_end = 0;
    } else if (now - last_replay_report >= absl::Seconds(5)) {
      last_replay_report = now;
      log->info("replaying the spool: at {} of {}", at, replay_end - 1);
    }
  }

  void ArmCommandTimer() {
    command_timer.expires_after(absl::ToChronoMilliseconds(kCommandTick));
    command_timer.async_wait([this](std::error_code ec) {
      if (ec) return;
      const absl::Time now = absl::Now();
      core->ExpireCommands(now);
      // Polls only go out while the broker connection is up: asked while it is down (or intake
      // paused), they would queue in Paho and reach the devices late, all at once.
      if (mqtt->connected()) core->RunPolls(now);
      commands_queued->Set(static_cast<int64_t>(core->commands().total()));
      ArmCommandTimer();
    });
  }

  // A whole pass over the streams: once a minute is often enough for a bound in hours.
  void ForgetIdleStreams(absl::Time now) {
    if (now - last_stream_sweep < absl::Minutes(1)) return;
    event_log->ForgetIdleStreams(now, options.forget_after);
    last_stream_sweep = now;
  }
  absl::Time last_stream_sweep = absl::Now();

  void ArmSweepTimer() {
    sweep_timer.expires_after(absl::ToChronoMilliseconds(options.sweep_interval));
    sweep_timer.async_wait([this](std::error_code ec) {
      if (ec) return;
      // While intake is paused or blocked, or messages wait on disk, silence says nothing
      // about the devices.
      bool backlog = !replay_ready;
      size_t in_memory = 0;
      {
        common::MutexLock lock(&intake_mu);
        backlog = backlog || on_disk;
        in_memory = intake.size();
      }
      const bool liveness = !(mqtt->paused() || drain_blocked || backlog);
      const absl::Time now = absl::Now();
      core->Tick(now, liveness);
      ForgetIdleStreams(now);
      MaybeResume(in_memory);  // a backstop: commits that free the spool also schedule a drain
      devices_online->Set(static_cast<int64_t>(core->devices().online_count()));
      devices_known->Set(static_cast<int64_t>(core->devices().size()));
      ArmSweepTimer();
    });
  }

  httpd::Response Http(const httpd::Request& request) {
    if (request.path == "/metrics") {
      return {200, "text/plain; version=0.0.4; charset=utf-8", metrics.Render()};
    }
    if (request.path == "/healthz") {
      const bool mqtt_up = mqtt->connected();
      // CONTRACT §10.3: records waiting with none committed for 10 s is a failure too, even
      // while the database answers.
      const bool failing = store != nullptr && store->writes_failing(absl::Now());
      const bool db_up = store == nullptr || (store->healthy() && !failing);
      std::string body = absl::StrCat(mqtt_up && db_up ? "ok" : "unavailable", "\nmqtt: ",
                                      mqtt_up ? "up" : (mqtt->paused() ? "paused" : "down"), "\npostgresql: ",
                                      store == nullptr ? "disabled"
                                      : failing        ? "writes failing"
                                      : db_up          ? "up"
                                                       : "down",
                                      "\n");
      return {mqtt_up && db_up ? 200 : 503, "text/plain; charset=utf-8", body};
    }
    return {404, "text/plain; charset=utf-8", "not found: try /healthz or /metrics\n"};
  }

  IngestOptions options;
  std::shared_ptr<spdlog::logger> log;
  common::MetricsRegistry metrics;
  std::shared_ptr<const regmap::RegisterMap> map;  // the one at start; the core holds the one in force
  common::Counter* reloads_ok = nullptr;
  common::Counter* reloads_failed = nullptr;
  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> work{io.get_executor()};
  asio::steady_timer command_timer{io};
  asio::steady_timer sweep_timer{io};
  asio::steady_timer drain_timer{io};
  std::unique_ptr<EventLog> event_log;
  std::unique_ptr<EventPublisher> bus;  // with --bus
  std::unique_ptr<Spool> spool;
  std::unique_ptr<ingest::Store> store;
  std::unique_ptr<IngestCore> core;
  // With --partitions: the bus connection of the intake and the leases, the forwarder, the
  // partitions this replica owns (by id; null when not), and who decides which.
  std::unique_ptr<bus::Connection> cluster_bus;
  std::unique_ptr<cluster::IntakeForwarder> forwarder;
  common::Mutex partitions_mu;
  std::vector<std::shared_ptr<Partition>> partitions ABSL_GUARDED_BY(partitions_mu);
  std::unique_ptr<cluster::PartitionOwner> owner;
  std::unique_ptr<cluster::SessionAdopter> adopter;  // dead replicas' MQTT sessions
  uint64_t own_session = 0;                          // IntakeSource(our MQTT client id)
  std::atomic<cluster::PartitionOwner*> owner_now{nullptr};  // for gRPC threads: null before start and at stop
  common::Mutex router_mu;  // Dispatch's threads, the owner's, and Shutdown
  std::unique_ptr<cluster::CommandRouter> router ABSL_GUARDED_BY(router_mu);
  std::unique_ptr<cluster::DeviceDirectory> directory;
  common::Counter* undecodable_intake = nullptr;
  common::Counter* duplicate_intake = nullptr;
  common::Counter* intake_read_back = nullptr;

  // A gRPC thread: in a cluster, a command for a device another replica owns goes there.
  bool ForwardCommand(const v1::Command& command, const IngestService::CommandDone& done) {
    cluster::PartitionOwner* owns = owner_now.load();
    if (owns != nullptr && owns->Owns(cluster::PartitionOf(command.device_id(), options.partitions))) return false;
    const absl::Duration timeout = command.timeout_ms() > 0
                                       ? std::min(absl::Milliseconds(command.timeout_ms()), absl::Seconds(60))
                                       : options.command_timeout;
    common::MutexLock lock(&router_mu);
    if (!router) {
      v1::CommandResult result;
      result.set_request_id(command.request_id());
      result.set_device_id(command.device_id());
      result.set_code(common::kCodeUnavailable);
      result.set_msg("ingest is shutting down");
      done(std::move(result));
      return true;
    }
    // The owner answers within the command's timeout; the margin covers the bus's trips.
    router->Forward(command, timeout + absl::Seconds(5), done);
    return true;
  }

  common::Mutex intake_mu;
  std::deque<Message> intake ABSL_GUARDED_BY(intake_mu);  // taken on Paho's thread, drained on the io thread
  bool on_disk ABSL_GUARDED_BY(intake_mu) = false;  // messages from disk_next on are on disk only
  uint64_t disk_next ABSL_GUARDED_BY(intake_mu) = 0;
  bool replay_ready = true;      // false until PostgreSQL told us the checkpoint (with a spool)
  uint64_t replay_end = 0;       // the start-up replay runs up to here; 0: done
  absl::Time replay_started;
  absl::Time last_replay_report = absl::InfinitePast();
  common::LogLimiter spool_log{absl::Seconds(10)};
  std::atomic<bool> drain_scheduled{false};
  std::atomic<bool> pause_requested{false};
  bool drain_blocked = false;
  bool in_message = false;                    // Process() is running the core on a message
  std::vector<StoreRecord> message_records;  // what that message stored, so far
  bool stopping = false;
  std::unique_ptr<mqtt::Client> mqtt;

  std::unique_ptr<IngestService> service;
  std::unique_ptr<grpc::Server> grpc_server;
  int grpc_port = 0;
  std::unique_ptr<httpd::HttpServer> http;
  std::thread io_thread;
  bool shut_down = false;

  common::Counter* pushbacks = nullptr;
  common::Counter* replayed = nullptr;
  common::Gauge* intake_depth = nullptr;
  common::Histogram* intake_ms = nullptr;
  common::Gauge* commands_queued = nullptr;
  common::Gauge* devices_online = nullptr;
  common::Gauge* devices_known = nullptr;
};

absl::StatusOr<std::unique_ptr<App>> App::Create(IngestOptions options) {
  auto impl = std::make_unique<Impl>(std::move(options));
  Impl& s = *impl;
  const IngestOptions& o = s.options;

  if (o.register_map == nullptr) return absl::InvalidArgumentError("no register map");
  s.map = o.register_map;

  s.pushbacks = &s.metrics.AddCounter("devbridge_ingest_pushbacks_total",
                                      "Times intake paused because it was full (the broker kept what followed).");
  s.replayed = &s.metrics.AddCounter("devbridge_ingest_spool_read_total",
                                     "Messages processed from the spool on disk (replay after a start, backlog).");
  s.intake_depth = &s.metrics.AddGauge("devbridge_ingest_intake_depth", "Messages taken but not yet processed.");
  s.intake_ms = &s.metrics.AddHistogram(
      "devbridge_ingest_intake_latency_ms",
      "MQTT message taken (Paho's callback) to processed: decoded and its event emitted, ms (replays from the "
      "spool after a restart count from when they were first taken).",
      common::LatencyBucketsMs());
  s.commands_queued = &s.metrics.AddGauge("devbridge_ingest_commands_pending", "Commands waiting or in flight.");
  s.devices_online = &s.metrics.AddGauge("devbridge_ingest_devices_online", "Devices online.");
  s.devices_known = &s.metrics.AddGauge("devbridge_ingest_devices_known", "Devices seen since start.");
  s.metrics.AddGaugeFn("devbridge_ingest_mqtt_up", "1 while connected to the broker.", {},
                       [&s] { return s.mqtt && s.mqtt->connected() ? 1.0 : 0.0; });
  s.metrics.AddGaugeFn("devbridge_ingest_mqtt_duplicates_dropped", "QoS 1 redeliveries of messages already taken.",
                       {}, [&s] { return s.mqtt ? static_cast<double>(s.mqtt->duplicates_dropped()) : 0.0; });
  s.metrics.AddGaugeFn("devbridge_ingest_mqtt_connects", "Connections made to the broker since start.", {},
                       [&s] { return s.mqtt ? static_cast<double>(s.mqtt->connects()) : 0.0; });
  s.metrics.AddGaugeFn("devbridge_ingest_mqtt_dup_flagged", "Messages that arrived flagged DUP (redeliveries), dropped or not.",
                       {}, [&s] { return s.mqtt ? static_cast<double>(s.mqtt->dup_flagged()) : 0.0; });

  const std::string epoch = common::RandomToken(12);
  s.event_log = std::make_unique<EventLog>(epoch, o.replay_buffer, o.replay_buffer_bytes);
  s.log->info("event stream epoch {} (replay buffer {} events)", epoch, o.replay_buffer);
  if (!o.bus.urls.empty()) {
    BusOptions bus = o.bus;
    bus.node_id = absl::StrCat(o.mqtt_client_id, "/", epoch);
    absl::StatusOr<std::unique_ptr<EventPublisher>> publisher = EventPublisher::Start(std::move(bus), &s.metrics);
    if (!publisher.ok()) return common::Annotate(publisher.status(), "--bus");
    s.bus = *std::move(publisher);
    // Everything the log takes goes to the bus too: device events, Push API operations, membership.
    s.event_log->OnAppend([bus = s.bus.get()](const v1::Event& event, const std::shared_ptr<const std::string>& encoded,
                                              const std::vector<StreamRef>& streams) {
      bus->Publish(encoded, streams, events::HasEffectsPart(event));
    });
    s.bus->SetOnSpace([&s] { s.ScheduleDrain(); });
  }

  const bool cluster = o.partitions > 0;
  if (cluster) {
    if (o.bus.urls.empty() || o.pg_dsn == "none" || o.spool_dir == "none") {
      return absl::InvalidArgumentError(
          "--partitions needs --bus, PostgreSQL (pg_dsn) and the spool (spool_dir): the partitions' owners keep "
          "their places in PostgreSQL and each replica forwards from its spool");
    }
    if (s.options.shared_group.empty()) s.options.shared_group = "devbridge-ingest";
    s.own_session = cluster::IntakeSource(o.mqtt_client_id);
    bus::ConnectionOptions connect;
    connect.urls = o.bus.urls;
    connect.name = absl::StrCat("devbridge-ingest ", o.mqtt_client_id, " intake");
    ASSIGN_OR_RETURN(s.cluster_bus, bus::Connection::Connect(connect));
    s.undecodable_intake = &s.metrics.AddCounter("devbridge_ingest_intake_undecodable_total",
                                                 "Messages on the intake stream that were not ingest's (skipped).");
    s.intake_read_back = &s.metrics.AddCounter(
        "devbridge_ingest_intake_read_back_total",
        "Intake messages read from the stream itself because their partition's consumer did not deliver them "
        "(lost in flight with a bus server).");
    s.duplicate_intake = &s.metrics.AddCounter(
        "devbridge_ingest_intake_duplicates_total",
        "Copies of a message found on the intake stream and dropped (the bus stored it twice, or the broker "
        "handed it to two replicas: a dead one and the survivor that adopted its session).");
    absl::StatusOr<std::unique_ptr<cluster::CommandRouter>> router = cluster::CommandRouter::Start(
        s.cluster_bus.get(), o.partitions, o.lease_ttl, o.bus.replicas,
        [&s](v1::Command command, cluster::CommandRouter::Done done) { s.service->Run(std::move(command), std::move(done)); },
        &s.metrics);
    if (!router.ok()) return router.status();
    common::MutexLock lock(&s.router_mu);
    s.router = *std::move(router);
  }

  if (o.pg_dsn == "none") {
    s.log->warn("pg_dsn=none: running WITHOUT persistence; nothing is written to PostgreSQL (and no spool)");
  } else {
    if (o.spool_dir == "none") {
      s.log->warn("spool_dir=none: no spool; a crash loses what was taken from the broker and not yet committed");
    } else {
      SpoolOptions po;
      po.dir = o.spool_dir;
      po.max_bytes = o.spool_max_bytes;
      po.sync_interval = o.spool_sync;
      ASSIGN_OR_RETURN(s.spool, Spool::Open(po, &s.metrics));
      // Until PostgreSQL says how far it has the spool, messages wait on disk.
      common::MutexLock lock(&s.intake_mu);
      s.on_disk = true;
      s.replay_ready = false;
    }
    StoreOptions so;
    so.dsn = o.pg_dsn;
    so.max_queue_bytes = o.db_queue_bytes;
    // In a cluster the spool's messages are done once forwarded (the forwarder keeps that
    // place), and commands left open belong to whichever replica owned their device.
    so.spool_id = s.spool && !cluster ? s.spool->id() : "";
    so.started = cluster ? absl::InfinitePast() : absl::Now();
    s.store = Store::Start(
        so, &s.metrics,
        [&s, cluster](uint64_t checkpoint) {
          if (!cluster) s.OnStoreReady(checkpoint);
        },
        [&s](uint64_t checkpoint) {
          if (!s.spool) return;
          s.spool->Committed(checkpoint);
          // Deleting segments may have made room: the drain resumes intake if it was paused.
          if (s.pause_requested.load() && s.spool->bytes() <= s.options.spool_max_bytes / 2) s.ScheduleDrain();
        });
    s.store->SetOnSpace([&s] { s.ScheduleDrain(); });
  }
  if (cluster) {
    cluster::ForwarderOptions fo;
    fo.partitions = o.partitions;
    fo.spool_id = s.spool->id();
    fo.mark_path = o.spool_dir + "/forwarded";
    fo.replicas = o.bus.replicas;
    fo.max_age = o.bus.max_age;
    ASSIGN_OR_RETURN(s.forwarder,
                     cluster::IntakeForwarder::Start(
                         s.cluster_bus.get(), fo,
                         [&s](uint64_t seq) {
                           s.spool->Committed(seq);
                           if (s.pause_requested.load() && s.spool->bytes() <= s.options.spool_max_bytes / 2) {
                             s.ScheduleDrain();
                           }
                         },
                         &s.metrics));
    s.forwarder->SetOnSpace([&s] { s.ScheduleDrain(); });
    // The spool replays from where the forwarder got to.
    s.OnStoreReady(cluster::IntakeForwarder::ReadMark(fo.mark_path));
    common::MutexLock lock(&s.partitions_mu);
    s.partitions.resize(o.partitions);
  }

  CoreOptions co;
  co.topic_prefix = o.topic_prefix;
  co.fleet_system = o.fleet_system;
  co.heartbeat_timeout = o.heartbeat_timeout;
  co.command_timeout = o.command_timeout;
  co.command_queue_depth = o.command_queue_depth;
  co.forget_after = o.forget_after;
  co.poll_failures = o.poll_failures;
  co.poll_backoff_max = o.poll_backoff_max;
  s.core = std::make_unique<IngestCore>(co, s.map, &s, &s.metrics);
  const char* reloads = "devbridge_ingest_register_map_reloads_total";
  const char* reloads_help = "Register map reloads (SIGHUP), by result; a failed one leaves the old map in force.";
  s.reloads_ok = &s.metrics.AddCounter(reloads, reloads_help, {{"result", "ok"}});
  s.reloads_failed = &s.metrics.AddCounter(reloads, reloads_help, {{"result", "error"}});

  // gRPC first, so a failure to listen stops us before we take any message.
  s.service = std::make_unique<IngestService>([&s](std::function<void()> fn) { s.Post(std::move(fn)); },
                                              s.core.get(), s.event_log.get(), s.store.get(), &s.metrics,
                                              o.security.internal_token);
  if (cluster) {
    s.service->SetForward([&s](const v1::Command& command, const IngestService::CommandDone& done) {
      return s.ForwardCommand(command, done);
    });
    auto held = [&s, partitions = o.partitions] {
      std::vector<int> mine;
      cluster::PartitionOwner* owner = s.owner_now.load();
      for (int p = 0; owner != nullptr && p < partitions; ++p) {
        if (owner->Owns(p)) mine.push_back(p);
      }
      return mine;
    };
    auto local = [&s](const v1::ListDevicesRequest& request, cluster::DeviceDirectory::Page done) {
      s.service->LocalDevices(request, std::move(done));
    };
    ASSIGN_OR_RETURN(s.directory, cluster::DeviceDirectory::Start(s.cluster_bus.get(), o.partitions, held, local));
    s.service->SetListDevices([&s](const std::string& after, uint32_t limit, IngestService::Listed done) {
      s.directory->List(after, limit, absl::Seconds(2), std::move(done));
    });
  }
  ASSIGN_OR_RETURN(std::shared_ptr<grpc::ServerCredentials> credentials, grpcutil::ServerCredentials(o.security));
  if (o.security.internal_token.empty()) {
    s.log->warn("internal_token is empty: gRPC callers are NOT authenticated (set it, and grpc_tls_*, on an "
                "untrusted network)");
  }
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(o.grpc_listen, credentials, &s.grpc_port);
  builder.RegisterService(s.service.get());
  s.grpc_server = builder.BuildAndStart();
  if (!s.grpc_server || s.grpc_port == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen for gRPC on ", o.grpc_listen));
  }
  httpd::ServerOptions http_options;
  http_options.max_connections = o.max_http_connections;
  auto http = httpd::HttpServer::Start(s.io, o.http_listen, [&s](const httpd::Request& r) { return s.Http(r); },
                                       http_options);
  if (!http.ok()) return http.status();
  s.http = *std::move(http);

  mqtt::Options mo;
  mo.url = o.mqtt_url;
  mo.client_id = o.mqtt_client_id;
  mo.username = o.mqtt_username;
  mo.password = o.mqtt_password;
  mo.transport = o.mqtt_transport;
  mo.clean_session = false;  // the broker keeps our QoS 1 messages while we are away or paused
  mo.log_name = "ingest.mqtt";
  const std::string share = o.shared_group.empty() ? "" : absl::StrCat("$share/", o.shared_group, "/");
  mo.subscriptions = {{absl::StrCat(share, o.topic_prefix, "/+/heartbeat"), o.mqtt_qos},
                      {absl::StrCat(share, o.topic_prefix, "/+/data"), o.mqtt_qos}};
  auto client = mqtt::Client::Create(
      mo, [&s](absl::string_view topic, absl::string_view payload, uint16_t packet_id, bool dup) {
        s.OnMessage(topic, payload, packet_id, dup);
      });
  if (!client.ok()) return client.status();
  s.mqtt = *std::move(client);
  if (s.spool) s.RememberTakenFromSpool();

  s.ArmCommandTimer();
  s.ArmSweepTimer();
  s.io_thread = std::thread([&s] { s.io.run(); });
  if (cluster) {
    cluster::OwnerOptions oo;
    oo.partitions = o.partitions;
    oo.node_id = o.mqtt_client_id;
    oo.ttl = o.lease_ttl;
    oo.replicas = o.bus.replicas;
    s.owner = cluster::PartitionOwner::Start(
        s.cluster_bus.get(), oo, [&s](int p, uint64_t fence) { s.GainPartition(p, fence); }, [&s](int p) { s.LosePartition(p); },
        &s.metrics);
    s.owner_now = s.owner.get();
    // Before our own client connects: a survivor that adopted our session gives it back when
    // it sees our node lease (the owner's first round), and the broker closes its connection
    // when ours comes.
    cluster::AdopterOptions ao;
    ao.mqtt = mo;
    ao.ttl = o.lease_ttl;
    ao.replicas = o.bus.replicas;
    s.adopter = cluster::SessionAdopter::Start(
        s.cluster_bus.get(), std::move(ao),
        [&s](uint64_t session, absl::string_view topic, absl::string_view payload, uint16_t packet_id, bool dup) {
          s.OnMessage(topic, payload, packet_id, dup, session);
        },
        &s.metrics);
    s.log->info("cluster: {} partitions, leases of {}; MQTT shared as {}; forwarding to {}", o.partitions,
                absl::FormatDuration(o.lease_ttl), s.options.shared_group, cluster::kIntakeStream);
  }
  s.mqtt->Start();
  s.log->info("listening: gRPC {} (port {}), HTTP {} (port {}); MQTT {} as {}", o.grpc_listen, s.grpc_port,
              o.http_listen, s.http->port(), o.mqtt_url, o.mqtt_client_id);
  return std::unique_ptr<App>(new App(std::move(impl)));
}

App::App(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

App::~App() { Shutdown(); }

int App::grpc_port() const { return impl_->grpc_port; }

absl::Status App::ReloadRegisterMap(const std::string& path) {
  Impl& s = *impl_;
  absl::StatusOr<regmap::RegisterMap> loaded = regmap::RegisterMap::LoadFile(path);
  if (!loaded.ok()) {
    s.reloads_failed->Inc();
    s.log->error("register map not reloaded, the one in force stays: {}", loaded.status().message());
    return loaded.status();
  }
  auto map = std::make_shared<const regmap::RegisterMap>(*std::move(loaded));
  s.reloads_ok->Inc();
  s.log->info("register map reloaded from {}: {} profile(s); polling plans change now", path,
              map->profiles().size());
  s.Post([&s, map = std::move(map)]() mutable { s.core->SetRegisterMap(std::move(map), absl::Now()); });
  return absl::OkStatus();
}
int App::http_port() const { return impl_->http->port(); }

void App::Shutdown() {
  Impl& s = *impl_;
  if (s.shut_down) return;
  s.shut_down = true;
  const absl::Time deadline = absl::Now() + s.options.shutdown_timeout;
  s.log->info("shutting down: stopping intake");
  s.mqtt->Stop();
  s.adopter.reset();  // adopted sessions go back to the broker (their replicas' leases released)
  // On the io thread: process what was already taken into memory, then settle every command.
  std::promise<void> settled;
  s.Post([&s, &settled] {
    s.stopping = true;
    s.Drain(/*all=*/true);
    s.core->FailAll(absl::Now(), "ingest is shutting down");
    settled.set_value();
  });
  settled.get_future().wait();
  // In a cluster, what was taken goes to the bus (for at most 5 s).
  std::promise<std::unique_ptr<cluster::IntakeForwarder>> forwarder;
  s.Post([&s, &forwarder] { forwarder.set_value(std::move(s.forwarder)); });
  forwarder.get_future().get().reset();

  if (s.store) {
    // Leave 3 s of the budget for the servers; whatever PostgreSQL has not taken by then is
    // still in the spool (with one) and is written at the next start.
    const absl::Duration flush = std::clamp(deadline - absl::Now() - absl::Seconds(3), absl::Seconds(1),
                                            absl::Seconds(10));
    s.log->info("flushing {} record(s) to PostgreSQL (for at most {})", s.store->queued_records(),
                absl::FormatDuration(flush));
    s.store->Stop(flush);
  }
  if (s.spool) s.spool->Close();
  {
    // Forwarded commands still waiting for an answer fail with 503 (their calls must finish
    // for the server to stop), and later ones at once.
    std::unique_ptr<cluster::CommandRouter> router;
    {
      common::MutexLock lock(&s.router_mu);
      router = std::move(s.router);
    }
  }
  s.grpc_server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  // After the server (no call may still use them): every partition is let go, its writer
  // flushed and its lease released, so the others take over at once.
  s.owner_now = nullptr;
  s.owner.reset();
  s.directory.reset();
  std::promise<void> stopped;
  s.Post([&s, &stopped] {
    s.command_timer.cancel();
    s.sweep_timer.cancel();
    s.drain_timer.cancel();
    s.http->Stop();
    stopped.set_value();
  });
  stopped.get_future().wait();
  s.work.reset();
  s.io.stop();
  s.io_thread.join();
  s.cluster_bus.reset();
  if (s.bus) {
    // Events still queued for the bus get what is left of the budget (at least a second).
    s.bus->drain = std::clamp(deadline - absl::Now(), absl::Seconds(1), absl::Seconds(5));
    s.bus.reset();
  }
  s.log->info("stopped");
}

}  // namespace devbridge::ingest
