#!/usr/bin/env bash
# Runs polyseg.main as N processes on this machine, joined by jax.distributed (CPU collectives:
# gloo), the way a multi-host job runs: one process per host, process 0 the coordinator.
#
#   launch/local_multiprocess.sh N [polyseg.main flags...]
#   e.g. launch/local_multiprocess.sh 2 --config=configs/diffact.py --workdir=runs/mp
#
# Environment: DEVICES_PER_PROCESS (default 1) CPU devices per process, PORT (default 12355),
# LOG_DIR (default <workdir>/logs or ./logs), PYTHON (default python). Each process logs to
# LOG_DIR/process_<i>.log; the script waits for all and exits non-zero if any failed (it then
# stops the others).
set -euo pipefail
if [[ $# -lt 1 || ! $1 =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 NUM_PROCESSES [polyseg.main flags...]" >&2
  exit 2
fi
num=$1; shift
workdir=logs
for arg in "$@"; do [[ $arg == --workdir=* ]] && workdir=${arg#--workdir=}/logs; done
log_dir=${LOG_DIR:-$workdir}
mkdir -p "$log_dir"
port=${PORT:-12355}
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
for ((i = 0; i < num; i++)); do
  XLA_FLAGS="--xla_force_host_platform_device_count=${DEVICES_PER_PROCESS:-1} ${XLA_FLAGS:-}" \
  JAX_PLATFORMS=cpu \
  JAX_COORDINATOR_ADDRESS="127.0.0.1:$port" JAX_NUM_PROCESSES="$num" JAX_PROCESS_ID="$i" \
    "${PYTHON:-python}" -m polyseg.main "$@" >"$log_dir/process_$i.log" 2>&1 &
  pids+=($!)
done
status=0
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then
    echo "process $i failed; its log: $log_dir/process_$i.log" >&2
    tail -n 20 "$log_dir/process_$i.log" >&2
    status=1
  fi
done
trap - EXIT
[[ $status == 0 ]] && echo "all $num processes finished; logs in $log_dir"
exit $status
