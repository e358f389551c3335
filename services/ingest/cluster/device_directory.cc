#include "services/ingest/cluster/device_directory.h"

#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace devbridge::ingest::cluster {
namespace {

constexpr char kDevicesSubject[] = "devbridge.devices";

}  // namespace

v1::ListDevicesResponse MergeDevicePages(const std::vector<v1::ListDevicesResponse>& pages, uint32_t limit) {
  std::map<std::string, const v1::Device*> devices;
  for (const v1::ListDevicesResponse& page : pages) {
    for (const v1::Device& d : page.devices()) {
      const v1::Device*& kept = devices[d.device_id()];
      if (kept == nullptr || d.last_seen_unix_ms() > kept->last_seen_unix_ms()) kept = &d;
    }
  }
  v1::ListDevicesResponse merged;
  for (const auto& [id, device] : devices) {
    if (static_cast<uint32_t>(merged.devices_size()) == limit) {
      merged.set_next(merged.devices(merged.devices_size() - 1).device_id());
      break;
    }
    *merged.add_devices() = *device;
  }
  return merged;
}

absl::StatusOr<std::unique_ptr<DeviceDirectory>> DeviceDirectory::Start(const bus::Connection* connection,
                                                                        Local local) {
  std::unique_ptr<DeviceDirectory> directory(new DeviceDirectory(connection, std::move(local)));
  natsInbox* inbox = nullptr;
  natsStatus s = natsInbox_Create(&inbox);
  if (s != NATS_OK) return bus::FromNats(s, "making an inbox for device pages");
  directory->inbox_ = inbox;
  natsInbox_Destroy(inbox);
  ASSIGN_OR_RETURN(directory->pages_, bus::Subscription::Start(connection, directory->inbox_ + ".*",
                                                               &DeviceDirectory::OnPage, directory.get()));
  ASSIGN_OR_RETURN(directory->asks_,
                   bus::Subscription::Start(connection, kDevicesSubject, &DeviceDirectory::OnAsk, directory.get()));
  DeviceDirectory* self = directory.get();
  directory->expirer_ = std::thread([self] { self->Expire(); });
  return directory;
}

DeviceDirectory::~DeviceDirectory() {
  asks_.reset();
  pages_.reset();
  {
    common::MutexLock lock(&mu_);
    stopping_ = true;
  }
  cv_.NotifyAll();
  if (expirer_.joinable()) expirer_.join();
  std::map<uint64_t, Gathering> left;
  {
    common::MutexLock lock(&mu_);
    left.swap(gathering_);
  }
  for (auto& [id, g] : left) Finish(g);
}

void DeviceDirectory::Finish(Gathering& g) {
  const int got = static_cast<int>(g.pages.size());
  if (got < g.expected) {
    g.done(absl::UnavailableError(absl::StrCat("listing devices: ", got, " of ", g.expected,
                                               " ingest replicas answered within ", absl::FormatDuration(g.wait),
                                               "; ask again")));
    return;
  }
  g.done(MergeDevicePages(g.pages, g.limit));
}

void DeviceDirectory::List(const std::string& after, uint32_t limit, int replicas, absl::Duration wait,
                           Listed done) {
  uint64_t id = 0;
  {
    common::MutexLock lock(&mu_);
    id = ++next_id_;
    Gathering& g = gathering_[id];
    g.done = std::move(done);
    g.limit = limit;
    g.expected = std::max(replicas, 1);
    g.wait = wait;
    g.deadline = absl::Now() + wait;
  }
  v1::ListDevicesRequest ask;
  ask.set_after(after);
  ask.set_limit(limit + 1);
  const std::string data = ask.SerializeAsString();
  // A failed publish leaves the gathering to its deadline, with what came.
  natsConnection_PublishRequest(connection_->nc(), kDevicesSubject, absl::StrCat(inbox_, ".", id).c_str(),
                                data.data(), static_cast<int>(data.size()));
}

void DeviceDirectory::OnAsk(natsConnection* nc, natsSubscription*, natsMsg* msg, void* closure) {
  auto* self = static_cast<DeviceDirectory*>(closure);
  v1::ListDevicesRequest ask;
  const char* reply = natsMsg_GetReply(msg);
  if (reply == nullptr || !ask.ParseFromArray(natsMsg_GetData(msg), natsMsg_GetDataLength(msg))) {
    natsMsg_Destroy(msg);
    return;
  }
  std::string to(reply);
  natsMsg_Destroy(msg);
  self->local_(ask, [nc, to](v1::ListDevicesResponse page) {
    const std::string data = page.SerializeAsString();
    natsConnection_Publish(nc, to.c_str(), data.data(), static_cast<int>(data.size()));
  });
}

void DeviceDirectory::OnPage(natsConnection*, natsSubscription*, natsMsg* msg, void* closure) {
  auto* self = static_cast<DeviceDirectory*>(closure);
  const absl::string_view subject = natsMsg_GetSubject(msg);
  const size_t dot = subject.rfind('.');
  uint64_t id = 0;
  v1::ListDevicesResponse page;
  const bool ok = dot != absl::string_view::npos && absl::SimpleAtoi(subject.substr(dot + 1), &id) &&
                  !natsMsg_IsNoResponders(msg) &&
                  page.ParseFromArray(natsMsg_GetData(msg), natsMsg_GetDataLength(msg));
  natsMsg_Destroy(msg);
  if (!ok) return;
  Gathering done;
  {
    common::MutexLock lock(&self->mu_);
    auto it = self->gathering_.find(id);
    if (it == self->gathering_.end()) return;
    it->second.pages.push_back(std::move(page));
    if (static_cast<int>(it->second.pages.size()) < it->second.expected) return;
    done = std::move(it->second);
    self->gathering_.erase(it);
  }
  Finish(done);
}

void DeviceDirectory::Expire() {
  while (true) {
    std::vector<Gathering> late;
    {
      common::MutexLock lock(&mu_);
      if (cv_.WaitFor(&mu_, absl::Milliseconds(50), [this] {
            mu_.AssertHeld();
            return stopping_;
          })) {
        return;
      }
      const absl::Time now = absl::Now();
      for (auto it = gathering_.begin(); it != gathering_.end();) {
        if (it->second.deadline <= now) {
          late.push_back(std::move(it->second));
          it = gathering_.erase(it);
        } else {
          ++it;
        }
      }
    }
    for (Gathering& g : late) Finish(g);
  }
}

}  // namespace devbridge::ingest::cluster
