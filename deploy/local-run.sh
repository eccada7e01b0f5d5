#!/usr/bin/env bash
# `make run`: a local stack on this machine, then the simulator and the service.
#
# - AWS endpoint: $AWS_ENDPOINT_URL if set (LocalStack), else a moto server on a local port;
# - Redis: $AMT_REDIS_URL if set, else the machine's Redis on 6379, else a private redis-server;
# - database: SQLite in .local/ (or $AMT_DATABASE_URL), upgraded with `db upgrade`.
# Each run starts a new simulated Passport (seed SIM_SEED, default the time), so the
# saved WebSocket cursor of an earlier run is unknown to it: the service resubscribes
# from earliest and resyncs, as it would after Passport lost its resume point.
# Ctrl-C stops everything this script started.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
STATE=.local
mkdir -p "$STATE"
pids=()
cleanup() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup INT TERM EXIT

free_port() { "$BIN/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

export AWS_REGION="${AWS_REGION:-us-east-1}"
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-testing}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-testing}"
if [ -z "${AWS_ENDPOINT_URL:-}" ]; then
  port=$(free_port)
  "$BIN/python" -m moto.server -H 127.0.0.1 -p "$port" >"$STATE/moto.log" 2>&1 &
  pids+=($!)
  export AWS_ENDPOINT_URL="http://127.0.0.1:$port"
  for _ in $(seq 1 100); do
    "$BIN/python" -c "import urllib.request,sys; urllib.request.urlopen('$AWS_ENDPOINT_URL/moto-api/')" 2>/dev/null && break
    sleep 0.1
  done
  echo "moto server (AWS endpoint) on $AWS_ENDPOINT_URL"
fi

if [ -z "${AMT_REDIS_URL:-}" ]; then
  if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    export AMT_REDIS_URL="redis://127.0.0.1:6379/0"
  else
    port=$(free_port)
    redis-server --bind 127.0.0.1 --port "$port" --dir "$STATE" --save "" --appendonly yes \
      --logfile "$STATE/redis.log" &
    pids+=($!)
    export AMT_REDIS_URL="redis://127.0.0.1:$port/0"
    for _ in $(seq 1 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  fi
  echo "Redis on $AMT_REDIS_URL"
fi

export AMT_DATABASE_URL="${AMT_DATABASE_URL:-sqlite+aiosqlite:///$STATE/amt_ingest.db}"
export AMT_PASSPORT_TOKEN="${AMT_PASSPORT_TOKEN:-dev-token}"
WS_PORT=$(free_port)
SF_PORT=$(free_port)
export AMT_PASSPORT_WS_URL="ws://127.0.0.1:$WS_PORT/stream"
export AMT_SALESFORCE_BASE_URL="http://127.0.0.1:$SF_PORT"
export AMT_DEAD_LETTER_FILE="${AMT_DEAD_LETTER_FILE:-$STATE/dead-letters.jsonl}"
export AMT_ALLOWED_ORG_IDS="${AMT_ALLOWED_ORG_IDS:-00D5g000004ZzABEA0}"
export AMT_LOG_FORMAT="${AMT_LOG_FORMAT:-console}"

# The schema first, explicitly (the service would also upgrade it: AMT_DB_AUTO_UPGRADE).
"$BIN/python" -m amt_ingest db upgrade

eval "$("$BIN/python" -m amt_ingest bootstrap --format env)"
export AMT_SQS_QUEUE_URLS
echo "SQS queue $AMT_SQS_QUEUE_URLS"

"$BIN/python" -m amt_ingest simulate --port "$WS_PORT" --sf-port "$SF_PORT" \
  --token "$AMT_PASSPORT_TOKEN" --rate "${SIM_RATE:-20}" --records 200 \
  --seed "${SIM_SEED:-$(date +%s)}" \
  --dup-rate 0.05 --ooo-rate 0.05 --ws-only-rate 0.02 --sqs-only-rate 0.02 \
  --foreign-org-rate 0.01 --malformed-rate 0.005 \
  --sqs-queue-url "$AMT_SQS_QUEUE_URLS" --truth "$STATE/truth.jsonl" \
  >"$STATE/simulator.log" 2>&1 &
pids+=($!)
echo "simulator on $AMT_PASSPORT_WS_URL (log: $STATE/simulator.log); Ctrl-C stops everything"

"$BIN/python" -m amt_ingest run &
pids+=($!)
wait "${pids[-1]}"
