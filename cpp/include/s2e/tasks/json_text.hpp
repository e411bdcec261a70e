// Writing JSON text for the task results (reading uses s2e::Json from s2e/json.hpp).
#pragma once

#include <string>

namespace s2e {
namespace tasks {
namespace json {

std::string quote(const std::string& s);  // a JSON string literal
std::string number(double v);             // shortest text that round-trips, as Python's repr

}  // namespace json
}  // namespace tasks
}  // namespace s2e
