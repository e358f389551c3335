#include "services/ingest/core/command_tracker.h"

#include <algorithm>

namespace devbridge::ingest {

bool CommandTracker::Enqueue(PendingCommand cmd) {
  Queue& q = queues_[cmd.command.device_id()];
  if (cmd.poll) {
    q.polls.push_back(std::move(cmd));
  } else if (q.waiting.size() >= depth_) {
    if (q.Idle()) Forget(cmd.command.device_id());
    return false;
  } else {
    q.waiting.push_back(std::move(cmd));
  }
  ++total_;
  return true;
}

PendingCommand* CommandTracker::StartNext(const std::string& device_id, absl::Time now) {
  auto it = queues_.find(device_id);
  if (it == queues_.end() || it->second.in_flight) return nullptr;
  Queue& q = it->second;
  // Users first: a poll never delays a user's command by more than the one in flight.
  std::deque<PendingCommand>& from = !q.waiting.empty() ? q.waiting : q.polls;
  if (from.empty()) return nullptr;
  q.in_flight = std::move(from.front());
  from.pop_front();
  q.in_flight->sent = now;
  return &*q.in_flight;
}

PendingCommand* CommandTracker::InFlight(const std::string& device_id) {
  auto it = queues_.find(device_id);
  if (it == queues_.end() || !it->second.in_flight) return nullptr;
  return &*it->second.in_flight;
}

std::optional<PendingCommand> CommandTracker::TakeInFlight(const std::string& device_id) {
  auto it = queues_.find(device_id);
  if (it == queues_.end() || !it->second.in_flight) return std::nullopt;
  std::optional<PendingCommand> out = std::move(it->second.in_flight);
  it->second.in_flight.reset();
  --total_;
  Forget(device_id);
  return out;
}

std::vector<PendingCommand> CommandTracker::TakeExpired(absl::Time now) {
  std::vector<PendingCommand> out;
  std::vector<std::string> emptied;
  for (auto& [id, q] : queues_) {
    if (q.in_flight && q.in_flight->deadline <= now) {
      out.push_back(std::move(*q.in_flight));
      q.in_flight.reset();
    }
    for (std::deque<PendingCommand>* lane : {&q.waiting, &q.polls}) {
      for (auto it = lane->begin(); it != lane->end();) {
        if (it->deadline <= now) {
          out.push_back(std::move(*it));
          it = lane->erase(it);
        } else {
          ++it;
        }
      }
    }
    if (q.Idle()) emptied.push_back(id);
  }
  total_ -= out.size();
  for (const auto& id : emptied) queues_.erase(id);
  std::sort(out.begin(), out.end(), [](const PendingCommand& a, const PendingCommand& b) {
    return a.submitted < b.submitted;
  });
  return out;
}

std::vector<PendingCommand> CommandTracker::TakeAll(const std::string& device_id) {
  std::vector<PendingCommand> out;
  auto it = queues_.find(device_id);
  if (it == queues_.end()) return out;
  if (it->second.in_flight) out.push_back(std::move(*it->second.in_flight));
  for (auto& c : it->second.waiting) out.push_back(std::move(c));
  for (auto& c : it->second.polls) out.push_back(std::move(c));
  total_ -= out.size();
  queues_.erase(it);
  return out;
}

std::vector<std::string> CommandTracker::IdleDevicesWithWork() const {
  std::vector<std::string> out;
  for (const auto& [id, q] : queues_) {
    if (!q.in_flight && (!q.waiting.empty() || !q.polls.empty())) out.push_back(id);
  }
  return out;
}

std::vector<std::string> CommandTracker::Devices() const {
  std::vector<std::string> out;
  for (const auto& [id, q] : queues_) out.push_back(id);
  return out;
}

size_t CommandTracker::waiting(const std::string& device_id) const {
  auto it = queues_.find(device_id);
  return it == queues_.end() ? 0 : it->second.waiting.size();
}

void CommandTracker::Forget(const std::string& device_id) {
  auto it = queues_.find(device_id);
  if (it != queues_.end() && it->second.Idle()) queues_.erase(it);
}

}  // namespace devbridge::ingest
