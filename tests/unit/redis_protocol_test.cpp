// The Redis protocol layer without a server: canned bytes in, replies and
// decisions out; requests checked byte for byte.
#include <dlock/detail/redis_protocol.hpp>

#include <gtest/gtest.h>

#include <limits>
#include <string>
#include <vector>

namespace {

using namespace dlock::detail::redis_proto;
using dlock::detail::RedisScript;
using namespace std::chrono_literals;
using T = Reply::Type;

Reply status(std::string s) { return Reply{.type = T::status, .integer = 0, .str = std::move(s), .elements = {}}; }
Reply error(std::string s) { return Reply{.type = T::error, .integer = 0, .str = std::move(s), .elements = {}}; }
Reply bulk(std::string s) { return Reply{.type = T::string, .integer = 0, .str = std::move(s), .elements = {}}; }
Reply integer(long long v) { return Reply{.type = T::integer, .integer = v, .str = {}, .elements = {}}; }
Reply nil() { return Reply{}; }
Reply array(std::vector<Reply> e) { return Reply{.type = T::array, .integer = 0, .str = {}, .elements = std::move(e)}; }

struct Parsed {
  std::vector<Reply> replies;
  std::optional<ProtocolError> error;
};

Parsed parse_chunks(const std::vector<std::string_view>& chunks, ParserLimits limits = {}) {
  ReplyParser p(limits);
  Parsed out;
  for (auto c : chunks) {
    p.feed(c);
    while (auto r = p.next()) out.replies.push_back(std::move(*r));
  }
  out.error = p.error();
  return out;
}

// Every way of delivering `bytes`: whole, split in two at every byte, and
// byte by byte. All must give the same replies (or the same error).
Parsed parse_every_split(std::string_view bytes, ParserLimits limits = {}) {
  const Parsed whole = parse_chunks({bytes}, limits);
  for (std::size_t i = 0; i <= bytes.size(); ++i) {
    const Parsed two = parse_chunks({bytes.substr(0, i), bytes.substr(i)}, limits);
    EXPECT_EQ(two.replies, whole.replies) << "split at " << i;
    EXPECT_EQ(two.error.has_value(), whole.error.has_value()) << "split at " << i;
    if (two.error && whole.error) {
      EXPECT_EQ(two.error->message, whole.error->message) << "split at " << i;
    }
  }
  std::vector<std::string_view> bytewise;
  for (std::size_t i = 0; i < bytes.size(); ++i) bytewise.push_back(bytes.substr(i, 1));
  const Parsed one = parse_chunks(bytewise, limits);
  EXPECT_EQ(one.replies, whole.replies) << "byte by byte";
  EXPECT_EQ(one.error.has_value(), whole.error.has_value()) << "byte by byte";
  return whole;
}

struct Canned {
  std::string_view bytes;
  Reply expected;
};

// ---- ReplyParser ----

TEST(ReplyParser, EveryReplyKindAtEveryByteBoundary) {
  using namespace std::string_view_literals;
  const std::vector<Canned> cases = {
      {"+OK\r\n", status("OK")},
      {"+\r\n", status("")},
      {"-ERR unknown command\r\n", error("ERR unknown command")},
      {"-NOSCRIPT No matching script. Please use EVAL.\r\n", error("NOSCRIPT No matching script. Please use EVAL.")},
      {"-MOVED 3999 127.0.0.1:6381\r\n", error("MOVED 3999 127.0.0.1:6381")},
      {":0\r\n", integer(0)},
      {":-1\r\n", integer(-1)},
      {":9223372036854775807\r\n", integer(9223372036854775807LL)},
      {":-9223372036854775808\r\n", integer(std::numeric_limits<long long>::min())},
      {"$5\r\nhello\r\n", bulk("hello")},
      {"$0\r\n\r\n", bulk("")},
      {"$-1\r\n", nil()},
      {"$4\r\na\r\nb\r\n", bulk("a\r\nb")},  // CRLF inside a bulk string is data
      {"$3\r\n\0\xff\r\r\n"sv, bulk(std::string("\0\xff\r", 3))},
      {"+a\rb\r\n", status("a\rb")},  // a lone CR inside a line is data
      {"*-1\r\n", nil()},
      {"*0\r\n", array({})},
      // the acquire script: granted (also the in-doubt grant), contended, holder without TTL
      {"*2\r\n:1\r\n$16\r\n1732868400000001\r\n", array({integer(1), bulk("1732868400000001")})},
      {"*2\r\n:0\r\n:29512\r\n", array({integer(0), integer(29512)})},
      {"*2\r\n:0\r\n:-1\r\n", array({integer(0), integer(-1)})},
      // the release script: publish refused
      {"*2\r\n:1\r\n$6\r\nNOPERM\r\n", array({integer(1), bulk("NOPERM")})},
      // pub/sub
      {"*3\r\n$9\r\nsubscribe\r\n$4\r\nch:1\r\n:1\r\n", array({bulk("subscribe"), bulk("ch:1"), integer(1)})},
      {"*3\r\n$7\r\nmessage\r\n$4\r\nch:1\r\n$2\r\nid\r\n", array({bulk("message"), bulk("ch:1"), bulk("id")})},
      {"*2\r\n$4\r\npong\r\n$0\r\n\r\n", array({bulk("pong"), bulk("")})},
      // nesting, nil inside arrays
      {"*3\r\n*1\r\n*0\r\n$-1\r\n*2\r\n:5\r\n*-1\r\n", array({array({array({})}), nil(), array({integer(5), nil()})})},
      {"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:7\r\n",  // 7 levels: the deepest allowed
       array({array({array({array({array({array({array({integer(7)})})})})})})})},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(testing::PrintToString(std::string(c.bytes)));
    const Parsed p = parse_every_split(c.bytes);
    EXPECT_FALSE(p.error.has_value()) << p.error->message;
    ASSERT_EQ(p.replies.size(), 1u);
    EXPECT_EQ(p.replies[0], c.expected);
  }
}

TEST(ReplyParser, PipelinedRepliesComeOutInOrderAtEveryBoundary) {
  std::string all;
  std::vector<Reply> expected;
  for (int i = 0; i < 3; ++i) {
    all += "+OK\r\n$2\r\nhi\r\n*2\r\n:1\r\n$1\r\n7\r\n-ERR x\r\n:42\r\n*-1\r\n";
    for (auto r : {status("OK"), bulk("hi"), array({integer(1), bulk("7")}), error("ERR x"), integer(42), nil()})
      expected.push_back(r);
  }
  const Parsed p = parse_every_split(all);
  EXPECT_FALSE(p.error.has_value());
  EXPECT_EQ(p.replies, expected);
}

TEST(ReplyParser, IncompleteInputWaitsWithoutError) {
  for (std::string_view partial :
       {"+OK", "+OK\r", "$5\r\nhel", "$5\r\nhello", "$5\r\nhello\r", "*2\r\n:1\r\n", "*", ":12", "$", "*1\r\n*1\r\n"}) {
    SCOPED_TRACE(std::string(partial));
    ReplyParser p;
    p.feed(partial);
    EXPECT_FALSE(p.next().has_value());
    EXPECT_FALSE(p.error().has_value());
    EXPECT_EQ(p.buffered(), partial.size());
  }
}

TEST(ReplyParser, MalformedInputIsAnErrorValueAtEveryBoundary) {
  struct Bad {
    std::string_view bytes;
    std::string_view says;
  };
  const std::vector<Bad> cases = {
      {"?OK\r\n", "unknown type byte 0x3f"},
      {"_\r\n", "unknown type byte 0x5f"},  // RESP3 null: dlock speaks RESP2
      {std::string_view("\0", 1), "unknown type byte 0x00"},
      {"OK\r\n", "unknown type byte 0x4f"},
      {"$abc\r\nabc\r\n", "bulk string length is not a decimal number"},
      {"$\r\n", "bulk string length is not a decimal number"},
      {"$+3\r\nabc\r\n", "bulk string length is not a decimal number"},
      {"$3 \r\nabc\r\n", "bulk string length is not a decimal number"},
      {"$-2\r\n", "bulk string length -2 (only -1, nil, may be negative)"},
      {"$-100\r\n", "bulk string length -100"},
      {"*-2\r\n", "array length -2 (only -1, nil, may be negative)"},
      {"*x\r\n", "array length is not a decimal number"},
      {":12a\r\n", "integer is not a decimal number"},
      {":\r\n", "integer is not a decimal number"},
      {":99999999999999999999\r\n", "integer is not a decimal number in range"},
      {":012\r\n", "integer is not a decimal number"},  // as Redis writes numbers, and as hiredis accepts them
      {":-0\r\n", "integer is not a decimal number"},
      {"$03\r\nabc\r\n", "bulk string length is not a decimal number"},
      {"$99999999999999999999\r\n", "bulk string length is not a decimal number in range"},
      {"$3\r\nabcd\r\n", "a bulk string of 3 bytes is not followed by CRLF"},
      {"$3\r\nabc\n\r", "not followed by CRLF"},
      {"*2\r\n:1\r\n!\r\n", "unknown type byte 0x21"},
      {"$1000000000000\r\n", "a bulk string of 1000000000000 bytes exceeds the limit of 536870912"},
      {"*2000000000\r\n", "a reply with more than 1048576 array elements"},
      {"*1048576\r\n*1\r\n", "a reply with more than 1048576 array elements"},  // counted over all levels
      {"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:8\r\n", "arrays nested deeper than 7"},
      {":123456789012345678901234567890", "line longer than 24 bytes"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(testing::PrintToString(std::string(c.bytes)));
    const Parsed p = parse_every_split(c.bytes);
    EXPECT_TRUE(p.replies.empty());
    ASSERT_TRUE(p.error.has_value());
    EXPECT_NE(p.error->message.find(c.says), std::string::npos) << p.error->message;
    EXPECT_NE(p.error->message.find("malformed reply from Redis at byte"), std::string::npos);
  }
}

TEST(ReplyParser, ErrorIsStickyAndKeepsEarlierRepliesAndTheOffset) {
  ReplyParser p;
  p.feed("+OK\r\n:1\r\n$-7\r\n+later\r\n");
  EXPECT_EQ(p.next(), status("OK"));
  EXPECT_EQ(p.next(), integer(1));
  EXPECT_FALSE(p.next().has_value());
  ASSERT_TRUE(p.error().has_value());
  EXPECT_EQ(p.error()->offset, 10u);  // the '-' of "$-7"
  p.feed("+more\r\n");
  EXPECT_FALSE(p.next().has_value());
}

TEST(ReplyParser, ErrorsNeverQuoteThePayload) {
  const Parsed p = parse_chunks({"$6\r\nsecretXX"});
  ASSERT_TRUE(p.error.has_value());
  EXPECT_EQ(p.error->message.find("secret"), std::string::npos) << p.error->message;
}

TEST(ReplyParser, LimitsAreConfigurable) {
  const ParserLimits small{.max_bulk = 4, .max_elements = 3, .max_depth = 2, .max_line = 8};
  EXPECT_FALSE(parse_chunks({"$4\r\nabcd\r\n"}, small).error.has_value());
  EXPECT_TRUE(parse_chunks({"$5\r\n"}, small).error.has_value());
  EXPECT_FALSE(parse_chunks({"*3\r\n:1\r\n:2\r\n:3\r\n"}, small).error.has_value());
  EXPECT_TRUE(parse_chunks({"*2\r\n*2\r\n"}, small).error.has_value());  // 4 elements in all
  EXPECT_FALSE(parse_chunks({"*1\r\n*1\r\n:1\r\n"}, small).error.has_value());
  EXPECT_TRUE(parse_chunks({"*1\r\n*1\r\n*1\r\n"}, small).error.has_value());
  EXPECT_FALSE(parse_chunks({"+12345678\r\n"}, small).error.has_value());
  EXPECT_TRUE(parse_chunks({"+123456789\r\n"}, small).error.has_value());
  EXPECT_TRUE(parse_chunks({"+1234567890"}, small).error.has_value());  // no CRLF yet, already too long
  // Depth is capped at hiredis' own limit, so that hiredis never refuses what the framer let through.
  std::string eight, nine = "*1\r\n";
  for (int i = 0; i < 8; ++i) eight += "*1\r\n";
  eight += ":1\r\n";
  nine += eight;
  EXPECT_FALSE(parse_chunks({eight}, {.max_depth = 8}).error.has_value());
  const Parsed deep = parse_chunks({nine}, {.max_depth = 100});
  ASSERT_TRUE(deep.error.has_value());
  EXPECT_NE(deep.error->message.find("arrays nested deeper than 8"), std::string::npos) << deep.error->message;
  // The element budget is per reply.
  const Parsed two = parse_chunks({"*3\r\n:1\r\n:2\r\n:3\r\n*3\r\n:1\r\n:2\r\n:3\r\n"}, small);
  EXPECT_FALSE(two.error.has_value());
  EXPECT_EQ(two.replies.size(), 2u);
}

TEST(ReplyParser, LongStreamsKeepTheBufferShort) {
  ReplyParser p;
  std::size_t n = 0;
  for (int i = 0; i < 10000; ++i) {
    p.feed(":1");
    while (p.next()) ++n;
    p.feed("23\r\n+O");
    while (p.next()) ++n;
    p.feed("K\r\n");
    while (p.next()) ++n;
  }
  EXPECT_EQ(n, 20000u);
  EXPECT_EQ(p.buffered(), 0u);
  p.feed("$3\r\nab");
  EXPECT_FALSE(p.next());
  EXPECT_FALSE(p.error());
  p.feed("cd\r\n");  // "abc" and then no CRLF
  EXPECT_FALSE(p.next());
  ASSERT_TRUE(p.error());
  EXPECT_EQ(p.error()->offset, 10000u * 11 + 7);  // offsets count the whole stream
}

// ---- Requests ----

TEST(Request, EncodesCommandsAsRespArrays) {
  Request r;
  push_ping(r);
  EXPECT_EQ(r.payload(), "*1\r\n$4\r\nPING\r\n");
  push_subscribe(r, "p{a}:released");
  push_unsubscribe(r, "x");
  EXPECT_EQ(
      r.payload(),
      "*1\r\n$4\r\nPING\r\n*2\r\n$9\r\nSUBSCRIBE\r\n$13\r\np{a}:released\r\n*2\r\n$11\r\nUNSUBSCRIBE\r\n$1\r\nx\r\n");
  EXPECT_EQ(r.commands(), 3u);
  Request bin;
  bin.push({"SET", std::string_view("a\0b", 3), ""});
  EXPECT_EQ(bin.payload(), std::string_view("*3\r\n$3\r\nSET\r\n$3\r\na\0b\r\n$0\r\n\r\n", 28));
  Request both;
  both.append(r);
  both.append(bin);
  EXPECT_EQ(both.commands(), 4u);
}

TEST(Request, ScriptCallsFollowEachScriptsLayout) {
  const auto keys = dlock::detail::redis_keys("dl:", "job");
  const ScriptCall a = acquire_call(keys, "owner-1", 30s, 1s);
  EXPECT_EQ(a.script, RedisScript::acquire);
  EXPECT_EQ(a.keys, (std::vector<std::string>{"dl:{job}", "dl:{job}:fence"}));
  EXPECT_EQ(a.args, (std::vector<std::string>{"owner-1", "30000", "90000"}));  // fence: max(1 s, 3 x ttl)
  EXPECT_EQ(acquire_call(keys, "o", 10ms, 1h).args[2], "3600000");

  const ScriptCall ra = redlock_acquire_call(keys, "o", 30s, 1s, std::chrono::microseconds(1732868400123456));
  EXPECT_EQ(ra.keys, a.keys);
  EXPECT_EQ(ra.args, (std::vector<std::string>{"o", "30000", "90000", "1732868400123456", "1000000"}));

  const ScriptCall rel = release_call(keys, "o", Publish::yes);
  EXPECT_EQ(rel.script, RedisScript::release);
  EXPECT_EQ(rel.keys, (std::vector<std::string>{"dl:{job}"}));
  EXPECT_EQ(rel.args, (std::vector<std::string>{"o", "dl:{job}:released"}));
  EXPECT_EQ(release_call(keys, "o", Publish::no).args, (std::vector<std::string>{"o", ""}));

  const ScriptCall ext = extend_call(keys.lock, "o", 1500ms);
  EXPECT_EQ(ext.script, RedisScript::extend);
  EXPECT_EQ(ext.keys, (std::vector<std::string>{"dl:{job}"}));
  EXPECT_EQ(ext.args, (std::vector<std::string>{"o", "1500"}));

  const ScriptCall fr = fence_raise_call(keys.fence, 18446744073709551615ull, 30s, 1s);
  EXPECT_EQ(fr.script, RedisScript::fence_raise);
  EXPECT_EQ(fr.keys, (std::vector<std::string>{"dl:{job}:fence"}));
  EXPECT_EQ(fr.args, (std::vector<std::string>{"18446744073709551615", "90000"}));
}

TEST(Request, EvalshaWhenTheShaIsKnownElseEval) {
  const ScriptCall ext = extend_call("k", "o", 5ms);
  ScriptShas shas;
  shas[static_cast<std::size_t>(RedisScript::extend)] = std::string(40, 'a');
  Request r;
  EXPECT_EQ(push_script_call(r, ext, shas), ScriptForm::evalsha);
  EXPECT_EQ(r.payload(), "*6\r\n$7\r\nEVALSHA\r\n$40\r\n" + std::string(40, 'a') +
                             "\r\n$1\r\n1\r\n$1\r\nk\r\n$1\r\no\r\n$1\r\n5\r\n");
  const std::string_view text = dlock::detail::redis_extend_script;
  Request e;
  EXPECT_EQ(push_script_call(e, ext, shas, ScriptForm::eval), ScriptForm::eval);
  const std::string eval_bytes = "*6\r\n$4\r\nEVAL\r\n$" + std::to_string(text.size()) + "\r\n" + std::string(text) +
                                 "\r\n$1\r\n1\r\n$1\r\nk\r\n$1\r\no\r\n$1\r\n5\r\n";
  EXPECT_EQ(e.payload(), eval_bytes);
  Request unknown;  // SCRIPT LOAD was refused: no SHA
  EXPECT_EQ(push_script_call(unknown, ext, ScriptShas{}), ScriptForm::eval);
  EXPECT_EQ(unknown.payload(), eval_bytes);
  Request load;
  push_script_load(load, RedisScript::extend);
  EXPECT_EQ(load.payload(), "*3\r\n$6\r\nSCRIPT\r\n$4\r\nLOAD\r\n$" + std::to_string(text.size()) + "\r\n" +
                                std::string(text) + "\r\n");
}

TEST(Request, AScriptOutsideTheTableGoesByItsOwnShaThenAsItsText) {  // the primitives' scripts
  const ScriptCall call{
      .keys = {"k"}, .args = {"o"}, .text = "return 1", .sha = "e0e1f9fabfc9d4800c877a703b823ac0578ff8db"};
  ScriptShas shas;
  shas[0] = std::string(40, 'a');  // the table's SHA of call.script: not used
  Request r;
  EXPECT_EQ(push_script_call(r, call, shas), ScriptForm::evalsha);
  EXPECT_EQ(
      r.payload(),
      "*5\r\n$7\r\nEVALSHA\r\n$40\r\ne0e1f9fabfc9d4800c877a703b823ac0578ff8db\r\n$1\r\n1\r\n$1\r\nk\r\n$1\r\no\r\n");
  Request e;  // after NOSCRIPT
  EXPECT_EQ(push_script_call(e, call, shas, ScriptForm::eval), ScriptForm::eval);
  EXPECT_EQ(e.payload(), "*5\r\n$4\r\nEVAL\r\n$8\r\nreturn 1\r\n$1\r\n1\r\n$1\r\nk\r\n$1\r\no\r\n");
}

TEST(Request, RequestsParseBackAsTheCommandsTheyAre) {  // the server reads what the client writes as an array
  Request r;
  push_script_call(r, acquire_call(dlock::detail::redis_keys("", "n"), "own", 1s, 1s), ScriptShas{});
  const Parsed p = parse_chunks({r.payload()});
  ASSERT_EQ(p.replies.size(), 1u);
  ASSERT_EQ(p.replies[0].elements.size(), 8u);
  EXPECT_EQ(p.replies[0].elements[0], bulk("EVAL"));
  EXPECT_EQ(p.replies[0].elements[2], bulk("2"));
  EXPECT_EQ(p.replies[0].elements[3], bulk("{n}"));
}

// ---- Decisions ----

TEST(ClassifyError, KnownCodes) {
  const std::vector<std::pair<std::string_view, ErrorKind>> cases = {
      {"NOSCRIPT No matching script. Please use EVAL.", ErrorKind::noscript},
      {"NOAUTH Authentication required.", ErrorKind::noauth},
      {"WRONGPASS invalid username-password pair or user is disabled.", ErrorKind::auth_refused},
      {"ERR invalid password", ErrorKind::auth_refused},
      {"ERR AUTH <password> called without any password configured for the default user.", ErrorKind::auth_refused},
      {"NOPERM this user has no permissions to run the 'evalsha' command", ErrorKind::noperm},
      {"WRONGTYPE Operation against a key holding the wrong kind of value", ErrorKind::wrongtype},
      {"READONLY You can't write against a read only replica.", ErrorKind::readonly},
      {"LOADING Redis is loading the dataset in memory", ErrorKind::loading},
      {"MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.", ErrorKind::masterdown},
      {"TRYAGAIN Multiple keys request during rehashing of slot", ErrorKind::tryagain},
      {"CLUSTERDOWN The cluster is down", ErrorKind::clusterdown},
      {"OOM command not allowed when used memory > 'maxmemory'.", ErrorKind::oom},
      {"BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.", ErrorKind::busy},
      {"BUSYKEY Target key name already exists.", ErrorKind::other},
      {"ERR Error running script (call to f_1): @user_script:9: @user_script: 9: -READONLY You can't write",
       ErrorKind::readonly},
      {"ERR Error running script: WRONGTYPE Operation against a key", ErrorKind::wrongtype},
      {"ERR Error running script: OOM command not allowed when used memory > 'maxmemory'", ErrorKind::oom},
      {"ERR unknown command 'EVALSHA'", ErrorKind::other},
      {"", ErrorKind::other},
      {"MOVED", ErrorKind::other},
      {"MOVED 99999 1.2.3.4:5", ErrorKind::other},
  };
  for (const auto& [m, kind] : cases) EXPECT_EQ(classify_error(m).kind, kind) << m;
  EXPECT_EQ(classify_error("NOPERM x").code, "NOPERM");
  EXPECT_EQ(classify_error("lower case").code, "");
}

TEST(ClassifyError, MovedAndAskCarrySlotHostAndPort) {
  const ErrorInfo moved = classify_error("MOVED 3999 127.0.0.1:6381");
  EXPECT_EQ(moved.kind, ErrorKind::moved);
  EXPECT_EQ(moved.redirect, (Redirect{3999, "127.0.0.1", 6381}));
  const ErrorInfo ask = classify_error("ASK 16383 redis-7.internal:30007");
  EXPECT_EQ(ask.kind, ErrorKind::ask);
  EXPECT_EQ(ask.redirect, (Redirect{16383, "redis-7.internal", 30007}));
  EXPECT_EQ(parse_redirect("0 ::1:7000"), (Redirect{0, "::1", 7000}));
  EXPECT_EQ(parse_redirect("12 :7000"), (Redirect{12, "", 7000}));  // the sender's host
  for (std::string_view bad : {"", "12", "x 1.2.3.4:1", "12 1.2.3.4", "12 1.2.3.4:0", "12 1.2.3.4:65536", "16384 h:1",
                               "-1 h:1", "12 h:1x", "12 a b:1"})
    EXPECT_FALSE(parse_redirect(bad).has_value()) << bad;
}

TEST(ClassifyError, TransientKinds) {
  for (auto k : {ErrorKind::readonly, ErrorKind::loading, ErrorKind::masterdown, ErrorKind::tryagain,
                 ErrorKind::clusterdown, ErrorKind::busy})
    EXPECT_TRUE(is_transient(k)) << describe(k);
  for (auto k : {ErrorKind::noscript, ErrorKind::noauth, ErrorKind::auth_refused, ErrorKind::noperm,
                 ErrorKind::wrongtype, ErrorKind::moved, ErrorKind::ask, ErrorKind::oom, ErrorKind::other})
    EXPECT_FALSE(is_transient(k)) << describe(k);
}

TEST(ScriptNextStep, NoscriptAfterEvalshaResendsAsEvalOnce) {
  const Reply noscript = error("NOSCRIPT No matching script. Please use EVAL.");
  EXPECT_EQ(after_script_reply(noscript, ScriptForm::evalsha), ScriptNext::resend_as_eval);
  EXPECT_EQ(after_script_reply(noscript, ScriptForm::eval), ScriptNext::done);  // never loops
  EXPECT_EQ(after_script_reply(error("ERR x NOSCRIPT"), ScriptForm::evalsha), ScriptNext::done);
  EXPECT_EQ(after_script_reply(integer(1), ScriptForm::evalsha), ScriptNext::done);
}

// ---- Typed results ----

TEST(ScriptResults, Acquire) {
  auto granted = parse_acquire(array({integer(1), bulk("1732868400000001")}));
  ASSERT_TRUE(std::holds_alternative<AcquireReply>(granted));
  EXPECT_TRUE(std::get<AcquireReply>(granted).acquired);
  EXPECT_EQ(std::get<AcquireReply>(granted).token, 1732868400000001u);

  auto held = std::get<AcquireReply>(parse_acquire(array({integer(0), integer(2500)})));
  EXPECT_FALSE(held.acquired);
  EXPECT_EQ(held.holder_ttl, 2500ms);
  EXPECT_FALSE(std::get<AcquireReply>(parse_acquire(array({integer(0), integer(-1)}))).holder_ttl.has_value());

  const auto wrongtype = parse_acquire(error("WRONGTYPE lock key dl:{x} holds a hash, not a string"));
  ASSERT_TRUE(std::holds_alternative<ReplyFault>(wrongtype));
  EXPECT_EQ(std::get<ReplyFault>(wrongtype).kind, ErrorKind::wrongtype);

  for (const Reply& bad :
       {integer(1), array({integer(1), bulk("12x")}), array({integer(1), bulk("")}), array({integer(1), bulk("-5")}),
        array({integer(1), bulk("18446744073709551616")}), array({integer(1), integer(5)}),
        array({integer(0), bulk("5")}), array({integer(2), bulk("5")}), array({integer(1)}), status("OK"), nil()}) {
    const auto r = parse_acquire(bad);
    ASSERT_TRUE(std::holds_alternative<ReplyFault>(r));
    EXPECT_FALSE(std::get<ReplyFault>(r).kind.has_value());
    EXPECT_EQ(std::get<ReplyFault>(r).message, "unexpected reply to the acquire script");
  }
}

TEST(ScriptResults, ReleaseExtendFenceRaise) {
  EXPECT_TRUE(std::get<ReleaseReply>(parse_release(integer(1))).released);
  EXPECT_FALSE(std::get<ReleaseReply>(parse_release(integer(0))).released);
  const auto refused = std::get<ReleaseReply>(parse_release(array({integer(1), bulk("NOPERM no channel")})));
  EXPECT_TRUE(refused.released);
  EXPECT_EQ(refused.publish_error, "NOPERM no channel");
  EXPECT_TRUE(std::holds_alternative<ReplyFault>(parse_release(integer(2))));
  EXPECT_TRUE(std::holds_alternative<ReplyFault>(parse_release(array({integer(0), bulk("x")}))));
  EXPECT_EQ(std::get<ReplyFault>(parse_release(error("READONLY x"))).kind, ErrorKind::readonly);

  EXPECT_TRUE(std::get<bool>(parse_extend(integer(1))));
  EXPECT_FALSE(std::get<bool>(parse_extend(integer(0))));
  EXPECT_TRUE(std::holds_alternative<ReplyFault>(parse_extend(bulk("1"))));
  EXPECT_EQ(std::get<ReplyFault>(parse_extend(error("NOPERM x"))).kind, ErrorKind::noperm);
  EXPECT_TRUE(std::get<bool>(parse_fence_raise(integer(1))));
  EXPECT_EQ(std::get<ReplyFault>(parse_fence_raise(status("OK"))).message,
            "unexpected reply to the fence raise script");
}

// ---- Handshake ----

HandshakeConfig full_config() {
  return HandshakeConfig{.endpoint = "127.0.0.1:6379",
                         .username = "locker",
                         .password = "s3cr3t-pw",
                         .database = 2,
                         .client_name = "dlock",
                         .load_scripts = true};
}

std::string sha(char c) { return std::string(40, c); }

TEST(Handshake, SendsEverythingInOneRoundTripAndCollectsShas) {
  Handshake h(full_config());
  Request expected;
  expected.push({"AUTH", "locker", "s3cr3t-pw"});
  expected.push({"SELECT", "2"});
  expected.push({"CLIENT", "SETNAME", "dlock"});
  for (std::size_t i = 0; i < dlock::detail::redis_script_count; ++i)
    push_script_load(expected, static_cast<RedisScript>(i));
  EXPECT_EQ(h.request().payload(), expected.payload());
  EXPECT_EQ(h.request().commands(), 7u);
  EXPECT_EQ(h.on_reply(status("OK")), Handshake::Status::in_progress);
  EXPECT_EQ(h.on_reply(status("OK")), Handshake::Status::in_progress);
  EXPECT_EQ(h.on_reply(status("OK")), Handshake::Status::in_progress);
  EXPECT_EQ(h.on_reply(bulk(sha('a'))), Handshake::Status::in_progress);
  EXPECT_EQ(h.on_reply(bulk(sha('b'))), Handshake::Status::in_progress);
  EXPECT_EQ(h.on_reply(bulk(sha('c'))), Handshake::Status::in_progress);
  EXPECT_EQ(h.owed(), 1u);
  EXPECT_EQ(h.on_reply(bulk(sha('d'))), Handshake::Status::done);
  EXPECT_EQ(h.owed(), 0u);
  EXPECT_EQ(h.shas()[0], sha('a'));
  EXPECT_EQ(h.shas()[3], sha('d'));
  EXPECT_EQ(h.failure(), Handshake::Failure::none);
}

TEST(Handshake, PasswordOnlyAndNothingToSend) {
  Handshake pw(HandshakeConfig{.endpoint = "e", .password = "pw", .load_scripts = false});
  Request expected;
  expected.push({"AUTH", "pw"});
  EXPECT_EQ(pw.request().payload(), expected.payload());
  EXPECT_EQ(pw.on_reply(status("OK")), Handshake::Status::done);

  Handshake none(HandshakeConfig{.endpoint = "e", .load_scripts = false});
  EXPECT_TRUE(none.request().empty());
  EXPECT_EQ(none.status(), Handshake::Status::done);
}

TEST(Handshake, WrongPasswordFailsWithoutTheServersText) {
  Handshake h(full_config());
  EXPECT_EQ(h.on_reply(error("WRONGPASS invalid username-password pair or user is disabled.")),
            Handshake::Status::failed);
  EXPECT_EQ(h.failure(), Handshake::Failure::auth);
  EXPECT_NE(h.message().find("127.0.0.1:6379"), std::string::npos);
  EXPECT_NE(h.message().find("user 'locker'"), std::string::npos);
  EXPECT_NE(h.message().find("WRONGPASS: wrong password"), std::string::npos) << h.message();
  EXPECT_EQ(h.message().find("username-password pair"), std::string::npos);
  // The rest of the pipelined replies drain without changing the verdict.
  EXPECT_EQ(h.owed(), 6u);
  EXPECT_EQ(h.on_reply(error("NOAUTH Authentication required.")), Handshake::Status::failed);
  EXPECT_EQ(h.failure(), Handshake::Failure::auth);
  EXPECT_EQ(h.owed(), 5u);
}

TEST(Handshake, AnEchoedPasswordNeverReachesTheMessage) {
  for (std::string_view echo :
       {"ERR unknown command 'AUTH', with args beginning with: 'locker' 's3cr3t-pw' ",
        "ERR wrong number of arguments for 'auth' (s3cr3t-pw)", "s3cr3t-pw", "NOPERM s3cr3t-pw"}) {
    Handshake h(full_config());
    EXPECT_EQ(h.on_reply(error(std::string(echo))), Handshake::Status::failed);
    EXPECT_EQ(h.failure(), Handshake::Failure::auth);
    EXPECT_EQ(h.message().find("s3cr3t"), std::string::npos) << h.message();
  }
  // Later steps quote the server, redacted.
  Handshake h(full_config());
  (void)h.on_reply(status("OK"));
  EXPECT_EQ(h.on_reply(error("ERR DB index is out of range s3cr3t-pw")), Handshake::Status::failed);
  EXPECT_EQ(h.failure(), Handshake::Failure::select);
  EXPECT_EQ(h.message().find("s3cr3t"), std::string::npos) << h.message();
  EXPECT_NE(h.message().find("database 2"), std::string::npos);
}

TEST(Handshake, NopermOnScriptLoadFallsBackToEvalButOtherErrorsFail) {
  Handshake h(HandshakeConfig{.endpoint = "e", .load_scripts = true});
  EXPECT_EQ(h.on_reply(error("NOPERM this user has no permissions to run the 'script|load' command")),
            Handshake::Status::in_progress);
  EXPECT_EQ(h.on_reply(error("ERR unknown command 'SCRIPT'")), Handshake::Status::in_progress);
  EXPECT_EQ(h.on_reply(bulk(sha('c'))), Handshake::Status::in_progress);
  EXPECT_EQ(h.on_reply(bulk(sha('d'))), Handshake::Status::done);
  EXPECT_TRUE(h.shas()[0].empty());
  EXPECT_TRUE(h.shas()[1].empty());
  Request r;
  EXPECT_EQ(push_script_call(r, release_call(dlock::detail::redis_keys("", "k"), "o", Publish::yes), h.shas()),
            ScriptForm::eval);  // release: no SHA
  EXPECT_EQ(push_script_call(r, extend_call("k", "o", 1ms), h.shas()), ScriptForm::evalsha);

  Handshake oom(HandshakeConfig{.endpoint = "e"});
  EXPECT_EQ(oom.on_reply(error("OOM command not allowed")), Handshake::Status::failed);
  EXPECT_EQ(oom.failure(), Handshake::Failure::scripts);
  EXPECT_NE(oom.message().find("cannot load the acquire script"), std::string::npos);

  Handshake bad(HandshakeConfig{.endpoint = "e"});
  EXPECT_EQ(bad.on_reply(bulk("not-a-sha")), Handshake::Status::failed);
  EXPECT_EQ(bad.failure(), Handshake::Failure::protocol);
}

TEST(Handshake, NoauthOnALaterStepAsksForThePassword) {
  Handshake h(HandshakeConfig{.endpoint = "e", .database = 3});
  EXPECT_EQ(h.on_reply(error("NOAUTH Authentication required.")), Handshake::Status::failed);
  EXPECT_EQ(h.failure(), Handshake::Failure::auth);
  EXPECT_NE(h.message().find("requires authentication"), std::string::npos);
}

TEST(Handshake, RefusedClientSetnameIsIgnored) {
  Handshake h(HandshakeConfig{.endpoint = "e", .client_name = "dlock", .load_scripts = false});
  EXPECT_EQ(h.on_reply(error("NOPERM this user has no permissions to run the 'client|setname' command")),
            Handshake::Status::done);
}

// ---- Subscription table ----

Reply sub_ack(std::string ch, long long n = 1) { return array({bulk("subscribe"), bulk(std::move(ch)), integer(n)}); }
Reply unsub_ack(std::string ch, long long n = 0) {
  return array({bulk("unsubscribe"), bulk(std::move(ch)), integer(n)});
}
Reply message(std::string ch, std::string payload) {
  return array({bulk("message"), bulk(std::move(ch)), bulk(std::move(payload))});
}

std::string commands_of(const Request& r) { return std::string(r.payload()); }
std::string sub_bytes(std::string_view ch) {
  Request r;
  push_subscribe(r, ch);
  return std::string(r.payload());
}
std::string unsub_bytes(std::string_view ch) {
  Request r;
  push_unsubscribe(r, ch);
  return std::string(r.payload());
}

TEST(SubscriptionTable, SubscribeAckMessageUnsubscribe) {
  SubscriptionTable t;
  t.want("a");
  t.want("a");  // two waiters, one SUBSCRIBE
  t.want("b");
  EXPECT_FALSE(t.ready("a"));
  EXPECT_EQ(commands_of(t.take_commands()), sub_bytes("a") + sub_bytes("b"));
  EXPECT_TRUE(t.take_commands().empty());  // nothing new
  EXPECT_EQ(t.in_flight(), 2u);
  EXPECT_FALSE(t.ready("a"));  // sent, not confirmed

  auto e = t.on_reply(sub_ack("a"));
  EXPECT_EQ(e.kind, PubSubEvent::Kind::subscribed);
  EXPECT_EQ(e.channel, "a");
  EXPECT_TRUE(t.ready("a"));
  EXPECT_FALSE(t.ready("b"));
  EXPECT_EQ(t.on_reply(sub_ack("b", 2)).kind, PubSubEvent::Kind::subscribed);
  EXPECT_TRUE(t.ready("b"));

  e = t.on_reply(message("a", "owner-1"));
  EXPECT_EQ(e.kind, PubSubEvent::Kind::message);
  EXPECT_EQ(e.channel, "a");
  EXPECT_EQ(e.payload, "owner-1");
  EXPECT_EQ(t.on_reply(message("zzz", "x")).kind, PubSubEvent::Kind::ignored);

  t.unwant("a");
  EXPECT_TRUE(t.take_commands().empty());  // one waiter left
  t.unwant("a");
  EXPECT_FALSE(t.ready("a"));
  EXPECT_EQ(commands_of(t.take_commands()), unsub_bytes("a"));
  EXPECT_EQ(t.tracked(), 1u);                                                    // "a" is forgotten at once
  EXPECT_EQ(t.on_reply(message("a", "late")).kind, PubSubEvent::Kind::ignored);  // before the UNSUBSCRIBE took effect
  EXPECT_EQ(t.on_reply(unsub_ack("a", 1)).kind, PubSubEvent::Kind::unsubscribed);
  EXPECT_EQ(t.in_flight(), 0u);
  t.unwant("a");  // more unwants than wants: harmless
  t.unwant("never");
}

TEST(SubscriptionTable, WantAgainWhileUnsubscribing) {
  SubscriptionTable t;
  t.want("a");
  (void)t.take_commands();
  t.unwant("a");
  EXPECT_EQ(commands_of(t.take_commands()), unsub_bytes("a"));  // SUBSCRIBE still unanswered
  t.want("a");
  EXPECT_EQ(commands_of(t.take_commands()), sub_bytes("a"));
  EXPECT_EQ(t.on_reply(sub_ack("a")).kind, PubSubEvent::Kind::subscribed);
  EXPECT_FALSE(t.ready("a"));  // the second SUBSCRIBE is still owed
  EXPECT_EQ(t.on_reply(unsub_ack("a")).kind, PubSubEvent::Kind::unsubscribed);
  EXPECT_FALSE(t.ready("a"));
  EXPECT_EQ(t.on_reply(sub_ack("a")).kind, PubSubEvent::Kind::subscribed);
  EXPECT_TRUE(t.ready("a"));
}

TEST(SubscriptionTable, ReconnectResendsWhatIsWanted) {
  SubscriptionTable t;
  t.want("a");
  t.want("b");
  t.want("c");
  (void)t.take_commands();
  (void)t.on_reply(sub_ack("a"));
  t.unwant("c");  // the SUBSCRIBE to c is unanswered and no longer wanted
  t.on_disconnect();
  EXPECT_FALSE(t.ready("a"));
  EXPECT_EQ(t.in_flight(), 0u);
  EXPECT_EQ(t.tracked(), 2u);
  EXPECT_EQ(commands_of(t.take_commands()), sub_bytes("a") + sub_bytes("b"));
  (void)t.on_reply(sub_ack("a"));
  (void)t.on_reply(sub_ack("b"));
  EXPECT_TRUE(t.ready("a"));
  EXPECT_TRUE(t.ready("b"));
}

// A confirmation after a reconnect says that it renews a subscription the
// connection lost (messages published in between were missed); a first
// confirmation, or one of a channel no longer wanted at the loss, does not.
TEST(SubscriptionTable, AConfirmationAfterAReconnectIsARenewal) {
  SubscriptionTable t;
  t.want("a");
  t.want("b");
  (void)t.take_commands();
  EXPECT_FALSE(t.on_reply(sub_ack("a")).renewed);  // the first one
  t.on_disconnect();                               // b's SUBSCRIBE was never answered: lost too
  t.want("c");
  EXPECT_EQ(commands_of(t.take_commands()), sub_bytes("a") + sub_bytes("b") + sub_bytes("c"));
  auto e = t.on_reply(sub_ack("a"));
  EXPECT_EQ(e.kind, PubSubEvent::Kind::subscribed);
  EXPECT_TRUE(e.renewed);
  EXPECT_TRUE(t.on_reply(sub_ack("b")).renewed);
  EXPECT_FALSE(t.on_reply(sub_ack("c")).renewed);  // first wanted after the loss
  t.on_disconnect();
  (void)t.take_commands();
  EXPECT_TRUE(t.on_reply(sub_ack("a")).renewed);  // once per loss
  t.on_disconnect();
  (void)t.take_commands();
  t.on_disconnect();  // lost again before the confirmation: still one renewal owed
  (void)t.take_commands();
  EXPECT_TRUE(t.on_reply(sub_ack("a")).renewed);
  EXPECT_TRUE(t.on_reply(sub_ack("b")).renewed);
  EXPECT_TRUE(t.on_reply(sub_ack("c")).renewed);
  // Unwanted while down and wanted again: a new subscription, not a renewal.
  t.on_disconnect();
  t.unwant("a");
  t.want("a");
  (void)t.take_commands();
  EXPECT_FALSE(t.on_reply(sub_ack("a")).renewed);
  // Refused after the reconnect: nothing renewed, and not reported later as a renewal.
  t.on_disconnect();
  (void)t.take_commands();
  (void)t.on_reply(sub_ack("a"));
  EXPECT_EQ(t.on_reply(error("NOPERM b")).kind, PubSubEvent::Kind::refused);
  EXPECT_EQ(t.on_reply(sub_ack("c")).kind, PubSubEvent::Kind::subscribed);
  t.unwant("b");
  t.want("b");
  (void)t.take_commands();
  EXPECT_FALSE(t.on_reply(sub_ack("b")).renewed);
}

TEST(SubscriptionTable, RefusedSubscribeIsReportedNotResentUntilReconnectOrUnwant) {
  SubscriptionTable t;
  t.want("a");
  t.want("b");
  (void)t.take_commands();
  auto e = t.on_reply(error("NOPERM this user has no permissions to access the 'a' channel"));
  EXPECT_EQ(e.kind, PubSubEvent::Kind::refused);
  EXPECT_EQ(e.channel, "a");
  EXPECT_NE(e.payload.find("NOPERM"), std::string::npos);
  EXPECT_TRUE(t.refused("a"));
  EXPECT_FALSE(t.ready("a"));
  EXPECT_EQ(t.on_reply(sub_ack("b")).kind, PubSubEvent::Kind::subscribed);
  EXPECT_TRUE(t.take_commands().empty());  // not resent, and no UNSUBSCRIBE for it either
  t.unwant("a");
  EXPECT_FALSE(t.refused("a"));
  EXPECT_TRUE(t.take_commands().empty());
  t.want("a");  // a new waiter tries again
  EXPECT_EQ(commands_of(t.take_commands()), sub_bytes("a"));
  (void)t.on_reply(error("NOPERM again"));
  t.on_disconnect();  // and so does a new connection (the ACL may have changed)
  EXPECT_FALSE(t.refused("a"));
  EXPECT_EQ(commands_of(t.take_commands()), sub_bytes("a") + sub_bytes("b"));
}

TEST(SubscriptionTable, PingAndOutOfStepReplies) {
  SubscriptionTable t;
  Request p = t.take_ping();
  EXPECT_EQ(p.payload(), "*1\r\n$4\r\nPING\r\n");
  EXPECT_EQ(t.on_reply(array({bulk("pong"), bulk("")})).kind, PubSubEvent::Kind::pong);
  EXPECT_EQ(t.on_reply(array({bulk("pong"), bulk("")})).kind, PubSubEvent::Kind::unexpected);  // no PING sent
  EXPECT_EQ(t.on_reply(sub_ack("a")).kind, PubSubEvent::Kind::unexpected);                     // no SUBSCRIBE sent
  EXPECT_EQ(t.on_reply(error("ERR x")).kind, PubSubEvent::Kind::unexpected);
  t.want("a");
  t.want("b");
  (void)t.take_commands();
  EXPECT_EQ(t.on_reply(sub_ack("b")).kind, PubSubEvent::Kind::unexpected);  // answers come in order
  for (const Reply& odd : {status("OK"), integer(1), array({}), array({integer(1), bulk("a"), integer(1)}),
                           array({bulk("pmessage"), bulk("a"), bulk("x")}), array({bulk("message"), bulk("a")}),
                           array({bulk("message"), bulk("a"), integer(1)})})
    EXPECT_EQ(t.on_reply(odd).kind, PubSubEvent::Kind::unexpected);
}

}  // namespace
