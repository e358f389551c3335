// A JetStream stream seen as one log per subject with contiguous offsets, whoever writes.
//
// Push's streams (a system, or a group of it) promise clients offsets that go up by exactly
// one per message and are the same on every replica (CONTRACT §5 recover). With several
// ingest replicas writing, nobody may hand out offsets alone, and JetStream's own sequence
// numbers are per stream, not per subject. So every message appended here carries the header
// `Devbridge-Offset`: its subject's previous offset + 1. It is published with
// `Nats-Expected-Last-Sequence` set to the stream's last sequence as the writer knows it, so
// JetStream stores it only if nobody appended to the stream in between; if somebody did, the
// writer reads the stream's end and the subject's newest message and tries again. JetStream
// (replicated; the leader alone orders a stream) is the one sequencer, and no writer trusts
// its cache beyond one compare-and-set.
//
// Why the whole stream and not the subject (`Nats-Expected-Last-Subject-Sequence`, which
// would let writers of different subjects pass each other): on a replicated stream the
// per-subject check is made by the leader against what it has applied, not what it has
// accepted, so two writers racing on one subject can both pass it (nats-server#4320, still
// reworked in 2.11, #6194). Measured on Debian's 2.9.10 with 3 replicas: 2 writers, 400
// appends, 14 offsets given twice. The stream-wide check counts what the leader accepted and
// holds. The price: writers of one stream take turns, and conflicts are not rare (every
// ingest replica writes the fleet's stream, and a stream's writers all race on its end).
//
// Taking turns fairly: a writer that lost the race re-reads what it forgot (the newest message
// of each subject of its batch, asked for at once) and tries again; one refused twice asks the
// others, on core NATS subject `devbridge.turn.<stream>`, to hold their next batch for 50 ms,
// and they do unless they are waiting for a turn themselves. Without it, a writer with a
// backlog (a replica that just took partitions over) kept the stream for 30 s while the other
// one's batches were refused every time (the cluster suite, 2026-12-03).
//
// A subject with no message held (new, or all expired) starts at the stream's last sequence
// + 1. An offset is never above its message's stream sequence (it starts at most there and
// both go up by one per message on the subject at least), so the new offsets are above any
// the subject had before, and an old recover position can never name a new message.
//
// One thread per OffsetLog (it caches the stream's end and each subject's newest message); any number of
// OffsetLogs, in any processes, may write the same subjects.
#ifndef DEVBRIDGE_BUS_OFFSET_LOG_H_
#define DEVBRIDGE_BUS_OFFSET_LOG_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/random/random.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "bus/connection.h"
#include "bus/subscription.h"

namespace devbridge::bus {

inline constexpr char kOffsetHeader[] = "Devbridge-Offset";
// The offset header of a message read through the API (StoredMessage::headers).
std::optional<uint64_t> OffsetInHeaderBlock(absl::string_view block);

// A message of the log: where JetStream keeps it and its offset on its subject.
struct Position {
  uint64_t sequence = 0;  // JetStream's stream sequence
  uint64_t offset = 0;    // the subject's offset
};

// Where a reader that has seen `offset` of a subject goes on (see OffsetLog::Locate).
struct Resume {
  enum Kind { kNext, kUpToDate, kGone } kind = kUpToDate;
  uint64_t sequence = 0;  // kNext: the stream sequence of offset + 1
};

class OffsetLog {
 public:
  // `stream` must exist (EnsureStream) and hold the subjects written here.
  OffsetLog(const Connection* connection, std::string stream);
  ~OffsetLog();
  OffsetLog(const OffsetLog&) = delete;
  OffsetLog& operator=(const OffsetLog&) = delete;

  // Builds the message for the offset it is given (`payload(offset)`; called again with a
  // higher one when another writer won the race) and appends it to `subject`. `id`, when not
  // empty, names the message for JetStream's duplicate window (two minutes by default): an
  // append repeated with the same id after a lost answer returns the position the first one
  // got instead of appending it twice.
  //
  // An id refused once (another writer won the race) is sent again under a new name,
  // "<id>~<n>": nats-server 2.10 records an id before it knows whether the message will be
  // stored, keeps it for the whole window when it is not, and answers any later message of
  // that name as a duplicate of sequence 0 (stored nowhere).
  using Payload = std::function<std::string(uint64_t offset)>;
  absl::StatusOr<Position> Append(const std::string& subject, const std::string& id,
                                  const Payload& payload);

  // Appends `entries` in this order, pipelined: every one is sent before the first answer is
  // awaited, so a batch costs about one round trip to the stream's leader instead of one per
  // message. Each message expects the one before it in the batch to be the stream's last
  // (`Nats-Expected-Last-Msg-Id`; the first expects the stream's last sequence), so when one
  // is refused every later one is too, none lands on a view another writer changed, and the
  // batch goes again from there. Every entry needs an id (see Append); it is what the next
  // entry expects.
  //
  // When answers do not come (DeadlineExceeded), call it again with the entries not stored:
  // they are sent again exactly as planned, so that a copy stored late (a new leader applying
  // what the old one had accepted, which nats-server 2.9 does without checking expectations
  // again) and the new one are the same message to JetStream's duplicate check, instead of
  // two with different offsets. An entry sent again whose answer is not "stored as planned"
  // (a duplicate of sequence 0, a refusal) is settled by reading the sequence planned for it:
  // the message there is it, or it is stored nowhere and never will be, or the stream has not
  // got that far yet and the answer is still awaited.
  struct Entry {
    std::string subject;
    std::string id;
    Payload payload;
  };
  // `positions` gets the positions of the entries stored, in order: all of them on OK, the
  // first ones on an error (drop those and call again with the rest).
  absl::Status AppendBatch(const std::vector<Entry>& entries, std::vector<Position>* positions);

