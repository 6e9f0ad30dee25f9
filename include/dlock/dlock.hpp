// dlock/dlock.hpp: the umbrella header: Lock, Guard, options, errors, owner
// ids, the retry policy, the auto-extend Heartbeat and the in-process MemoryBackend;
// RwLock, Semaphore and Election with their in-process MemoryPrimitives. The Redis,
// PostgreSQL and Redlock backends have headers of their own (dlock/redis.hpp,
// dlock/postgres.hpp, dlock/redlock.hpp) and link libraries of their own.
#pragma once

#include "backend.hpp"
#include "clock.hpp"
#include "election.hpp"
#include "error.hpp"
#include "fallback.hpp"
#include "guard.hpp"
#include "heartbeat.hpp"
#include "lock.hpp"
#include "lock_all.hpp"
#include "lock_order.hpp"
#include "memory.hpp"
#include "memory_primitives.hpp"
#include "metrics.hpp"
#include "observer.hpp"
#include "options.hpp"
#include "owner_id.hpp"
#include "primitives_backend.hpp"
#include "retry.hpp"
#include "rw_lock.hpp"
#include "semaphore.hpp"
#include "version.hpp"
