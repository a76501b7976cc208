#!/usr/bin/env bash
# Start N workers (one per GPU when there are GPUs) on ports BASE+1..BASE+N, and print the
# nginx configuration that fronts them on BASE. Usage: deploy/run_workers.sh N [BASE] [-- app.py flags]
# Stop them with SIGTERM (each drains for --drain-timeout, then exits 0).
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:?usage: deploy/run_workers.sh N [BASE] [-- app.py flags]}; shift
base=8010
if [[ $# -gt 0 && $1 != "--" ]]; then base=$1; shift; fi
[[ ${1:-} == "--" ]] && shift
gpus=$(nvidia-smi -L 2>/dev/null | wc -l || true)
workers=()
mkdir -p logs
for i in $(seq 1 "$count"); do
  port=$((base + i))
  if [[ $gpus -gt 0 ]]; then export CUDA_VISIBLE_DEVICES=$(( (i - 1) % gpus )); fi
  python app.py --host 127.0.0.1 --listenport "$port" --worker-id "w$i" --max-pending-per-client 0 "$@" >"logs/w$i.log" 2>&1 &
  echo "worker w$i: pid $! port $port log logs/w$i.log" >&2
  workers+=(--worker "w$i=127.0.0.1:$port")
done
python deploy/nginx_conf.py --listen "$base" "${workers[@]}"
