// The device list in a cluster (`--partitions`): each replica knows the devices of the
// partitions it holds, so ListDevices asks every replica for its page (a NATS request on
// `devbridge.devices`, which every replica answers) and merges them in device id order. Each
// page names the partitions its replica held when it was made (header Devbridge-Partitions);
// the listing is complete when the pages cover every partition. One that still lacks some
// after `wait` (a replica just stopped, its partitions not yet taken over) fails with
// UNAVAILABLE ("ask again"): a shorter list would look complete.
#ifndef DEVBRIDGE_SERVICES_INGEST_CLUSTER_DEVICE_DIRECTORY_H_
#define DEVBRIDGE_SERVICES_INGEST_CLUSTER_DEVICE_DIRECTORY_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "bus/connection.h"
#include "bus/subscription.h"
#include "common/mutex.h"
#include "devbridge/v1/ingest.pb.h"

namespace devbridge::ingest::cluster {

// One page of `limit` devices from pages that each hold up to limit + 1 devices after the
// same `after`, in id order: a device listed twice (its partition just moved) is taken from
// the page that saw it last. `next` is set when more follow.
v1::ListDevicesResponse MergeDevicePages(const std::vector<v1::ListDevicesResponse>& pages, uint32_t limit);

class DeviceDirectory {
 public:
  using Page = std::function<void(v1::ListDevicesResponse)>;
  // This replica's own devices: up to request.limit() of them after request.after(), in id
  // order; `done` once, from any thread.
  using Local = std::function<void(const v1::ListDevicesRequest& request, Page done)>;
  // The partitions this replica holds now (of `partitions`), from any thread.
  using Held = std::function<std::vector<int>()>;

  static absl::StatusOr<std::unique_ptr<DeviceDirectory>> Start(const bus::Connection* connection, int partitions,
                                                                Held held, Local local);
  ~DeviceDirectory();
  DeviceDirectory(const DeviceDirectory&) = delete;
  DeviceDirectory& operator=(const DeviceDirectory&) = delete;

  // Every replica's page of `limit` devices after `after`, merged once the pages cover every
  // partition; UNAVAILABLE if they do not within `wait`. `done` once, from any thread.
  using Listed = std::function<void(absl::StatusOr<v1::ListDevicesResponse>)>;
  void List(const std::string& after, uint32_t limit, absl::Duration wait, Listed done) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Gathering {
    Listed done;
    absl::Duration wait;
    uint32_t limit = 0;
    absl::Time deadline;
    std::vector<v1::ListDevicesResponse> pages;
    std::vector<bool> covered;  // by partition: some page's replica held it
    int uncovered = 0;
  };
  DeviceDirectory(const bus::Connection* connection, int partitions, Held held, Local local)
      : connection_(connection), partitions_(partitions), held_(std::move(held)), local_(std::move(local)) {}
  static void OnAsk(natsConnection* nc, natsSubscription* sub, natsMsg* msg, void* closure);
  static void OnPage(natsConnection* nc, natsSubscription* sub, natsMsg* msg, void* closure);
  void Expire() ABSL_LOCKS_EXCLUDED(mu_);
  // Calls g.done with the merged pages, or UNAVAILABLE when they miss a partition.
  static void Finish(Gathering& g);

  const bus::Connection* connection_;
  const int partitions_;
  Held held_;
  Local local_;
  std::string inbox_;
  std::unique_ptr<bus::Subscription> pages_;
  std::unique_ptr<bus::Subscription> asks_;

  common::Mutex mu_;
  common::CondVar cv_;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<uint64_t, Gathering> gathering_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread expirer_;
};

}  // namespace devbridge::ingest::cluster

#endif  // DEVBRIDGE_SERVICES_INGEST_CLUSTER_DEVICE_DIRECTORY_H_
