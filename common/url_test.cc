#include "common/url.h"

#include "gtest/gtest.h"

namespace devbridge {
namespace {

TEST(Url, DecodesEscapesAndPlus) {
  EXPECT_EQ(UrlDecode("a%20b+c%7B%22x%22%7D"), "a b c{\"x\"}");
  EXPECT_EQ(UrlDecode("100%"), "100%");
  EXPECT_EQ(UrlDecode("%zz%4"), "%zz%4");
}

TEST(Url, SplitsQueries) {
  auto q = ParseQuery("systemId=fleet&flag&groups=a%2Cb&&limit=5&limit=6");
  EXPECT_EQ(q.size(), 4u);
  EXPECT_EQ(q["systemId"], "fleet");
  EXPECT_EQ(q["flag"], "");
  EXPECT_EQ(q["groups"], "a,b");
  EXPECT_EQ(q["limit"], "6");
  EXPECT_TRUE(ParseQuery("").empty());
}

}  // namespace
}  // namespace devbridge
