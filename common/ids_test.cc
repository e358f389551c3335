#include "common/ids.h"

#include <string>

#include "gtest/gtest.h"

namespace devbridge::common {
namespace {

TEST(IsValidId, ContractCharset) {
  EXPECT_TRUE(IsValidId("sim-0001"));
  EXPECT_TRUE(IsValidId("A.b_c:d-9"));
  EXPECT_TRUE(IsValidId(std::string(64, 'x')));
  EXPECT_FALSE(IsValidId(std::string(65, 'x')));
  EXPECT_FALSE(IsValidId(""));
  EXPECT_FALSE(IsValidId("a b"));
  EXPECT_FALSE(IsValidId("a/b"));
  EXPECT_FALSE(IsValidId("a+"));
  EXPECT_FALSE(IsValidId("é"));
}

}  // namespace
}  // namespace devbridge::common
