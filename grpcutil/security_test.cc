#include "grpcutil/security.h"

#include <cstdio>
#include <fstream>

#include "gtest/gtest.h"

namespace devbridge::grpcutil {
namespace {

TEST(Security, InsecureWithoutTlsOptions) {
  Security none;
  EXPECT_FALSE(none.tls());
  EXPECT_TRUE(ServerCredentials(none).ok());
  EXPECT_TRUE(ChannelCredentials(none).ok());
}

TEST(Security, ErrorsNameTheFlag) {
  Security half;
  half.tls_cert = "/nonexistent/cert.pem";
  EXPECT_EQ(Validate(half, true).message(), "grpc_tls_key: needed with grpc_tls_cert");
  half.tls_key = "/nonexistent/key.pem";
  EXPECT_EQ(Validate(half, true).message().rfind("grpc_tls_cert: cannot read /nonexistent/cert.pem", 0), 0u)
      << Validate(half, true);
  Security ca_only;
  ca_only.tls_ca = "/nonexistent/ca.pem";
  EXPECT_EQ(Validate(ca_only, /*server=*/true).message(), "grpc_tls_cert: a TLS server needs its certificate and key");
  EXPECT_EQ(Validate(ca_only, /*server=*/false).message().rfind("grpc_tls_ca: cannot read", 0), 0u);
  const std::string not_pem = ::testing::TempDir() + "/not.pem";
  std::ofstream(not_pem) << "hello";
  ca_only.tls_ca = not_pem;
  EXPECT_NE(Validate(ca_only, false).message().find("is not a PEM file"), std::string::npos);
  EXPECT_FALSE(ChannelCredentials(ca_only).ok());
  std::remove(not_pem.c_str());
}

}  // namespace
}  // namespace devbridge::grpcutil
