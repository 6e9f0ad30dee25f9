// The Redis protocol layer (no I/O): requests, the reply parser, decisions.
#include <dlock/detail/redis_protocol.hpp>

#include <hiredis/hiredis.h>

#include <algorithm>
#include <charconv>
#include <climits>
#include <new>
#include <utility>

#include <fmt/format.h>

namespace dlock::detail::redis_proto {

namespace {

bool starts_with(std::string_view s, std::string_view p) noexcept { return s.substr(0, p.size()) == p; }
bool contains(std::string_view s, std::string_view p) noexcept { return s.find(p) != std::string_view::npos; }

// A decimal number as Redis writes one (and as hiredis' string2ll accepts it):
// "0", or an optional '-' then digits without a leading zero; in range.
template <class T>
bool parse_decimal(std::string_view s, T& out) noexcept {
  const std::string_view digits = s.substr(!s.empty() && s[0] == '-' ? 1 : 0);
  if (digits.empty() || (digits[0] == '0' && s.size() > 1)) return false;
  const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc{} && p == s.data() + s.size();
}

Reply to_reply(const redisReply* r) {
  Reply v;
  switch (r->type) {
    case REDIS_REPLY_INTEGER:
      v.type = Reply::Type::integer;
      v.integer = r->integer;
      break;
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
    case REDIS_REPLY_ERROR:
      v.type = r->type == REDIS_REPLY_STRING   ? Reply::Type::string
               : r->type == REDIS_REPLY_STATUS ? Reply::Type::status
                                               : Reply::Type::error;
      v.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_ARRAY:
      v.type = Reply::Type::array;
      v.elements.reserve(r->elements);
      for (std::size_t i = 0; i < r->elements; ++i) v.elements.push_back(to_reply(r->element[i]));
      break;
    default:
      v.type = Reply::Type::nil;
  }
  return v;
}

struct ReplyFree {
  void operator()(void* r) const noexcept { freeReplyObject(r); }
};
struct CommandFree {
  void operator()(char* c) const noexcept { redisFreeCommand(c); }
};

}  // namespace

// ---- ReplyParser ----

void ReplyParser::ReaderDeleter::operator()(redisReader* r) const noexcept { redisReaderFree(r); }

ReplyParser::ReplyParser(ParserLimits limits) : limits_(limits), reader_(redisReaderCreate()) {
  if (!reader_) throw std::bad_alloc();
  // hiredis 0.14 refuses arrays nested deeper than 8 (its read stack has 9 entries).
  limits_.max_depth = std::min<std::size_t>(limits_.max_depth, 8);
  limits_.max_elements = std::min<std::size_t>(limits_.max_elements, INT_MAX);
}

ReplyParser::~ReplyParser() = default;
ReplyParser::ReplyParser(ReplyParser&&) noexcept = default;
ReplyParser& ReplyParser::operator=(ReplyParser&&) noexcept = default;

void ReplyParser::feed(std::string_view bytes) {
  if (!error_) buf_.append(bytes);
}

void ReplyParser::fail(std::string message, std::size_t at) {
  error_ =
      ProtocolError{fmt::format("malformed reply from Redis at byte {}: {}", consumed_ + at, message), consumed_ + at};
}

bool ReplyParser::element_done() {
  while (!open_.empty()) {
    if (--open_.back() > 0) return false;
    open_.pop_back();
  }
  return true;
}

// The framer: checks one reply's structure ahead of hiredis, resuming where
// the previous call stopped, so hiredis only ever sees complete, valid replies.
ReplyParser::Scan ReplyParser::scan() {
  for (;;) {
    if (bulk_) {
      const std::size_t n = *bulk_;
      if (buf_.size() - pos_ < n + 2) return Scan::need_more;
      if (buf_[pos_ + n] != '\r' || buf_[pos_ + n + 1] != '\n') {
        fail(fmt::format("a bulk string of {} bytes is not followed by CRLF", n), pos_ + n);
        return Scan::malformed;
      }
      pos_ += n + 2;
      line_from_ = pos_;
      bulk_.reset();
      if (element_done()) return Scan::complete;
      continue;
    }
    if (pos_ >= buf_.size()) return Scan::need_more;
    const char type = buf_[pos_];
    if (type != '+' && type != '-' && type != ':' && type != '$' && type != '*') {
      fail(fmt::format("unknown type byte 0x{:02x}", static_cast<unsigned char>(type)), pos_);
      return Scan::malformed;
    }
    // Numbers fit in 20 characters; status and error lines in max_line.
    const std::size_t max_line = type == '+' || type == '-' ? limits_.max_line : 24;
    const std::size_t from = std::max(line_from_, pos_ + 1);
    const std::size_t cr = buf_.find("\r\n", from);
    if (cr == std::string::npos) {
      if (buf_.size() - pos_ - 1 > max_line + 1) {
        fail(fmt::format("a '{}' line longer than {} bytes", type, max_line), pos_);
        return Scan::malformed;
      }
      line_from_ = std::max(from, buf_.size() - 1);  // a CR at the end may meet its LF in the next chunk
      return Scan::need_more;
    }
    const std::string_view line = std::string_view(buf_).substr(pos_ + 1, cr - pos_ - 1);
    if (line.size() > max_line) {
      fail(fmt::format("a '{}' line longer than {} bytes", type, max_line), pos_);
      return Scan::malformed;
    }
    long long n = 0;
    if (type == ':' || type == '$' || type == '*') {
      if (!parse_decimal(line, n)) {
        fail(fmt::format("the {} is not a decimal number in range", type == ':'   ? "integer"
                                                                    : type == '$' ? "bulk string length"
                                                                                  : "array length"),
             pos_ + 1);
        return Scan::malformed;
      }
    }
    const std::size_t at = pos_;
    pos_ = cr + 2;
    line_from_ = pos_;
    if (type == '$' && n != -1) {
      if (n < 0) {
        fail(fmt::format("bulk string length {} (only -1, nil, may be negative)", n), at + 1);
        return Scan::malformed;
      }
      if (static_cast<unsigned long long>(n) > limits_.max_bulk) {
        fail(fmt::format("a bulk string of {} bytes exceeds the limit of {}", n, limits_.max_bulk), at + 1);
        return Scan::malformed;
      }
      bulk_ = static_cast<std::size_t>(n);
      continue;
    }
    if (type == '*' && n != -1) {
      if (n < 0) {
        fail(fmt::format("array length {} (only -1, nil, may be negative)", n), at + 1);
        return Scan::malformed;
      }
      if (static_cast<unsigned long long>(n) > limits_.max_elements - elements_) {
        fail(fmt::format("a reply with more than {} array elements", limits_.max_elements), at + 1);
        return Scan::malformed;
      }
      elements_ += static_cast<std::size_t>(n);
      if (n > 0) {
        if (open_.size() >= limits_.max_depth) {
          fail(fmt::format("arrays nested deeper than {}", limits_.max_depth), at);
          return Scan::malformed;
        }
        open_.push_back(static_cast<std::size_t>(n));
        continue;
      }
    }
    if (element_done()) return Scan::complete;
  }
}

std::optional<Reply> ReplyParser::next() {
  if (error_) return std::nullopt;
  const Scan s = scan();
  if (s != Scan::complete) {
    if (s == Scan::need_more && start_ > 0 && start_ >= buf_.size() / 2) {  // keep the buffer short
      buf_.erase(0, start_);
      consumed_ += start_;
      pos_ -= start_;
      line_from_ -= start_;
      start_ = 0;
    }
    return std::nullopt;
  }
  void* raw = nullptr;
  if (redisReaderFeed(reader_.get(), buf_.data() + start_, pos_ - start_) != REDIS_OK ||
      redisReaderGetReply(reader_.get(), &raw) != REDIS_OK || raw == nullptr) {
    if (raw != nullptr) freeReplyObject(raw);
    fail(fmt::format("hiredis refused it ({})", reader_->errstr), start_);
    return std::nullopt;
  }
  const std::unique_ptr<void, ReplyFree> owned(raw);
  Reply out = to_reply(static_cast<const redisReply*>(raw));
  start_ = pos_;
  elements_ = 0;
  if (start_ == buf_.size()) {
    consumed_ += buf_.size();
    buf_.clear();
    start_ = pos_ = line_from_ = 0;
  }
  return out;
}

// ---- Requests ----

void Request::push(std::span<const std::string_view> args) {
  std::vector<const char*> argv;
  std::vector<std::size_t> lens;
  argv.reserve(args.size());
  lens.reserve(args.size());
  for (const std::string_view a : args) {
    argv.push_back(a.data());
    lens.push_back(a.size());
  }
  char* cmd = nullptr;
  const int len = redisFormatCommandArgv(&cmd, static_cast<int>(args.size()), argv.data(), lens.data());
  const std::unique_ptr<char, CommandFree> owned(cmd);
  if (len < 0 || cmd == nullptr) throw std::bad_alloc();
  payload_.append(cmd, static_cast<std::size_t>(len));
  ++commands_;
}

void Request::append(const Request& other) {
  payload_ += other.payload_;
  commands_ += other.commands_;
}

namespace {

std::string ms(std::chrono::milliseconds d) { return std::to_string(d.count()); }

}  // namespace

ScriptCall acquire_call(const RedisKeys& keys, std::string_view owner, std::chrono::milliseconds ttl,
                        std::chrono::milliseconds fence_floor) {
  return ScriptCall{
      RedisScript::acquire, {keys.lock, keys.fence}, {std::string(owner), ms(ttl), ms(fence_pttl(ttl, fence_floor))}};
}

ScriptCall redlock_acquire_call(const RedisKeys& keys, std::string_view owner, std::chrono::milliseconds ttl,
                                std::chrono::milliseconds fence_floor, std::chrono::microseconds clock_floor) {
  ScriptCall call = acquire_call(keys, owner, ttl, fence_floor);
  call.args.push_back(std::to_string(clock_floor.count()));
  call.args.emplace_back(redlock_clock_lag_us);
  return call;
}

ScriptCall release_call(const RedisKeys& keys, std::string_view owner, Publish publish) {
  return ScriptCall{
      RedisScript::release, {keys.lock}, {std::string(owner), publish == Publish::yes ? keys.channel : std::string()}};
}

ScriptCall extend_call(std::string_view lock_key, std::string_view owner, std::chrono::milliseconds ttl) {
  return ScriptCall{RedisScript::extend, {std::string(lock_key)}, {std::string(owner), ms(ttl)}};
}

ScriptCall fence_raise_call(std::string_view fence_key, std::uint64_t token, std::chrono::milliseconds ttl,
                            std::chrono::milliseconds fence_floor) {
  return ScriptCall{
      RedisScript::fence_raise, {std::string(fence_key)}, {std::to_string(token), ms(fence_pttl(ttl, fence_floor))}};
}

ScriptForm push_script_call(Request& request, const ScriptCall& call, const ScriptShas& shas, ScriptForm form) {
  const auto i = static_cast<std::size_t>(call.script);
  const bool own = !call.text.empty();  // a primitive's script, not in redis_scripts
  const std::string_view sha = own ? call.sha : std::string_view(shas[i]);
  const bool by_sha = form == ScriptForm::evalsha && !sha.empty();
  const std::string numkeys = std::to_string(call.keys.size());
  std::vector<std::string_view> argv;
  argv.reserve(3 + call.keys.size() + call.args.size());
  argv.push_back(by_sha ? "EVALSHA" : "EVAL");
  argv.push_back(by_sha ? sha : own ? call.text : redis_scripts[i]);
  argv.push_back(numkeys);
  for (const auto& k : call.keys) argv.push_back(k);
  for (const auto& a : call.args) argv.push_back(a);
  request.push(argv);
  return by_sha ? ScriptForm::evalsha : ScriptForm::eval;
}

void push_script_load(Request& request, RedisScript script) {
  request.push({"SCRIPT", "LOAD", redis_scripts[static_cast<std::size_t>(script)]});
}
void push_ping(Request& request) { request.push({"PING"}); }
void push_subscribe(Request& request, std::string_view channel) { request.push({"SUBSCRIBE", channel}); }
void push_unsubscribe(Request& request, std::string_view channel) { request.push({"UNSUBSCRIBE", channel}); }

// ---- Error replies ----

namespace {

// An error's code: its first word when that is all capitals (and '_'), else "".
std::string_view error_code(std::string_view message) noexcept {
  const std::string_view word = message.substr(0, message.find(' '));
  if (word.empty() || word.size() > 32 ||
      !std::all_of(word.begin(), word.end(), [](char c) { return (c >= 'A' && c <= 'Z') || c == '_'; }))
    return {};
  return word;
}

}  // namespace

std::optional<Redirect> parse_redirect(std::string_view rest) {
  const auto space = rest.find(' ');
  if (space == std::string_view::npos) return std::nullopt;
  const std::string_view slot_text = rest.substr(0, space);
  const std::string_view address = rest.substr(space + 1);
  const auto colon = address.rfind(':');
  if (colon == std::string_view::npos) return std::nullopt;
  unsigned slot = 0, port = 0;
  if (!parse_decimal(slot_text, slot) || slot > 16383) return std::nullopt;
  if (!parse_decimal(address.substr(colon + 1), port) || port == 0 || port > 65535) return std::nullopt;
  const std::string_view host = address.substr(0, colon);
  if (contains(host, " ")) return std::nullopt;
  return Redirect{static_cast<std::uint16_t>(slot), std::string(host), static_cast<std::uint16_t>(port)};
}

ErrorInfo classify_error(std::string_view m) {
  ErrorInfo info;
  info.code = error_code(m);
  const std::string_view c = info.code;
  using K = ErrorKind;
  static constexpr std::pair<std::string_view, ErrorKind> codes[] = {{"NOSCRIPT", K::noscript},
                                                                     {"NOAUTH", K::noauth},
                                                                     {"WRONGPASS", K::auth_refused},
                                                                     {"NOPERM", K::noperm},
                                                                     {"WRONGTYPE", K::wrongtype},
                                                                     {"READONLY", K::readonly},
                                                                     {"LOADING", K::loading},
                                                                     {"MASTERDOWN", K::masterdown},
                                                                     {"TRYAGAIN", K::tryagain},
                                                                     {"CLUSTERDOWN", K::clusterdown},
                                                                     {"OOM", K::oom},
                                                                     {"BUSY", K::busy}};
  for (const auto& [code, kind] : codes) {
    if (c == code) {
      info.kind = kind;
      return info;
    }
  }
  if (c == "MOVED" || c == "ASK") {
    info.redirect = parse_redirect(m.substr(c.size() + 1 > m.size() ? m.size() : c.size() + 1));
    info.kind = !info.redirect ? K::other : c == "MOVED" ? K::moved : K::ask;
    return info;
  }
  if (starts_with(m, "ERR invalid password") || starts_with(m, "ERR invalid username") || starts_with(m, "ERR AUTH")) {
    info.kind = K::auth_refused;
    return info;
  }
  // Raised inside a script: older servers wrap the code in "ERR Error running script".
  if (contains(m, "READONLY")) {
    info.kind = K::readonly;
  } else if (contains(m, "WRONGTYPE")) {
    info.kind = K::wrongtype;
  } else if (contains(m, "OOM command not allowed")) {
    info.kind = K::oom;
  } else if (contains(m, "NOPERM")) {
    info.kind = K::noperm;
  }
  return info;
}

bool is_transient(ErrorKind kind) noexcept {
  switch (kind) {
    case ErrorKind::readonly:
    case ErrorKind::loading:
    case ErrorKind::masterdown:
    case ErrorKind::tryagain:
    case ErrorKind::clusterdown:
    case ErrorKind::busy:
      return true;
    default:
      return false;
  }
}

std::string_view describe(ErrorKind kind) noexcept {
  switch (kind) {
    case ErrorKind::noscript:
      return "the server does not have the script";
    case ErrorKind::noauth:
      return "the server requires authentication";
    case ErrorKind::auth_refused:
      return "authentication refused";
    case ErrorKind::noperm:
      return "the ACL user lacks a permission";
    case ErrorKind::wrongtype:
      return "a dlock key holds the wrong type";
    case ErrorKind::readonly:
      return "the server is a read-only replica";
    case ErrorKind::loading:
      return "the server is loading its dataset";
    case ErrorKind::masterdown:
      return "the replica lost its primary";
    case ErrorKind::tryagain:
      return "the cluster is resharding the slot";
    case ErrorKind::clusterdown:
      return "the cluster is down";
    case ErrorKind::moved:
      return "the slot moved to another node";
    case ErrorKind::ask:
      return "the slot is migrating to another node";
    case ErrorKind::oom:
      return "the server is out of memory";
    case ErrorKind::busy:
      return "the server is busy running a script";
    case ErrorKind::other:
      break;
  }
  return "error reply";
}

ScriptNext after_script_reply(const Reply& reply, ScriptForm sent) noexcept {
  if (sent == ScriptForm::evalsha && reply.is_error() && error_code(reply.str) == "NOSCRIPT")
    return ScriptNext::resend_as_eval;
  return ScriptNext::done;
}

// ---- Typed script results ----

namespace {

ReplyFault fault_of(const Reply& r, std::string_view script) {
  if (r.is_error()) return ReplyFault{classify_error(r.str).kind, r.str};
  return ReplyFault{std::nullopt, fmt::format("unexpected reply to the {} script", script)};
}

Result<bool> parse_flag(const Reply& r, std::string_view script) {
  if (r.type == Reply::Type::integer && (r.integer == 0 || r.integer == 1)) return r.integer == 1;
  return fault_of(r, script);
}

}  // namespace

Result<AcquireReply> parse_acquire(const Reply& r) {
  if (r.type == Reply::Type::array && r.elements.size() == 2 && r.elements[0].type == Reply::Type::integer) {
    const Reply& second = r.elements[1];
    if (r.elements[0].integer == 1 && second.type == Reply::Type::string) {
      AcquireReply out;
      out.acquired = true;
      if (parse_decimal(std::string_view(second.str), out.token)) return out;
    } else if (r.elements[0].integer == 0 && second.type == Reply::Type::integer) {
      AcquireReply out;
      if (second.integer >= 0) out.holder_ttl = std::chrono::milliseconds(second.integer);
      return out;
    }
  }
  return fault_of(r, "acquire");
}

Result<ReleaseReply> parse_release(const Reply& r) {
  if (r.type == Reply::Type::array && r.elements.size() == 2 && r.elements[0].type == Reply::Type::integer &&
      r.elements[0].integer == 1 && r.elements[1].type == Reply::Type::string)
    return ReleaseReply{.released = true, .publish_error = r.elements[1].str};
  auto flag = parse_flag(r, "release");
  if (const bool* b = std::get_if<bool>(&flag)) return ReleaseReply{.released = *b, .publish_error = {}};
  return std::get<ReplyFault>(std::move(flag));
}

Result<bool> parse_extend(const Reply& r) { return parse_flag(r, "extend"); }
Result<bool> parse_fence_raise(const Reply& r) { return parse_flag(r, "fence raise"); }

// ---- Handshake ----

std::string describe_auth_refusal(std::string_view reply) {
  const std::string_view code = error_code(reply);
  std::string_view why = "the server's text is not shown: it may repeat the credentials";
  if (code == "WRONGPASS" || contains(reply, "invalid password") || contains(reply, "invalid username")) {
    why = "wrong password, or the user is unknown or disabled";
  } else if (contains(reply, "without any password configured")) {
    why = "the server has no password set for that user: remove RedisOptions password, or set one on the server";
  } else if (contains(reply, "unknown command")) {
    why = "the server does not know AUTH (renamed, disabled, or refused by a proxy)";
  } else if (code == "NOPERM") {
    why = "the user may not run AUTH";
  } else if (contains(reply, "wrong number of arguments")) {
    why = "the server takes no user name with AUTH (Redis before 6): leave RedisOptions username empty";
  }
  return fmt::format("{}: {}", code.empty() ? std::string_view("error") : code, why);
}

Handshake::Handshake(HandshakeConfig config) : config_(std::move(config)) {
  if (!config_.password.empty()) {
    if (config_.username.empty()) {
      request_.push({"AUTH", config_.password});
    } else {
      request_.push({"AUTH", config_.username, config_.password});
    }
    steps_.emplace_back(Step::auth, RedisScript::acquire);
  }
  if (config_.database != 0) {
    request_.push({"SELECT", std::to_string(config_.database)});
    steps_.emplace_back(Step::select, RedisScript::acquire);
  }
  if (!config_.client_name.empty()) {
    request_.push({"CLIENT", "SETNAME", config_.client_name});
    steps_.emplace_back(Step::setname, RedisScript::acquire);
  }
  if (config_.load_scripts) {
    for (std::size_t i = 0; i < redis_script_count; ++i) {
      push_script_load(request_, static_cast<RedisScript>(i));
      steps_.emplace_back(Step::script, static_cast<RedisScript>(i));
    }
  }
  if (steps_.empty()) status_ = Status::done;
}

std::string Handshake::redacted(std::string_view text) const {
  std::string out(text);
  if (config_.password.empty()) return out;
  for (auto p = out.find(config_.password); p != std::string::npos; p = out.find(config_.password, p + 10))
    out.replace(p, config_.password.size(), "<redacted>");
  return out;
}

void Handshake::fail(Failure f, std::string message) {
  status_ = Status::failed;
  failure_ = f;
  message_ = std::move(message);
}

Handshake::Status Handshake::on_reply(const Reply& r) {
  if (next_ >= steps_.size()) {
    if (status_ == Status::in_progress)
      fail(Failure::protocol, fmt::format("dlock: Redis at {} sent a reply nobody "
                                          "asked for during the handshake",
                                          config_.endpoint));
    return status_;
  }
  const auto [step, script] = steps_[next_++];
  if (status_ != Status::in_progress) return status_;  // draining after a failure
  const ErrorKind kind = r.is_error() ? classify_error(r.str).kind : ErrorKind::other;
  if (r.is_error() && kind == ErrorKind::noauth && step != Step::auth) {
    fail(Failure::auth, fmt::format("dlock: Redis at {} requires authentication; set RedisOptions password (and "
                                    "username for an ACL user)",
                                    config_.endpoint));
    return status_;
  }
  switch (step) {
    case Step::auth:
      if (r.is_error())
        fail(Failure::auth, fmt::format("dlock: Redis at {} refused authentication{} ({}); check RedisOptions "
                                        "username and password",
                                        config_.endpoint,
                                        config_.username.empty() ? std::string(" with the password")
                                                                 : fmt::format(" of user '{}'", config_.username),
                                        describe_auth_refusal(r.str)));
      break;
    case Step::select:
      if (r.is_error())
        fail(Failure::select, fmt::format("dlock: Redis at {} cannot select database {} ({}); check RedisOptions "
                                          "database",
                                          config_.endpoint, config_.database, redacted(r.str)));
      break;
    case Step::setname:  // the name only helps operators (CLIENT LIST); a refusal changes nothing
      break;
    case Step::script: {
      const auto i = static_cast<std::size_t>(script);
      if (r.is_error()) {
        // The ACL (or a renamed SCRIPT) refuses SCRIPT LOAD: calls go as EVAL.
        if (kind == ErrorKind::noperm || contains(r.str, "unknown command")) break;
        fail(Failure::scripts, fmt::format("dlock: Redis at {} cannot load the {} script ({})", config_.endpoint,
                                           redis_script_name(script), redacted(r.str)));
      } else if (r.type == Reply::Type::string && r.str.size() == 40 &&
                 std::all_of(r.str.begin(), r.str.end(),
                             [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); })) {
        shas_[i] = r.str;
      } else {
        fail(Failure::protocol, fmt::format("dlock: unexpected reply to SCRIPT LOAD of the {} script from Redis at {}",
                                            redis_script_name(script), config_.endpoint));
      }
      break;
    }
  }
  if (status_ == Status::in_progress && next_ == steps_.size()) status_ = Status::done;
  return status_;
}

