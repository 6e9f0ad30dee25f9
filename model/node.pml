/*
 * N Redis nodes running dlock's Lua scripts
 * (include/dlock/detail/redis_scripts.hpp), each script one atomic step, for
 * one lock name: the key P{N} (owner id, expiry) and the counter P{N}:fence.
 * Included by redis_lock.pml (N = 1) and redlock.pml (N = 3).
 *
 * Configuration:
 *   OLD_RULE   the token rule before issue 11: seed the counter from TIME only
 *              when it is missing, then INCR (a deliberate-bug variant)
 *   SKEW       node i's wall clock (TIME) reads now + skew[i], skew in 0..SKEW
 *   RDELAY     a crashed node restarts no earlier than RDELAY ticks later
 *   CRASHES    crashes per run
 *   NO_STALE   restarts are empty only (no restore from stale persistence)
 */
#ifndef SKEW
#define SKEW 0
#endif

bit  up[N] = 1;
byte kown[N];    /* P{N}: owner id, 0 = absent */
byte kexp[N];    /* its expiry, true time */
byte cnt[N];     /* P{N}:fence, 0 = absent; its expiry is not modelled (README) */
bit  gt[N];      /* the counter was set by a grant during this tick (kept across a restart: TIME is the machine's clock) */
byte downat[N];  /* when it crashed */
byte skew[N];
byte crashes;
/* N = 1: one snapshot (an RDB, or the part of an AOF that reached the disk):
 * what a restart from stale persistence brings back (node_events). */
bit  saved;
byte s_node, s_kown, s_kexp, s_cnt;

#define TIME(i) (now + skew[i])

/* SET P{N} owner PX ttl, on a node whose clock may run fast (uses the
 * caller's local d). */
inline set_key(i, me) {
  select(d : 0 .. DRIFT);
  kown[i] = me;
  kexp[i] = now + TTL - d;
  d = 0
}

/*
 * Assumption A1: a node's TIME advances between two grants on it (one
 * microsecond against a script's run time). The model lets the acquire
 * script run only when it will not set the counter a second time in one tick.
 */
#define ACQUIRE_MAY_RUN(i, me) (!gt[i] || (kown[i] != 0 && (kown[i] != me || cnt[i] != 0)))

/*
 * The acquire script: res = GRANTED with the token in v, or HELD.
 * New rule (issue 11 item 1): a fresh grant sets counter = max(counter, TIME)
 * + 1. A key that already holds this owner id is a grant (in doubt: an earlier
 * attempt of this acquisition ran, its reply was lost): the TTL is reset and
 * the counter's value returned, not incremented.
 */
inline acquire_script(i, me, res, v) {
  if
  :: kown[i] != 0 && kown[i] != me ->
     res = HELD;
     printf("MSC: t=%d node%d: owner %d finds it held by %d\n", now, i, me, kown[i])
  :: else ->
     if
     :: kown[i] == 0 || cnt[i] == 0 ->
#ifdef OLD_RULE
        if
        :: cnt[i] == 0 -> cnt[i] = TIME(i)
        :: else
        fi;
#else
        if
        :: cnt[i] < TIME(i) -> cnt[i] = TIME(i)
        :: else
        fi;
#endif
        cnt[i]++;
        gt[i] = 1
     :: else  /* in doubt: this owner's own key; its counter as it is */
        printf("MSC: t=%d node%d: key already holds owner %d (in doubt): granted again\n", now, i, me)
     fi;
     set_key(i, me);
     res = GRANTED;
     v = cnt[i];
     printf("MSC: t=%d node%d: owner %d gets the key (expires at %d), counter %d\n", now, i, me, kexp[i], v)
  fi
}

/* The release script (owner-checked DEL). */
inline release_script(i, me) {
  if
  :: up[i] && kown[i] == me -> kown[i] = 0; kexp[i] = 0
  :: else
  fi
}

/* The fence-raise script: raise only. */
inline raise_script(i, v) {
  if
  :: cnt[i] < v -> cnt[i] = v
  :: else
  fi;
  printf("MSC: t=%d node%d: fence raised to %d\n", now, i, cnt[i])
}

/* At each tick, on every node: expire the lock key. */
inline nodes_tick() {
  i = 0;
  do
  :: i < N ->
     gt[i] = 0;
     if
     :: kown[i] != 0 && kexp[i] <= now -> kown[i] = 0; kexp[i] = 0
     :: else
     fi;
     i++
  :: else -> break
  od;
  i = 0
}

/*
 * At each tick a node may also crash (it stops answering; its memory is
 * gone) and restart RDELAY ticks or more after the crash, with what its
 * persistence kept:
 *   N = 1 (EXACT_SNAPSHOT): nothing (empty), or the one snapshot taken at an
 *     earlier tick: the key, if not expired by now, and the counter;
 *   N = 3: no key, and a counter anywhere from absent up to the value it had
 *     at the crash (empty, any stale snapshot, or fully persisted: this
 *     over-approximates the snapshots it could have taken).
 * NO_STALE: restarts are always empty.
 */
#if N == 1
#define EXACT_SNAPSHOT
#endif

inline node_events() {
  select(i : 0 .. N - 1);
  if
#if defined(EXACT_SNAPSHOT) && !defined(NO_STALE)
  :: up[i] && !saved && CRASHES > 0 -> saved = 1; s_node = i; s_kown = kown[i]; s_kexp = kexp[i]; s_cnt = cnt[i];
     printf("MSC: t=%d node%d: snapshot (key owner %d, counter %d)\n", now, i, kown[i], cnt[i])
#endif
  :: up[i] && crashes < CRASHES -> up[i] = 0; crashes++; downat[i] = now; kown[i] = 0; kexp[i] = 0;
     printf("MSC: t=%d node%d crashes (counter was %d)\n", now, i, cnt[i])
  :: true
  fi;
  if  /* the restart may follow the crash at once when RDELAY is 0 */
  :: !up[i] && now >= downat[i] + RDELAY ->
     up[i] = 1; downat[i] = 0;
#if defined(NO_STALE)
     cnt[i] = 0;
#elif defined(EXACT_SNAPSHOT)
     if
     :: cnt[i] = 0  /* empty */
     :: saved && s_node == i ->
        cnt[i] = s_cnt;
        if
        :: s_kown != 0 && s_kexp > now -> kown[i] = s_kown; kexp[i] = s_kexp
        :: else
        fi
     fi;
#else
     select(v : 0 .. cnt[i]);
     cnt[i] = v;
     v = 0;
#endif
     printf("MSC: t=%d node%d restarts: key owner %d, counter %d\n", now, i, kown[i], cnt[i])
  :: true
  fi;
  i = 0
}

/* The clock: one tick at a time, up to MAXT, while no holder is kept in
 * its critical section beyond its bound (common.pml, MAY_TICK). */
active proctype Clock() {
  byte i, v;
end:
  do
  :: atomic {
       MAY_TICK ->
       now++;
       nodes_tick();
       leases_run_out();
       node_events()
     }
  od
}
