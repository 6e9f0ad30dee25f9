// libFuzzer target for the replies a Redis HA client reads (issue 14): any
// bytes, parsed into replies by the protocol layer, go through the slot-map
// builders (CLUSTER SLOTS and CLUSTER SHARDS), the Sentinel and ROLE parsers,
// the +switch-master parser and the decision after an error reply. Never a
// crash, a leak or undefined behaviour; a map that builds routes every slot
// to a node with a port, or to none.
#include <dlock/detail/redis_cluster.hpp>
#include <dlock/detail/redis_sentinel.hpp>

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <variant>

#include "fuzz_input.hpp"

namespace {

using namespace dlock::detail::redis_proto;
using dlock_fuzz::require;

constexpr ParserLimits limits{.max_bulk = 1u << 16, .max_elements = 1u << 12, .max_depth = 8, .max_line = 1u << 10};

void check_map(const std::variant<SlotMap, std::string>& parsed) {
  const SlotMap* map = std::get_if<SlotMap>(&parsed);
  if (map == nullptr) return;
  std::size_t served = 0;
  for (std::uint32_t s = 0; s < cluster_slot_count; ++s) {
    const ClusterNode* n = map->primary_for_slot(static_cast<std::uint16_t>(s));
    if (n == nullptr) continue;
    ++served;
    require(n->port != 0, "a routed node without a port");
  }
  require(served == map->served_slots(), "served_slots disagrees with the routing");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  ReplyParser p(limits);
  p.feed(bytes);
  while (auto r = p.next()) {
    check_map(SlotMap::from_cluster_slots(*r, "127.0.0.1"));
    check_map(SlotMap::from_cluster_shards(*r, "127.0.0.1"));
    (void)parse_master_addr(*r);
    (void)parse_role(*r);
    if (r->type == Reply::Type::string || r->type == Reply::Type::status) (void)parse_switch_master(r->str);
    if (r->is_error()) {
      const HaDecision d = after_error(r->str, "127.0.0.1");
      if (d.step == HaStep::follow_moved || d.step == HaStep::follow_ask)
        require(d.redirect && !d.redirect->host.empty() && d.redirect->port != 0, "a redirect without a target",
                r->str);
    }
  }
  (void)parse_switch_master(bytes);
  return 0;
}
