// A message on the intake stream (DEVBRIDGE_IN) as the partition's owner reads it, whatever a
// replica of another version, a bit flip or a hand-made publish put there: decoding must not
// crash or read out of bounds; what decodes must encode back to the same bytes; and the
// owner's duplicate window, offered every message decoded along the way, must stay within its
// bounds.
#include <cstddef>
#include <cstdint>
#include <algorithm>
#include <cstdlib>
#include <string>

#include "absl/strings/string_view.h"
#include "services/ingest/cluster/partitions.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using devbridge::ingest::cluster::DecodeIntake;
  using devbridge::ingest::cluster::EncodeIntake;
  using devbridge::ingest::cluster::IntakeMessage;
  using devbridge::ingest::cluster::IntakeWindow;
  const absl::string_view bytes(reinterpret_cast<const char*>(data), size);
  IntakeMessage message;
  if (DecodeIntake(bytes, &message)) {
    if (message.topic.data() < bytes.data() || message.payload.data() + message.payload.size() > bytes.data() + size) {
      std::abort();  // a view outside the input
    }
    IntakeMessage again;
    const std::string encoded = EncodeIntake(message);
    if (!DecodeIntake(encoded, &again) || again.topic != message.topic || again.payload != message.payload ||
        again.taken_at != message.taken_at || again.source != message.source || again.seq != message.seq ||
        again.session != message.session || again.packet_id != message.packet_id || again.dup != message.dup) {
      std::abort();
    }
  }
  // The input as a run of messages, each cut where its first byte says, through a small window.
  IntakeWindow window(8, 4);
  size_t at = 0;
  while (at < size) {
    const size_t length = std::min<size_t>(size - at, 1 + data[at]);
    IntakeMessage m;
    if (DecodeIntake(bytes.substr(at, length), &m)) (void)window.Offer(m);
    if (window.origins() > 8 || window.packets() > 4) std::abort();
    at += length;
  }
  return 0;
}
