// dlock/version.hpp: the library version.
#pragma once

#define DLOCK_VERSION_MAJOR 0
#define DLOCK_VERSION_MINOR 1
#define DLOCK_VERSION_PATCH 0

namespace dlock {
inline constexpr int version_major = DLOCK_VERSION_MAJOR;
inline constexpr int version_minor = DLOCK_VERSION_MINOR;
inline constexpr int version_patch = DLOCK_VERSION_PATCH;
}  // namespace dlock
