// Finds the line of a value in JSON text by its path ("profiles.meter.registers[2].type"),
// so that errors found after parsing can point at the place in the file.
#ifndef DEVBRIDGE_REGMAP_JSON_LOCATOR_H_
#define DEVBRIDGE_REGMAP_JSON_LOCATOR_H_

#include <string>
#include "absl/strings/string_view.h"

namespace devbridge::regmap {

// The 1-based line where the value at `path` starts, or 0 when the text has no such path.
// `json` must be valid JSON. Object members are joined with '.', array items as "[i]".
int LineOfPath(absl::string_view json, absl::string_view path);

// 1-based line and column of byte offset `offset` in `text`.
std::pair<int, int> LineAndColumn(absl::string_view text, size_t offset);

}  // namespace devbridge::regmap

#endif  // DEVBRIDGE_REGMAP_JSON_LOCATOR_H_
