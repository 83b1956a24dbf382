#!/usr/bin/env bash
# Trains on a Cloud TPU VM pod slice: every worker runs the same polyseg.main; jax.distributed
# finds the other workers by itself (parallel.distributed='auto' detects the pod).
#
#   launch/tpu_pod.sh create                 # create the TPU VM (once)
#   launch/tpu_pod.sh copy                   # copy this checkout to every worker and install it
#   launch/tpu_pod.sh run [polyseg.main flags...]   # start training on --worker=all (background)
#   launch/tpu_pod.sh logs                   # collect each worker's log into ./tpu_logs/
#   launch/tpu_pod.sh delete
#
# Settings (environment): TPU_NAME (polyseg), ZONE (us-central2-b), ACCELERATOR (v4-32),
# VERSION (tpu-ubuntu2204-base), PROJECT (gcloud's default). The workdir must be reachable from
# every worker (e.g. --workdir=gs://bucket/run, or a shared file system); data likewise
# (--config.data.root=..., ideally --config.data.format=tfds so each host reads its own shard).
set -euo pipefail
TPU_NAME=${TPU_NAME:-polyseg}
ZONE=${ZONE:-us-central2-b}
ACCELERATOR=${ACCELERATOR:-v4-32}
VERSION=${VERSION:-tpu-ubuntu2204-base}
project=()
[[ -n ${PROJECT:-} ]] && project=(--project="$PROJECT")
ssh_all() { gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" "${project[@]}" --worker=all --command="$1"; }

case ${1:-} in
  create)
    gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" "${project[@]}" \
      --accelerator-type="$ACCELERATOR" --version="$VERSION" ;;
  copy)
    tar czf /tmp/polyseg-src.tgz --exclude=.git --exclude='runs' -C "$(dirname "$0")/.." .
    gcloud compute tpus tpu-vm scp /tmp/polyseg-src.tgz "$TPU_NAME":~/ --zone="$ZONE" \
      "${project[@]}" --worker=all
    ssh_all 'mkdir -p ~/polyseg && tar xzf ~/polyseg-src.tgz -C ~/polyseg && cd ~/polyseg &&
      python3 -m venv .venv && .venv/bin/pip install -q --upgrade pip &&
      .venv/bin/pip install -q -e ".[text]" "jax[tpu]"' ;;
  run)
    shift
    args=$(printf '%q ' "$@")
    ssh_all "cd ~/polyseg && nohup .venv/bin/python -m polyseg.main $args \
      > ~/polyseg.log 2>&1 &" ;;
  logs)
    mkdir -p tpu_logs
    num=$(gcloud compute tpus tpu-vm describe "$TPU_NAME" --zone="$ZONE" "${project[@]}" \
      --format='value(networkEndpoints.len())')
    for ((w = 0; w < num; w++)); do
      gcloud compute tpus tpu-vm scp "$TPU_NAME":~/polyseg.log "tpu_logs/worker_$w.log" \
        --zone="$ZONE" "${project[@]}" --worker="$w"
    done
    echo "logs in tpu_logs/" ;;
  delete)
    gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" "${project[@]}" --quiet ;;
  *)
    sed -n '2,15p' "$0"; exit 2 ;;
esac
