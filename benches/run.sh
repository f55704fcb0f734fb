#!/usr/bin/env bash
# Load benchmarks for aibridge, on loopback, each against the same fast mock in the same run:
# direct to the mock, through `aibridge serve`, and through nginx `proxy_pass`.
# Prints one markdown table (also written to target/bench/report.md).
#
#   benches/run.sh                 # ~14 minutes on 2 cores
#   BENCH_ROUNDS=1 benches/run.sh  # each load run once, not three times
#   BENCH_SECONDS=3 benches/run.sh # shorter wrk runs
#   benches/run.sh ab OLD_BINARY   # a change on the request path: the old build and this one
#                                  # in turns at c=16 beside nginx, and instructions per request
#                                  # with the request log off and on
#   benches/run.sh connections     # RSS with 20,000 connections, and after they closed
#   benches/run.sh fleet           # two replicas on one Redis: how fast a mark reaches the
#                                  # other, and requests/s with and without Redis configured
#   benches/run.sh flood           # 10,000 silent sockets and 3,000 slow 400 KB heads while a
#                                  # real client keeps asking: its answers and serve's peak RSS
#   benches/run.sh sessions        # RSS after 100,000 sessions (session affinity's table)
#   benches/run.sh cache           # a Claude Code-like workload on a mock with per-key prompt
#                                  # caches: cache-read share and cost, affinity off and on
#   benches/run.sh streams         # as many concurrent SSE streams as the open-file limit lets
#                                  # serve hold (an event a second for 60 s): events delivered,
#                                  # added delay, RSS; again to an HTTPS upstream that speaks
#                                  # HTTP/2, as the providers do; then 1,000 streams of 1 MB/s
#                                  # each beside nginx: throughput and CPU per GB relayed
#
# Not part of .ci/run: it measures, it does not test.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
SECONDS_PER_RUN=${BENCH_SECONDS:-10}
# The load runs take turns this many times; the table shows each figure's median, as the
# machine's other load comes and goes.
ROUNDS=${BENCH_ROUNDS:-3}
STREAM_RUNS=${BENCH_STREAM_RUNS:-30}
MOCK=127.0.0.1:19100
SLOW_MOCK=127.0.0.1:19101
BRIDGE=127.0.0.1:19200
NGINX=127.0.0.1:19300
OUT=target/bench
mkdir -p "$OUT"
WORK=$(mktemp -d)
PIDS=()

cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

say() { printf '>> %s\n' "$*" >&2; }
calc() { awk "BEGIN { printf \"%.3f\", $* }"; }
# A difference, with its sign either way: +0.069, -0.260.
signed() { awk "BEGIN { printf \"%+.3f\", $* }"; }

