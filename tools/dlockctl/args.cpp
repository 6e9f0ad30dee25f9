#include "args.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>

#include <fmt/format.h>

namespace dlockctl {

std::optional<std::string> Args::get(std::string_view name) const {
  const auto it = values_.find(std::string(name));
  if (it == values_.end() || it->second.empty()) return std::nullopt;
  return it->second.back();
}

std::vector<std::string> Args::all(std::string_view name) const {
  const auto it = values_.find(std::string(name));
  return it == values_.end() ? std::vector<std::string>{} : it->second;
}

Args parse_args(std::span<const std::string> args, std::span<const OptionSpec> specs) {
  Args out;
  bool options_done = false;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (options_done || a.size() < 2 || a[0] != '-' || a == "-") {
      out.positionals_.push_back(a);
      continue;
    }
    if (a == "--") {
      options_done = true;
      continue;
    }
    if (a == "-h" || a == "--help") {
      out.help_ = true;
      continue;
    }
    if (a.rfind("--", 0) != 0) throw UsageError(fmt::format("unknown option '{}'", a));
    std::string_view body = std::string_view(a).substr(2);
    std::optional<std::string> inline_value;
    if (const auto eq = body.find('='); eq != std::string_view::npos) {
      inline_value = std::string(body.substr(eq + 1));
      body = body.substr(0, eq);
    }
    const auto spec = std::find_if(specs.begin(), specs.end(), [&](const OptionSpec& s) { return s.name == body; });
    if (spec == specs.end()) throw UsageError(fmt::format("unknown option '--{}'", body));
    auto& slot = out.values_[std::string(body)];
    if (spec->value.empty()) {
      if (inline_value) throw UsageError(fmt::format("option '--{}' takes no value", body));
      slot.emplace_back();
      continue;
    }
    if (inline_value) {
      slot.push_back(*inline_value);
    } else if (i + 1 < args.size()) {
      slot.push_back(args[++i]);
    } else {
      throw UsageError(fmt::format("option '--{}' needs a value ({})", body, spec->value));
    }
  }
  return out;
}

std::string format_options(std::span<const OptionSpec> specs) {
  std::vector<std::string> heads;
  std::size_t width = 0;
  for (const auto& s : specs) {
    heads.push_back(s.value.empty() ? fmt::format("--{}", s.name) : fmt::format("--{} {}", s.name, s.value));
    width = std::max(width, heads.back().size());
  }
  std::string out;
  for (std::size_t i = 0; i < specs.size(); ++i) out += fmt::format("  {:<{}}  {}\n", heads[i], width, specs[i].help);
  return out;
}

std::chrono::milliseconds parse_duration(std::string_view text, std::string_view option, bool allow_zero) {
  const auto bad = [&] {
    return UsageError(
        fmt::format("--{} must be a duration such as 2, 0.5, 1.5s, 250ms or 2m (got '{}')", option, text));
  };
  double scale = 1000.0;  // seconds by default
  std::string_view number = text;
  const auto ends_with = [&](std::string_view suffix) {
    return number.size() > suffix.size() && number.substr(number.size() - suffix.size()) == suffix;
  };
  if (ends_with("ms")) {
    scale = 1.0;
    number.remove_suffix(2);
  } else if (ends_with("s")) {
    number.remove_suffix(1);
  } else if (ends_with("m")) {
    scale = 60'000.0;
    number.remove_suffix(1);
  }
  if (number.empty() ||
      !std::all_of(number.begin(), number.end(), [](char c) { return (c >= '0' && c <= '9') || c == '.'; }) ||
      std::count(number.begin(), number.end(), '.') > 1 || number.front() == '.' || number.back() == '.')
    throw bad();
  // from_chars, not std::stod: a number beyond a double's range (400 digits)
  // is a bad value like any other, not std::out_of_range.
  double parsed = 0;
  const auto [end, ec] = std::from_chars(number.data(), number.data() + number.size(), parsed);
  if (ec != std::errc{} || end != number.data() + number.size()) throw bad();
  const double v = parsed * scale;
  if (!std::isfinite(v) || v > 1e12) throw bad();
  const auto ms = std::chrono::milliseconds(static_cast<long long>(std::llround(v)));
  if (ms.count() == 0 && !allow_zero)
    throw UsageError(fmt::format("--{} must be at least 1ms (got '{}')", option, text));
  return ms;
}

long long parse_integer(std::string_view text, std::string_view option, long long min, long long max) {
  long long v = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc{} || end != text.data() + text.size() || text.empty() || v < min || v > max)
    throw UsageError(fmt::format("--{} must be an integer in {}..{} (got '{}')", option, min, max, text));
  return v;
}

std::int64_t parse_int64(std::string_view text, std::string_view option) {
  std::int64_t v = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc{} || end != text.data() + text.size() || text.empty())
    throw UsageError(fmt::format("--{} must be a 64-bit integer (got '{}')", option, text));
  return v;
}

std::vector<std::string> split_list(std::string_view text) {
  std::vector<std::string> out;
  while (!text.empty()) {
    const auto comma = text.find(',');
    std::string_view item = text.substr(0, comma);
    while (!item.empty() && item.front() == ' ') item.remove_prefix(1);
    while (!item.empty() && item.back() == ' ') item.remove_suffix(1);
    if (!item.empty()) out.emplace_back(item);
    if (comma == std::string_view::npos) break;
    text.remove_prefix(comma + 1);
  }
  return out;
}

}  // namespace dlockctl
