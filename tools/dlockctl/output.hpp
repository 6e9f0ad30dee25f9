// dlockctl: output helpers (pure): a JSON writer (nlohmann-json), escaping of names for the
// terminal, aligned text tables, durations and times.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace dlockctl {

/// True if `s` is valid UTF-8 (no overlongs, surrogates or code points > U+10FFFF).
[[nodiscard]] bool valid_utf8(std::string_view s) noexcept;

/// `s` as a JSON string literal with its quotes. Valid UTF-8 is kept,
/// '"', '\\' and control characters are escaped, and each byte that is not
/// part of valid UTF-8 becomes U+FFFD (JsonWriter::name() adds the exact
/// bytes in hex for such strings).
[[nodiscard]] std::string json_quote(std::string_view s);

/// `s` for a terminal: printable ASCII and valid non-control UTF-8 as is;
/// '\\' doubled; other bytes (control characters, escape sequences, invalid
/// UTF-8) as \xNN. A name can thus never move the cursor or change colours.
[[nodiscard]] std::string escape_text(std::string_view s);

/// Lowercase hex of the bytes.
[[nodiscard]] std::string hex(std::string_view s);

/// Writes one JSON document, built with nlohmann::json (the library that
/// also parses etcd's replies): objects keep their keys in insertion order.
class JsonWriter {
 public:
  JsonWriter();
  ~JsonWriter();
  JsonWriter(JsonWriter&&) noexcept;
  JsonWriter& operator=(JsonWriter&&) noexcept;

  JsonWriter& begin_object();
  JsonWriter& end_object();
  JsonWriter& begin_array();
  JsonWriter& end_array();
  JsonWriter& key(std::string_view k);
  JsonWriter& value(std::string_view s);
  JsonWriter& value(const char* s) { return value(std::string_view(s)); }
  JsonWriter& value(long long v);
  JsonWriter& value(int v) { return value(static_cast<long long>(v)); }
  JsonWriter& value(std::size_t v);
  JsonWriter& value(bool v);
  JsonWriter& null();
  /// key(k).value(s), plus k + "_hex" with the exact bytes when `s` is not valid UTF-8.
  JsonWriter& name(std::string_view k, std::string_view s);
  /// An optional string: the value or null.
  JsonWriter& value_or_null(const std::optional<std::string>& s);
  /// A token ("17") as a number when it is an unsigned 64-bit integer, else as a string; null when absent.
  JsonWriter& token(const std::optional<std::string>& t);

  /// The document, compact, as json_quote() writes strings.
  [[nodiscard]] const std::string& str() const;

 private:
  struct Document;  // the nlohmann::ordered_json tree (output.cpp)
  std::unique_ptr<Document> doc_;
};

/// Columns aligned on the display width (UTF-8 code points).
class Table {
 public:
  explicit Table(std::vector<std::string> headers) : headers_(std::move(headers)) {}
  void add(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  [[nodiscard]] bool empty() const noexcept { return rows_.empty(); }
  [[nodiscard]] std::string render() const;

 private:
  std::vector<std::string> headers_;
  std::vector<std::vector<std::string>> rows_;
};

/// A remaining TTL in milliseconds: "812ms", "9.812s", "12m03s", "2h05m";
/// -1: "no TTL"; -2 or less: "-".
[[nodiscard]] std::string format_ttl(long long ms);
/// "2024-05-01T12:00:00.123Z".
[[nodiscard]] std::string format_utc(std::chrono::system_clock::time_point t);

}  // namespace dlockctl
