#!/usr/bin/env bash
# Benchmark: the edge beside nginx and caddy, all in front of the same tiny upstream (13-byte
# body) on loopback, measured in one run with `wrk -t1 -c32 -d8s`. wrk shares the cores with
# the proxies, so compare the ratios printed here, not absolute figures across runs.
# Release build; installs nginx, caddy and wrk from Debian if missing (needs root). The peers
# run as foreground processes with temporary configs; no system service is enabled or started.
#
# Environment: BENCH_DURATION (8s), BENCH_CONNECTIONS (32), BENCH_ROUNDS (3; medians shown), BENCH_NGINX_PORT (18481),
# BENCH_CADDY_PORT (18482), CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

duration="${BENCH_DURATION:-8s}"
rounds="${BENCH_ROUNDS:-3}"
connections="${BENCH_CONNECTIONS:-32}"
nginx_port="${BENCH_NGINX_PORT:-18481}"
caddy_port="${BENCH_CADDY_PORT:-18482}"
host="bench.test"

# --- peers -------------------------------------------------------------------------------------
missing=()
command -v nginx >/dev/null || missing+=(nginx)
command -v caddy >/dev/null || missing+=(caddy)
command -v wrk >/dev/null || missing+=(wrk)
if ((${#missing[@]})); then
    # Debian starts a service as it installs it unless policy-rc.d says no; say no for this
    # install only, so nothing grabs port 80 or keeps running afterwards.
    made_policy=""
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        made_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends "${missing[@]}"; then
        apt-get update
        apt-get install -y --no-install-recommends "${missing[@]}"
    fi
    [[ -n "$made_policy" ]] && rm -f /usr/sbin/policy-rc.d
fi

# --- the edge ----------------------------------------------------------------------------------
cargo build --release -p kiln-edge --bin kiln-edge-bench
target_dir="${CARGO_TARGET_DIR:-$(cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')}"
bench_bin="$target_dir/release/kiln-edge-bench"

tmp="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

port_free() { ! ss -Htln "sport = :$1" | grep -q .; }
for port in "$nginx_port" "$caddy_port"; do
    port_free "$port" || { echo "port $port is in use; set BENCH_NGINX_PORT/BENCH_CADDY_PORT" >&2; exit 1; }
done

# Waits until the process writes "edge ADDR" and prints the named address.
addr_of() { # file key
    for _ in $(seq 100); do
        if grep -q '^edge ' "$1" 2>/dev/null; then
            sed -n "s/^$2 //p" "$1"
            return
        fi
        sleep 0.1
    done
    echo "no address in $1" >&2
    exit 1
}

"$bench_bin" >"$tmp/edge2.out" 2>"$tmp/edge2.err" &
pids+=($!)
upstream="$(addr_of "$tmp/edge2.out" upstream)"
edge2="$(addr_of "$tmp/edge2.out" edge)"
"$bench_bin" --edge-threads 1 --upstream "$upstream" >"$tmp/edge1.out" 2>"$tmp/edge1.err" &
pids+=($!)
edge1="$(addr_of "$tmp/edge1.out" edge)"

# --- nginx: one worker, keep-alive to the upstream ----------------------------------------------
mkdir -p "$tmp/nginx"
cat >"$tmp/nginx/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $tmp/nginx/body;
    proxy_temp_path $tmp/nginx/proxy;
    fastcgi_temp_path $tmp/nginx/fastcgi;
    uwsgi_temp_path $tmp/nginx/uwsgi;
    scgi_temp_path $tmp/nginx/scgi;
    upstream app { server $upstream; keepalive 64; }
    server {
        listen 127.0.0.1:$nginx_port;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
        }
    }
}
EOF
nginx -e "$tmp/nginx/error.log" -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" &
pids+=($!)

# --- caddy: reverse_proxy, admin API and automatic HTTPS off ------------------------------------
mkdir -p "$tmp/caddy"
cat >"$tmp/caddy/Caddyfile" <<EOF
{
    admin off
    auto_https off
}
http://127.0.0.1:$caddy_port {
    reverse_proxy $upstream
}
EOF
XDG_DATA_HOME="$tmp/caddy" XDG_CONFIG_HOME="$tmp/caddy" HOME="$tmp/caddy" \
    caddy run --config "$tmp/caddy/Caddyfile" --adapter caddyfile >"$tmp/caddy/log" 2>&1 &
