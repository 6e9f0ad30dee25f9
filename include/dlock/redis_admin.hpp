// dlock/redis_admin.hpp: administration of the locks stored on Redis, for
// operators and tools (dlockctl is built on it): list the locks under a key
// prefix, inspect one, force-release one that a dead or stuck process still
// holds, and set a semaphore's permit count.
//
//   dlock::RedisAdmin admin(dlock::RedisOptions{.host = "127.0.0.1", .key_prefix = "dlock:"});
//   for (const auto& l : admin.list().locks) fmt::print("{} {} {}\n", l.name, dlock::kind_name(l.kind),
//   l.owner.value_or("-")); admin.force_release("orders:42");   // waiters wake at once (pub/sub)
//
//   dlock::RedlockAdmin nodes(redlock_options.nodes);  // the same, on N nodes in parallel
//
// Every primitive's keys are recognised (the mutex, its fair mode's queue,
// the read-write lock, the semaphore's permits, the election's leader; the
// key layouts are those of detail/redis_keys.hpp and
// detail/redis_primitive_scripts.hpp, docs/redis.md and docs/primitives.md).
// Reads are plain commands in one MULTI/EXEC per batch (a consistent
// snapshot, no Lua); listing uses SCAN, never KEYS. A force release reads the
// holder and then runs the library's own owner-checked release script for
// that holder (so it publishes the release exactly as an unlock does, and
// never deletes a lock that changed hands in between).
//
// Link dlock::redis. Thread-safe. Every call blocks for a few round trips,
// each bounded by the options' connect_timeout and command_timeout, and
// throws as the backend does: ConnectionError / TimeoutError (the server
// could not be reached or did not answer; messages name the endpoint),
// ServerError (error replies: errc::auth for refused credentials).
// Messages never contain a password. Lock names, owner ids and tokens are
// what these calls return, so they do appear in the results.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "detail/redis_waits.hpp"
#include "redis_options.hpp"

