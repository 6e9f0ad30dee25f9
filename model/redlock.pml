/*
 * dlock's Redlock (RedlockBackend, src/redis/redlock_backend.cpp) over N = 3
 * nodes, quorum 2, with the fence raise, as a Promela model. Each node runs
 * the single-node scripts (node.pml); model/README.md maps every part to the
 * code.
 *
 * scripts/model-check runs its configurations; model/README.md shows how by hand.
 *
 * Configuration, besides common.pml's and node.pml's:
 *   NO_RAISE   return the grant without raising the granting nodes' counters
 *              to its token (a deliberate-bug variant)
 *   LOSSES     messages lost per run (acquire requests or replies, cleanup
 *              releases; default 2: enough for an in-doubt retry to find
 *              its own key)
 */
#define N 3
#define Q 2
#include "common.pml"
#include "node.pml"

#ifndef LOSSES
#define LOSSES 2
#endif

byte lost;

#define IDLE  0
#define WANT  1  /* acquisition `me` under way: attempts until granted */
#define RAISE 2  /* a quorum granted; fence-raise requests on their way */
#define CS    3  /* holds the lock: in its critical section */

#define B(i) (1 << (i))
#define COUNT(m) (((m) & 1) + (((m) >> 1) & 1) + (((m) >> 2) & 1))

/*
 * The acquire script on node i, and its reply: granted (with the node's
 * counter value: the token is the largest, `low` collects the granting nodes
 * below it), held, or failed: node down, the request lost (the node was
 * unreachable: the script did not run) or the reply lost (the script ran).
 */
inline acquire_at(i) {
  if
  :: up[i] && lost < LOSSES -> lost++; fail = fail | B(i);  /* request lost */
     printf("MSC: t=%d client%d (owner %d): request to node%d lost\n", now, c, me, i)
  :: up[i] ->
     acquire_script(i, me, res, v);
     if
     :: res == GRANTED && lost < LOSSES -> lost++; fail = fail | B(i);  /* reply lost */
        printf("MSC: t=%d client%d (owner %d): reply from node%d (counter %d) lost\n", now, c, me, i, v)
     :: res == GRANTED ->
        yes = yes | B(i);
        if
        :: v > t -> low = low | (yes & ~B(i)); t = v
        :: v < t -> low = low | B(i)
        :: else
        fi
     :: else  /* held by another owner */
     fi
  :: else -> fail = fail | B(i)
  fi;
  res = 0; v = 0
}

/* A failed attempt releases, unpublished, on every node that may hold it
 * (granted or failed); the request to a failed node may be lost. The
 * acquisition tries again later, with the same owner id. */
inline fail_attempt() {
  printf("MSC: t=%d client%d (owner %d): attempt failed, released\n", now, c, me);
  i = 0;
  do
  :: i < N ->
     if
     :: (yes | fail) & B(i) ->
        if
        :: (fail & B(i)) && lost < LOSSES -> lost++;
           printf("MSC: t=%d client%d (owner %d): release to node%d lost\n", now, c, me, i)
        :: else -> release_script(i, me)
        fi
     :: else
     fi;
     i++
  :: else -> break
  od;
  i = 0;
  st = WANT; started = 0; base = 0; yes = 0; fail = 0; low = 0; t = 0
}

inline grant(c) {
  acq[c] = me; tok[c] = t; vu[c] = started + TTL - ALLOW;
  check_grant(c, base);
  st = CS; started = 0; base = 0; yes = 0; fail = 0; low = 0; t = 0
}

/* redlock_judge_acquire's validity test: ttl - elapsed - drift > 0. */
#define VALID (now < started + TTL - ALLOW)

/*
 * A client: every step is one atomic action; time may pass between any two.
 * An acquire round is one step: the front end takes `started`, the scripts
 * run on the nodes one after the other at that instant, and the votes are
 * judged (a request delayed on its way would set the key later, which only
 * lengthens the key's life against the lease, and leave fewer ended leases
 * for property 1a to compare with). The fence-raise round is a later step.
 */
proctype Client(byte c) {
  byte k, me, st, res, v, t, base, started, i, d;
  unsigned yes : 3, fail : 3, low : 3;
  bit wrote;
end:
  do
  :: atomic { st == IDLE && k < ACQS -> k++; me = c * ACQS + k; st = WANT }
  :: atomic {
       st == WANT && (!up[0] || ACQUIRE_MAY_RUN(0, me)) && (!up[1] || ACQUIRE_MAY_RUN(1, me)) &&
       (!up[2] || ACQUIRE_MAY_RUN(2, me)) ->
       started = now; base = ended_max;
       acquire_at(0); acquire_at(1); acquire_at(2);
       printf("MSC: t=%d client%d (owner %d): %d nodes granted (mask %d), largest counter %d\n", now, c, me, COUNT(yes), yes, t);
       if
       :: COUNT(yes) >= Q && VALID ->
#ifdef NO_RAISE
          grant(c)
#else
          if
          :: low != 0 -> st = RAISE  /* redlock_nodes_to_raise */
          :: else -> grant(c)
          fi
#endif
       :: else -> fail_attempt()
       fi
     }
  /* The fence-raise round; `low` keeps the nodes not raised. A quorum of
   * counters at the token, and validity left, or the attempt fails. */
  :: atomic {
       st == RAISE ->
       i = 0;
       do
       :: i < N ->
          if
          :: (low & B(i)) && up[i] -> raise_script(i, t); low = low & ~B(i)
          :: else
          fi;
          i++
       :: else -> break
       od;
       i = 0;
       if
       :: COUNT(yes) - COUNT(low) >= Q && VALID -> grant(c)
       :: else -> fail_attempt()
       fi
     }
  :: atomic { st == CS && !wrote -> fenced_write(c); wrote = 1 }
  /* release (owner-checked DEL on every node); the client leaves first */
  :: atomic {
       st == CS ->
       leave(c);
       i = 0;
       do
       :: i < N -> release_script(i, me); i++
       :: else -> break
       od;
       i = 0;
       st = IDLE; wrote = 0
     }
  od
}

init {
  atomic {
    /* Wall-clock skews: all equal, one node ahead, or two ahead (the nodes
     * are interchangeable, so these cover every pattern up to a shift). */
    if
    :: true
    :: SKEW > 0 -> skew[0] = SKEW
    :: SKEW > 0 -> skew[0] = SKEW; skew[1] = SKEW
    fi;
    printf("MSC: node clocks (TIME) ahead of true time by %d, %d, %d\n", skew[0], skew[1], skew[2]);
    run Client(0);
    run Client(1)
  }
}
