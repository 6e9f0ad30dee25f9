# Shared by dlock's scripts: paths, building, and local throw-away servers.
# Source it; it defines functions and sets DLOCK_ROOT.

DLOCK_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

# build PRESET [TARGET...]: configure (once) and build with a CMake preset.
build() {
  local preset=$1
  shift
  [ -f "$DLOCK_ROOT/build/$preset/CMakeCache.txt" ] || cmake --preset "$preset" -S "$DLOCK_ROOT" >/dev/null
  cmake --build "$DLOCK_ROOT/build/$preset" ${1:+--target "$@"}
}

# free_port: prints a loopback TCP port nobody listens on, below Linux's
# ephemeral range (32768-60999 by default), so that no outgoing connection can
# take it while a server restarts on it (scripts/chaos does that).
free_port() {
  local port
  for _ in $(seq 1 200); do
    port=$((20000 + RANDOM % 12000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return 0
    fi
  done
  echo "free_port: no free port found" >&2
  return 1
}

# Servers started here are recorded so that stop_servers (run on EXIT) ends them.
_dlock_cleanup=()
stop_servers() {
  local i
  for ((i = ${#_dlock_cleanup[@]} - 1; i >= 0; i--)); do eval "${_dlock_cleanup[$i]}" >/dev/null 2>&1 || true; done
  _dlock_cleanup=()
}

# start_redis PORT [DIR]: a redis-server on 127.0.0.1:PORT in DIR (default: a
# new temporary directory), without persistence (it loads DIR/dump.rdb if there:
# scripts/chaos restarts a killed server this way). Waits until it answers PING.
start_redis() {
  local port=$1 dir=${2:-}
  [ -n "$dir" ] || dir=$(mktemp -d -t dlock-redis.XXXXXX)
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
    --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" >/dev/null
  _dlock_cleanup+=("redis-cli -p $port shutdown nosave; rm -rf '$dir'")
  for _ in $(seq 1 100); do
    redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && return 0
    sleep 0.05
  done
  echo "start_redis: redis-server on port $port did not start; log: $dir/redis.log" >&2
  return 1
}

# pg_bin: the directory of PostgreSQL's server programs (initdb, pg_ctl, pgbench).
pg_bin() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$d" ] || { echo "pg_bin: PostgreSQL server not installed" >&2; return 1; }
  echo "$d"
}

# as_pg CMD...: runs CMD as the postgres user when we are root (PostgreSQL
# refuses to run as root), else as ourselves.
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# start_postgres PORT: a PostgreSQL cluster on 127.0.0.1:PORT in a temporary
# directory, trusting local connections, with a database named dlock.
start_postgres() {
  local port=$1 dir bin
  bin=$(pg_bin)
  dir=$(mktemp -d -t dlock-pg.XXXXXX)
  chmod 755 "$dir"
  [ "$(id -u)" -eq 0 ] && chown postgres: "$dir"
  as_pg "$bin/initdb" -D "$dir/data" -A trust -U postgres --no-sync >"$dir/initdb.log" 2>&1 ||
    { echo "start_postgres: initdb failed; log: $dir/initdb.log" >&2; return 1; }
  as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start >/dev/null ||
    { echo "start_postgres: server did not start; log: $dir/server.log" >&2; return 1; }
  _dlock_cleanup+=("as_pg '$bin/pg_ctl' -D '$dir/data' -m immediate stop; rm -rf '$dir'")
  as_pg "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres dlock
}