  // The message at stream sequence `sequence`: its subject's offset and its data.
  struct Message {
    Position position;
    std::string subject;
    std::string data;
    std::string id;  // its Nats-Msg-Id; empty when it has none
  };
  absl::StatusOr<Message> Read(uint64_t sequence);

  // For a reader that has seen `offset` of `subject`: the position of offset + 1 (kNext), or
  // kUpToDate when `offset` is the newest, or kGone when offset + 1 is no longer held (expired)
  // or `offset` is above anything the subject had. O(log n) reads of the stream.
  absl::StatusOr<Resume> Locate(const std::string& subject, uint64_t offset);

  // The newest message of `subject`, or nullopt when it has none.
  absl::StatusOr<std::optional<Position>> Newest(const std::string& subject);

  // Appends that lost a race to another writer and were retried.
  uint64_t conflicts() const { return conflicts_; }

 private:
  // Sends entries[from..] pipelined, with offsets from what this writer knows; stores the
  // positions of those stored, in order, and returns how many were (the rest were refused or
  // not answered: see *why).
  absl::StatusOr<size_t> SendBatch(const std::vector<Entry>& entries, size_t from,
                                   std::vector<Position>* positions, absl::Status* why);
  // The newest message of each subject of entries[from..] not in newest_ (nullopt: none), all
  // asked for at once.
  absl::Status LookUpNewest(const std::vector<Entry>& entries, size_t from,
                            absl::flat_hash_map<std::string, std::optional<Position>>* found);
  // Another writer asks for a turn: hold the next batch for kYield (the client's thread).
  static void OnTurnRequest(natsConnection* nc, natsSubscription* sub, natsMsg* msg, void* closure);
  void AskForTurn();   // at most once per kYield
  void WaitOurTurn();  // while another writer has asked for a turn
  static constexpr absl::Duration kYield = absl::Milliseconds(50);
  // The name an entry's message goes under: its id, or a new one when that id was sent and
  // not stored (see Append).
  std::string NameFor(const std::string& id);
  // What became of a message sent again as planned (see AppendBatch).
  enum class Fate { kStored, kNotStored, kUnknown };
  absl::StatusOr<Fate> FateOf(const Position& planned, const std::string& name);
  // Reads the stream's last sequence and then `subject`'s newest message.
  absl::Status Reload(const std::string& subject, std::optional<Position>* newest);
  // The first message of `subject` at stream sequence `from` or later, or nullopt.
  absl::StatusOr<std::optional<Position>> NextOnSubject(const std::string& subject, uint64_t from);

  const Connection* connection_;
  std::string stream_;
  absl::flat_hash_map<std::string, Position> newest_;  // each subject's newest message, as last seen
  uint64_t last_sequence_ = 0;                         // the stream's, as last seen; 0: unknown
  uint64_t conflicts_ = 0;
  absl::BitGen bitgen_;  // the back-off after a lost race
  // The rest of a batch sent and not answered (a server lost, a leader changing): its ids,
  // the names they went under, the positions planned for them, and the stream's last
  // sequence before the first. The next AppendBatch that starts with these ids sends them
  // again as planned.
  struct Unsettled {
    std::vector<std::string> ids;
    std::vector<std::string> names;
    std::vector<Position> positions;
    uint64_t after = 0;
  };
  Unsettled unsettled_;
  // Ids sent and not stored (refused, or not answered): the next plan renames them. Entries
  // leave when stored; a caller that gives an entry up leaves its id here, so the set is
  // emptied when it grows past kMaxNotStored (a name then reused meets at worst a duplicate
  // of sequence 0, and is renamed on the next try).
  absl::flat_hash_set<std::string> not_stored_;
  static constexpr size_t kMaxNotStored = 1 << 16;
  uint64_t renames_ = 0;
  natsSubscription* replies_ = nullptr;  // AppendBatch's answers, on inbox_.*
  std::string inbox_;
  uint64_t batches_ = 0;  // tells one batch's answers from a late one of an earlier batch
  std::string turns_subject_;
  std::unique_ptr<Subscription> turns_;  // other writers' turn requests
  std::atomic<int64_t> yield_until_ms_{0};
  std::atomic<bool> contending_{false};  // this writer's batch was refused twice and waits
  absl::Time asked_at_ = absl::InfinitePast();
};

// A push stream's subject under `prefix`: "<prefix>.s.<system>" for a system's own stream,
// "<prefix>.g.<system>.<group>" for a group. Ids ([A-Za-z0-9_.:-], common/ids.h) become
// subject tokens with '.' written as "%2E" ('%' is not in an id, so this cannot collide).
std::string StreamSubject(absl::string_view prefix, absl::string_view system_id,
                          absl::string_view group_name);

}  // namespace devbridge::bus

#endif  // DEVBRIDGE_BUS_OFFSET_LOG_H_
