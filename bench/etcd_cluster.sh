# start_etcd_cluster: a throw-away three-member etcd cluster on free loopback
# ports (data in a temp dir, stopped by stop_servers); sets etcd_endpoints to
# its comma-separated client URLs and waits until it is healthy. Sourced by
# bench/parts/etcd.sh and bench/parts/contended.sh (common.sh loaded).
start_etcd_cluster() {
  local dir i cluster="" clients=() client_port=() peer_port=()
  dir=$(mktemp -d -t dlock-etcdbench.XXXXXX)
  for i in 0 1 2; do
    client_port[$i]=$(free_port)
    peer_port[$i]=$(free_port)
    cluster+="${cluster:+,}m$i=http://127.0.0.1:${peer_port[$i]}"
    clients+=("http://127.0.0.1:${client_port[$i]}")
  done
  for i in 0 1 2; do
    etcd --name "m$i" --data-dir "$dir/m$i" \
      --listen-client-urls "${clients[$i]}" --advertise-client-urls "${clients[$i]}" \
      --listen-peer-urls "http://127.0.0.1:${peer_port[$i]}" \
      --initial-advertise-peer-urls "http://127.0.0.1:${peer_port[$i]}" \
      --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token dlock-bench \
      --logger zap --log-outputs "$dir/m$i.log" >/dev/null 2>&1 &
    _dlock_cleanup+=("kill $!")
  done
  _dlock_cleanup+=("rm -rf '$dir'")
  etcd_endpoints=$(IFS=,; echo "${clients[*]}")
  for _ in $(seq 100); do
    ETCDCTL_API=3 etcdctl --endpoints="$etcd_endpoints" endpoint health >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "start_etcd_cluster: not healthy; logs: $dir" >&2
  return 1
}
