// dlockctl's command-line parsing and value parsers.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "args.hpp"

namespace {

using dlockctl::parse_args;
using dlockctl::UsageError;

const std::vector<dlockctl::OptionSpec> specs{
    {"prefix", "P", "key prefix"}, {"yes", "", "confirm"}, {"name", "N", "repeatable"}};

dlockctl::Args parse(std::vector<std::string> words) { return parse_args(words, specs); }

TEST(DlockctlArgs, OptionsFlagsAndOperands) {
  const auto a = parse({"NAME", "--prefix", "p:", "--yes", "--name=x", "--name", "y"});
  EXPECT_EQ(a.positionals(), std::vector<std::string>{"NAME"});
  EXPECT_EQ(a.get("prefix"), "p:");
  EXPECT_TRUE(a.has("yes"));
  EXPECT_EQ(a.all("name"), (std::vector<std::string>{"x", "y"}));
  EXPECT_FALSE(a.has("help"));
  EXPECT_FALSE(a.get("missing").has_value());
}

TEST(DlockctlArgs, LastValueWinsAndEmptyValuesAreKept) {
  const auto a = parse({"--prefix", "a", "--prefix=", "--prefix", "b"});
  EXPECT_EQ(a.get("prefix"), "b");
  EXPECT_EQ(a.all("prefix").size(), 3u);
  EXPECT_EQ(parse({"--prefix="}).get("prefix"), "");
}

TEST(DlockctlArgs, DoubleDashEndsOptions) {
  const auto a = parse({"--", "--yes", "-x"});
  EXPECT_FALSE(a.has("yes"));
  EXPECT_EQ(a.positionals(), (std::vector<std::string>{"--yes", "-x"}));
  EXPECT_EQ(parse({"-"}).positionals(), std::vector<std::string>{"-"});
}

TEST(DlockctlArgs, Help) {
  EXPECT_TRUE(parse({"-h"}).help());
  EXPECT_TRUE(parse({"x", "--help"}).help());
}

TEST(DlockctlArgs, Errors) {
  EXPECT_THROW(parse({"--nope"}), UsageError);
  EXPECT_THROW(parse({"-x"}), UsageError);
  EXPECT_THROW(parse({"--prefix"}), UsageError);
  EXPECT_THROW(parse({"--yes=1"}), UsageError);
  try {
    (void)parse({"--nope=secret"});
    FAIL();
  } catch (const UsageError& e) {
    EXPECT_EQ(std::string(e.what()), "unknown option '--nope'");  // the value is not echoed
  }
}

TEST(DlockctlArgs, Durations) {
  using std::chrono::milliseconds;
  EXPECT_EQ(dlockctl::parse_duration("2", "t"), milliseconds(2000));
  EXPECT_EQ(dlockctl::parse_duration("0.5", "t"), milliseconds(500));
  EXPECT_EQ(dlockctl::parse_duration("1.5s", "t"), milliseconds(1500));
  EXPECT_EQ(dlockctl::parse_duration("250ms", "t"), milliseconds(250));
  EXPECT_EQ(dlockctl::parse_duration("2m", "t"), milliseconds(120000));
  EXPECT_EQ(dlockctl::parse_duration("0", "t", true), milliseconds(0));
  for (const char* bad : {"", "0", "-1", "1.", ".5", "1..2", "abc", "1h", "s", "ms", "1e3", "99999999999"})
    EXPECT_THROW((void)dlockctl::parse_duration(bad, "t"), UsageError) << bad;
  // Beyond a double's range, up or down: a usage error like any other bad value, not std::out_of_range.
  for (const std::string& bad : {std::string(400, '9'), "0." + std::string(400, '0') + "1"})
    for (const bool allow_zero : {false, true})
      EXPECT_THROW((void)dlockctl::parse_duration(bad, "t", allow_zero), UsageError) << bad;
}

TEST(DlockctlArgs, Integers) {
  EXPECT_EQ(dlockctl::parse_integer("6379", "port", 1, 65535), 6379);
  EXPECT_THROW((void)dlockctl::parse_integer("0", "port", 1, 65535), UsageError);
  EXPECT_THROW((void)dlockctl::parse_integer("65536", "port", 1, 65535), UsageError);
  EXPECT_THROW((void)dlockctl::parse_integer("12x", "port", 1, 65535), UsageError);
  EXPECT_EQ(dlockctl::parse_int64("-9223372036854775808", "key"), INT64_MIN);
  EXPECT_EQ(dlockctl::parse_int64("9223372036854775807", "key"), INT64_MAX);
  EXPECT_THROW((void)dlockctl::parse_int64("9223372036854775808", "key"), UsageError);
  EXPECT_THROW((void)dlockctl::parse_int64("", "key"), UsageError);
}

TEST(DlockctlArgs, SplitList) {
  EXPECT_EQ(dlockctl::split_list("a:1, b:2,,c:3,"), (std::vector<std::string>{"a:1", "b:2", "c:3"}));
  EXPECT_TRUE(dlockctl::split_list("").empty());
}

}  // namespace
