#include "output.hpp"

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <ctime>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace dlockctl {

namespace {
// Length of the valid UTF-8 sequence at s[i], or 0 if the byte there does not start one.
std::size_t utf8_sequence(std::string_view s, std::size_t i) noexcept {
  const auto b = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = b(i);
  if (c < 0x80) return 1;
  std::size_t n = 0;
  std::uint32_t cp = 0;
  if ((c & 0xe0) == 0xc0) {
    n = 2;
    cp = c & 0x1f;
  } else if ((c & 0xf0) == 0xe0) {
    n = 3;
    cp = c & 0x0f;
  } else if ((c & 0xf8) == 0xf0) {
    n = 4;
    cp = c & 0x07;
  } else {
    return 0;
  }
  if (i + n > s.size()) return 0;
  for (std::size_t k = 1; k < n; ++k) {
    if ((b(i + k) & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (b(i + k) & 0x3f);
  }
  const std::uint32_t min = n == 2 ? 0x80 : n == 3 ? 0x800 : 0x10000;
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
  return n;
}
}  // namespace

bool valid_utf8(std::string_view s) noexcept {
  for (std::size_t i = 0; i < s.size();) {
    const std::size_t n = utf8_sequence(s, i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

namespace {
// What nlohmann::json is given: `s` with every byte that is not part of valid
// UTF-8 replaced by U+FFFD, so the dump never throws and each bad byte counts once.
std::string valid_text(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size();) {
    const std::size_t n = utf8_sequence(s, i);
    if (n == 0) {
      out += "\xef\xbf\xbd";
      ++i;
    } else {
      out.append(s.substr(i, n));
      i += n;
    }
  }
  return out;
}

// nlohmann's compact dump (UTF-8 kept), with U+FFFD and DEL escaped as dlockctl
// has always written them; both can occur only inside strings.
std::string dump(const nlohmann::ordered_json& j) {
  const std::string raw = j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
  std::string out;
  out.reserve(raw.size());
  for (std::size_t i = 0; i < raw.size(); ++i) {
    if (raw.compare(i, 3, "\xef\xbf\xbd") == 0) {
      out += "\\ufffd";
      i += 2;
    } else if (raw[i] == '\x7f') {
      out += "\\u007f";
    } else {
      out += raw[i];
    }
  }
  return out;
}
}  // namespace

std::string json_quote(std::string_view s) { return dump(nlohmann::ordered_json(valid_text(s))); }

std::string escape_text(std::string_view s) {
  std::string out;
  for (std::size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    const std::size_t n = utf8_sequence(s, i);
    if (n > 1) {
      // C1 control characters (U+0080..U+009F) are escapes on some terminals.
      const bool c1 = n == 2 && c == 0xc2 && static_cast<unsigned char>(s[i + 1]) < 0xa0;
      if (!c1) {
        out.append(s.substr(i, n));
        i += n;
        continue;
      }
    }
    if (n == 1 && c == '\\') {
      out += "\\\\";
    } else if (n == 1 && c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      out += fmt::format("\\x{:02x}", c);
    }
    ++i;
  }
  return out;
}

std::string hex(std::string_view s) {
  std::string out;
  out.reserve(2 * s.size());
  for (const char c : s) out += fmt::format("{:02x}", static_cast<unsigned char>(c));
  return out;
}

struct JsonWriter::Document {
  nlohmann::ordered_json root;
  std::vector<nlohmann::ordered_json*> stack;  // the open containers (their parents are not touched meanwhile)
  std::string pending_key;
  std::string out;

  nlohmann::ordered_json& add(nlohmann::ordered_json v) {
    if (stack.empty()) {
      root = std::move(v);
      return root;
    }
    nlohmann::ordered_json& top = *stack.back();
    if (top.is_array()) {
      top.push_back(std::move(v));
      return top.back();
    }
    nlohmann::ordered_json& slot = top[pending_key];
    slot = std::move(v);
    return slot;
  }
};

JsonWriter::JsonWriter() : doc_(std::make_unique<Document>()) {}
JsonWriter::~JsonWriter() = default;
JsonWriter::JsonWriter(JsonWriter&&) noexcept = default;
JsonWriter& JsonWriter::operator=(JsonWriter&&) noexcept = default;

JsonWriter& JsonWriter::begin_object() {
  doc_->stack.push_back(&doc_->add(nlohmann::ordered_json::object()));
  return *this;
}
JsonWriter& JsonWriter::end_object() {
  doc_->stack.pop_back();
  return *this;
}
JsonWriter& JsonWriter::begin_array() {
  doc_->stack.push_back(&doc_->add(nlohmann::ordered_json::array()));
  return *this;
}
JsonWriter& JsonWriter::end_array() {
  doc_->stack.pop_back();
  return *this;
}
JsonWriter& JsonWriter::key(std::string_view k) {
  doc_->pending_key = valid_text(k);
  return *this;
}
JsonWriter& JsonWriter::value(std::string_view s) {
  doc_->add(valid_text(s));
  return *this;
}
JsonWriter& JsonWriter::value(long long v) {
  doc_->add(v);
  return *this;
}
JsonWriter& JsonWriter::value(std::size_t v) {
  doc_->add(static_cast<std::uint64_t>(v));
  return *this;
}
JsonWriter& JsonWriter::value(bool v) {
  doc_->add(v);
  return *this;
}
JsonWriter& JsonWriter::null() {
  doc_->add(nullptr);
  return *this;
}
JsonWriter& JsonWriter::name(std::string_view k, std::string_view s) {
  key(k).value(s);
  if (!valid_utf8(s)) key(std::string(k) + "_hex").value(hex(s));
  return *this;
}
JsonWriter& JsonWriter::value_or_null(const std::optional<std::string>& s) { return s ? value(*s) : null(); }
JsonWriter& JsonWriter::token(const std::optional<std::string>& t) {
  if (!t) return null();
  const bool digits = !t->empty() && t->size() <= 20 &&
                      std::all_of(t->begin(), t->end(), [](char c) { return c >= '0' && c <= '9'; }) &&
                      (t->size() == 1 || t->front() != '0');
  std::uint64_t n = 0;
  const auto [end, ec] = std::from_chars(t->data(), t->data() + t->size(), n);
  if (!digits || ec != std::errc() || end != t->data() + t->size()) return value(*t);  // also beyond 64 bits
  doc_->add(n);
  return *this;
}
const std::string& JsonWriter::str() const {
  doc_->out = dump(doc_->root);
  return doc_->out;
}

namespace {
std::size_t display_width(std::string_view s) {
  return static_cast<std::size_t>(
      std::count_if(s.begin(), s.end(), [](char c) { return (static_cast<unsigned char>(c) & 0xc0) != 0x80; }));
}
}  // namespace

std::string Table::render() const {
  std::vector<std::size_t> width(headers_.size(), 0);
  for (std::size_t c = 0; c < headers_.size(); ++c) width[c] = display_width(headers_[c]);
  for (const auto& r : rows_)
    for (std::size_t c = 0; c < r.size() && c < width.size(); ++c) width[c] = std::max(width[c], display_width(r[c]));
  std::string out;
  const auto line = [&](const std::vector<std::string>& r) {
    std::string l;
    for (std::size_t c = 0; c < width.size(); ++c) {
      const std::string cell = c < r.size() ? r[c] : "";
      l += cell;
      if (c + 1 < width.size()) l.append(width[c] - display_width(cell) + 2, ' ');
    }
    while (!l.empty() && l.back() == ' ') l.pop_back();
    out += l;
    out += '\n';
  };
  line(headers_);
  for (const auto& r : rows_) line(r);
  return out;
}

std::string format_ttl(long long ms) {
  if (ms == -1) return "no TTL";
  if (ms < 0) return "-";
  if (ms < 1000) return fmt::format("{}ms", ms);
  if (ms < 60'000) return fmt::format("{}.{:03}s", ms / 1000, ms % 1000);
  const long long s = ms / 1000;
  if (s < 3600) return fmt::format("{}m{:02}s", s / 60, s % 60);
  if (s < 86400) return fmt::format("{}h{:02}m", s / 3600, (s % 3600) / 60);
  return fmt::format("{}d{:02}h", s / 86400, (s % 86400) / 3600);
}

std::string format_utc(std::chrono::system_clock::time_point t) {
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
  const std::time_t secs = static_cast<std::time_t>(ms >= 0 ? ms / 1000 : (ms - 999) / 1000);
  std::tm tm{};
  ::gmtime_r(&secs, &tm);
  const long long frac = ms - static_cast<long long>(secs) * 1000;
  return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                     tm.tm_hour, tm.tm_min, tm.tm_sec, frac);
}

}  // namespace dlockctl
