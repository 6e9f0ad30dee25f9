/*
 * dlock's Redis single-node protocol (RedisBackend) as a Promela model.
 * The node runs the scripts of include/dlock/detail/redis_scripts.hpp, each
 * as one atomic step; model/README.md maps every part to the code.
 *
 * scripts/model-check runs its configurations; model/README.md shows how by hand.
 *
 * Configuration, besides common.pml's and node.pml's:
 *   EXTEND     a holder may extend its lease once (default 1)
 *   LOSSES     acquire replies lost per run (default 1)
 */
#define N 1
#include "common.pml"
#include "node.pml"

#ifndef EXTEND
#define EXTEND 1
#endif
#ifndef LOSSES
#define LOSSES 1
#endif

byte lost;

#define IDLE 0
#define WANT 1  /* acquisition `me` under way: attempts until granted */
#define CS   2  /* holds the lock: in its critical section */
#define EXT  3  /* in its critical section, extend request on its way */

/*
 * A client: every step is one atomic action; time may pass between any two.
 * An attempt is one step: the front end takes `started`, the script runs and
 * the reply is judged at that instant (a request delayed on its way would set
 * the key later, which only lengthens the key's life against the lease, and
 * leave fewer ended leases for property 1a to compare with). A failed or
 * unknown attempt is retried with the same owner id, at a later step.
 */
proctype Client(byte c) {
  byte k, me, st, res, t, ext, d;
  bit wrote;
end:
  do
  :: atomic { st == IDLE && k < ACQS -> k++; me = c * ACQS + k; st = WANT }
  :: atomic {
       st == WANT && (!up[0] || ACQUIRE_MAY_RUN(0, me)) ->
       if
       :: up[0] ->
          acquire_script(0, me, res, t);
          if
          :: res == GRANTED && lost < LOSSES -> lost++; res = FAILED;  /* reply lost */
             printf("MSC: t=%d client%d (owner %d): reply lost\n", now, c, me)
          :: else
          fi
       :: else -> res = FAILED
       fi;
       if
       :: res == GRANTED ->
          /* RedisBackend: valid_until = started + ttl (ALLOW = 0) */
          acq[c] = me; tok[c] = t; vu[c] = now + TTL - ALLOW;
          check_grant(c, ended_max);
          st = CS
       :: else  /* held, or unknown: again later */
       fi;
       res = 0; t = 0
     }
  :: atomic { st == CS && !wrote -> fenced_write(c); wrote = 1 }
  /* extend script (owner-checked PEXPIRE), sent at time ext - 1 */
  :: atomic { st == CS && EXTEND && ext == 0 && now < vu[c] -> ext = now + 1; st = EXT }
  :: atomic {
       st == EXT ->
       if
       :: up[0] && kown[0] == me ->
          set_key(0, me);
          if
          :: now < vu[c] -> vu[c] = ext - 1 + TTL - ALLOW
          :: else  /* the lease had run out: the heartbeat declared it lost */
          fi
       :: true  /* not ours, node down, or reply lost: validity unchanged */
       fi;
       st = CS
     }
  /* release script (owner-checked DEL); the client leaves first */
  :: atomic {
       st == CS ->
       leave(c);
       release_script(0, me);
       st = IDLE; ext = 0; wrote = 0
     }
  od
}

init {
  atomic { run Client(0); run Client(1) }
}
