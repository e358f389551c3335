#include "bus/subject_reader.h"

#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace devbridge::bus {

absl::StatusOr<std::unique_ptr<SubjectReader>> SubjectReader::Start(const Connection* connection,
                                                                    const std::string& stream,
                                                                    const std::string& subject, uint64_t from,
                                                                    OnMessage on_message) {
  std::unique_ptr<SubjectReader> reader(new SubjectReader(connection, stream, subject, std::move(on_message)));
  reader->last_sequence_ = from > 0 ? from - 1 : 0;
  reader->last_delivery_ms_ = absl::ToUnixMillis(absl::Now());
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
  jsErrCode code = static_cast<jsErrCode>(0);
  natsStatus s = js_Subscribe(&reader->sub_, connection->js(), subject.c_str(), &SubjectReader::Deliver,
                              reader.get(), nullptr, &options, &code);
  if (s == NATS_OK) s = natsSubscription_SetOnCompleteCB(reader->sub_, &SubjectReader::Completed, reader.get());
  if (s != NATS_OK) {
    if (reader->sub_ != nullptr) {
      natsSubscription_Unsubscribe(reader->sub_);
      natsSubscription_Destroy(reader->sub_);
      reader->sub_ = nullptr;
    }
    return FromNats(s, absl::StrCat("reading ", subject, " of ", stream), code);
  }
  return reader;
}

void SubjectReader::Stop() {
  if (sub_ == nullptr) return;
  // The client calls Completed after the last Deliver has returned: once unsubscribed, or
  // once the connection was closed (Connection::Close, then Unsubscribe fails at once).
  const bool unsubscribed = natsSubscription_Unsubscribe(sub_) == NATS_OK;
  completed_.WaitForNotificationWithTimeout(unsubscribed ? absl::Seconds(10) : absl::Seconds(2));
  natsSubscription_Destroy(sub_);
  sub_ = nullptr;
}

absl::StatusOr<size_t> SubjectReader::ReadOn(size_t max) {
  size_t handed = 0;
  while (stopped() && handed < max) {
    absl::StatusOr<std::optional<StoredMessage>> next =
        ReadNext(*connection_, stream_, subject_, last_sequence_.load() + 1);
    if (!next.ok()) return handed > 0 ? absl::StatusOr<size_t>(handed) : next.status();
    if (!*next) break;
    Position position{(*next)->sequence, OffsetInHeaderBlock((*next)->headers).value_or(0)};
    on_message_(position, (*next)->subject, (*next)->data);
    last_sequence_ = position.sequence;
    last_delivery_ms_ = absl::ToUnixMillis(absl::Now());
    ++handed;
  }
  return handed;
}

void SubjectReader::Deliver(natsConnection*, natsSubscription*, natsMsg* msg, void* closure) {
  auto* reader = static_cast<SubjectReader*>(closure);
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
  reader->on_message_(position, natsMsg_GetSubject(msg),
                      absl::string_view(natsMsg_GetData(msg), natsMsg_GetDataLength(msg)));
  natsMsg_Destroy(msg);
  if (position.sequence > 0) reader->last_sequence_ = position.sequence;
  reader->last_delivery_ms_ = absl::ToUnixMillis(absl::Now());
}

void SubjectReader::Completed(void* closure) { static_cast<SubjectReader*>(closure)->completed_.Notify(); }

}  // namespace devbridge::bus