namespace dlock {

class RedisBackend;
class RedlockBackend;
namespace detail {
class RedisClient;
}

/// Which primitive a set of keys belongs to.
enum class RedisLockKind {
  mutex,       ///< P{N}: Lock<RedisBackend> / Lock<RedlockBackend>
  rw,          ///< P{N}:rw:writer, :rw:readers, :rw:waiting, :rw:tokens: RwLock
  semaphore,   ///< P{N}:sem:permits, :sem:count, :sem:tokens: Semaphore
  fair_queue,  ///< P{N} with P{N}:queue, :queue:ttl: a mutex in fair (FIFO) mode with waiters queued
  election,    ///< P{N}:leader, :leader:info: Election
};
/// "mutex", "rw", "semaphore", "fair-queue", "election".
[[nodiscard]] std::string_view kind_name(RedisLockKind kind) noexcept;

/// One lease of a set: a reader, a permit, or a waiter in a fair queue.
struct RedisLeaseInfo {
  std::string owner;   ///< its owner id
  long long ttl_ms{};  ///< ms until it expires by the server clock (a queued waiter: until its deadline)
  /// A reader's or permit's fencing token (what its holder's fencing_token()
  /// says), from P{N}:rw:tokens / P{N}:sem:tokens; nullopt for queued waiters
  /// and the waiting writer, or a lease whose entry is missing.
  std::optional<std::string> token;
  friend bool operator==(const RedisLeaseInfo&, const RedisLeaseInfo&) = default;
};

/// What the server holds for one name and kind.
struct RedisLockInfo {
  std::string name;                           ///< the lock name N
  RedisLockKind kind = RedisLockKind::mutex;  ///< which primitive
  std::string key;  ///< the holder's key: P{N} (mutex, fair), P{N}:rw:writer, P{N}:sem:permits, P{N}:leader
  std::optional<std::string> owner;     ///< the holder's owner id (mutex, fair, rw writer, leader); nullopt: none
  long long ttl_ms = -2;                ///< the holder's key's PTTL: -1 no TTL, -2 no holder
  std::optional<std::string> token;     ///< the fencing counter P{N}:fence (election: the latest term issued)
  std::string wrong_type;               ///< non-empty: `key` holds this Redis type, so it is not a dlock lock
  std::vector<RedisLeaseInfo> readers;  ///< rw: the live readers (each with its token)
  std::optional<RedisLeaseInfo> waiting_writer;  ///< rw: the blocked writer that keeps new readers out
  std::vector<RedisLeaseInfo> permits;           ///< semaphore: the live permits (each with its token)
  std::optional<std::string> permit_count;  ///< semaphore: the operator's count (:sem:count); nullopt: the callers'
  std::vector<RedisLeaseInfo> queue;        ///< fair: the live waiters, in arrival order
  std::optional<std::string> candidate;     ///< election: the leader's candidate id
  std::optional<std::string> term;          ///< election: the leader's term
  /// The server that answered for this name: "host:port" of the primary
  /// (Sentinel: the primary found; Cluster: the primary of the name's slot).
  std::string node;
  /// Something is held: an owner, readers or permits.
  [[nodiscard]] bool held() const noexcept { return owner || !readers.empty() || !permits.empty(); }
};

/// What list() looks for.
struct RedisListOptions {
  /// A glob on the lock names (SCAN MATCH syntax: * ? [..], \ escapes), "*": all.
  std::string match = "*";
  /// At most this many locks are read (then RedisLockList::truncated); 0: no bound.
  std::size_t limit = 100000;
};

struct RedisLockList {
  std::vector<RedisLockInfo> locks;  ///< sorted by name, then kind; only what is held (or wrong_type, or configured)
  bool truncated = false;            ///< more locks matched than RedisListOptions::limit
};

/// A blocked acquirer's wait record (`<prefix>waiting:<waiter>`, written by
/// RedisBackend while a Lock waits; docs/redis.md "Wait records").
using RedisWaitInfo = detail::WaitInfo;

struct RedisWaitRecords {
  std::vector<RedisWaitInfo> records;
  std::size_t malformed = 0;  ///< keys under `<prefix>waiting:` that did not decode
};

/// What force_release() deleted.
struct RedisReleased {
  std::string owner;                 ///< the owner id it held
  long long ttl_ms = -2;             ///< what was left of its TTL (-1: none)
  std::string key;                   ///< the key it was removed from (force_release_leases(); force_release(): empty)
  std::optional<std::string> token;  ///< a reader's or permit's token (force_release_leases())
};

/// One Redis server (standalone or a primary), the key prefix of its options.
class RedisAdmin {
 public:
  /// Validates the options (InvalidArgument). Connects lazily, on its own
  /// connections (eviction_check is honoured as given; tools usually set off).
  explicit RedisAdmin(RedisOptions options);
  /// parse_redis_uri(uri, base).
  explicit RedisAdmin(std::string_view uri, RedisOptions base = {});
  /// Shares the backend's connection pool and prefix (keeps the backend alive).
  explicit RedisAdmin(const RedisBackend& backend);
  ~RedisAdmin();
  RedisAdmin(RedisAdmin&&) noexcept;
  RedisAdmin& operator=(RedisAdmin&&) noexcept;

  /// "host:port" or the socket path; never the password.
  [[nodiscard]] const std::string& endpoint() const noexcept;
  [[nodiscard]] const std::string& prefix() const noexcept;
  /// The node the commands reach: endpoint(), or with Sentinel the primary
  /// found, "host:port (the primary of '<name>' (Sentinel))" (endpoint()
  /// alone before the first command found one). Never blocks.
  [[nodiscard]] std::string reached() const;

