#include "services/ingest/cluster/command_router.h"

#include <set>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status.h"
#include "services/ingest/cluster/partitions.h"

namespace devbridge::ingest::cluster {
namespace {

// Set on an owner's answer when the command was refused before it ran (its value is the
// reason); the body is then empty.
constexpr char kRefusedHeader[] = "Devbridge-Refused";

v1::CommandResult Unavailable(const v1::Command& command, const std::string& why) {
  v1::CommandResult result;
  result.set_command_id(command.command_id());
  result.set_request_id(command.request_id());
  result.set_device_id(command.device_id());
  result.set_code(common::kCodeUnavailable);
  result.set_msg(why);
  return result;
}

std::string CommandSubject(int partition) { return absl::StrCat(kCommandPrefix, ".", partition); }

}  // namespace

absl::StatusOr<std::unique_ptr<CommandRouter>> CommandRouter::Start(const bus::Connection* connection,
                                                                    int partitions, absl::Duration ttl, int replicas,
                                                                    Run run, common::MetricsRegistry* metrics) {
  std::unique_ptr<CommandRouter> router(new CommandRouter(connection, partitions, std::move(run), metrics));
  ASSIGN_OR_RETURN(router->leases_, bus::Leases::Open(connection, kLeaseBucket, ttl, replicas));
  natsInbox* inbox = nullptr;
  natsStatus s = natsInbox_Create(&inbox);
  if (s != NATS_OK) return bus::FromNats(s, "making an inbox for command answers");
  router->inbox_ = inbox;
  natsInbox_Destroy(inbox);
  ASSIGN_OR_RETURN(router->replies_,
                   bus::Subscription::Start(connection, router->inbox_ + ".*", &CommandRouter::OnReply, router.get()));
  CommandRouter* self = router.get();
  router->expirer_ = std::thread([self] { self->Expire(); });
  return router;
}

CommandRouter::CommandRouter(const bus::Connection* connection, int partitions, Run run,
                             common::MetricsRegistry* metrics)
    : connection_(connection),
      partitions_(partitions),
      run_(std::move(run)),
      forwarded_(&metrics->AddCounter("devbridge_ingest_commands_forwarded_total",
                                      "Commands sent to the ingest replica that owns their device.")),
      served_total_(&metrics->AddCounter("devbridge_ingest_commands_served_total",
                                         "Commands another replica forwarded here, to the device's owner.")),
      unanswered_(&metrics->AddCounter("devbridge_ingest_commands_unanswered_total",
                                       "Forwarded commands failed with 503: no owner, or no answer in time.")) {}

CommandRouter::~CommandRouter() {
  std::map<int, std::unique_ptr<bus::Subscription>> served;
  {
    common::MutexLock lock(&mu_);
    stopping_ = true;
    served.swap(served_);
  }
  served.clear();  // outside the lock: a handler still running may need it
  cv_.NotifyAll();
  if (expirer_.joinable()) expirer_.join();
  replies_.reset();
  std::map<uint64_t, Waiting> left;
  {
    common::MutexLock lock(&mu_);
    left.swap(waiting_);
  }
  for (auto& [id, w] : left) w.done(Unavailable(w.command, "ingest is shutting down"));
}

void CommandRouter::Forward(const v1::Command& command, absl::Duration wait, Done done) {
  forwarded_->Inc();
  uint64_t id = 0;
  {
    common::MutexLock lock(&mu_);
    id = ++next_id_;
    Waiting& w = waiting_[id];
    w.done = std::move(done);
    w.deadline = absl::Now() + wait;
    w.command = command;
    w.partition = PartitionOf(command.device_id(), partitions_);
  }
  const std::string data = command.SerializeAsString();
  const std::string subject = CommandSubject(PartitionOf(command.device_id(), partitions_));
  const natsStatus s = natsConnection_PublishRequest(connection_->nc(), subject.c_str(),
                                                     absl::StrCat(inbox_, ".", id).c_str(), data.data(),
                                                     static_cast<int>(data.size()));
  if (s != NATS_OK) {
    if (Waiting w = Take(id); w.done) {
      unanswered_->Inc();
      w.done(Unavailable(command, absl::StrCat("the bus did not take the command for the device's ingest replica: ",
                                          natsStatus_GetText(s))));
    }
  }
}

CommandRouter::Waiting CommandRouter::Take(uint64_t id) {
  common::MutexLock lock(&mu_);
  auto it = waiting_.find(id);
  if (it == waiting_.end()) return Waiting{};
  Waiting w = std::move(it->second);
  waiting_.erase(it);
  return w;
}

void CommandRouter::OnReply(natsConnection*, natsSubscription*, natsMsg* msg, void* closure) {
  auto* self = static_cast<CommandRouter*>(closure);
  const absl::string_view subject = natsMsg_GetSubject(msg);
  uint64_t id = 0;
  const size_t dot = subject.rfind('.');
  Waiting w;
  if (dot != absl::string_view::npos && absl::SimpleAtoi(subject.substr(dot + 1), &id)) w = self->Take(id);
  if (w.done) {
    const Done& done = w.done;
    const char* refused = nullptr;
    if (natsMsg_IsNoResponders(msg)) {
      self->unanswered_->Inc();
      done(Unavailable(w.command,
                       "no ingest replica holds the device's partition right now (it is moving); try again"));
    } else if (natsMsgHeader_Get(msg, kRefusedHeader, &refused) == NATS_OK && refused != nullptr) {
      done(absl::AlreadyExistsError(refused));
    } else {
      v1::CommandResult result;
      if (result.ParseFromArray(natsMsg_GetData(msg), natsMsg_GetDataLength(msg))) {
        done(std::move(result));
      } else {
        done(Unavailable(w.command, "the device's ingest replica answered with something unreadable"));
      }
    }
  }
  natsMsg_Destroy(msg);
}

void CommandRouter::OnCommand(natsConnection* nc, natsSubscription*, natsMsg* msg, void* closure) {
  auto* self = static_cast<CommandRouter*>(closure);
  v1::Command command;
  const char* reply = natsMsg_GetReply(msg);
  if (reply == nullptr || !command.ParseFromArray(natsMsg_GetData(msg), natsMsg_GetDataLength(msg))) {
    natsMsg_Destroy(msg);
    return;  // not a command: nobody to answer
  }
  self->served_total_->Inc();
  std::string to(reply);
  natsMsg_Destroy(msg);
  self->run_(std::move(command), [nc, to](absl::StatusOr<v1::CommandResult> result) {
    natsMsg* answer = nullptr;
    if (result.ok()) {
      const std::string data = result->SerializeAsString();
      if (natsMsg_Create(&answer, to.c_str(), nullptr, data.data(), static_cast<int>(data.size())) != NATS_OK) return;
    } else {
      if (natsMsg_Create(&answer, to.c_str(), nullptr, nullptr, 0) != NATS_OK) return;
      natsMsgHeader_Set(answer, kRefusedHeader, std::string(result.status().message()).c_str());
    }
    natsConnection_PublishMsg(nc, answer);
    natsMsg_Destroy(answer);
  });
}

absl::Status CommandRouter::Serve(int partition) {
  {
    common::MutexLock lock(&mu_);
    if (served_.count(partition) > 0) return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(std::unique_ptr<bus::Subscription> sub,
                   bus::Subscription::Start(connection_, CommandSubject(partition), &CommandRouter::OnCommand, this));
  common::MutexLock lock(&mu_);
  served_[partition] = std::move(sub);
  return absl::OkStatus();
}

void CommandRouter::Unserve(int partition) {
  std::unique_ptr<bus::Subscription> sub;
  {
    common::MutexLock lock(&mu_);
    auto it = served_.find(partition);
    if (it == served_.end()) return;
    sub = std::move(it->second);
    served_.erase(it);
  }
}

void CommandRouter::LookAtHolders() {
  std::set<int> partitions;
  {
    common::MutexLock lock(&mu_);
    for (const auto& [id, w] : waiting_) partitions.insert(w.partition);
  }
  std::map<int, std::string> holders;
  for (int p : partitions) {
    absl::StatusOr<std::string> holder = leases_->Holder(PartitionLease(p));
    if (holder.ok()) holders[p] = *holder;
  }
  std::vector<Waiting> moved;
  {
    common::MutexLock lock(&mu_);
    for (auto it = waiting_.begin(); it != waiting_.end();) {
      Waiting& w = it->second;
      auto holder = holders.find(w.partition);
      if (holder != holders.end() && !w.looked) {
        w.looked = true;
        w.holder = holder->second;
      } else if (holder != holders.end() && holder->second != w.holder) {
        moved.push_back(std::move(w));
        it = waiting_.erase(it);
        continue;
      }
      ++it;
    }
  }
  for (Waiting& w : moved) {
    unanswered_->Inc();
    w.done(Unavailable(w.command, "the device's ingest replica stopped with the command in flight (its partition "
                                  "moved to another replica); it may or may not have reached the device"));
  }
}

void CommandRouter::Expire() {
  absl::Time last_look = absl::Now();
  while (true) {
    if (absl::Now() - last_look >= absl::Seconds(1)) {
      last_look = absl::Now();
      LookAtHolders();
    }
    std::vector<Waiting> late;
    {
      common::MutexLock lock(&mu_);
      if (cv_.WaitFor(&mu_, absl::Milliseconds(100), [this] {
            mu_.AssertHeld();
            return stopping_;
          })) {
        return;
      }
      const absl::Time now = absl::Now();
      for (auto it = waiting_.begin(); it != waiting_.end();) {
        if (it->second.deadline <= now) {
          late.push_back(std::move(it->second));
          it = waiting_.erase(it);
        } else {
          ++it;
        }
      }
    }
    for (Waiting& w : late) {
      unanswered_->Inc();
      w.done(Unavailable(w.command, "the device's ingest replica did not answer in time (it may have stopped; "
                                      "its partitions move to the others)"));
    }
  }
}

}  // namespace devbridge::ingest::cluster
