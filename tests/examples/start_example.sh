# Sourced by the example tests: start_example OUT PATTERN BIN ARGS... starts BIN
# with ARGS, its output in OUT, stops it on exit, and sets `url` to the first
# match of the grep pattern PATTERN in its output (the address it listens on).
start_example() {
  local out=$1 pattern=$2
  shift 2
  "$@" >"$out" 2>&1 &
  example_pid=$!
  trap 'kill $example_pid 2>/dev/null || true; wait $example_pid 2>/dev/null || true; cleanup' EXIT
  url=
  for _ in $(seq 1 100); do
    url=$(grep -o "$pattern" "$out" || true)
    [ -n "$url" ] && return 0
    sleep 0.05
  done
  echo "FAIL: the example did not start"
  cat "$out"
  exit 1
}
