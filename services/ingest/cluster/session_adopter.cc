#include "services/ingest/cluster/session_adopter.h"

#include <map>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "bus/leases.h"
#include "common/log.h"
#include "common/status.h"
#include "services/ingest/cluster/partitions.h"

namespace devbridge::ingest::cluster {
namespace {

// The session bucket: client ids recorded for good, one key per replica (its node lease name).
class SessionBook {
 public:
  static absl::StatusOr<std::unique_ptr<SessionBook>> Open(const bus::Connection* connection, int replicas) {
    absl::StatusOr<kvStore*> kv = bus::EnsureBucket(*connection, kSessionBucket, absl::ZeroDuration(), replicas);
    if (!kv.ok()) return kv.status();
    return std::make_unique<SessionBook>(connection, *kv);
  }
  SessionBook(const bus::Connection* connection, kvStore* kv) : connection_(connection), kv_(kv) {}
  ~SessionBook() { kvStore_Destroy(kv_); }

  absl::Status Record(const std::string& client_id) {
    uint64_t revision = 0;
    const natsStatus s = kvStore_PutString(&revision, kv_, NodeLease(client_id).c_str(), client_id.c_str());
    return s == NATS_OK ? absl::OkStatus() : bus::FromNats(s, "recording this replica's MQTT session");
  }

  // Every recorded client id.
  absl::StatusOr<std::vector<std::string>> ClientIds() {
    absl::StatusOr<std::vector<std::string>> keys = bus::BucketKeys(*connection_, kSessionBucket, "");
    if (!keys.ok()) return keys.status();
    std::vector<std::string> ids;
    natsStatus s = NATS_OK;
    for (size_t i = 0; i < keys->size() && s == NATS_OK; ++i) {
      kvEntry* entry = nullptr;
      s = kvStore_Get(&entry, kv_, (*keys)[i].c_str());
      if (s == NATS_OK) {
        ids.emplace_back(kvEntry_ValueString(entry));
        kvEntry_Destroy(entry);
      } else if (s == NATS_NOT_FOUND) {
        s = NATS_OK;  // deleted
      }
    }
    if (s != NATS_OK) return bus::FromNats(s, "reading the recorded MQTT sessions");
    return ids;
  }

