#include "bus/subject_reader.h"

#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"

namespace devbridge::bus {

absl::StatusOr<std::unique_ptr<SubjectReader>> SubjectReader::Start(const Connection* connection,
                                                                    const std::string& stream,
                                                                    const std::string& subject, uint64_t from,
                                                                    OnMessage on_message, ReaderTracking tracking) {
  std::unique_ptr<SubjectReader> reader(
      new SubjectReader(connection, stream, subject, std::move(on_message), tracking));
  reader->state_->last_sequence = from > 0 ? from - 1 : 0;
  reader->state_->last_delivery_ms = absl::ToUnixMillis(absl::Now());
  jsSubOptions options;
  jsSubOptions_Init(&options);
  options.Stream = stream.c_str();
  options.Ordered = true;
  if (from > 0) {
    options.Config.DeliverPolicy = js_DeliverByStartSequence;
    options.Config.OptStartSeq = from;
  } else {
    options.Config.DeliverPolicy = js_DeliverNew;
  }
  auto* holder = new std::shared_ptr<State>(reader->state_);  // Completed deletes it
  jsErrCode code = static_cast<jsErrCode>(0);
  natsStatus s = js_Subscribe(&reader->sub_, connection->js(), subject.c_str(), &SubjectReader::Deliver, holder,
                              nullptr, &options, &code);
  if (s == NATS_OK) s = natsSubscription_SetOnCompleteCB(reader->sub_, &SubjectReader::Completed, holder);
  if (s != NATS_OK) {
    {
      common::MutexLock lock(&reader->state_->mu);
      reader->state_->stopped = true;  // nothing of this subscription is handed over
    }
    if (reader->sub_ != nullptr) {
      natsSubscription_Unsubscribe(reader->sub_);
      natsSubscription_Destroy(reader->sub_);
      reader->sub_ = nullptr;
    } else {
      delete holder;  // no subscription: the client never calls Completed
    }
    return FromNats(s, absl::StrCat("reading ", subject, " of ", stream), code);
  }
  return reader;
}

void SubjectReader::Stop() {
  if (sub_ == nullptr) return;
  // Nothing is handed over once this is set (a message being handed over finishes first), so
  // last_sequence() is final even if the client is slow to say it is done.
  {
    common::MutexLock lock(&state_->mu);
    state_->stopped = true;
  }
  // Destroy unsubscribes without asking the servers to delete the consumer (Unsubscribe
  // would, and wait up to the request timeout for the answer: 5 s per reader on a troubled
  // bus, on the thread that heals push's other readers); the servers drop an ordered
  // consumer nobody reads by themselves. Nor is there any need to wait for the client's
  // Completed (that once took the full 10 s it was given): the flag above already holds back
  // any late delivery, and the state lives until Completed frees the client's share of it.
  natsSubscription_Destroy(sub_);
  sub_ = nullptr;
}

absl::StatusOr<size_t> SubjectReader::ReadOn(size_t max) {
  size_t handed = 0;
  while (stopped() && handed < max) {
    absl::StatusOr<std::optional<StoredMessage>> next =
        ReadNext(*state_->connection, state_->stream, state_->subject, state_->last_sequence.load() + 1);
    if (!next.ok()) return handed > 0 ? absl::StatusOr<size_t>(handed) : next.status();
    if (!*next) break;
    HandOver(*state_, Position{(*next)->sequence, OffsetInHeaderBlock((*next)->headers).value_or(0)},
             (*next)->subject, (*next)->data);
    ++handed;
  }
  return handed;
}

void SubjectReader::HandOver(State& state, Position position, absl::string_view subject, absl::string_view data) {
  const uint64_t last_offset = state.last_offset.load();
  if (state.literal && position.offset > last_offset + 1 && last_offset > 0) {
    if (state.tracking.gaps != nullptr) state.tracking.gaps->Inc();
    // Rare, and what it takes to find out what the servers did.
    static const auto log = common::Logger("bus.reader");
    log->warn("{}: offset {} (sequence {}) came after {} (sequence {}): {} missing from the stream", state.subject,
              position.offset, position.sequence, last_offset, state.last_sequence.load(),
              position.offset - last_offset - 1);
  }
  state.on_message(position, subject, data);
  if (position.sequence > 0) state.last_sequence = position.sequence;
  if (position.offset > 0) state.last_offset = position.offset;
  state.last_delivery_ms = absl::ToUnixMillis(absl::Now());
}

void SubjectReader::Deliver(natsConnection*, natsSubscription*, natsMsg* msg, void* closure) {
  State& state = **static_cast<std::shared_ptr<State>*>(closure);
  Position position;
  jsMsgMetaData* meta = nullptr;
  if (natsMsg_GetMetaData(&meta, msg) == NATS_OK) {
    position.sequence = meta->Sequence.Stream;
    jsMsgMetaData_Destroy(meta);
  }
  const char* offset = nullptr;
  if (natsMsgHeader_Get(msg, kOffsetHeader, &offset) == NATS_OK && offset != nullptr) {
    if (!absl::SimpleAtoi(offset, &position.offset)) position.offset = 0;
  }
  {
    common::MutexLock lock(&state.mu);
    // Stopped: the reader's owner reads on from last_sequence by other means.
    if (!state.stopped) {
      if (position.sequence > 0 && position.sequence <= state.last_sequence.load()) {
        if (state.tracking.repeated != nullptr) state.tracking.repeated->Inc();  // handed over before
      } else {
        HandOver(state, position, natsMsg_GetSubject(msg),
                 absl::string_view(natsMsg_GetData(msg), natsMsg_GetDataLength(msg)));
      }
    }
  }
  natsMsg_Destroy(msg);
}

void SubjectReader::Completed(void* closure) {
  delete static_cast<std::shared_ptr<State>*>(closure);
}

}  // namespace devbridge::bus
