#include "grpcutil/security.h"

#include <openssl/crypto.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace devbridge::grpcutil {
namespace {

absl::StatusOr<std::string> ReadPem(const char* flag, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat(flag, ": cannot read ", path, ": ", std::strerror(errno)));
  std::stringstream text;
  text << in.rdbuf();
  if (text.str().find("-----BEGIN ") == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(flag, ": ", path, " is not a PEM file"));
  }
  return text.str();
}

}  // namespace

absl::Status Validate(const Security& s, bool server) {
  if (s.tls_cert.empty() != s.tls_key.empty()) {
    return absl::InvalidArgumentError(s.tls_cert.empty() ? "grpc_tls_cert: needed with grpc_tls_key"
                                                         : "grpc_tls_key: needed with grpc_tls_cert");
  }
  if (server && s.tls() && s.tls_cert.empty()) {
    return absl::InvalidArgumentError("grpc_tls_cert: a TLS server needs its certificate and key");
  }
  const std::pair<const char*, const std::string*> files[] = {
      {"grpc_tls_cert", &s.tls_cert}, {"grpc_tls_key", &s.tls_key}, {"grpc_tls_ca", &s.tls_ca}};
  for (const auto& [flag, path] : files) {
    if (path->empty()) continue;
    if (absl::StatusOr<std::string> pem = ReadPem(flag, *path); !pem.ok()) return pem.status();
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentials(const Security& s) {
  if (!s.tls()) return grpc::InsecureServerCredentials();
  if (absl::Status valid = Validate(s, /*server=*/true); !valid.ok()) return valid;
  grpc::SslServerCredentialsOptions options(
      s.tls_ca.empty() ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                       : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  if (!s.tls_ca.empty()) options.pem_root_certs = *ReadPem("grpc_tls_ca", s.tls_ca);
  options.pem_key_cert_pairs.push_back({*ReadPem("grpc_tls_key", s.tls_key), *ReadPem("grpc_tls_cert", s.tls_cert)});
  return grpc::SslServerCredentials(options);
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ChannelCredentials(const Security& s) {
  if (!s.tls()) return grpc::InsecureChannelCredentials();
  if (absl::Status valid = Validate(s, /*server=*/false); !valid.ok()) return valid;
  grpc::SslCredentialsOptions options;
  if (!s.tls_ca.empty()) options.pem_root_certs = *ReadPem("grpc_tls_ca", s.tls_ca);
  if (!s.tls_cert.empty()) {
    options.pem_private_key = *ReadPem("grpc_tls_key", s.tls_key);
    options.pem_cert_chain = *ReadPem("grpc_tls_cert", s.tls_cert);
  }
  return grpc::SslCredentials(options);
}

grpc::Status CheckToken(const grpc::ServerContextBase& ctx, absl::string_view token) {
  if (token.empty()) return grpc::Status::OK;
  const std::string expected = absl::StrCat("Bearer ", token);
  const auto& metadata = ctx.client_metadata();
  auto it = metadata.find("authorization");
  if (it != metadata.end() && it->second.size() == expected.size() &&
      CRYPTO_memcmp(it->second.data(), expected.data(), expected.size()) == 0) {
    return grpc::Status::OK;
  }
  return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                      it == metadata.end() ? "authorization: Bearer <internal_token> is required"
                                           : "the internal token does not match");
}

void AddToken(grpc::ClientContext* ctx, absl::string_view token) {
  if (!token.empty()) ctx->AddMetadata("authorization", absl::StrCat("Bearer ", token));
}

}  // namespace devbridge::grpcutil
