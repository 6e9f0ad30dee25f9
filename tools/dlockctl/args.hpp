// dlockctl: the command-line parser (pure, no I/O): options declared per
// command, `--name value`, `--name=value`, flags, `--` ends the options.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace dlockctl {

/// Exit codes of dlockctl (docs/dlockctl.md).
enum Exit : int {
  exit_ok = 0,          ///< done; for `deadlocks`: none found
  exit_not_found = 1,   ///< the lock is not held / no holder; for `deadlocks`: a cycle was found
  exit_usage = 2,       ///< bad command line, or a destructive command without --yes
  exit_connection = 3,  ///< a server could not be reached, timed out or refused authentication
  exit_server = 4,      ///< a server answered with an error (wrong key type, permissions, ...)
};

/// A command-line mistake: printed with the command's usage line, exit 2.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct OptionSpec {
  std::string_view name;   ///< without the leading "--"
  std::string_view value;  ///< placeholder of its value ("URI"); empty: a flag
  std::string_view help;   ///< one line; must never show a secret default
};

class Args {
 public:
  [[nodiscard]] bool has(std::string_view name) const { return values_.count(std::string(name)) != 0; }
  /// The last value given for an option, if any.
  [[nodiscard]] std::optional<std::string> get(std::string_view name) const;
  /// Every value given for a repeatable option, in order.
  [[nodiscard]] std::vector<std::string> all(std::string_view name) const;
  [[nodiscard]] const std::vector<std::string>& positionals() const noexcept { return positionals_; }
  [[nodiscard]] bool help() const noexcept { return help_; }

 private:
  friend Args parse_args(std::span<const std::string>, std::span<const OptionSpec>);
  std::map<std::string, std::vector<std::string>> values_;
  std::vector<std::string> positionals_;
  bool help_ = false;
};

/// Parses `args` (the words after the command) against `specs`. `-h` and
/// `--help` set help(). Throws UsageError for an unknown option, a missing
/// value, or a value given to a flag.
[[nodiscard]] Args parse_args(std::span<const std::string> args, std::span<const OptionSpec> specs);

/// "  --name VALUE   help" lines, aligned.
[[nodiscard]] std::string format_options(std::span<const OptionSpec> specs);

/// "2", "0.5", "1.5s", "250ms", "2m": a duration, at least 1 ms unless
/// `allow_zero`. Throws UsageError naming the option.
[[nodiscard]] std::chrono::milliseconds parse_duration(std::string_view text, std::string_view option,
                                                       bool allow_zero = false);
/// A decimal integer in [min, max]. Throws UsageError naming the option.
[[nodiscard]] long long parse_integer(std::string_view text, std::string_view option, long long min, long long max);
/// A canonical decimal int64 (as `pg_advisory:` keys): optional '-', digits.
[[nodiscard]] std::int64_t parse_int64(std::string_view text, std::string_view option);

/// "a,b,,c" -> {"a","b","c"} (empty items dropped, spaces trimmed).
[[nodiscard]] std::vector<std::string> split_list(std::string_view text);

}  // namespace dlockctl
