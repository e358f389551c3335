// Security of the internal gRPC calls (CONTRACT §10.2): a shared token every call but
// grpc.health.v1.Health must carry as `authorization: Bearer <token>`, and TLS (mutual TLS
// when both sides have a CA) from PEM files. The same options serve servers and clients.
#ifndef DEVBRIDGE_GRPCUTIL_SECURITY_H_
#define DEVBRIDGE_GRPCUTIL_SECURITY_H_

#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace devbridge::grpcutil {

struct Security {
  std::string internal_token;  // empty: calls are not authenticated
  std::string tls_cert;        // PEM file: this side's certificate (server; client for mTLS)
  std::string tls_key;         // PEM file: its private key
  std::string tls_ca;          // PEM file: the CA that signs the peer (server: require client certs)
  bool tls() const { return !tls_cert.empty() || !tls_key.empty() || !tls_ca.empty(); }
};

// Checks that the files the options name can be read and belong together (cert with key).
// Errors name the flag: "grpc_tls_key: cannot read /x: No such file or directory".
absl::Status Validate(const Security& security, bool server);

// Credentials for a server: insecure without TLS options, else TLS with tls_cert and
// tls_key, and with tls_ca the client must present a certificate signed by it.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentials(const Security& security);
// Credentials for a channel: insecure without TLS options, else TLS trusting tls_ca (the
// system's roots when empty), presenting tls_cert/tls_key when given.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ChannelCredentials(const Security& security);

// OK when `token` is empty or the call carries `authorization: Bearer <token>`; else
// UNAUTHENTICATED. The comparison takes the same time whatever the token is.
grpc::Status CheckToken(const grpc::ServerContextBase& ctx, absl::string_view token);
// Adds the token to an outgoing call (nothing when empty).
void AddToken(grpc::ClientContext* ctx, absl::string_view token);

}  // namespace devbridge::grpcutil

#endif  // DEVBRIDGE_GRPCUTIL_SECURITY_H_