// ---- Pub/sub ----

void SubscriptionTable::want(std::string_view channel) {
  auto it = channels_.find(channel);
  if (it == channels_.end()) it = channels_.emplace(std::string(channel), Channel{}).first;
  ++it->second.refs;
}

void SubscriptionTable::unwant(std::string_view channel) {
  const auto it = channels_.find(channel);
  if (it == channels_.end() || it->second.refs == 0) return;
  if (--it->second.refs == 0) it->second.refused = it->second.lost = false;
  collect(it);
}

void SubscriptionTable::collect(std::map<std::string, Channel, std::less<>>::iterator it) {
  const Channel& c = it->second;
  if (c.refs == 0 && !c.sent && c.pending_acks == 0) channels_.erase(it);
}

Request SubscriptionTable::take_commands() {
  Request r;
  for (auto it = channels_.begin(); it != channels_.end();) {
    auto& [name, c] = *it;
    if (c.refs > 0 && !c.sent && !c.refused) {
      push_subscribe(r, name);
      in_flight_.emplace_back(Sent::subscribe, name);
      c.sent = true;
      c.acked = false;
      ++c.pending_acks;
    } else if (c.refs == 0 && c.sent) {
      push_unsubscribe(r, name);
      in_flight_.emplace_back(Sent::unsubscribe, name);
      c.sent = false;
      c.acked = false;
    }
    const auto here = it++;
    collect(here);
  }
  return r;
}

