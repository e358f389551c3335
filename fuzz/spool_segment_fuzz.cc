// The spool's recovery and reader against any bytes on disk (a crash mid-write, a bad sector,
// a file copied in by hand): the input becomes the spool's segment files, split in two at a
// point the first byte picks (an older segment and the newest). Opening and reading it all
// must not crash, loop or read out of bounds, and a message appended afterwards must read back.
#include <fcntl.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "common/log.h"
#include "services/ingest/spool/spool.h"

namespace {

std::string Dir() {
  static const std::string dir = [] {
    // tmpfs where there is one: the spool fsyncs, which on a disk would dominate every run.
    std::string tmpl = access("/dev/shm", W_OK) == 0 ? "/dev/shm/spool-fuzz.XXXXXX" : "/tmp/spool-fuzz.XXXXXX";
    if (mkdtemp(tmpl.data()) == nullptr) std::abort();
    devbridge::common::SetLogLevel("off").IgnoreError();
    return tmpl;
  }();
  return dir;
}

void Write(const std::string& path, const uint8_t* data, size_t size) {
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) std::abort();
  if (size > 0 && write(fd, data, size) != static_cast<ssize_t>(size)) std::abort();
  close(fd);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string dir = Dir();
  const std::string first = absl::StrFormat("%s/%020u.seg", dir, 1);
  const std::string newest = absl::StrFormat("%s/%020u.seg", dir, 1000);
  unlink(first.c_str());
  unlink(newest.c_str());
  const size_t split = size == 0 ? 0 : std::min<size_t>(size, data[0] * size / 256);
  // Segment names are first sequence numbers; the newest starts after the first's records.
  Write(first, data, split);
  if (split < size) Write(newest, data + split, size - split);

  devbridge::common::MetricsRegistry metrics;
  devbridge::ingest::SpoolOptions options;
  options.dir = dir;
  options.max_bytes = 1 << 20;
  auto spool = devbridge::ingest::Spool::Open(options, &metrics);
  if (!spool.ok()) return 0;
  std::vector<devbridge::ingest::SpooledMessage> out;
  uint64_t from = 1;
  for (int i = 0; i < 100000 && from < (*spool)->next_seq(); ++i) {
    absl::StatusOr<uint64_t> next = (*spool)->Read(from, 64, &out);
    if (!next.ok()) break;
    if (*next <= from && out.empty()) std::abort();  // no progress: a reader that would spin
    from = *next;
    out.clear();
  }
  absl::StatusOr<uint64_t> seq = (*spool)->Append("devices/d/data", "after", absl::Now());
  if (!seq.ok()) return 0;
  out.clear();
  absl::StatusOr<uint64_t> next = (*spool)->Read(*seq, 1, &out);
  if (!next.ok() || out.size() != 1 || out[0].payload != "after" || out[0].seq != *seq) std::abort();
  return 0;
}
