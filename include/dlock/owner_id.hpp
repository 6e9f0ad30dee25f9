// dlock/owner_id.hpp: OwnerId, the unique identity of one lock acquisition.
//
// Every successful acquire gets a fresh UUIDv7 (RFC 9562): 48 bits of Unix
// milliseconds, then 74 random bits from a per-thread generator seeded by the
// OS. It is stored with the lock on the server and checked by release and
// extend, so only the acquisition that took a lock can give it back. Ids made
// in a later millisecond sort later as text, which keeps server listings and
// logs in acquisition order. The wall clock is used only for this id, never
// for lock validity.
#pragma once

#include <chrono>
#include <compare>
#include <cstdint>
#include <string_view>

#include "detail/random.hpp"
#include "detail/uuid.hpp"

namespace dlock {

class OwnerId {
 public:
  /// A new UUIDv7 for the current time. Thread-safe.
  [[nodiscard]] static OwnerId generate() {
    const auto ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
            .count();
    auto& rng = detail::thread_rng();
    const std::uint64_t hi = rng();
    const std::uint64_t lo = rng();
    return OwnerId(detail::format_uuid(detail::uuid_v7_bytes(static_cast<std::uint64_t>(ms), hi, lo)));
  }

  /// The canonical 36-character text, e.g. "01936b8e-7c3a-7d2e-9f01-2b3c4d5e6f70".
  [[nodiscard]] std::string_view str() const noexcept { return {text_.data(), text_.size()}; }

  friend bool operator==(const OwnerId&, const OwnerId&) = default;
  friend auto operator<=>(const OwnerId&, const OwnerId&) = default;

 private:
  explicit OwnerId(const detail::UuidText& text) : text_(text) {}
  detail::UuidText text_;
};

}  // namespace dlock
