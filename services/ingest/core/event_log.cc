#include "services/ingest/core/event_log.h"

#include "absl/strings/str_cat.h"

namespace devbridge::ingest {

EventLog::EventLog(std::string epoch, size_t capacity, size_t max_bytes)
    : epoch_(std::move(epoch)), capacity_(capacity == 0 ? 1 : capacity), max_bytes_(max_bytes) {}

uint64_t EventLog::Append(v1::Event event, const std::vector<StreamRef>& streams, absl::Time now) {
  const uint64_t seq = next_seq_++;
  event.set_epoch(epoch_);
  event.set_seq(seq);
  event.set_at_unix_ms(absl::ToUnixMillis(now));
  event.set_at_unix_us(absl::ToUnixMicros(now));
  for (const StreamRef& s : streams) {
    auto [it, inserted] = stream_offsets_.try_emplace(absl::StrCat(s.system_id, "\x1f", s.group_name));
    StreamState& state = it->second;
    // Offsets never exceed the seq of their event, so after any stream was forgotten a new
    // one starting at this seq is above whatever offset a forgotten one had.
    if (inserted && forgot_any_) state.offset = seq - 1;
    state.last_used = now;
    v1::StreamOffset* out = event.add_streams();
    out->set_system_id(s.system_id);
    out->set_group_name(s.group_name);
    out->set_offset(++state.offset);
  }
  auto encoded = std::make_shared<const std::string>(event.SerializeAsString());
  if (on_append_) on_append_(event, encoded, streams);
  bytes_ += encoded->size();
  events_.push_back({std::move(encoded), now});
  // At least the newest event stays, however large.
  while (events_.size() > capacity_ || (bytes_ > max_bytes_ && events_.size() > 1)) {
    bytes_ -= events_.front().encoded->size();
    events_.pop_front();
  }
  std::vector<std::function<void()>> waiters;
  waiters.swap(waiters_);
  for (auto& wake : waiters) wake();
  return seq;
}

void EventLog::ForgetIdleStreams(absl::Time now, absl::Duration idle) {
  for (auto it = stream_offsets_.begin(); it != stream_offsets_.end();) {
    if (now - it->second.last_used > idle) {
      stream_offsets_.erase(it++);
      forgot_any_ = true;
    } else {
      ++it;
    }
  }
}

ReadStart EventLog::Start(const v1::SubscribeRequest& request) const {
  ReadStart start;
  if (request.resume_epoch().empty()) {
    start.next_seq = request.from_oldest() ? oldest_seq() : next_seq_;
    return start;
  }
  const uint64_t wanted = request.resume_after_seq() + 1;
  if (request.resume_epoch() == epoch_ && wanted >= oldest_seq() && wanted <= next_seq_) {
    start.next_seq = wanted;
    return start;
  }
  v1::Event reset;
  reset.set_epoch(epoch_);
  reset.set_seq(0);
  v1::StreamReset* body = reset.mutable_reset();
  body->set_requested_epoch(request.resume_epoch());
  body->set_requested_after_seq(request.resume_after_seq());
  body->set_oldest_seq(oldest_seq());
  body->set_reason(request.resume_epoch() != epoch_
                       ? absl::StrCat("epoch ", request.resume_epoch(), " is over; ingest now runs epoch ", epoch_)
                       : absl::StrCat("events after ", request.resume_after_seq(),
                                      " are no longer held (oldest is ", oldest_seq(), ", last ",
                                      last_seq(), ")"));
  start.reset = std::make_shared<const std::string>(reset.SerializeAsString());
  start.next_seq = next_seq_;
  return start;
}

std::shared_ptr<const std::string> EventLog::Get(uint64_t seq) const {
  if (seq < oldest_seq() || seq >= next_seq_) return nullptr;
  return events_[seq - oldest_seq()].encoded;
}

absl::Time EventLog::AppendedAt(uint64_t seq) const {
  if (seq < oldest_seq() || seq >= next_seq_) return absl::InfinitePast();
  return events_[seq - oldest_seq()].appended_at;
}

}  // namespace devbridge::ingest