install_tools() {
  local missing=()
  command -v wrk >/dev/null || missing+=(wrk)
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
  command -v hyperfine >/dev/null || missing+=(hyperfine)
  command -v curl >/dev/null || missing+=(curl)
  command -v valgrind >/dev/null || missing+=(valgrind)
  if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

wait_for_port() {
  for _ in $(seq "${2:-100}"); do
    (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null && return 0
    sleep 0.05
  done
  say "nothing listens on $1"
  exit 1
}

rss_mb() { awk '/VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }

# write_nginx_conf FILE UPSTREAM [MAIN_DIRECTIVE [LOCATION_DIRECTIVE]]: nginx proxying
# $NGINX to UPSTREAM with pooled upstream connections and the bench's key, as the bridge does.
write_nginx_conf() {
  local file=$1 upstream=$2 main=${3:-} location=${4:-}
  mkdir -p "$WORK/nginx-tmp"
  cat >"$file" <<EOF
worker_processes 2;
$main
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx-tmp/body;
  proxy_temp_path $WORK/nginx-tmp/proxy;
  fastcgi_temp_path $WORK/nginx-tmp/fastcgi;
  uwsgi_temp_path $WORK/nginx-tmp/uwsgi;
  scgi_temp_path $WORK/nginx-tmp/scgi;
  upstream mock { server $upstream; keepalive 256; }
  server {
    listen $NGINX;
    location / {
      proxy_pass http://mock;
      proxy_http_version 1.1;
      $location
      proxy_set_header Connection "";
      proxy_set_header x-api-key "sk-bench-good-0000000000000000000001";
    }
  }
}
EOF
}

start_services() {
  ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
  target/release/examples/mock_upstream --listen "$MOCK" --events 20 --gap-ms 10 2>"$WORK/mock.log" &
  MOCK_PID=$!
  PIDS+=($MOCK_PID)
  # Long streams for the open-streams memory test: 60 events, 500 ms apart.
  target/release/examples/mock_upstream --listen "$SLOW_MOCK" --events 60 --gap-ms 500 2>"$WORK/slow-mock.log" &
  PIDS+=($!)

  local bad good="\"sk-bench-good-0000000000000000000001\""
  {
    echo "listen = \"$BRIDGE\""
    echo "[providers.anthropic]"
    echo "base_url = \"http://$MOCK\""
    echo "keys = [$good]"
    echo "[providers.slow]"
    echo "kind = \"anthropic\""
    echo "base_url = \"http://$SLOW_MOCK\""
    echo "keys = [$good]"
    for n in 0 1 10 100; do
      bad=""
      for i in $(seq 1 "$n"); do bad+="\"sk-bench-429-$(printf '%020d' "$i")\", "; done
      echo "[providers.failover-$n]"
      echo "kind = \"anthropic\""
      echo "base_url = \"http://$MOCK\""
      # The whole pool, so the good key at its end is reached (4 tries by default).
      echo "max_attempts = 0"
      echo "keys = [$bad$good]"
    done
  } >"$WORK/aibridge.toml"
  export AIBRIDGE_CONFIG="$WORK/aibridge.toml"
  # The same, with the request log on (a line per request, to a file on disk).
  { echo "request_log = \"$WORK/requests.jsonl\""; cat "$WORK/aibridge.toml"; } >"$WORK/aibridge-log.toml"

  target/release/aibridge serve --no-state >/dev/null 2>"$WORK/aibridge.log" &
  BRIDGE_PID=$!
  PIDS+=($BRIDGE_PID)

  write_nginx_conf "$WORK/nginx.conf" "$MOCK"
  "$(command -v nginx || echo /usr/sbin/nginx)" -p "$WORK" -c "$WORK/nginx.conf" -g 'daemon off;' &
  NGINX_PID=$!
  PIDS+=($NGINX_PID)
  for port in "$MOCK" "$SLOW_MOCK" "$BRIDGE" "$NGINX"; do wait_for_port "$port"; done
}

# A 1 KiB Messages request.
make_bodies() {
  local text
  text=$(head -c 900 /dev/zero | tr '\0' 'a')
  printf '{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"%s"}]}' "$text" >"$WORK/body.json"
  printf '{"model":"claude-sonnet-4-5","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"Hi"}]}' >"$WORK/stream.json"
  for name in body stream; do
    cat >"$WORK/$name.lua" <<EOF
local file = io.open("$WORK/$name.json", "rb")
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["content-type"] = "application/json"
wrk.headers["anthropic-version"] = "2023-06-01"
wrk.headers["x-api-key"] = "sk-bench-good-0000000000000000000001"
EOF
  done
  # The same requests, each connection pausing 1 ms after every answer: a load the machine
  # keeps up with, so latency shows the work per request rather than a queue.
  { cat "$WORK/body.lua"; echo 'function delay() return 1 end'; } >"$WORK/paced.lua"
}

# wrk latency cell ("51.00us", "1.2ms", "2s") -> milliseconds
to_ms() {
  awk -v v="$1" 'BEGIN {
    n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
    if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
    printf "%.3f", n }'
}

# run_wrk NAME URL CONNECTIONS [SCRIPT] -> adds a run to RUNS_RPS[NAME], RUNS_P50[NAME] and
# RUNS_P99[NAME]; settle_runs turns them into RPS[NAME], P50[NAME] and P99[NAME].
declare -A RPS P50 P99 RUNS_RPS RUNS_P50 RUNS_P99
ON_CLIENT_CORE=""
run_wrk() {
  local name=$1 url=$2 connections=$3 script=${4:-body} threads=2 log
  ((connections < 2)) && threads=1
  log="$OUT/wrk-$name.txt"
  $ON_CLIENT_CORE wrk -t"$threads" -c"$connections" -d"${SECONDS_PER_RUN}s" --latency -s "$WORK/$script.lua" "$url" >"$log"
  if grep -q "Non-2xx" "$log"; then
    say "$name: errors during the run"; cat "$log" >&2; exit 1
  fi
  local rps p50 p99
  rps=$(awk '/^Requests\/sec/ { printf "%.0f", $2 }' "$log")
  p50=$(to_ms "$(awk '$1 == "50%" { print $2 }' "$log")")
  p99=$(to_ms "$(awk '$1 == "99%" { print $2 }' "$log")")
  RUNS_RPS[$name]+="$rps "
  RUNS_P50[$name]+="$p50 "
  RUNS_P99[$name]+="$p99 "
  say "$name: $rps req/s, p50 $p50 ms, p99 $p99 ms"
}

settle_runs() {
  local name
  for name in "${!RUNS_RPS[@]}"; do
    RPS[$name]=$(tr ' ' '\n' <<<"${RUNS_RPS[$name]}" | grep . | median "%.0f")
    P50[$name]=$(tr ' ' '\n' <<<"${RUNS_P50[$name]}" | grep . | median)
    P99[$name]=$(tr ' ' '\n' <<<"${RUNS_P99[$name]}" | grep . | median)
  done
}

# median [FORMAT]: of the numbers on stdin, one per line.
median() {
  sort -n | awk -v format="${1:-%.3f}" '{ v[NR] = $1 }
    END { printf format, (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# Time to first byte and to last byte of a 20-event stream (10 ms apart), in ms.
stream_times() {
  local url=$1 i
  for i in $(seq "$STREAM_RUNS"); do
    curl -s -N -o /dev/null -w '%{time_starttransfer} %{time_total}\n' \
      -H 'content-type: application/json' -H 'anthropic-version: 2023-06-01' \
      -H 'x-api-key: sk-bench-good-0000000000000000000001' \
      --data-binary "@$WORK/stream.json" "$url"
  done >"$WORK/stream-times"
  FIRST=$(awk '{ print $1 * 1000 }' "$WORK/stream-times" | median)
  LAST=$(awk '{ print $2 * 1000 }' "$WORK/stream-times" | median)
}

measure_idle_memory() {
  IDLE_RSS=$(rss_mb "$BRIDGE_PID")
  say "idle RSS ${IDLE_RSS} MB"
}

# After the other load runs: 1,000 streams leave as many upstream connections in the pool.
measure_stream_memory() {
  say "opening 1000 streams"
  wrk -t2 -c1000 -d14s -s "$WORK/stream.lua" "http://$BRIDGE/slow/v1/messages" >"$OUT/wrk-streams.txt" 2>&1 &
  local wrk_pid=$! peak=0 open=0 rss conns
  for _ in $(seq 12); do
    sleep 1
    rss=$(rss_mb "$BRIDGE_PID")
    conns=$(ss -Htn state established "( sport = :${BRIDGE#*:} )" | wc -l)
    peak=$(awk -v a="$peak" -v b="$rss" 'BEGIN { print (b > a) ? b : a }')
    ((conns > open)) && open=$conns
  done
  wait "$wrk_pid" || true
  STREAMS_RSS=$peak
  OPEN_STREAMS=$open
  say "peak RSS ${STREAMS_RSS} MB with ${OPEN_STREAMS} open streams"
}

hyperfine_mean_ms() {
  # hyperfine_mean_ms NAME COMMAND...
  local name=$1
  shift
  hyperfine -N --warmup 3 --runs 40 --export-json "$OUT/hyperfine-$name.json" "$@" >/dev/null
  awk -F': ' '/"mean"/ { gsub(/,/, "", $2); printf "%.3f\n", $2 * 1000 }' "$OUT/hyperfine-$name.json"
}

measure_failover() {
  local n
  for n in 0 1 10 100; do
    FAILOVER[$n]=$(hyperfine_mean_ms "failover-$n" \
      "target/release/aibridge send --no-state --provider failover-$n -d @$WORK/body.json")
    say "failover $n keys answering 429: ${FAILOVER[$n]} ms"
  done
}

measure_send() {
  SEND_MS=$(hyperfine_mean_ms send "target/release/aibridge send --no-state -d @$WORK/body.json")
  CURL_MS=$(hyperfine_mean_ms curl "curl -s -o /dev/null -X POST -H content-type:application/json -H anthropic-version:2023-06-01 -H x-api-key:sk-bench-good-0000000000000000000001 --data-binary @$WORK/body.json http://$MOCK/v1/messages")
  say "send ${SEND_MS} ms, curl ${CURL_MS} ms"
}

measure_pool() {
  cargo bench --quiet --bench pool >"$OUT/pool.txt" 2>/dev/null
  # Medians in output order: pick_and_mark 10 t1 t2, 10000 t1 t2; then the same for
  # pick_and_mark_a_model_not_cooling_yet, pick_and_mark_with_20_models_cooling and
  # pick_past_cooling_keys.
  mapfile -t POOL < <(awk -F'│' '/t=[12]/ { v = $(NF - 3); gsub(/^ +| +$/, "", v); print v }' "$OUT/pool.txt")
}

# instructions_per_request NAME URL COMMAND...: user-space instructions per proxied request,
# counted by callgrind. Unlike requests/s, this does not move with what else the machine runs.
instructions_per_request() {
  local name=$1 url=$2 pid requests total
  shift 2
  valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind-$name.%p" "$@" >"$WORK/callgrind-$name.log" 2>&1 &
  pid=$!
  local address=${url#http://}
  wait_for_port "${address%%/*}" 600
  wrk -t1 -c4 -d2s -s "$WORK/body.lua" "$url" >/dev/null
  callgrind_control -z "$pid" >/dev/null
  requests=$(wrk -t1 -c4 -d5s -s "$WORK/body.lua" "$url" | awk '/requests in/ { print $1 }')
  callgrind_control -d "$pid" >/dev/null
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  total=$(callgrind_annotate "$(ls -t "$WORK/callgrind-$name".*.* | head -1)" 2>/dev/null |
    awk '/PROGRAM TOTALS/ { gsub(/,/, "", $1); print $1 }')
  echo $((total / requests))
}

measure_instructions() {
  local port=19250 nginx_port=19350
  INSTR_AIBRIDGE=$(instructions_per_request aibridge "http://127.0.0.1:$port/anthropic/v1/messages" \
    target/release/aibridge serve --no-state --workers 1 --listen "127.0.0.1:$port")
  INSTR_AIBRIDGE_LOG=$(AIBRIDGE_CONFIG="$WORK/aibridge-log.toml" instructions_per_request aibridge-log \
    "http://127.0.0.1:$port/anthropic/v1/messages" target/release/aibridge serve --no-state --workers 1 --listen "127.0.0.1:$port")
  sed -e "s/listen $NGINX;/listen 127.0.0.1:$nginx_port;/" -e 's/^worker_processes 2;/worker_processes 1; master_process off;/' \
    -e "s|^pid .*|pid $WORK/nginx-callgrind.pid;|" "$WORK/nginx.conf" >"$WORK/nginx-callgrind.conf"
  INSTR_NGINX=$(instructions_per_request nginx "http://127.0.0.1:$nginx_port/v1/messages" \
    "$(command -v nginx || echo /usr/sbin/nginx)" -p "$WORK" -c "$WORK/nginx-callgrind.conf" -g 'daemon off;')
  say "instructions per request: aibridge $INSTR_AIBRIDGE ($INSTR_AIBRIDGE_LOG with the request log), nginx $INSTR_NGINX"
}

# CPU time (user and system ticks) that processes have used so far.
cpu_ticks() {
  local pid
  for pid in "$@"; do awk '{ print $14, $15 }' "/proc/$pid/stat"; done |
    awk '{ user += $1; sys += $2 } END { print user, sys }'
}

# cpu_per_request NAME URL PIDS...: wrk at c=16 against URL; sets CPU_USER[NAME] and
# CPU_SYSTEM[NAME], the processes' CPU time in microseconds per request.
declare -A CPU_USER CPU_SYSTEM
cpu_per_request() {
  local name=$1 url=$2 before after requests
  shift 2
  before=$(cpu_ticks "$@")
  requests=$(wrk -t2 -c16 -d"${SECONDS_PER_RUN}s" -s "$WORK/body.lua" "$url" | awk '/requests in/ { print $1 }')
  after=$(cpu_ticks "$@")
  read -r "CPU_USER[$name]" "CPU_SYSTEM[$name]" < <(echo "$before $after" |
    awk -v n="$requests" -v hz="$(getconf CLK_TCK)" \
      '{ printf "%.1f %.1f\n", ($3 - $1) * 1e6 / hz / n, ($4 - $2) * 1e6 / hz / n }')
  say "$name: ${CPU_USER[$name]} us user + ${CPU_SYSTEM[$name]} us system per request"
}

measure_cpu() {
  cpu_per_request aibridge "http://$BRIDGE/anthropic/v1/messages" "$BRIDGE_PID"
  # shellcheck disable=SC2046
  cpu_per_request nginx "http://$NGINX/v1/messages" $(pgrep -P "$NGINX_PID")
}

# pin CPUS PIDS...: moves every thread of the processes onto CPUS.
pin() {
  local cpus=$1 pid
  shift
  for pid in "$@"; do taskset -a -p -c "$cpus" "$pid" >/dev/null; done
}

# The proxy on a core of its own, wrk and the mock on the other, as a gateway runs in
# production: beside neither its clients nor the provider. Each proxy runs one worker there,
# as on a one-core machine: a second worker on the same core only takes turns with the first.
measure_pinned() {
  local bridge=127.0.0.1:19260 nginx=127.0.0.1:19360 bridge_pid nginx_pid
  taskset -c 1 target/release/aibridge serve --no-state --workers 1 --listen "$bridge" \
    >/dev/null 2>"$WORK/aibridge-pinned.log" &
  bridge_pid=$!
  sed -e "s/listen $NGINX;/listen $nginx;/" -e 's/^worker_processes 2;/worker_processes 1;/' \
    -e "s|^pid .*|pid $WORK/nginx-pinned.pid;|" "$WORK/nginx.conf" >"$WORK/nginx-pinned.conf"
  taskset -c 1 "$(command -v nginx || echo /usr/sbin/nginx)" -p "$WORK" -c "$WORK/nginx-pinned.conf" \
    -g 'daemon off;' &
  nginx_pid=$!
  PIDS+=("$bridge_pid" "$nginx_pid")
  wait_for_port "$bridge"
  wait_for_port "$nginx"
  pin 0 "$MOCK_PID"
  ON_CLIENT_CORE="taskset -c 0"
  local round mode
  for round in $(seq "$ROUNDS"); do
    for mode in body paced; do
      run_wrk "direct-pinned-$mode" "http://$MOCK/v1/messages" 16 "$mode"
      run_wrk "aibridge-pinned-$mode" "http://$bridge/anthropic/v1/messages" 16 "$mode"
      run_wrk "nginx-pinned-$mode" "http://$nginx/v1/messages" 16 "$mode"
    done
    run_wrk "direct-pinned-64" "http://$MOCK/v1/messages" 64 body
    run_wrk "aibridge-pinned-64" "http://$bridge/anthropic/v1/messages" 64 body
    run_wrk "nginx-pinned-64" "http://$nginx/v1/messages" 64 body
  done
  ON_CLIENT_CORE=""
  pin "0-$(($(nproc) - 1))" "$MOCK_PID"
  kill "$bridge_pid" "$nginx_pid"
  wait "$bridge_pid" "$nginx_pid" 2>/dev/null || true
}

# rows LABEL SUFFIX: requests/s, p50 and p99 of the direct-, aibridge- and nginx-SUFFIX runs.
rows() {
  local label=$1 d=direct-$2 a=aibridge-$2 n=nginx-$2
  echo "| $label requests/s | ${RPS[$d]} | ${RPS[$a]} | ${RPS[$n]} | $(calc "${RPS[$a]} / ${RPS[$d]}")x | $(calc "${RPS[$a]} / ${RPS[$n]}")x |"
  echo "| $label p50 ms | ${P50[$d]} | ${P50[$a]} | ${P50[$n]} | $(signed "${P50[$a]} - ${P50[$d]}") ms | $(calc "${P50[$a]} - ${P50[$n]}") ms |"
  echo "| $label p99 ms | ${P99[$d]} | ${P99[$a]} | ${P99[$n]} | $(signed "${P99[$a]} - ${P99[$d]}") ms | $(calc "${P99[$a]} - ${P99[$n]}") ms |"
}

# added NAME-SUFFIX COLUMN: what the bridge adds to direct, in ms, at p50 or p99.
added() {
  local -n column=$2
  calc "${column[aibridge-$1]} - ${column[direct-$1]}"
}

verdict() { awk -v v="$1" -v limit="$2" 'BEGIN { print (v + 0 <= limit + 0) ? "met" : "missed" }'; }

# throughput_row LABEL SUFFIX AT_LEAST: requests/s of aibridge-SUFFIX against nginx-SUFFIX.
throughput_row() {
  local ratio
  ratio=$(calc "${RPS[aibridge-$2]} / ${RPS[nginx-$2]}")
  echo "| throughput vs nginx, $1 | ${ratio}x | >= $3x | $(verdict "$3" "$ratio") |"
}

main() {
  install_tools
  say "building (release)"
  cargo build --release --quiet --bin aibridge --example mock_upstream
  make_bodies
  start_services
  measure_idle_memory

  local round
  for round in $(seq "$ROUNDS"); do
    for c in 1 16 64; do
      run_wrk "direct-$c" "http://$MOCK/v1/messages" "$c"
      run_wrk "aibridge-$c" "http://$BRIDGE/anthropic/v1/messages" "$c"
      run_wrk "nginx-$c" "http://$NGINX/v1/messages" "$c"
    done
  done

  measure_cpu
  PINNED=""
  if (($(nproc) >= 2)); then
    measure_pinned
    PINNED=yes
  fi
  settle_runs

  measure_stream_memory
  stream_times "http://$MOCK/v1/messages"
  DIRECT_FIRST=$FIRST DIRECT_LAST=$LAST
  stream_times "http://$BRIDGE/anthropic/v1/messages"
  BRIDGE_FIRST=$FIRST BRIDGE_LAST=$LAST

  declare -gA FAILOVER
  measure_failover
  measure_send
  measure_pool
  measure_instructions

  local report="$OUT/report.md"
  {
    echo "Machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), $(uname -sr); wrk ${SECONDS_PER_RUN}s per run, medians of $ROUNDS rounds; $(date -u +%Y-%m-%d)."
    echo
    echo "| measure | direct | aibridge | nginx | aibridge vs direct | aibridge vs nginx |"
    echo "|---|---|---|---|---|---|"
    for c in 1 16 64; do rows "c=$c" "$c"; done
    echo "| c=16 CPU per request, user + system µs | | ${CPU_USER[aibridge]} + ${CPU_SYSTEM[aibridge]} | ${CPU_USER[nginx]} + ${CPU_SYSTEM[nginx]} | | $(calc "(${CPU_USER[aibridge]} + ${CPU_SYSTEM[aibridge]}) / (${CPU_USER[nginx]} + ${CPU_SYSTEM[nginx]})")x |"
    if [ -n "$PINNED" ]; then
      rows "c=16, proxy on its own core:" pinned-body
      rows "c=16 paced, proxy on its own core:" pinned-paced
      rows "c=64, proxy on its own core:" pinned-64
    fi
    echo "| stream: first byte ms (median of $STREAM_RUNS) | $DIRECT_FIRST | $BRIDGE_FIRST | | $(signed "$BRIDGE_FIRST - $DIRECT_FIRST") ms | |"
    echo "| stream: last byte ms (20 events, 10 ms apart) | $DIRECT_LAST | $BRIDGE_LAST | | $(signed "$BRIDGE_LAST - $DIRECT_LAST") ms | |"
    echo "| user-space instructions per request (callgrind, 1 worker) | | $INSTR_AIBRIDGE | $INSTR_NGINX | | $(calc "$INSTR_AIBRIDGE / $INSTR_NGINX")x |"
    echo "| the same with the request log on | | $INSTR_AIBRIDGE_LOG | | | $(calc "$INSTR_AIBRIDGE_LOG / $INSTR_NGINX")x |"
    echo
    echo "| measure | figure | target | |"
    echo "|---|---|---|---|"
    echo "| added latency p50, c=16, all on shared cores | $(added 16 P50) ms | < 0.1 ms | $(verdict "$(added 16 P50)" 0.1) |"
    echo "| added latency p99, c=16, all on shared cores | $(added 16 P99) ms | < 1 ms | $(verdict "$(added 16 P99)" 1) |"
    if [ -n "$PINNED" ]; then
      echo "| added latency p50, c=16 paced, proxy on its own core | $(added pinned-paced P50) ms | < 0.1 ms | $(verdict "$(added pinned-paced P50)" 0.1) |"
      echo "| added latency p99, c=16 paced, proxy on its own core | $(added pinned-paced P99) ms | < 1 ms | $(verdict "$(added pinned-paced P99)" 1) |"
    fi
    throughput_row "c=16, all on shared cores" 16 1.0
    throughput_row "c=64, all on shared cores" 64 0.95
    if [ -n "$PINNED" ]; then
      throughput_row "c=16, proxy on its own core" pinned-body 1.0
      throughput_row "c=64, proxy on its own core" pinned-64 1.0
    fi
    echo "| stream first byte vs direct | $(signed "$BRIDGE_FIRST - $DIRECT_FIRST") ms | < 1 ms | $(verdict "$(calc "$BRIDGE_FIRST - $DIRECT_FIRST")" 1) |"
    echo "| RSS idle | $IDLE_RSS MB | < 30 MB | $(verdict "$IDLE_RSS" 30) |"
    echo "| RSS with $OPEN_STREAMS open streams | $STREAMS_RSS MB | < 100 MB | $(verdict "$STREAMS_RSS" 100) |"
    echo "| \`aibridge send\` vs curl | $SEND_MS ms vs $CURL_MS ms = $(calc "$SEND_MS / $CURL_MS")x | <= 1.3x | $(verdict "$(calc "$SEND_MS / $CURL_MS")" 1.3) |"
    for n in 1 10 100; do
      echo "| failover: first $n keys answer 429 (\`send\`) | ${FAILOVER[$n]} ms ($(signed "(${FAILOVER[$n]} - ${FAILOVER[0]}) / $n") ms per key) | | |"
    done
    echo "| pool pick + mark, 10 keys, 1 / 2 threads | ${POOL[0]} / ${POOL[1]} | < 1 µs | |"
    echo "| pool pick + mark, 10,000 keys, 1 / 2 threads | ${POOL[2]} / ${POOL[3]} | < 1 µs | |"
    echo "| pool pick + mark, 10,000 keys with 20 models cooling on each, 1 / 2 threads | ${POOL[10]} / ${POOL[11]} | < 1 µs | |"
    echo "| pool pick + mark of a model not cooling yet (list copied), 10,000 keys, 1 / 2 threads | ${POOL[6]} / ${POOL[7]} | | |"
    echo "| pool pick past 9,999 cooling keys, 1 / 2 threads | ${POOL[14]} / ${POOL[15]} | (worst case) | |"
  } >"$report"
  cat "$report"
}

# ab OLD_BINARY: the request path before (OLD_BINARY) and after (this tree's release build), in
# turns in one run: requests/s at c=16 beside nginx, each round in the same order, and
# instructions per request by callgrind.
ab() {
  local old=$1 old_bridge=127.0.0.1:19210 round
  [ -x "$old" ] || { say "usage: benches/run.sh ab OLD_BINARY"; exit 2; }
  install_tools
  say "building (release)"
  cargo build --release --quiet --bin aibridge --example mock_upstream
  make_bodies
  start_services
  "$old" serve --no-state --listen "$old_bridge" >/dev/null 2>"$WORK/aibridge-old.log" &
  PIDS+=($!)
  wait_for_port "$old_bridge"
  for round in $(seq "$ROUNDS"); do
    run_wrk before "http://$old_bridge/anthropic/v1/messages" 16
    run_wrk after "http://$BRIDGE/anthropic/v1/messages" 16
    run_wrk nginx "http://$NGINX/v1/messages" 16
  done
  settle_runs
  local before after before_log after_log
  before=$(instructions_per_request before "http://127.0.0.1:19251/anthropic/v1/messages" \
    "$old" serve --no-state --workers 1 --listen 127.0.0.1:19251)
  after=$(instructions_per_request after "http://127.0.0.1:19252/anthropic/v1/messages" \
    target/release/aibridge serve --no-state --workers 1 --listen 127.0.0.1:19252)
  before_log=$(AIBRIDGE_CONFIG="$WORK/aibridge-log.toml" instructions_per_request before-log \
    "http://127.0.0.1:19253/anthropic/v1/messages" "$old" serve --no-state --workers 1 --listen 127.0.0.1:19253)
  after_log=$(AIBRIDGE_CONFIG="$WORK/aibridge-log.toml" instructions_per_request after-log \
    "http://127.0.0.1:19254/anthropic/v1/messages" target/release/aibridge serve --no-state --workers 1 --listen 127.0.0.1:19254)
  {
    echo "A/B on $(nproc) cores, $(uname -sr); wrk c=16 ${SECONDS_PER_RUN}s per run, medians of $ROUNDS rounds in turns; $(date -u +%Y-%m-%d)."
    echo
    echo "| measure | before | after | after vs before |"
    echo "|---|---|---|---|"
    echo "| c=16 requests/s (runs: before ${RUNS_RPS[before]}/ after ${RUNS_RPS[after]}/ nginx ${RUNS_RPS[nginx]}) | ${RPS[before]} | ${RPS[after]} | $(calc "${RPS[after]} / ${RPS[before]}")x |"
    echo "| c=16 requests/s vs nginx (${RPS[nginx]}) | $(calc "${RPS[before]} / ${RPS[nginx]}")x | $(calc "${RPS[after]} / ${RPS[nginx]}")x | |"
    echo "| c=16 p50 / p99 ms | ${P50[before]} / ${P99[before]} | ${P50[after]} / ${P99[after]} | |"
    echo "| user-space instructions per request (callgrind, 1 worker) | $before | $after | $(calc "$after / $before")x |"
    echo "| the same with the request log on | $before_log | $after_log | $(calc "$after_log / $before_log")x |"
  } | tee "$OUT/ab.md"
}

# Starts the mock on $MOCK and `aibridge serve` with the config file $1 (written by the
# caller), and waits for both; BRIDGE_PID is serve's process.
start_mock_and_bridge() {
  target/release/examples/mock_upstream --listen "$MOCK" 2>"$WORK/mock.log" &
  PIDS+=($!)
  AIBRIDGE_CONFIG="$1" target/release/aibridge serve --no-state >/dev/null 2>"$WORK/aibridge.log" &
  BRIDGE_PID=$!
  PIDS+=($BRIDGE_PID)
  wait_for_port "$MOCK"
  wait_for_port "$BRIDGE"
}

# connections: RSS of `serve` while 20,000 connections make requests at once, and after
# they have closed (a bridge's memory for clients that come and go must be given back).
connections() {
  install_tools
  say "building (release)"
  cargo build --release --quiet --bin aibridge --example mock_upstream
  make_bodies
  ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
  printf 'listen = "%s"\nmax_connections = 25000\n[providers.anthropic]\nbase_url = "http://%s"\nkeys = ["sk-bench-good-0000000000000000000001"]\n' \
    "$BRIDGE" "$MOCK" >"$WORK/connections.toml"
  start_mock_and_bridge "$WORK/connections.toml"
  local idle peak=0 rss after
  idle=$(rss_mb "$BRIDGE_PID")
  wrk -t2 -c20000 -d8s -s "$WORK/body.lua" "http://$BRIDGE/anthropic/v1/messages" >"$OUT/wrk-connections.txt" 2>&1 &
  local wrk_pid=$!
  for _ in $(seq 8); do
    sleep 1
    rss=$(rss_mb "$BRIDGE_PID")
    peak=$(awk -v a="$peak" -v b="$rss" 'BEGIN { print (b > a) ? b : a }')
  done
  wait "$wrk_pid" || true
  sleep 5
  after=$(rss_mb "$BRIDGE_PID")
  sleep 20
  local later
  later=$(rss_mb "$BRIDGE_PID")
  {
    echo "| measure | RSS MB |"
    echo "|---|---|"
    echo "| idle | $idle |"
    echo "| peak, 20,000 connections making requests | $peak |"
    echo "| 5 s after wrk closed them | $after |"
    echo "| 25 s after | $later |"
  } | tee "$OUT/connections.md"
  grep -E "requests in|Socket errors" "$OUT/wrk-connections.txt" >&2 || true
}

# sessions: RSS of `serve` before and after 100,000 sessions each made one request (the
# affinity table is bounded at 100,000 per provider), three keys, round-robin.
sessions() {
  local count=${SESSIONS:-100000}
  install_tools
  say "building (release)"
  cargo build --release --quiet --bin aibridge --example mock_upstream
  make_bodies
  printf 'listen = "%s"\n[providers.anthropic]\nbase_url = "http://%s"\nstrategy = "round-robin"\nkeys = ["sk-bench-good-0000000000000000000001", "sk-bench-good-0000000000000000000002", "sk-bench-good-0000000000000000000003"]\n' \
    "$BRIDGE" "$MOCK" >"$WORK/sessions.toml"
  start_mock_and_bridge "$WORK/sessions.toml"
  # One new session per request, until $count requests.
  { cat "$WORK/body.lua"; cat <<EOF2
local counter = 0
request = function()
  counter = counter + 1
  if counter > $count then wrk.thread:stop() end
  wrk.headers["x-aibridge-session"] = "session-" .. counter
  return wrk.format()
end
EOF2
  } >"$WORK/sessions.lua"
  local idle after
  idle=$(rss_mb "$BRIDGE_PID")
  wrk -t1 -c16 -d60s -s "$WORK/sessions.lua" "http://$BRIDGE/anthropic/v1/messages" >"$OUT/wrk-sessions.txt" 2>&1
  after=$(rss_mb "$BRIDGE_PID")
  local new
  new=$(curl -s "http://$BRIDGE/metrics" | awk -F' ' '/^aibridge_affinity_total.*outcome="new"/ { print $2 }')
  {
    echo "| measure | value |"
    echo "|---|---|"
    echo "| sessions made (aibridge_affinity_total{outcome=\"new\"}) | $new |"
    echo "| serve RSS before / after (MB) | $idle / $after |"
    echo "| per session (KB) | $(calc "($after - $idle) * 1024 / $new") |"
  } | tee "$OUT/sessions.md"
}

# flood: unauthenticated connection and memory exhaustion (benches/flood.py) against serve
# on defaults, with a real client asking every 50 ms; serve's RSS sampled every 200 ms.
flood() {
  local silent=${FLOOD_SILENT:-10000} slow=${FLOOD_SLOW:-3000} seconds=${FLOOD_SECONDS:-20}
  install_tools
  say "building (release)"
  cargo build --release --quiet --bin aibridge --example mock_upstream
  ulimit -n "$(ulimit -Hn)"
  printf 'listen = "%s"\n[providers.anthropic]\nbase_url = "http://%s"\nkeys = ["sk-bench-good-0000000000000000000001"]\n' \
    "$BRIDGE" "$MOCK" >"$WORK/flood.toml"
  start_mock_and_bridge "$WORK/flood.toml"
  local idle peak=0 rss
  idle=$(rss_mb "$BRIDGE_PID")
  python3 benches/flood.py "$BRIDGE" "$silent" "$slow" "$seconds" >"$OUT/flood.json" &
  local flood_pid=$!
  while kill -0 "$flood_pid" 2>/dev/null; do
    rss=$(rss_mb "$BRIDGE_PID")
    peak=$(awk -v a="$peak" -v b="$rss" 'BEGIN { print (b > a) ? b : a }')
    sleep 0.2
  done
  {
    echo "| measure | value |"
    echo "|---|---|"
    echo "| flood | $silent silent sockets, $slow slow 400 KB heads, ${seconds}s, defaults |"
    echo "| serve RSS idle / peak (MB) | $idle / $peak |"
    echo "| real client | $(cat "$OUT/flood.json") |"
  } | tee "$OUT/flood.md"
}

# fleet: two replicas sharing key health through a real redis-server. Mark propagation
# (p50/p99 from A's answer to B's pool showing the mark), then requests/s through a replica
# with Redis configured and one without, in turns.
fleet() {
  local redis_port=19400 with=127.0.0.1:19221 peer=127.0.0.1:19222 without=127.0.0.1:19223
  install_tools
  command -v redis-server >/dev/null || .ci/setup
  say "building (release)"
  cargo build --release --quiet --bin aibridge --example mock_upstream --example propagation
  make_bodies
  ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
  target/release/examples/mock_upstream --listen "$MOCK" 2>"$WORK/mock.log" &
  PIDS+=($!)
  redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$WORK" --loglevel warning >"$WORK/redis.log" 2>&1 &
  PIDS+=($!)
  wait_for_port "$MOCK"
  wait_for_port "127.0.0.1:$redis_port"
  local good="\"sk-bench-good-0000000000000000000001\"" bad="\"sk-bench-429-00000000000000000001\""
  printf '[providers.anthropic]\nbase_url = "http://%s"\nkeys = [%s]\n[providers.fleet]\nkind = "anthropic"\nbase_url = "http://%s"\nkeys = [%s, %s]\n' \
    "$MOCK" "$good" "$MOCK" "$bad" "$good" >"$WORK/fleet.toml"
  local redis_url="redis://127.0.0.1:$redis_port/0"
  AIBRIDGE_CONFIG="$WORK/fleet.toml" target/release/aibridge serve --redis-url "$redis_url" \
    --listen "$with" >/dev/null 2>"$WORK/aibridge-a.log" &
  PIDS+=($!)
  AIBRIDGE_CONFIG="$WORK/fleet.toml" target/release/aibridge serve --redis-url "$redis_url" \
    --listen "$peer" >/dev/null 2>"$WORK/aibridge-b.log" &
  PIDS+=($!)
  AIBRIDGE_CONFIG="$WORK/fleet.toml" target/release/aibridge serve --no-state \
    --listen "$without" >/dev/null 2>"$WORK/aibridge-c.log" &
  PIDS+=($!)
  for port in "$with" "$peer" "$without"; do wait_for_port "$port"; done
  say "mark propagation, A to B"
  local propagation
  propagation=$(target/release/examples/propagation --from "http://$with" --to "http://$peer" --rounds "${BENCH_MARKS:-1000}")
  say "$propagation"
  for round in $(seq "$ROUNDS"); do
    run_wrk redis "http://$with/anthropic/v1/messages" 16
    run_wrk local "http://$without/anthropic/v1/messages" 16
  done
  settle_runs
  local p50 p99 max rounds
  read -r p50 p99 max rounds <<<"$(tr '=' ' ' <<<"$propagation" | awk '{ print $2, $4, $6, $8 }')"
  {
    echo "Fleet on $(nproc) cores, $(uname -sr), redis-server $(redis-server --version | awk '{ print $3 }' | tr -d 'v='); wrk c=16 ${SECONDS_PER_RUN}s per run, medians of $ROUNDS rounds in turns; $(date -u +%Y-%m-%d)."
    echo
    echo "| measure | figure |"
    echo "|---|---|"
    echo "| mark propagation A to B, p50 / p99 / max ms ($rounds marks) | $p50 / $p99 / $max |"
    echo "| c=16 requests/s, Redis configured (runs: ${RUNS_RPS[redis]}) | ${RPS[redis]} |"
    echo "| c=16 requests/s, no shared health (runs: ${RUNS_RPS[local]}) | ${RPS[local]} |"
    echo "| with Redis vs without | $(calc "${RPS[redis]} / ${RPS[local]}")x |"
    echo "| c=16 p50 / p99 ms, with / without | ${P50[redis]} / ${P99[redis]}, ${P50[local]} / ${P99[local]} |"
  } | tee "$OUT/fleet.md"
}

# streams: long SSE streams through serve on its defaults. STREAMS (default: what the
# open-file limit lets serve hold, two descriptors a stream less its reserve, at most 10,000)
# streams of one stamped event a second for 60 s, first direct to the mock, then through
# serve, with serve's RSS sampled idle, at 1,000 streams, at the most and after. Then
# HTTP2_STREAMS (as many) such streams through a second serve to an HTTPS mock that speaks
# HTTP/2, as the providers' APIs do: a hundred streams share an upstream connection (serve
# still counts two descriptors a client, so it refuses more). Then FAST_STREAMS (1,000)
# streams of 1 MB/s for FAST_SECONDS (20) through serve and through nginx, with each
# proxy's CPU time per GB relayed.
streams() {
  install_tools
  say "building (release)"
  cargo build --release --quiet --bin aibridge --example mock_upstream --example streams
  ulimit -n "$(ulimit -Hn)"
  local hard room count
  hard=$(ulimit -Hn)
  room=$(((hard - 64) / 2))
  count=${STREAMS:-$((room < 10000 ? room : 10000))}
  local fast=${FAST_STREAMS:-1000} fast_seconds=${FAST_SECONDS:-20} fast_mock=127.0.0.1:19102
  target/release/examples/mock_upstream --listen "$MOCK" --events 60 --gap-ms 1000 --stamp \
    2>"$WORK/mock.log" &
  PIDS+=($!)
  # 1 MB/s a stream: 16 KiB events every 16 ms.
  target/release/examples/mock_upstream --listen "$fast_mock" --events 100000 --gap-ms 16 \
    --event-bytes 16384 --stamp 2>"$WORK/fast-mock.log" &
  PIDS+=($!)
  printf 'listen = "%s"\n[providers.anthropic]\nbase_url = "http://%s"\nkeys = ["sk-bench-good-0000000000000000000001"]\n[providers.fast]\nkind = "anthropic"\nbase_url = "http://%s"\nkeys = ["sk-bench-good-0000000000000000000001"]\n' \
    "$BRIDGE" "$MOCK" "$fast_mock" >"$WORK/streams.toml"
  AIBRIDGE_CONFIG="$WORK/streams.toml" target/release/aibridge serve --no-state >/dev/null 2>"$WORK/aibridge.log" &
  BRIDGE_PID=$!
  PIDS+=($BRIDGE_PID)
  wait_for_port "$MOCK"
  wait_for_port "$fast_mock"
  wait_for_port "$BRIDGE"
  say "$count streams direct to the mock"
  target/release/examples/streams --url "http://$MOCK/v1/messages" --streams "$count" >"$OUT/streams-direct.json"
  say "$count streams through serve"
  declare -gA HELD
  hold_streams bridge "$BRIDGE" "$BRIDGE_PID" "$count" "$MOCK"

  local http2_mock=127.0.0.1:19103 http2_bridge=127.0.0.1:19201
  local http2_count=${HTTP2_STREAMS:-$count}
  target/release/examples/mock_upstream --listen "$http2_mock" --events 60 --gap-ms 1000 --stamp \
    --https "$WORK/upstream.pem" 2>"$WORK/http2-mock.log" &
  PIDS+=($!)
  wait_for_port "$http2_mock"
  printf 'listen = "%s"\n[providers.anthropic]\nbase_url = "https://localhost:%s"\nkeys = ["sk-bench-good-0000000000000000000001"]\n' \
    "$http2_bridge" "${http2_mock#*:}" >"$WORK/streams-http2.toml"
  SSL_CERT_FILE="$WORK/upstream.pem" AIBRIDGE_CONFIG="$WORK/streams-http2.toml" \
    target/release/aibridge serve --no-state >/dev/null 2>"$WORK/aibridge-http2.log" &
  local http2_pid=$!
  PIDS+=($http2_pid)
  wait_for_port "$http2_bridge"
  say "$http2_count streams through serve to an HTTP/2 upstream"
  hold_streams bridge-http2 "$http2_bridge" "$http2_pid" "$http2_count" "$http2_mock"
  kill "$http2_pid"

  # Unbuffered, as serve relays a stream, and allowed the descriptors serve is.
  write_nginx_conf "$WORK/nginx-streams.conf" "$fast_mock" "worker_rlimit_nofile $hard;" \
    "proxy_buffering off;"
  "$(command -v nginx || echo /usr/sbin/nginx)" -p "$WORK" -c "$WORK/nginx-streams.conf" -g 'daemon off;' &
  NGINX_PID=$!
  PIDS+=($NGINX_PID)
  wait_for_port "$NGINX"
  declare -gA FAST_CPU
  say "$fast streams of 1 MB/s through serve"
  fast_streams bridge-fast "http://$BRIDGE/fast/v1/messages" "$fast" "$fast_seconds" "$BRIDGE_PID"
  say "$fast streams of 1 MB/s through nginx"
  # shellcheck disable=SC2046
  fast_streams nginx-fast "http://$NGINX/v1/messages" "$fast" "$fast_seconds" $(pgrep -P "$NGINX_PID")
  local direct=$OUT/streams-direct.json bridged=$OUT/streams-bridge.json
  local http2=$OUT/streams-bridge-http2.json
  local bridge_fast=$OUT/streams-bridge-fast.json nginx_fast=$OUT/streams-nginx-fast.json
  local delays="'%s / %s / %s' % (delay_ms['p50'], delay_ms['p99'], delay_ms['max'])"
  {
    echo "Streams on $(nproc) cores, $(uname -sr), open-file limit $hard; $(date -u +%Y-%m-%d)."
    echo
    echo "| measure | direct to the mock | through serve | through serve, HTTP/2 upstream |"
    echo "|---|---|---|---|"
    echo "| streams held at once (60 events, 1 s apart) | $count | $count | $http2_count |"
    echo "| most upstream connections at once | | ${HELD[bridge-upstream]} | ${HELD[bridge-http2-upstream]} |"
    echo "| streams failed | $(field "$direct" failed) | $(field "$bridged" failed) | $(field "$http2" failed) |"
    echo "| events delivered (of 60 a stream) | $(field "$direct" events) | $(field "$bridged" events) | $(field "$http2" events) |"
    echo "| event delay p50 / p99 / max ms | $(field "$direct" "$delays") | $(field "$bridged" "$delays") | $(field "$http2" "$delays") |"
    echo "| serve RSS idle / at 1,000 streams / peak / 2 s after (MB) | | ${HELD[bridge]} | ${HELD[bridge-http2]} |"
    echo "| serve memory per stream at the peak (KB) | | ${HELD[bridge-per-stream]} | ${HELD[bridge-http2-per-stream]} |"
    echo
    echo "| $fast streams of 1 MB/s for ${fast_seconds} s | through serve | through nginx |"
    echo "|---|---|---|"
    echo "| streams failed | $(field "$bridge_fast" failed) | $(field "$nginx_fast" failed) |"
    echo "| relayed MB/s | $(field "$bridge_fast" "round(mb_per_second)") | $(field "$nginx_fast" "round(mb_per_second)") |"
    echo "| event delay p50 / p99 ms | $(field "$bridge_fast" "'%s / %s' % (delay_ms['p50'], delay_ms['p99'])") | $(field "$nginx_fast" "'%s / %s' % (delay_ms['p50'], delay_ms['p99'])") |"
    echo "| proxy CPU seconds per GB relayed | $(calc "${FAST_CPU[bridge-fast]} / ($(field "$bridge_fast" bytes) / 1e9)") | $(calc "${FAST_CPU[nginx-fast]} / ($(field "$nginx_fast" bytes) / 1e9)") |"
  } | tee "$OUT/streams.md"
}

# hold_streams NAME ADDRESS PID COUNT UPSTREAM: COUNT long streams through the serve at
# ADDRESS, written to $OUT/streams-NAME.json, with its RSS sampled idle, at 1,000 streams, at
# the peak and 2 s after, in HELD[NAME] (MB), memory per stream in HELD[NAME-per-stream],
# and the most connections it held to the UPSTREAM address in HELD[NAME-upstream].
hold_streams() {
  local name=$1 address=$2 pid=$3 count=$4 upstream=$5
  local idle at_thousand="" peak=0 rss open after upstream_peak=0 upstream_open
  idle=$(rss_mb "$pid")
  target/release/examples/streams --url "http://$address/anthropic/v1/messages" --streams "$count" \
    >"$OUT/streams-$name.json" &
  local client=$!
  while kill -0 "$client" 2>/dev/null; do
    rss=$(rss_mb "$pid")
    open=$(ss -Htn state established "( sport = :${address#*:} )" | wc -l)
    if [ -z "$at_thousand" ] && ((open >= 1000)); then at_thousand=$rss; fi
    peak=$(awk -v a="$peak" -v b="$rss" 'BEGIN { print (b > a) ? b : a }')
    upstream_open=$(ss -Htn state established "( dport = :${upstream#*:} )" | wc -l)
    ((upstream_open > upstream_peak)) && upstream_peak=$upstream_open
    sleep 0.5
  done
  wait "$client"
  sleep 2
  after=$(rss_mb "$pid")
  HELD[$name]="$idle / ${at_thousand:-n/a} / $peak / $after"
  HELD[$name-upstream]=$upstream_peak
  HELD[$name-per-stream]=$(calc "($peak - $idle) * 1024 / $count")
}

# fast_streams NAME URL COUNT SECONDS PIDS...: COUNT streams read for SECONDS; sets
# FAST_CPU[NAME] to the CPU seconds (user and system) PIDS used meanwhile.
fast_streams() {
  local name=$1 url=$2 count=$3 seconds=$4 before after
  shift 4
  before=$(cpu_ticks "$@")
  target/release/examples/streams --url "$url" --streams "$count" --seconds "$seconds" >"$OUT/streams-$name.json"
  after=$(cpu_ticks "$@")
  FAST_CPU[$name]=$(echo "$before $after" | awk -v hz="$(getconf CLK_TCK)" \
    '{ printf "%.2f", (($3 - $1) + ($4 - $2)) / hz }')
}

# field FILE EXPRESSION: a Python expression over the JSON object in FILE.
field() {
  python3 -c 'import json, sys; print(eval(sys.argv[2], {}, json.load(open(sys.argv[1]))))' "$1" "$2"
}

case "${1:-}" in
  ab) shift; ab "$@" ;;
  streams) streams ;;
  connections) connections ;;
  fleet) fleet ;;
  flood) flood ;;
  sessions) sessions ;;
  cache)
    cargo build --release --quiet --bin aibridge
    python3 benches/cache_workload.py target/release/aibridge | tee "$OUT/cache.md"
    ;;
  *) main "$@" ;;
esac
