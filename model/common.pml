/*
 * Parts shared by redis_lock.pml and redlock.pml: time, the clients'
 * bookkeeping, the fenced resource and the properties. model/README.md
 * explains the abstraction; scripts/model-check runs the configurations.
 *
 * Time is discrete: `now` is true time in ticks, advanced by the Clock
 * process up to MAXT. A node's TIME (its wall clock, the counter's floor) is
 * now + its skew. A key set at t with PX ttl expires at true time
 * t + TTL - d, d in 0..DRIFT, chosen per SET (a node clock that runs fast
 * against true time, i.e. against the client's steady clock).
 *
 * Two clients (NC = 2), each making up to ACQS acquisitions. Every
 * acquisition has its own owner id (client c's k-th: c * ACQS + k), kept
 * across the attempts of that acquisition (so an attempt whose reply was lost
 * is retried with the same id, as the front end does).
 */

#define NC 2
#ifndef ACQS
#define ACQS 2
#endif

#ifndef TTL
#define TTL 2        /* the lock's ttl, in ticks */
#endif
#ifndef MAXT
#define MAXT 6       /* the horizon: the clock stops at MAXT */
#endif
#ifndef DRIFT
#define DRIFT 0      /* a key may expire up to DRIFT ticks before set + TTL */
#endif
#if DRIFT >= TTL
#error "DRIFT must be below TTL: a key lives at least one tick"
#endif
#ifndef ALLOW
#define ALLOW 0      /* the client's drift allowance: valid_until = started + TTL - ALLOW */
#endif
#ifndef MARGIN
#define MARGIN 1     /* a holder stops its work MARGIN ticks before valid_until ... */
#endif
#ifndef PAUSE
#define PAUSE 1      /* ... and a pause delays that by at most PAUSE ticks (UNBOUNDED_PAUSE: any) */
#endif
#ifndef RDELAY
#define RDELAY TTL   /* a crashed node comes back no earlier than RDELAY ticks after the crash */
#endif
#ifndef CRASHES
#define CRASHES 1    /* crashes in one run (per model) */
#endif

#define GRANTED 1
#define HELD    2
#define FAILED  3

byte now;

/* The clients. */
bit  incs[NC];   /* in the critical section: believes it holds the lock */
byte acq[NC];    /* owner id of the acquisition held */
byte tok[NC];    /* its fencing token */
byte vu[NC];     /* its valid_until, true time */

/* The fenced resource: accepts a write whose token is >= the highest it has
 * accepted (docs/safety.md: "rejects a write whose token is lower"). */
byte r_last;     /* highest token accepted */
byte r_acq;      /* owner id of the last accepted write */

/* History, for the properties. */
byte ended_max;  /* the largest token of the leases that have ended (released, or valid_until passed) */

inline end_lease(c) {
  if
  :: tok[c] > ended_max -> ended_max = tok[c]
  :: else
  fi
}

/* At each tick: leases whose validity has passed have ended. */
inline leases_run_out() {
  if
  :: incs[0] && vu[0] <= now -> end_lease(0)
  :: else
  fi;
  if
  :: incs[1] && vu[1] <= now -> end_lease(1)
  :: else
  fi
}

/* A holder stays in its critical section no longer than
 * valid_until - MARGIN + PAUSE: the clock does not pass that while it is in. */
#ifdef UNBOUNDED_PAUSE
#define MAY_TICK (now < MAXT)
#else
#define STAYS(c) (!incs[c] || now + 1 < vu[c] - MARGIN + PAUSE)
#define MAY_TICK (now < MAXT && STAYS(0) && STAYS(1))
#endif

/*
 * Property 1 (fencing):
 *  1a. checked when a grant is returned: its token is above the token of
 *      every lease that had ended (released, or past valid_until) before its
 *      attempt started (docs/safety.md, "Fencing tokens increase strictly").
 *      So a stale holder's write after its successor's is rejected.
 *  1b. checked at the resource: the tokens it accepts strictly increase
 *      across acquisitions (two acquisitions never both have a write accepted
 *      with the same token), also between holders whose leases overlap.
 * Property 2 (mutual exclusion), checked when a client enters its critical
 * section: no other client is in its critical section.
 */
inline check_grant(c, base) {
  printf("MSC: t=%d client%d (owner %d) granted token %d, valid until %d\n", now, c, acq[c], tok[c], vu[c]);
#ifdef PROP_FENCE
  assert(tok[c] > base);  /* 1a */
#endif
#ifdef PROP_MUTEX
  assert(!incs[1 - c]);  /* 2 */
#endif
  incs[c] = 1
}

/* The holder leaves its critical section (and releases). */
inline leave(c) {
  printf("MSC: t=%d client%d (owner %d) releases\n", now, c, acq[c]);
  incs[c] = 0;
  end_lease(c);
  acq[c] = 0; tok[c] = 0; vu[c] = 0
}

inline fenced_write(c) {
  if
  :: tok[c] >= r_last ->
     printf("MSC: t=%d client%d (owner %d) writes with token %d: accepted\n", now, c, acq[c], tok[c]);
#ifdef PROP_FENCE
     assert(tok[c] > r_last || acq[c] == r_acq);  /* 1b */
#endif
     r_last = tok[c];
     r_acq = acq[c]
  :: else  /* rejected: a stale token */
     printf("MSC: t=%d client%d (owner %d) writes with token %d: rejected\n", now, c, acq[c], tok[c])
  fi
}
