// The broker-connection flags ingest and the simulator share (CONTRACT §10.4): TLS files,
// mqtt_insecure and mqtt_version. Linked into a binary, they appear in its --help.
#ifndef DEVBRIDGE_MQTT_FLAGS_H_
#define DEVBRIDGE_MQTT_FLAGS_H_

#include <string>

#include "mqtt/client.h"

namespace devbridge::mqtt {

// The Transport the flags describe for broker URL `url`; exits with status 2 naming the flag
// when one is wrong (an unknown version, TLS files with a tcp:// URL, a file it cannot read).
Transport TransportFromFlags(const std::string& url);

}  // namespace devbridge::mqtt

#endif  // DEVBRIDGE_MQTT_FLAGS_H_
