#include "bus/offset_log.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <utility>

#include "absl/random/distributions.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "common/status.h"

namespace devbridge::bus {

// `block` is "NATS/1.0\r\nKey: v\r\n…".
std::optional<uint64_t> OffsetInHeaderBlock(absl::string_view block) {
  for (absl::string_view line : absl::StrSplit(block, "\r\n")) {
    if (absl::ConsumePrefix(&line, kOffsetHeader) && absl::ConsumePrefix(&line, ":")) {
      uint64_t offset = 0;
      if (absl::SimpleAtoi(absl::StripAsciiWhitespace(line), &offset)) return offset;
    }
  }
  return std::nullopt;
}

namespace {

absl::StatusOr<uint64_t> OffsetOf(natsMsg* msg) {
  const char* value = nullptr;
  uint64_t offset = 0;
  if (natsMsgHeader_Get(msg, kOffsetHeader, &value) != NATS_OK || value == nullptr ||
      !absl::SimpleAtoi(value, &offset)) {
    return absl::DataLossError(absl::StrCat("message ", natsMsg_GetSequence(msg), " on ",
                                            natsMsg_GetSubject(msg), " has no ", kOffsetHeader));
  }
  return offset;
}

std::string Token(absl::string_view id) { return absl::StrReplaceAll(id, {{".", "%2E"}}); }

}  // namespace

std::string StreamSubject(absl::string_view prefix, absl::string_view system_id,
                          absl::string_view group_name) {
  if (group_name.empty()) return absl::StrCat(prefix, ".s.", Token(system_id));
  return absl::StrCat(prefix, ".g.", Token(system_id), ".", Token(group_name));
}

OffsetLog::OffsetLog(const Connection* connection, std::string stream)
    : connection_(connection), stream_(std::move(stream)) {}

OffsetLog::~OffsetLog() {
  turns_.reset();  // OnTurnRequest runs no more
  if (replies_ != nullptr) {
    natsSubscription_Unsubscribe(replies_);
    natsSubscription_Destroy(replies_);
  }
}

absl::Status OffsetLog::AppendBatch(const std::vector<Entry>& entries, std::vector<Position>* positions) {
  positions->clear();
  for (const Entry& entry : entries) {
    if (entry.id.empty()) return absl::InvalidArgumentError("AppendBatch: every entry needs an id");
  }
  if (replies_ == nullptr) {
    natsInbox* inbox = nullptr;
    natsStatus s = natsInbox_Create(&inbox);
    if (s == NATS_OK) {
      inbox_ = inbox;
      natsInbox_Destroy(inbox);
      s = natsConnection_SubscribeSync(&replies_, connection_->nc(), (inbox_ + ".>").c_str());
    }
    if (s == NATS_OK) s = natsSubscription_SetPendingLimits(replies_, -1, -1);
    if (s != NATS_OK) return FromNats(s, "subscribing to the append answers");
    turns_subject_ = absl::StrCat("devbridge.turn.", stream_);
    absl::StatusOr<std::unique_ptr<Subscription>> turns =
        Subscription::Start(connection_, turns_subject_, &OffsetLog::OnTurnRequest, this);
    if (!turns.ok()) return turns.status();
    turns_ = *std::move(turns);
  }
  if (not_stored_.size() > kMaxNotStored) not_stored_.clear();
  positions->reserve(entries.size());
  const absl::Time give_up = absl::Now() + connection_->timeout();
  size_t done = 0;
  struct Contending {  // for the turn requests of others, while this batch is refused
    std::atomic<bool>* flag;
    ~Contending() { *flag = false; }
  } contending{&contending_};
  for (int attempt = 0; done < entries.size(); ++attempt) {
    WaitOurTurn();
    absl::Status why;
    absl::StatusOr<size_t> stored = SendBatch(entries, done, positions, &why);
    if (!stored.ok()) {
      last_sequence_ = 0;
      return stored.status();
    }
    done += *stored;
    if (done == entries.size()) break;
    last_sequence_ = 0;  // refused or unanswered: read the stream again before going on
    if (!why.ok() && why.code() != absl::StatusCode::kFailedPrecondition) return why;
    ++conflicts_;
    // Refused twice: another writer keeps the stream. Ask it to wait a moment.
    if (attempt >= 1) {
      contending_ = true;
      AskForTurn();
    }
    if (absl::Now() > give_up) {
      return absl::AbortedError(absl::StrCat("appending a batch: other writers kept the stream busy for ",
                                             absl::FormatDuration(connection_->timeout()), " (", attempt + 1,
                                             " tries)"));
    }
    absl::SleepFor(absl::Microseconds(absl::Uniform(bitgen_, 0, 200 * std::min(attempt + 1, 10))));
  }
  return absl::OkStatus();
}

absl::StatusOr<size_t> OffsetLog::SendBatch(const std::vector<Entry>& entries, size_t from,
                                            std::vector<Position>* positions, absl::Status* why) {
  // A batch sent before and not all answered is sent again exactly as planned then, for as
  // many of its entries as come again: some of it may be stored already, or be stored late
  // (a new stream leader applies what the old one accepted), and what is the same twice is a
  // duplicate JetStream drops by its id, where a new plan could give an offset twice.
  size_t reuse = 0;
  while (reuse < unsettled_.ids.size() && from + reuse < entries.size() &&
         entries[from + reuse].id == unsettled_.ids[reuse]) {
    ++reuse;
  }
  if (reuse == 0) unsettled_ = {};
  std::optional<Position> previous;
  if (reuse == 0 && last_sequence_ == 0) RETURN_IF_ERROR(Reload(entries[from].subject, &previous));
  const uint64_t after = reuse > 0 ? unsettled_.after : last_sequence_;
  // The newest message of every subject of the batch this writer does not know, asked for at
  // once: one round trip for the batch, not one per subject (a writer that lost a race has
  // forgotten them all, and must be quick to get its turn).
  absl::flat_hash_map<std::string, std::optional<Position>> looked_up;
  RETURN_IF_ERROR(LookUpNewest(entries, from + reuse, &looked_up));
  // Offsets as if every message of the batch is stored: each one's subject goes on from what
  // this writer knows, then from the batch's own earlier messages.
  absl::flat_hash_map<std::string, Position> newest;  // the batch's view of each subject
  std::vector<Position> planned;
  std::vector<std::string> names;  // what each message is called (Nats-Msg-Id)
  uint64_t sequence = after;
  const std::string tag = absl::StrCat(inbox_, ".", ++batches_, ".");
  for (size_t i = from; i < entries.size(); ++i) {
    const Entry& entry = entries[i];
    Position position;
    if (i - from < reuse) {
      position = unsettled_.positions[i - from];
      names.push_back(unsettled_.names[i - from]);
      sequence = position.sequence;
    } else {
      std::optional<Position> before;
      if (auto it = newest.find(entry.subject); it != newest.end()) {
        before = it->second;
      } else if (auto known = newest_.find(entry.subject); known != newest_.end()) {
        before = known->second;
      } else {
        before = looked_up[entry.subject];
      }
      ++sequence;
      position = Position{sequence, before ? before->offset + 1 : sequence};
      names.push_back(NameFor(entry.id));
    }
    newest[entry.subject] = position;
    planned.push_back(position);
    const std::string body = entry.payload(position.offset);
    natsMsg* msg = nullptr;
    const std::string reply = absl::StrCat(tag, i);
    natsStatus s = natsMsg_Create(&msg, entry.subject.c_str(), reply.c_str(), body.data(),
                                  static_cast<int>(body.size()));
    if (s == NATS_OK) s = natsMsgHeader_Set(msg, kOffsetHeader, absl::StrCat(position.offset).c_str());
    if (s == NATS_OK) s = natsMsgHeader_Set(msg, "Nats-Msg-Id", names.back().c_str());
    if (s == NATS_OK) {
      s = i == from ? natsMsgHeader_Set(msg, "Nats-Expected-Last-Sequence", absl::StrCat(after).c_str())
                    : natsMsgHeader_Set(msg, "Nats-Expected-Last-Msg-Id", names[names.size() - 2].c_str());
    }
    if (s == NATS_OK) s = natsConnection_PublishMsg(connection_->nc(), msg);
    natsMsg_Destroy(msg);
    if (s != NATS_OK) return FromNats(s, absl::StrCat("appending to ", entry.subject));
  }
  // The answers, in any order; the batch counts up to the first message not stored.
  const size_t n = entries.size() - from;
  std::vector<std::optional<nlohmann::json>> answers(n);
  size_t answered = 0;
  absl::Time deadline = absl::Now() + connection_->timeout();
  while (answered < n) {
    const int64_t left = absl::ToInt64Milliseconds(deadline - absl::Now());
    natsMsg* msg = nullptr;
    natsStatus s = left > 0 ? natsSubscription_NextMsg(&msg, replies_, left) : NATS_TIMEOUT;
    if (s == NATS_TIMEOUT) break;
    if (s == NATS_NO_RESPONDERS) {
      // The stream has no leader now: a message that got this was not stored, but the client
      // does not say which. Wait a moment for the others and leave the rest unanswered.
      deadline = std::min(deadline, absl::Now() + absl::Milliseconds(200));
      continue;
    }
    if (s != NATS_OK) return FromNats(s, "reading the append answers");
    absl::string_view subject = natsMsg_GetSubject(msg);
    size_t index = 0;
    if (absl::ConsumePrefix(&subject, tag) && absl::SimpleAtoi(subject, &index) && index >= from &&
        index < entries.size() && !answers[index - from]) {
      answers[index - from] = nlohmann::json::parse(
          absl::string_view(natsMsg_GetData(msg), natsMsg_GetDataLength(msg)), nullptr, false);
      ++answered;
    }
    natsMsg_Destroy(msg);  // a late answer of an earlier batch, or this one's
  }
  // Stored or not, nobody knows yet: the next try sends entries[from + k..] again as planned.
  auto unsettle = [&](size_t k, std::string reason) {
    unsettled_.ids.clear();
    for (size_t i = from + k; i < entries.size(); ++i) unsettled_.ids.push_back(entries[i].id);
    unsettled_.names.assign(names.begin() + static_cast<std::ptrdiff_t>(k), names.end());
    unsettled_.positions.assign(planned.begin() + static_cast<std::ptrdiff_t>(k), planned.end());
    unsettled_.after = k > 0 ? planned[k - 1].sequence : after;
    *why = absl::DeadlineExceededError(absl::StrCat("appending to ", entries[from + k].subject, ": ", reason));
  };
  size_t stored = 0;
  bool settled = true;
  for (; stored < n; ++stored) {
    const std::optional<nlohmann::json>& answer = answers[stored];
    const Entry& entry = entries[from + stored];
    const Position position = planned[stored];
    if (!answer) {
      unsettle(stored, absl::StrCat("no answer within ", absl::FormatDuration(connection_->timeout())));
      settled = false;
      break;
    }
    const bool is_error = !answer->is_object() || answer->contains("error");
    const bool duplicate = !is_error && answer->value("duplicate", false);
    const uint64_t at = is_error ? 0 : answer->value("seq", uint64_t{0});
    // An entry sent again whose answer is not "stored as planned": the planned sequence says.
    if (stored < reuse && (is_error || (duplicate && at == 0))) {
      ASSIGN_OR_RETURN(const Fate fate, FateOf(position, names[stored]));
      if (fate == Fate::kUnknown) {
        unsettle(stored, absl::StrCat("sent again, and the stream has not reached sequence ", position.sequence,
                                      " planned for it"));
        settled = false;
        break;
      }
      if (fate == Fate::kStored) {
        positions->push_back(position);
        newest_[entry.subject] = position;
        last_sequence_ = position.sequence;
        not_stored_.erase(entry.id);
        continue;
      }
      *why = absl::FailedPreconditionError(
          absl::StrCat("appending to ", entry.subject, ": sent again, and not stored where planned"));
      break;
    }
    if (is_error) {
      const nlohmann::json error = answer->is_object() ? answer->value("error", nlohmann::json::object())
                                                       : nlohmann::json::object();
      const int code = error.value("err_code", 0);
      // Refused because an earlier one was: the one that started it says why.
      if (code == JSStreamWrongLastSequenceErr || code == JSStreamWrongLastMsgIDErr) {
        *why = absl::FailedPreconditionError(absl::StrCat("appending to ", entry.subject, ": ",
                                                          error.value("description", "refused")));
      } else {
        *why = absl::InternalError(absl::StrCat("appending to ", entry.subject, ": ",
                                                error.value("description", "refused"), " (JetStream error ", code, ")"));
      }
      break;
    }
    if (duplicate) {
      if (at == 0) {
        // nats-server 2.10: another message of this name was refused (or is on its way) within
        // the duplicate window. Not stored; the next plan renames it.
        *why = absl::FailedPreconditionError(
            absl::StrCat("appending to ", entry.subject, ": ", names[stored], " was used by a message not stored"));
        break;
      }
      // Stored by an earlier try. As planned now (a batch sent again as it was): go on.
      // Otherwise what follows was planned on a view that did not count it: plan it again.
      ASSIGN_OR_RETURN(Message first, Read(at));
      positions->push_back(first.position);
      not_stored_.erase(entry.id);
      if (first.position.sequence == position.sequence && first.position.offset == position.offset) {
        newest_[entry.subject] = position;
        last_sequence_ = position.sequence;
        continue;
      }
      ++stored;
      *why = absl::FailedPreconditionError("a message of the batch was already stored");
      break;
    }
    if (at != position.sequence) {
      return absl::InternalError(
          absl::StrCat("appending to ", entry.subject, ": stored at ", at, ", planned for ", position.sequence));
    }
    positions->push_back(position);
    newest_[entry.subject] = position;
    last_sequence_ = position.sequence;
    not_stored_.erase(entry.id);
  }
  if (!settled) return stored;  // sent again under the same names: a duplicate if stored
  // Refused: a new plan of these goes under new names.
  for (size_t i = from + stored; i < entries.size(); ++i) not_stored_.insert(entries[i].id);
  unsettled_ = {};  // every answer came: settled, one way or the other
  return stored;
}

std::string OffsetLog::NameFor(const std::string& id) {
  if (!not_stored_.contains(id)) return id;
  return absl::StrCat(id, "~", ++renames_);
}

absl::StatusOr<OffsetLog::Fate> OffsetLog::FateOf(const Position& planned, const std::string& name) {
  absl::StatusOr<Message> there = Read(planned.sequence);
  if (absl::IsNotFound(there.status())) {
    // Nothing there: the stream has not got that far (the message may still be on its way),
    // or the one there is gone (expired), and was not ours, which was just sent.
    ASSIGN_OR_RETURN(const uint64_t last, LastSequence(*connection_, stream_));
    return last < planned.sequence ? Fate::kUnknown : Fate::kNotStored;
  }
  if (absl::IsDataLoss(there.status())) return Fate::kNotStored;  // no offset header: not ours
  if (!there.ok()) return there.status();
  // A message not stored where it was planned is stored nowhere: its expectation (the
  // sequence or the message before it) no longer holds, and never will again.
  return there->id == name ? Fate::kStored : Fate::kNotStored;
}

absl::Status OffsetLog::LookUpNewest(const std::vector<Entry>& entries, size_t from,
                                     absl::flat_hash_map<std::string, std::optional<Position>>* found) {
  std::vector<const std::string*> subjects;
  for (size_t i = from; i < entries.size(); ++i) {
    const std::string& subject = entries[i].subject;
    if (newest_.contains(subject) || found->contains(subject)) continue;
    found->emplace(subject, std::nullopt);
    subjects.push_back(&subject);
  }
  if (subjects.empty()) return absl::OkStatus();
  const std::string api = absl::StrCat("$JS.API.STREAM.MSG.GET.", stream_);
  const std::string tag = absl::StrCat(inbox_, ".", ++batches_, ".");
  for (size_t i = 0; i < subjects.size(); ++i) {
    const std::string request = nlohmann::json{{"last_by_subj", *subjects[i]}}.dump();
    const std::string reply = absl::StrCat(tag, i);
    natsStatus s = natsConnection_PublishRequest(connection_->nc(), api.c_str(), reply.c_str(), request.data(),
                                                 static_cast<int>(request.size()));
    if (s != NATS_OK) return FromNats(s, absl::StrCat("reading the newest message of ", *subjects[i]));
  }
  std::vector<bool> answered(subjects.size(), false);
  size_t left = subjects.size();
  const absl::Time deadline = absl::Now() + connection_->timeout();
  while (left > 0) {
    const int64_t wait = absl::ToInt64Milliseconds(deadline - absl::Now());
    natsMsg* msg = nullptr;
    natsStatus s = wait > 0 ? natsSubscription_NextMsg(&msg, replies_, wait) : NATS_TIMEOUT;
    if (s != NATS_OK) return FromNats(s, absl::StrCat("reading the newest message of ", left, " subject(s)"));
    absl::string_view subject = natsMsg_GetSubject(msg);
    size_t index = 0;
    if (!absl::ConsumePrefix(&subject, tag) || !absl::SimpleAtoi(subject, &index) || index >= subjects.size() ||
        answered[index]) {
      natsMsg_Destroy(msg);  // a late answer of something asked before
      continue;
    }
    answered[index] = true;
    --left;
    const nlohmann::json answer = nlohmann::json::parse(
        absl::string_view(natsMsg_GetData(msg), natsMsg_GetDataLength(msg)), nullptr, false);
    natsMsg_Destroy(msg);
    const std::string& name = *subjects[index];
    if (!answer.is_object()) return absl::InternalError(absl::StrCat("reading ", name, ": the answer is not JSON"));
    if (answer.contains("error")) {
      if (answer["error"].value("err_code", 0) == JSNoMessageFoundErr) continue;  // none: nullopt
      return absl::InternalError(absl::StrCat("reading the newest message of ", name, ": ",
                                              answer["error"].value("description", "error")));
    }
    const nlohmann::json& message = answer.value("message", nlohmann::json::object());
    std::string headers;
    const uint64_t sequence = message.value("seq", uint64_t{0});
    std::optional<uint64_t> offset;
    if (absl::Base64Unescape(message.value("hdrs", ""), &headers)) offset = OffsetInHeaderBlock(headers);
    if (!offset) {
      return absl::DataLossError(absl::StrCat("message ", sequence, " on ", name, " has no ", kOffsetHeader));
    }
    (*found)[name] = Position{sequence, *offset};
  }
  return absl::OkStatus();
}

void OffsetLog::OnTurnRequest(natsConnection*, natsSubscription*, natsMsg* msg, void* closure) {
  auto* log = static_cast<OffsetLog*>(closure);
  const absl::string_view from(natsMsg_GetData(msg), natsMsg_GetDataLength(msg));
  // Not our own, and not while we are waiting for a turn ourselves (then whoever gets in first
  // goes: at least one of us is not the writer that kept the stream).
  if (from != log->inbox_ && !log->contending_.load()) {
    log->yield_until_ms_ = absl::ToUnixMillis(absl::Now() + kYield);
  }
  natsMsg_Destroy(msg);
}

void OffsetLog::AskForTurn() {
  const absl::Time now = absl::Now();
  if (now - asked_at_ < kYield) return;
  asked_at_ = now;
  natsConnection_PublishString(connection_->nc(), turns_subject_.c_str(), inbox_.c_str());
}

void OffsetLog::WaitOurTurn() {
  const int64_t until = yield_until_ms_.load();
  const absl::Duration wait = absl::FromUnixMillis(until) - absl::Now();
  if (wait > absl::ZeroDuration()) absl::SleepFor(std::min(wait, kYield));
}

absl::StatusOr<std::optional<Position>> OffsetLog::Newest(const std::string& subject) {
  natsMsg* msg = nullptr;
  jsErrCode code = static_cast<jsErrCode>(0);
  natsStatus s = js_GetLastMsg(&msg, connection_->js(), stream_.c_str(), subject.c_str(), nullptr, &code);
  if (s == NATS_NOT_FOUND || code == JSNoMessageFoundErr) return std::nullopt;
  if (s != NATS_OK) return FromNats(s, absl::StrCat("reading the newest message of ", subject), code);
  absl::StatusOr<uint64_t> offset = OffsetOf(msg);
  const uint64_t sequence = natsMsg_GetSequence(msg);
  natsMsg_Destroy(msg);
  if (!offset.ok()) return offset.status();
  return Position{sequence, *offset};
}

absl::StatusOr<OffsetLog::Message> OffsetLog::Read(uint64_t sequence) {
  natsMsg* msg = nullptr;
  jsErrCode code = static_cast<jsErrCode>(0);
  natsStatus s = js_GetMsg(&msg, connection_->js(), stream_.c_str(), sequence, nullptr, &code);
  if (s != NATS_OK) return FromNats(s, absl::StrCat("reading message ", sequence, " of ", stream_), code);
  absl::StatusOr<uint64_t> offset = OffsetOf(msg);
  const char* id = nullptr;
  if (natsMsgHeader_Get(msg, "Nats-Msg-Id", &id) != NATS_OK || id == nullptr) id = "";
  Message read{Position{sequence, offset.ok() ? *offset : 0}, natsMsg_GetSubject(msg),
               std::string(natsMsg_GetData(msg), natsMsg_GetDataLength(msg)), id};
  natsMsg_Destroy(msg);
  if (!offset.ok()) return offset.status();
  return read;
}

absl::StatusOr<Position> OffsetLog::Append(const std::string& subject, const std::string& id,
                                           const Payload& payload) {
  std::optional<Position> previous;
  auto cached = newest_.find(subject);
  if (last_sequence_ > 0 && cached != newest_.end()) {
    previous = cached->second;
  } else {
    RETURN_IF_ERROR(Reload(subject, &previous));
  }
  const absl::Time give_up = absl::Now() + connection_->timeout();
  for (int attempt = 0;; ++attempt) {
    // A subject with nothing held starts at the sequence its first message will get.
    const uint64_t offset = previous ? previous->offset + 1 : last_sequence_ + 1;
    const std::string body = payload(offset);
    natsMsg* msg = nullptr;
    natsStatus s = natsMsg_Create(&msg, subject.c_str(), nullptr, body.data(), static_cast<int>(body.size()));
    if (s == NATS_OK) s = natsMsgHeader_Set(msg, kOffsetHeader, absl::StrCat(offset).c_str());
    if (s == NATS_OK) {
      s = natsMsgHeader_Set(msg, "Nats-Expected-Last-Sequence", absl::StrCat(last_sequence_).c_str());
    }
    if (s == NATS_OK && !id.empty()) s = natsMsgHeader_Set(msg, "Nats-Msg-Id", NameFor(id).c_str());
    jsPubAck* ack = nullptr;
    jsErrCode code = static_cast<jsErrCode>(0);
    if (s == NATS_OK) s = js_PublishMsg(&ack, connection_->js(), msg, nullptr, &code);
    natsMsg_Destroy(msg);
    bool refused = s != NATS_OK;
    if (s == NATS_OK) {
      const bool duplicate = ack->Duplicate;
      const Position appended{ack->Sequence, offset};
      jsPubAck_Destroy(ack);
      // A duplicate of sequence 0: the name was used by a message not stored (see Append).
      refused = duplicate && appended.sequence == 0;
      if (!refused) not_stored_.erase(id);
      if (duplicate && !refused) {
        // Stored by an earlier try, with the offset it had then.
        last_sequence_ = 0;  // not known: read it before the next append
        ASSIGN_OR_RETURN(Message first, Read(appended.sequence));
        return first.position;
      }
      if (!refused) {
        last_sequence_ = appended.sequence;
        newest_[subject] = appended;
        return appended;
      }
    }
    last_sequence_ = 0;
    if (!refused && code != JSStreamWrongLastSequenceErr) {
      // Not answered, say: sent again under the same name, it is a duplicate if it was stored.
      return FromNats(s, absl::StrCat("appending to ", subject), code);
    }
    if (!id.empty()) not_stored_.insert(id);
    ++conflicts_;
    // Refused twice: another writer keeps the stream. Ask it to wait a moment.
    if (attempt >= 1) {
      contending_ = true;
      AskForTurn();
    }
    if (absl::Now() > give_up) {
      return absl::AbortedError(absl::StrCat("appending to ", subject, ": other writers kept the stream busy for ",
                                             absl::FormatDuration(connection_->timeout()), " (", attempt + 1,
                                             " tries)"));
    }
    // Another writer is busy with this stream: let it finish (a stream is meant to have one
    // writer at a time; this only settles a handover) and read where it got to. What the
    // stream shows is what it has applied, and the check counts what it has accepted, so
    // while the other writes flat out this side cannot get in.
    absl::SleepFor(absl::Microseconds(absl::Uniform(bitgen_, 0, 200 * std::min(attempt + 1, 10))));
    RETURN_IF_ERROR(Reload(subject, &previous));
  }
}

absl::Status OffsetLog::Reload(const std::string& subject, std::optional<Position>* newest) {
  // The stream's end first, then the subject's newest message: what the subject shows may
  // then be newer than that end (and the append is refused, and tried again), never older.
  ASSIGN_OR_RETURN(const uint64_t last, LastSequence(*connection_, stream_));
  // Somebody else appended since we looked: what we remember of any subject may be old.
  if (last != last_sequence_) newest_.clear();
  last_sequence_ = last;
  ASSIGN_OR_RETURN(*newest, Newest(subject));
  if (*newest) {
    newest_[subject] = **newest;
  } else {
    newest_.erase(subject);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<Position>> OffsetLog::NextOnSubject(const std::string& subject,
                                                                 uint64_t from) {
  ASSIGN_OR_RETURN(std::optional<StoredMessage> message, ReadNext(*connection_, stream_, subject, from));
  if (!message) return std::nullopt;
  const std::optional<uint64_t> offset = OffsetInHeaderBlock(message->headers);
  if (!offset) {
    return absl::DataLossError(absl::StrCat("message ", message->sequence, " on ", subject, " has no ", kOffsetHeader));
  }
  return Position{message->sequence, *offset};
}

absl::StatusOr<Resume> OffsetLog::Locate(const std::string& subject, uint64_t offset) {
  ASSIGN_OR_RETURN(std::optional<Position> newest, Newest(subject));
  if (!newest) return Resume{Resume::kGone, 0};
  if (offset == newest->offset) return Resume{Resume::kUpToDate, 0};
  if (offset > newest->offset) return Resume{Resume::kGone, 0};
  // Binary search for the subject's first message with an offset above `offset` (offsets grow
  // with sequences). Invariant: it is `found`, or lies in sequences [lo, hi); the messages of
  // the subject before `lo` all have offsets up to `offset`.
  Position found = *newest;
  uint64_t lo = 1;
  uint64_t hi = found.sequence;
  while (lo < hi) {
    const uint64_t mid = lo + (hi - lo) / 2;
    ASSIGN_OR_RETURN(std::optional<Position> probe, NextOnSubject(subject, mid));
    if (!probe) return absl::InternalError(absl::StrCat(subject, " lost its newest message"));
    if (probe->sequence >= hi) {
      hi = mid;  // nothing of the subject in [mid, hi)
    } else if (probe->offset > offset) {
      found = *probe;
      hi = mid;
    } else {
      lo = probe->sequence + 1;
    }
  }
  if (found.offset != offset + 1) return Resume{Resume::kGone, 0};
  return Resume{Resume::kNext, found.sequence};
}

}  // namespace devbridge::bus