pids+=($!)

wait_http() { # url
    for _ in $(seq 100); do
        if curl -fs -o /dev/null -H "Host: $host" "$1" 2>/dev/null; then return; fi
        sleep 0.1
    done
    echo "$1 never answered; logs:" >&2
    tail -n 5 "$tmp"/*.err "$tmp"/nginx/error.log "$tmp"/caddy/log >&2 || true
    exit 1
}
for url in "http://$upstream/" "http://$edge2/" "http://$edge1/" \
    "http://127.0.0.1:$nginx_port/" "http://127.0.0.1:$caddy_port/"; do
    wait_http "$url"
done

# --- measure ------------------------------------------------------------------------------------
to_ms() { # wrk latency like 156.00us / 1.17ms / 1.02s
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /s$/) n *= 1000
        printf "%.2f", n }'
}
# Each target is measured in several interleaved rounds and the median kept, because the
# machine's neighbours make single runs swing widely.
declare -A rps p50 p99
median() { tr ' ' '\n' | grep . | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
run() { # name url
    wrk -t1 -c"$connections" -d1s -H "Host: $host" "$2" >/dev/null # warm-up
    local out
    out="$(wrk -t1 -c"$connections" -d"$duration" --latency -H "Host: $host" "$2")"
    if grep -q 'Non-2xx' <<<"$out"; then
        echo "warning: $1 answered non-2xx: $(grep 'Non-2xx' <<<"$out")" >&2
    fi
    rps[$1]+=" $(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' <<<"$out")"
    p50[$1]+=" $(to_ms "$(awk '$1 == "50%" { print $2 }' <<<"$out")")"
    p99[$1]+=" $(to_ms "$(awk '$1 == "99%" { print $2 }' <<<"$out")")"
}
names=("upstream direct" "kiln edge, 2 thr" "kiln edge, 1 thr" "nginx, 1 worker" "caddy")
urls=("http://$upstream/" "http://$edge2/" "http://$edge1/" "http://127.0.0.1:$nginx_port/"
    "http://127.0.0.1:$caddy_port/")
for round in $(seq "$rounds"); do
    echo "round $round of $rounds" >&2
    for i in "${!names[@]}"; do
        run "${names[$i]}" "${urls[$i]}"
    done
done
for name in "${names[@]}"; do
    echo "$name: req/s${rps[$name]}" >&2
    rps[$name]="$(median <<<"${rps[$name]}")"
    p50[$name]="$(median <<<"${p50[$name]}")"
    p99[$name]="$(median <<<"${p99[$name]}")"
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
echo
echo "wrk -t1 -c$connections -d$duration, 13-byte body, loopback, $(nproc) cores shared with wrk;"
echo "median of $rounds interleaved rounds"
echo
printf '| %-16s | %8s | %8s | %8s | %9s | %9s |\n' target req/s "p50 ms" "p99 ms" "/ nginx" "/ caddy"
printf '|%s|%s|%s|%s|%s|%s|\n' ------------------ ---------- ---------- ---------- ----------- -----------
for name in "${names[@]}"; do
    printf '| %-16s | %8s | %8s | %8s | %9s | %9s |\n' "$name" "${rps[$name]}" "${p50[$name]}" \
        "${p99[$name]}" "$(ratio "${rps[$name]}" "${rps[nginx, 1 worker]}")" \
        "$(ratio "${rps[$name]}" "${rps[caddy]}")"
done