  /// The locks under the prefix whose names match: SCAN (COUNT 1000) for the
  /// keys, then one MULTI/EXEC per batch of names for their state. A lock may
  /// change between SCAN and the read: what is no longer held is left out.
  [[nodiscard]] RedisLockList list(const RedisListOptions& options = {});
  /// Everything stored under `name`, one entry per kind whose keys exist (a
  /// mutex and a semaphore may share a name); empty: none. Every key the
  /// layouts define for the name, in one MULTI/EXEC (one round trip, no SCAN).
  [[nodiscard]] std::vector<RedisLockInfo> inspect(std::string_view name);
  /// inspect() of many names in one MULTI/EXEC per batch, mutex keys only
  /// (for quorum views and deadlock detection). Result in the order of `names`.
  [[nodiscard]] std::vector<RedisLockInfo> inspect_mutexes(const std::vector<std::string>& names);
  /// Every wait record under the prefix (SCAN, then MGET in batches).
  [[nodiscard]] RedisWaitRecords wait_records();
  /// Deletes mutex `name` (P{N}; also a fair-mode lock) and publishes the
  /// release so that waiting Locks wake at once: reads the holder, then runs
  /// the release script (redis_scripts.hpp) for that holder. With `owner`,
  /// only if that owner holds it (an owner-checked release). nullopt: not
  /// held (by that owner), or it changed hands between the read and the
  /// release (nothing is deleted then, and it is not read again: the new
  /// holder was never seen by the caller). The holder is not told: it may
  /// still be working.
  [[nodiscard]] std::optional<RedisReleased> force_release(std::string_view name,
                                                           std::optional<std::string_view> owner = std::nullopt);
  /// Force-releases the leases of `kind` under `name`: rw, its writer and
  /// every reader; semaphore, every permit; with `owner`, only that owner's
  /// lease. Reads them (inspect()), then runs the library's own release
  /// script for each owner read, as its holder's release would: a reader or
  /// permit leaves its set and its token's entry (P{N}:rw:tokens,
  /// P{N}:sem:tokens) with it, and the release is published, so waiters
  /// wake at once. A lease that expired or was released in between is not
  /// in the result. mutex and fair_queue: force_release(); election:
  /// InvalidArgument (its leader expires by its lease). The holders are not
  /// told: they may still be working.
  [[nodiscard]] std::vector<RedisReleased> force_release_leases(std::string_view name, RedisLockKind kind,
                                                                std::optional<std::string_view> owner = std::nullopt);
  /// Sets the permit count of semaphore `name` for every client (the key
  /// P{N}:sem:count, without TTL), or with nullopt removes it so that each
  /// client's own count applies again. Holders keep their permits: a lower
  /// count only holds new acquires back until enough are released. Returns
  /// the previous operator count (nullopt: none was set). One MULTI/EXEC.
  std::optional<std::string> set_permit_count(std::string_view name, std::optional<std::uint64_t> count);

 private:
  std::shared_ptr<detail::RedisClient> client_;
};

/// One node's answer in a RedlockAdmin call.
template <class T>
struct RedlockNodeResult {
  std::string endpoint;    ///< the node
  std::optional<T> value;  ///< the answer; nullopt when the call failed on this node
  std::string error;       ///< why it failed (the exception's message; never a password)
};

/// The same operations on every node of a Redlock set at once (one thread per
/// node), so that a down node costs one timeout, not N. A node that fails
/// gives its error in its result; these calls never throw for a node.
class RedlockAdmin {
 public:
  /// One RedisAdmin per node (validated: InvalidArgument). `prefix` (when not
  /// empty) replaces every node's key_prefix, as RedlockOptions::key_prefix does.
  explicit RedlockAdmin(std::vector<RedisOptions> nodes, std::string_view prefix = {});
  /// The backend's nodes and prefix, on connections of its own.
  explicit RedlockAdmin(const RedlockBackend& backend);

  [[nodiscard]] std::size_t node_count() const noexcept { return nodes_.size(); }
  /// N / 2 + 1.
  [[nodiscard]] std::size_t quorum() const noexcept { return nodes_.size() / 2 + 1; }
  [[nodiscard]] std::vector<std::string> endpoints() const;

  [[nodiscard]] std::vector<RedlockNodeResult<RedisLockList>> list(const RedisListOptions& options = {});
  [[nodiscard]] std::vector<RedlockNodeResult<std::vector<RedisLockInfo>>> inspect_mutexes(
      const std::vector<std::string>& names);
  [[nodiscard]] std::vector<RedlockNodeResult<std::optional<RedisReleased>>> force_release(
      std::string_view name, std::optional<std::string_view> owner = std::nullopt);

 private:
  std::vector<RedisAdmin> nodes_;
};

}  // namespace dlock
