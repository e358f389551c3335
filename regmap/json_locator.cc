#include "regmap/json_locator.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace devbridge::regmap {
namespace {

// A minimal scanner over valid JSON that tracks the path of each value and its line.
class Scanner {
 public:
  Scanner(absl::string_view text, absl::string_view target) : text_(text), target_(target) {}

  int Find() {
    Value("", 0);
    return found_;
  }

 private:
  static constexpr int kMaxDepth = 256;

  void SkipSpace() {
    while (pos_ < text_.size()) {
      const char c = text_[pos_];
      if (c == '\n') ++line_;
      if (c != ' ' && c != '\t' && c != '\n' && c != '\r') return;
      ++pos_;
    }
  }

  std::string String() {
    std::string out;
    ++pos_;  // opening quote
    while (pos_ < text_.size() && text_[pos_] != '"') {
      if (text_[pos_] == '\\' && pos_ + 1 < text_.size()) ++pos_;  // keys with escapes: kept raw
      out.push_back(text_[pos_++]);
    }
    ++pos_;  // closing quote
    return out;
  }

  bool Expect(char c) {
    SkipSpace();
    if (pos_ < text_.size() && text_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }

  void Value(const std::string& path, int depth) {
    SkipSpace();
    if (found_ != 0 || pos_ >= text_.size() || depth > kMaxDepth) return;
    if (path == target_) {
      found_ = line_;
      return;
    }
    const char c = text_[pos_];
    if (c == '{') {
      ++pos_;
      if (Expect('}')) return;
      do {
        SkipSpace();
        if (pos_ >= text_.size() || text_[pos_] != '"') return;
        const std::string key = String();
        if (!Expect(':')) return;
        Value(path.empty() ? key : absl::StrCat(path, ".", key), depth + 1);
        if (found_ != 0) return;
      } while (Expect(','));
      Expect('}');
    } else if (c == '[') {
      ++pos_;
      if (Expect(']')) return;
      int index = 0;
      do {
        Value(absl::StrCat(path, "[", index++, "]"), depth + 1);
        if (found_ != 0) return;
      } while (Expect(','));
      Expect(']');
    } else if (c == '"') {
      String();
    } else {
      while (pos_ < text_.size() && absl::string_view(",]} \t\r\n").find(text_[pos_]) ==
                                        absl::string_view::npos) {
        ++pos_;
      }
    }
  }

  absl::string_view text_;
  absl::string_view target_;
  size_t pos_ = 0;
  int line_ = 1;
  int found_ = 0;
};

}  // namespace

int LineOfPath(absl::string_view json, absl::string_view path) { return Scanner(json, path).Find(); }

std::pair<int, int> LineAndColumn(absl::string_view text, size_t offset) {
  int line = 1;
  int column = 1;
  for (size_t i = 0; i < offset && i < text.size(); ++i) {
    if (text[i] == '\n') {
      ++line;
      column = 1;
    } else {
      ++column;
    }
  }
  return {line, column};
}

}  // namespace devbridge::regmap
