// libFuzzer target for the Redis reply parser (issue 15 item 5): any bytes,
// delivered whole and in chunks, must give the same replies or the same
// protocol error, never a crash, a leak or undefined behaviour; and hiredis
// must never refuse what the framer let through. Every reply also goes
// through the decisions that read replies (typed script results, error
// classification, the subscription table).
#include <dlock/detail/redis_protocol.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>
#include <vector>

namespace {

using namespace dlock::detail::redis_proto;

// Small limits, so that the fuzzer reaches them with short inputs.
constexpr ParserLimits limits{.max_bulk = 1u << 16, .max_elements = 1u << 12, .max_depth = 8, .max_line = 1u << 10};

struct Outcome {
  std::vector<Reply> replies;
  bool failed = false;
};

Outcome parse(std::string_view data, std::size_t chunk) {
  ReplyParser p(limits);
  Outcome out;
  for (std::size_t at = 0; at < data.size(); at += chunk) {
    p.feed(data.substr(at, chunk));
    while (auto r = p.next()) out.replies.push_back(std::move(*r));
  }
  if (const auto& e = p.error()) {
    out.failed = true;
    if (e->message.find("hiredis refused") != std::string::npos) std::abort();  // the framer let a bad reply through
  }
  return out;
}

void decide(const Reply& r, SubscriptionTable& table) {
  (void)parse_acquire(r);
  (void)parse_release(r);
  (void)parse_extend(r);
  (void)parse_fence_raise(r);
  (void)after_script_reply(r, ScriptForm::evalsha);
  if (r.is_error()) (void)is_transient(classify_error(r.str).kind);
  Handshake h(HandshakeConfig{
      .endpoint = "fuzz", .username = "u", .password = "Zq7_secret", .database = 1, .client_name = "n", .load_scripts = true});
  while (h.on_reply(r) == Handshake::Status::in_progress) {
  }
  if (h.status() == Handshake::Status::failed && h.message().find("Zq7_secret") != std::string::npos)

    std::abort();  // the password leaked into a message
  (void)table.on_reply(r);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  // The first byte picks the chunk size; the rest is the stream.
  const std::size_t chunk = 1 + data[0] % 17;
  const std::string_view bytes(reinterpret_cast<const char*>(data) + 1, size - 1);
  const Outcome whole = parse(bytes, bytes.size() + 1);
  const Outcome split = parse(bytes, chunk);
  if (whole.replies != split.replies || whole.failed != split.failed) std::abort();
  SubscriptionTable table;
  table.want("ch");
  (void)table.take_commands();
  for (const Reply& r : whole.replies) decide(r, table);
  return 0;
}
