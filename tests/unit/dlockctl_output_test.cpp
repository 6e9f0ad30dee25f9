// dlockctl's output helpers: JSON quoting and writer, terminal escaping,
// tables, durations; and the pure Redis key helpers.
#include <gtest/gtest.h>

#include <string>

#include "output.hpp"

namespace {

using dlockctl::escape_text;
using dlockctl::json_quote;

TEST(DlockctlOutput, Utf8Validation) {
  EXPECT_TRUE(dlockctl::valid_utf8("plain"));
  EXPECT_TRUE(dlockctl::valid_utf8("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x94\x92"));
  EXPECT_FALSE(dlockctl::valid_utf8("\xff"));
  EXPECT_FALSE(dlockctl::valid_utf8("\xc3"));              // truncated
  EXPECT_FALSE(dlockctl::valid_utf8("\xc0\xaf"));          // overlong
  EXPECT_FALSE(dlockctl::valid_utf8("\xed\xa0\x80"));      // surrogate
  EXPECT_FALSE(dlockctl::valid_utf8("\xf4\x90\x80\x80"));  // > U+10FFFF
}

TEST(DlockctlOutput, JsonQuote) {
  EXPECT_EQ(json_quote("a\"b\\c"), R"("a\"b\\c")");
  EXPECT_EQ(json_quote("l1\nl2\t\r"), R"("l1\nl2\t\r")");
  EXPECT_EQ(json_quote(std::string("\0\x1b\x7f", 3)), R"("\u0000\u001b\u007f")");
  EXPECT_EQ(json_quote("caf\xc3\xa9"), "\"caf\xc3\xa9\"");
  EXPECT_EQ(json_quote("x\xffy"), R"("x\ufffdy")");
  EXPECT_EQ(json_quote("{}:"), R"("{}:")");
}

TEST(DlockctlOutput, JsonWriter) {
  dlockctl::JsonWriter j;
  j.begin_object().key("a").value(1).key("b").begin_array().value("x").null().value(true).end_array();
  j.name("n", "ok").name("bad", "\xff").key("t").token(std::string("17")).key("u").token(std::string("x1"));
  j.key("v").token(std::nullopt).key("e").begin_object().end_object().end_object();
  EXPECT_EQ(j.str(),
            R"({"a":1,"b":["x",null,true],"n":"ok","bad":"\ufffd","bad_hex":"ff","t":17,"u":"x1","v":null,"e":{}})");
}

TEST(DlockctlOutput, EscapeTextNeutralisesTerminalControls) {
  EXPECT_EQ(escape_text("orders:42"), "orders:42");
  EXPECT_EQ(escape_text("caf\xc3\xa9"), "caf\xc3\xa9");
  EXPECT_EQ(escape_text("\x1b[31mred"), "\\x1b[31mred");
  EXPECT_EQ(escape_text("a\nb\\c"), "a\\x0ab\\\\c");
  EXPECT_EQ(escape_text("\xff"), "\\xff");
  EXPECT_EQ(escape_text("\xc2\x9b"), "\\xc2\\x9b");  // C1 CSI
}

TEST(DlockctlOutput, Table) {
  dlockctl::Table t({"NAME", "TTL"});
  t.add({"a", "1s"});
  t.add({"caf\xc3\xa9", "no TTL"});
  EXPECT_EQ(t.render(), "NAME  TTL\na     1s\ncaf\xc3\xa9  no TTL\n");
}

TEST(DlockctlOutput, Durations) {
  EXPECT_EQ(dlockctl::format_ttl(-1), "no TTL");
  EXPECT_EQ(dlockctl::format_ttl(-2), "-");
  EXPECT_EQ(dlockctl::format_ttl(812), "812ms");
  EXPECT_EQ(dlockctl::format_ttl(9812), "9.812s");
  EXPECT_EQ(dlockctl::format_ttl(723000), "12m03s");
  EXPECT_EQ(dlockctl::format_ttl(7500000), "2h05m");
  EXPECT_EQ(dlockctl::format_ttl(90000000), "1d01h");
  EXPECT_EQ(dlockctl::format_utc(std::chrono::system_clock::time_point(std::chrono::milliseconds(1700000000123))),
            "2023-11-14T22:13:20.123Z");
}

}  // namespace
