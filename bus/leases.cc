#include "bus/leases.h"

#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace devbridge::bus {
namespace {

// Tries before Hold or Release gives up: each lost try means another write to the bucket
// came in between.
constexpr int kMaxAttempts = 16;

}  // namespace

absl::StatusOr<std::unique_ptr<Leases>> Leases::Open(const Connection* connection, const std::string& bucket,
                                                     absl::Duration ttl, int replicas) {
  absl::StatusOr<kvStore*> kv = EnsureBucket(*connection, bucket, ttl, replicas);
  if (!kv.ok()) return kv.status();
  return std::unique_ptr<Leases>(new Leases(connection, *kv, bucket, ttl));
}

Leases::~Leases() { kvStore_Destroy(kv_); }

absl::StatusOr<Leases::Entry> Leases::Read(const std::string& name) {
  // From the stream's leader (the message API), not a replica that may lag (direct get).
  natsMsg* msg = nullptr;
  jsErrCode code = static_cast<jsErrCode>(0);
  const std::string subject = Subject(name);
  natsStatus s = js_GetLastMsg(&msg, connection_->js(), stream_.c_str(), subject.c_str(), nullptr, &code);
  if (s == NATS_NOT_FOUND || code == JSNoMessageFoundErr) return Entry{};
  if (s != NATS_OK) return FromNats(s, absl::StrCat("reading lease ", name), code);
  const char* operation = nullptr;
  Entry entry;
  // A deleted or purged entry carries KV-Operation; a held one is a plain message.
  if (natsMsgHeader_Get(msg, "KV-Operation", &operation) != NATS_OK) {
    entry.holder.assign(natsMsg_GetData(msg), natsMsg_GetDataLength(msg));
  }
  natsMsg_Destroy(msg);
  return entry;
}

absl::StatusOr<bool> Leases::Write(const std::string& name, const std::string& holder, bool hold, Held* held) {
  for (int attempt = 0; attempt < kMaxAttempts; ++attempt) {
    // The bucket's end first, then the entry: an entry newer than that end makes the write
    // below fail and go round again, never pass on an old view.
    ASSIGN_OR_RETURN(const uint64_t last, LastSequence(*connection_, stream_));
    ASSIGN_OR_RETURN(const Entry current, Read(name));
    if (!current.holder.empty() && current.holder != holder) return false;
    if (!hold && current.holder.empty()) return true;  // nothing of ours to release
    natsMsg* msg = nullptr;
    const std::string subject = Subject(name);
    natsStatus s = natsMsg_Create(&msg, subject.c_str(), nullptr, hold ? holder.data() : nullptr,
                                  hold ? static_cast<int>(holder.size()) : 0);
    if (s == NATS_OK && !hold) s = natsMsgHeader_Set(msg, "KV-Operation", "DEL");
    if (s == NATS_OK) s = natsMsgHeader_Set(msg, "Nats-Expected-Last-Sequence", absl::StrCat(last).c_str());
    jsPubAck* ack = nullptr;
    jsErrCode code = static_cast<jsErrCode>(0);
    if (s == NATS_OK) s = js_PublishMsg(&ack, connection_->js(), msg, nullptr, &code);
    natsMsg_Destroy(msg);
    if (s == NATS_OK && held != nullptr) *held = Held{ack->Sequence, current.holder == holder};
    jsPubAck_Destroy(ack);
    if (s == NATS_OK) return true;
    if (code != JSStreamWrongLastSequenceErr) {
      return FromNats(s, absl::StrCat(hold ? "holding" : "releasing", " lease ", name), code);
    }
  }
  return absl::AbortedError(absl::StrCat("lease ", name, ": other writes to the bucket won ", kMaxAttempts,
                                         " times in a row"));
}

absl::StatusOr<bool> Leases::Hold(const std::string& name, const std::string& holder, Held* held) {
  return Write(name, holder, /*hold=*/true, held);
}

absl::Status Leases::Release(const std::string& name, const std::string& holder) {
  return Write(name, holder, /*hold=*/false, nullptr).status();
}

absl::StatusOr<std::string> Leases::Holder(const std::string& name) {
  ASSIGN_OR_RETURN(const Entry current, Read(name));
  return current.holder;
}

absl::StatusOr<std::vector<std::string>> Leases::Names(const std::string& prefix) {
  ASSIGN_OR_RETURN(const std::vector<std::string> keys, BucketKeys(*connection_, bucket_, prefix));
  // A key whose last entry is a deletion has nobody on it.
  std::vector<std::string> names;
  for (const std::string& name : keys) {
    ASSIGN_OR_RETURN(const Entry entry, Read(name));
    if (!entry.holder.empty()) names.push_back(name);
  }
  return names;
}

}  // namespace devbridge::bus
