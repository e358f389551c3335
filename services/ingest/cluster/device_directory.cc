#include "services/ingest/cluster/device_directory.h"

#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/status.h"

namespace devbridge::ingest::cluster {
namespace {

constexpr char kDevicesSubject[] = "devbridge.devices";
// On each page: the partitions its replica held, comma-separated ("0,1,5"; empty: none).
constexpr char kPartitionsHeader[] = "Devbridge-Partitions";

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
                                                                        int partitions, Held held, Local local) {
  std::unique_ptr<DeviceDirectory> directory(
      new DeviceDirectory(connection, partitions, std::move(held), std::move(local)));
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
  if (g.uncovered > 0) {
    std::vector<int> missing;
    for (int p = 0; p < static_cast<int>(g.covered.size()); ++p) {
      if (!g.covered[p]) missing.push_back(p);
    }
    g.done(absl::UnavailableError(absl::StrCat(
        "listing devices: no ingest replica answered for partition(s) ", absl::StrJoin(missing, ","), " within ",
        absl::FormatDuration(g.wait), " (", g.pages.size(),
        " page(s) came; a replica may have just stopped and its partitions not been taken over yet); ask again")));
    return;
  }
  g.done(MergeDevicePages(g.pages, g.limit));
}

void DeviceDirectory::List(const std::string& after, uint32_t limit, absl::Duration wait, Listed done) {
  uint64_t id = 0;
  {
    common::MutexLock lock(&mu_);
    id = ++next_id_;
    Gathering& g = gathering_[id];
    g.done = std::move(done);
    g.limit = limit;
    g.wait = wait;
    g.deadline = absl::Now() + wait;
    g.covered.assign(partitions_, false);
    g.uncovered = partitions_;
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
  // Before the page is made: a partition taken meanwhile is not claimed without its devices.
  std::string held = absl::StrJoin(self->held_(), ",");
  self->local_(ask, [nc, to, held = std::move(held)](v1::ListDevicesResponse page) {
    const std::string data = page.SerializeAsString();
    natsMsg* out = nullptr;
    if (natsMsg_Create(&out, to.c_str(), nullptr, data.data(), static_cast<int>(data.size())) != NATS_OK) return;
    if (natsMsgHeader_Set(out, kPartitionsHeader, held.c_str()) == NATS_OK) natsConnection_PublishMsg(nc, out);
    natsMsg_Destroy(out);
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
  std::vector<int> held;
  const char* partitions = nullptr;
  if (ok && natsMsgHeader_Get(msg, kPartitionsHeader, &partitions) == NATS_OK) {
    for (absl::string_view p : absl::StrSplit(partitions, ',', absl::SkipEmpty())) {
      int partition = -1;
      if (absl::SimpleAtoi(p, &partition)) held.push_back(partition);
    }
  }
  natsMsg_Destroy(msg);
  if (!ok) return;
  Gathering done;
  {
    common::MutexLock lock(&self->mu_);
    auto it = self->gathering_.find(id);
    if (it == self->gathering_.end()) return;
    Gathering& g = it->second;
    g.pages.push_back(std::move(page));
    for (int p : held) {
      if (p < 0 || p >= static_cast<int>(g.covered.size()) || g.covered[p]) continue;
      g.covered[p] = true;
      --g.uncovered;
    }
    if (g.uncovered > 0) return;
    done = std::move(g);
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