Request SubscriptionTable::take_ping() {
  Request r;
  push_ping(r);
  in_flight_.emplace_back(Sent::ping, std::string());
  return r;
}

PubSubEvent SubscriptionTable::on_reply(const Reply& r) {
  using K = PubSubEvent::Kind;
  using T = Reply::Type;
  if (r.is_error()) {  // answers the oldest command in flight
    if (in_flight_.empty()) return {K::unexpected, {}, {}};
    auto [sent, name] = std::move(in_flight_.front());
    in_flight_.pop_front();
    if (sent != Sent::subscribe) return {K::ignored, std::move(name), {}};
    if (const auto it = channels_.find(name); it != channels_.end()) {
      Channel& c = it->second;
      if (c.pending_acks > 0) --c.pending_acks;
      c.refused = true;
      c.acked = false;
      if (c.pending_acks == 0) c.sent = false;  // the server holds no subscription for it
      collect(it);
    }
    return {K::refused, std::move(name), r.str};
  }
  if (r.type != T::array || r.elements.size() < 2 || r.elements[0].type != T::string) return {K::unexpected, {}, {}};
  const std::string& kind = r.elements[0].str;
  if (kind == "pong" && r.elements.size() == 2) {
    if (in_flight_.empty() || in_flight_.front().first != Sent::ping) return {K::unexpected, {}, {}};
    in_flight_.pop_front();
    return {K::pong, {}, {}};
  }
  if (r.elements.size() != 3 || r.elements[1].type != T::string) return {K::unexpected, {}, {}};
  const std::string& channel = r.elements[1].str;
  const auto it = channels_.find(channel);
  if (kind == "message") {
    if (r.elements[2].type != T::string) return {K::unexpected, {}, {}};
    if (it == channels_.end() || it->second.refs == 0) return {K::ignored, channel, {}};
    return {K::message, channel, r.elements[2].str};
  }
  const bool sub = kind == "subscribe";
  if ((!sub && kind != "unsubscribe") || r.elements[2].type != T::integer) return {K::unexpected, {}, {}};
  if (in_flight_.empty() || in_flight_.front().first != (sub ? Sent::subscribe : Sent::unsubscribe) ||
      in_flight_.front().second != channel)
    return {K::unexpected, {}, {}};  // out of step with what we sent
  in_flight_.pop_front();
  bool renewed = false;
  if (sub && it != channels_.end()) {
    Channel& c = it->second;
    if (c.pending_acks > 0) --c.pending_acks;
    if (c.pending_acks == 0 && c.sent) {
      c.acked = true;
      c.refused = false;
      renewed = std::exchange(c.lost, false);
    }
    collect(it);
  }
  return {sub ? K::subscribed : K::unsubscribed, channel, {}, renewed};
}

void SubscriptionTable::on_disconnect() {
  in_flight_.clear();
  for (auto it = channels_.begin(); it != channels_.end();) {
    const int refs = it->second.refs;
    it->second = Channel{.refs = refs, .lost = refs > 0};
    const auto here = it++;
    collect(here);
  }
}

bool SubscriptionTable::ready(std::string_view channel) const {
  const auto it = channels_.find(channel);
  return it != channels_.end() && it->second.refs > 0 && it->second.acked;
}

bool SubscriptionTable::refused(std::string_view channel) const {
  const auto it = channels_.find(channel);
  return it != channels_.end() && it->second.refused;
}

}  // namespace dlock::detail::redis_proto
