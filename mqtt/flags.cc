#include "mqtt/flags.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "common/flags.h"

ABSL_FLAG(std::string, mqtt_ca_file, "",
          "PEM CA certificates to trust for an ssl:// or mqtts:// mqtt_url; empty: the system's");
ABSL_FLAG(std::string, mqtt_cert_file, "", "PEM client certificate for the broker (with mqtt_key_file)");
ABSL_FLAG(std::string, mqtt_key_file, "", "PEM private key of mqtt_cert_file");
ABSL_FLAG(bool, mqtt_insecure, false,
          "TLS without checking the broker's certificate and name (for tests; never in production)");
ABSL_FLAG(std::string, mqtt_version, "3.1.1",
          "MQTT protocol version: 3.1, 3.1.1 or 5 (with 5 a kept session is clean start false with a session "
          "expiry interval, and shared subscriptions are MQTT 5's own)");

namespace devbridge::mqtt {

Transport TransportFromFlags(const std::string& url) {
  using common::FlagError;
  Transport t;
  t.ca_file = absl::GetFlag(FLAGS_mqtt_ca_file);
  t.cert_file = absl::GetFlag(FLAGS_mqtt_cert_file);
  t.key_file = absl::GetFlag(FLAGS_mqtt_key_file);
  t.insecure = absl::GetFlag(FLAGS_mqtt_insecure);
  absl::StatusOr<int> version = ParseVersion(absl::GetFlag(FLAGS_mqtt_version));
  if (!version.ok()) FlagError("mqtt_version", version.status().message());
  t.version = *version;
  const std::pair<const char*, const std::string*> files[] = {
      {"mqtt_ca_file", &t.ca_file}, {"mqtt_cert_file", &t.cert_file}, {"mqtt_key_file", &t.key_file}};
  for (const auto& [flag, file] : files) {
    if (file->empty()) continue;
    if (!IsTlsUrl(url)) FlagError(flag, absl::StrCat("set, but mqtt_url ", url, " is not ssl:// or mqtts://"));
    if (::access(file->c_str(), R_OK) != 0) FlagError(flag, absl::StrCat("cannot read ", *file, ": ", std::strerror(errno)));
  }
  if (t.cert_file.empty() != t.key_file.empty()) {
    FlagError(t.cert_file.empty() ? "mqtt_cert_file" : "mqtt_key_file", "mqtt_cert_file and mqtt_key_file go together");
  }
  return t;
}

}  // namespace devbridge::mqtt