 private:
  const bus::Connection* connection_;
  kvStore* kv_;
};

// The lease of the survivor that adopted `client_id`'s session: "adopt-" and the same
// suffix as its node lease.
std::string AdoptLease(const std::string& client_id) {
  return absl::StrCat(kAdoptLeasePrefix, NodeLease(client_id).substr(sizeof(kNodeLeasePrefix) - 1));
}

}  // namespace

std::unique_ptr<SessionAdopter> SessionAdopter::Start(const bus::Connection* connection, AdopterOptions options,
                                                      OnMessage on_message, common::MetricsRegistry* metrics) {
  std::unique_ptr<SessionAdopter> adopter(new SessionAdopter(connection, std::move(options), std::move(on_message)));
  adopter->adoptions_ = &metrics->AddCounter(
      "devbridge_ingest_sessions_adopted_total",
      "MQTT sessions of dead replicas this replica took over (their share of the fleet waited there).");
  adopter->adopted_gauge_ =
      &metrics->AddGauge("devbridge_ingest_sessions_adopted", "Dead replicas' MQTT sessions this replica holds now.");
  SessionAdopter* self = adopter.get();
  adopter->thread_ = std::thread([self] { self->Run(); });
  return adopter;
}

SessionAdopter::~SessionAdopter() {
  {
    common::MutexLock lock(&mu_);
    stopping_ = true;
  }
  cv_.NotifyAll();
  thread_.join();
}

void SessionAdopter::Pause() {
  common::MutexLock lock(&mu_);
  paused_ = true;
  for (auto& [id, client] : clients_) client->Pause();
}

void SessionAdopter::Resume() {
  common::MutexLock lock(&mu_);
  paused_ = false;
  for (auto& [id, client] : clients_) client->Resume();
}

int SessionAdopter::adopted() const {
  common::MutexLock lock(&mu_);
  return static_cast<int>(clients_.size());
}

std::unique_ptr<mqtt::Client> SessionAdopter::Connect(const std::string& client_id) {
  mqtt::Options o = options_.mqtt;
  o.client_id = client_id;
  o.clean_session = false;  // the session that holds the dead replica's messages
  o.reconnect = false;
  o.log_name = "ingest.adopted";
  const uint64_t session = IntakeSource(client_id);
  absl::StatusOr<std::unique_ptr<mqtt::Client>> client = mqtt::Client::Create(
      std::move(o), [this, session](absl::string_view topic, absl::string_view payload, uint16_t packet_id, bool dup) {
        on_message_(session, topic, payload, packet_id, dup);
      });
  if (!client.ok()) {
    common::Logger("ingest.cluster")->error("cannot adopt the MQTT session {}: {}", client_id, client.status().message());
    return nullptr;
  }
  common::MutexLock lock(&mu_);
  if (paused_) (*client)->Pause();
  (*client)->Start();
  return *std::move(client);
}

void SessionAdopter::Drop(const std::string& client_id, const char* why) {
  std::unique_ptr<mqtt::Client> client;
  {
    common::MutexLock lock(&mu_);
    auto it = clients_.find(client_id);
    if (it == clients_.end()) return;
    client = std::move(it->second);
    clients_.erase(it);
    adopted_gauge_->Set(static_cast<int64_t>(clients_.size()));
  }
  common::Logger("ingest.cluster")->info("MQTT session {}: let go ({})", client_id, why);
  client->Stop();  // outside the lock: its callbacks may be running
}

void SessionAdopter::Run() {
  auto log = common::Logger("ingest.cluster");
  const std::string& self = options_.mqtt.client_id;
  std::unique_ptr<bus::Leases> leases;
  std::unique_ptr<SessionBook> book;
  bool recorded = false;
  std::map<std::string, absl::Time> held_until;  // adopted client id → its lease's end
  int failures = 0;
  // Since when every request of the rounds was answered. A replica's node lease lapses while
  // the bus does not answer it, so right after an outage every lease looks dead: a session is
  // adopted only once the bus has answered for a whole ttl, time enough for a live replica to
  // renew its lease (else both replicas adopt each other's session and the broker bounces the
  // client ids between them).
  absl::Time answered_since = absl::Now();
  auto warn = [&](const absl::Status& status) {
    answered_since = absl::Now();
    if (failures++ % 10 == 0) log->warn("session adoption: {}; retrying", status.message());
  };
  while (true) {
    if (!leases) {
      absl::StatusOr<std::unique_ptr<bus::Leases>> opened =
          bus::Leases::Open(connection_, kLeaseBucket, options_.ttl, options_.replicas);
      if (opened.ok()) leases = *std::move(opened); else warn(opened.status());
    }
    if (!book) {
      absl::StatusOr<std::unique_ptr<SessionBook>> opened = SessionBook::Open(connection_, options_.replicas);
      if (opened.ok()) book = *std::move(opened); else warn(opened.status());
    }
    if (book && !recorded) {
      absl::Status s = book->Record(self);
      recorded = s.ok();
      if (!s.ok()) warn(s);
    }
    absl::StatusOr<std::vector<std::string>> sessions =
        book ? book->ClientIds() : absl::StatusOr<std::vector<std::string>>(absl::UnavailableError("no bucket"));
    absl::StatusOr<std::vector<std::string>> live =
        leases ? leases->Names(kNodeLeasePrefix)
               : absl::StatusOr<std::vector<std::string>>(absl::UnavailableError("no bucket"));
    if (sessions.ok() && live.ok()) {
      const absl::flat_hash_set<std::string> alive(live->begin(), live->end());
      for (const std::string& id : *sessions) {
        if (id == self) continue;
        const std::string adopt = AdoptLease(id);
        const bool adopted = held_until.count(id) > 0;
        if (alive.count(NodeLease(id)) > 0) {
          if (adopted) {
            Drop(id, "its replica is back");
            held_until.erase(id);
            (void)leases->Release(adopt, self);
          }
          continue;
        }
        bool lost = false;
        if (adopted) {
          common::MutexLock lock(&mu_);
          auto it = clients_.find(id);
          lost = it == clients_.end() || it->second->lost();
        }
        if (lost) {
          // Closed by the broker: another connection took the client id (its replica, back).
          // Given back now; the next round adopts it again if its replica is still dead.
          Drop(id, "the broker closed it");
          held_until.erase(id);
          (void)leases->Release(adopt, self);
          continue;
        }
        if (!adopted && absl::Now() - answered_since < options_.ttl) continue;
        const absl::Time sent = absl::Now();
        absl::StatusOr<bool> held = leases->Hold(adopt, self);
        if (!held.ok()) {
          answered_since = absl::Now();
          continue;  // let go below if this goes on past its lease
        }
        if (!*held) {
          if (adopted) {
            Drop(id, "another replica holds its lease");
            held_until.erase(id);
          }
          continue;
        }
        held_until[id] = leases->HeldUntil(sent);
        if (adopted) continue;
        log->warn("MQTT session {}: its replica holds no live lease; adopting it (what the broker kept for it "
                  "comes here)", id);
        std::unique_ptr<mqtt::Client> client = Connect(id);
        if (!client) {
          held_until.erase(id);
          (void)leases->Release(adopt, self);
          continue;
        }
        adoptions_->Inc();
        common::MutexLock lock(&mu_);
        clients_[id] = std::move(client);
        adopted_gauge_->Set(static_cast<int64_t>(clients_.size()));
      }
    } else {
      warn(!sessions.ok() ? sessions.status() : live.status());
    }
    // A lease not renewed in time is no longer ours, whether the bus answered or not.
    const absl::Time now = absl::Now();
    for (auto it = held_until.begin(); it != held_until.end();) {
      if (it->second > now) {
        ++it;
        continue;
      }
      Drop(it->first, "its lease was not renewed in time");
      it = held_until.erase(it);
    }
    bool stop = false;
    {
      common::MutexLock lock(&mu_);
      stop = cv_.WaitFor(&mu_, options_.ttl / 3, [this] {
        mu_.AssertHeld();
        return stopping_;
      });
    }
    if (stop) break;
  }
  for (auto& [id, until] : held_until) {
    Drop(id, "stopping");
    if (leases) (void)leases->Release(AdoptLease(id), self);
  }
}

}  // namespace devbridge::ingest::cluster
