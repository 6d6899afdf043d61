#!/usr/bin/env bash
# Benchmark: the edge beside nginx and caddy, all in front of the same tiny upstream (13-byte
# body) on loopback, measured in one run with `wrk -t1 -c32 -d8s`. wrk shares the cores with
# the proxies, so compare the ratios printed here, not absolute figures across runs. Caddy runs
# twice: as installed (all cores) and held to one (GOMAXPROCS=1), like nginx's one worker and the
# 1-thread edge; nginx runs with one worker and, like the 2-thread edge, with one per core. The
# 2-thread edge also runs with each worker pinned to a core (`KILN_EDGE_PIN_WORKERS`). Each row
# also gives the CPU time its proxy spent per request.
# Over TLS (HTTP/1.1 kept alive, one ECDSA P-256 certificate made here with openssl), the
# 1-thread edge and nginx's one worker are measured too, in the same rounds, and compared in a
# table of their own.
# Then one more run of the 2-thread edge while a brand-new 1,001-route table is published
# BENCH_CHURN times a second (`kiln-edge-bench --churn`): its figures, failed requests and the
# achieved publish rate are printed beside the plain run's, and the script exits non-zero if any
# request failed under churn.
# Before anything is measured, every target must answer with the upstream's own body, so a proxy
# that answers by itself (caddy does, with an empty 200, for a host no site names) is never
# measured as if it relayed.
# Release build; installs nginx, caddy and wrk from Debian if missing (needs root). The peers
# run as foreground processes with temporary configs; no system service is enabled or started.
#
# Environment: BENCH_DURATION (8s), BENCH_CONNECTIONS (32), BENCH_ROUNDS (3; medians shown),
# BENCH_NGINX_PORT (18481), BENCH_CADDY_PORT (18482; the next three ports go to caddy on one
# core, nginx per core and nginx over TLS), BENCH_CHURN (1000 tables/s), CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

duration="${BENCH_DURATION:-8s}"
rounds="${BENCH_ROUNDS:-3}"
connections="${BENCH_CONNECTIONS:-32}"
nginx_port="${BENCH_NGINX_PORT:-18481}"
caddy_port="${BENCH_CADDY_PORT:-18482}"
caddy1_port=$((caddy_port + 1))
nginx_all_port=$((caddy_port + 2))
nginx_tls_port=$((caddy_port + 3))
churn_rate="${BENCH_CHURN:-1000}"
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
for port in "$nginx_port" "$caddy_port" "$caddy1_port" "$nginx_all_port" "$nginx_tls_port"; do
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

# The upstream gets a process of its own (its edge is unused), so every proxy's CPU time below
# is its own.
"$bench_bin" --edge-threads 1 >"$tmp/upstream.out" 2>"$tmp/upstream.err" &
pids+=($!)
upstream_pid=$!
upstream="$(addr_of "$tmp/upstream.out" upstream)"
"$bench_bin" --edge-threads 2 --upstream "$upstream" >"$tmp/edge2.out" 2>"$tmp/edge2.err" &
pids+=($!)
edge2_pid=$!
edge2="$(addr_of "$tmp/edge2.out" edge)"
"$bench_bin" --edge-threads 2 --pin --upstream "$upstream" >"$tmp/edge2p.out" 2>"$tmp/edge2p.err" &
pids+=($!)
edge2p_pid=$!
edge2p="$(addr_of "$tmp/edge2p.out" edge)"
# One certificate for the TLS rows, served by the 1-thread edge and by nginx's one worker.
mkdir -p "$tmp/tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -subj "/CN=$host" -addext "subjectAltName=DNS:$host" \
    -keyout "$tmp/tls/key.pem" -out "$tmp/tls/cert.pem" 2>/dev/null
"$bench_bin" --edge-threads 1 --upstream "$upstream" \
    --tls-cert "$tmp/tls/cert.pem" --tls-key "$tmp/tls/key.pem" >"$tmp/edge1.out" 2>"$tmp/edge1.err" &
pids+=($!)
edge1_pid=$!
edge1="$(addr_of "$tmp/edge1.out" edge)"
edge1_tls="$(addr_of "$tmp/edge1.out" edge-tls)"

# --- nginx: one worker, keep-alive to the upstream ----------------------------------------------
# It sends the upstream what the edge and caddy send: the client's Host and the X-Forwarded-*
# headers (the edge appends to a client's X-Forwarded-For, as `$proxy_add_x_forwarded_for` does).
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
        listen 127.0.0.1:$nginx_tls_port ssl;
        ssl_certificate $tmp/tls/cert.pem;
        ssl_certificate_key $tmp/tls/key.pem;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$host;
        }
    }
}
EOF
nginx -e "$tmp/nginx/error.log" -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" &
pids+=($!)
# The same nginx with a worker per core (`worker_processes auto`, as Debian installs it).
mkdir -p "$tmp/nginx-all"
sed -e "s|$tmp/nginx/|$tmp/nginx-all/|g" -e "s|^worker_processes 1;|worker_processes auto;|" \
    -e "/ssl/d" \
    -e "s|127.0.0.1:$nginx_port;|127.0.0.1:$nginx_all_port;|" \
    "$tmp/nginx/nginx.conf" >"$tmp/nginx-all/nginx.conf"
nginx -e "$tmp/nginx-all/error.log" -p "$tmp/nginx-all" -c "$tmp/nginx-all/nginx.conf" &
pids+=($!)

# --- caddy: reverse_proxy, admin API and automatic HTTPS off ------------------------------------
# The site matches any host: a site address of `http://127.0.0.1:PORT` would match only
# `Host: 127.0.0.1`, and caddy answers every other host with an empty 200 of its own.
mkdir -p "$tmp/caddy"
cat >"$tmp/caddy/Caddyfile" <<EOF
{
    admin off
    auto_https off
}
http://:$caddy_port {
    bind 127.0.0.1
    reverse_proxy $upstream
}
EOF
XDG_DATA_HOME="$tmp/caddy" XDG_CONFIG_HOME="$tmp/caddy" HOME="$tmp/caddy" \
    caddy run --config "$tmp/caddy/Caddyfile" --adapter caddyfile >"$tmp/caddy/log" 2>&1 &
pids+=($!)
caddy_pid=$!
# The same caddy held to one core, like nginx's single worker and the 1-thread edge.
mkdir -p "$tmp/caddy1"
sed "s/:$caddy_port {/:$caddy1_port {/" "$tmp/caddy/Caddyfile" >"$tmp/caddy1/Caddyfile"
GOMAXPROCS=1 XDG_DATA_HOME="$tmp/caddy1" XDG_CONFIG_HOME="$tmp/caddy1" HOME="$tmp/caddy1" \
    caddy run --config "$tmp/caddy1/Caddyfile" --adapter caddyfile >"$tmp/caddy1/log" 2>&1 &
pids+=($!)
caddy1_pid=$!

# Waits until the target answers, and stops the script unless the answer is the upstream's body.
wait_http() { # url expected-body
    local body=""
    for _ in $(seq 100); do
        if body="$(curl -fsk -H "Host: $host" "$1" 2>/dev/null)"; then
            [[ "$body" == "$2" ]] && return
            echo "$1 answered ${#body} bytes that are not the upstream's body: '$body'" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "$1 never answered; logs:" >&2
    tail -n 5 "$tmp"/*.err "$tmp"/nginx/error.log "$tmp"/caddy/log >&2 || true
    exit 1
}
upstream_body="$(curl -fs "http://$upstream/")"
[[ -n "$upstream_body" ]] || { echo "the upstream at $upstream gave no body" >&2; exit 1; }
for url in "http://$edge2/" "http://$edge2p/" "http://$edge1/" \
    "http://127.0.0.1:$nginx_port/" "http://127.0.0.1:$nginx_all_port/" \
    "http://127.0.0.1:$caddy_port/" \
    "http://127.0.0.1:$caddy1_port/" "https://$edge1_tls/" "https://127.0.0.1:$nginx_tls_port/"; do
    wait_http "$url" "$upstream_body"
done
nginx_workers="$(pgrep -P "$(cat "$tmp/nginx/nginx.pid")" | tr '\n' ' ')"
nginx_all_workers="$(pgrep -P "$(cat "$tmp/nginx-all/nginx.pid")" | tr '\n' ' ')"

# --- measure ------------------------------------------------------------------------------------
to_ms() { # wrk latency like 156.00us / 1.17ms / 1.02s
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /s$/) n *= 1000
        printf "%.2f", n }'
}
# Each target is measured in several interleaved rounds and the median kept, because the
# machine's neighbours make single runs swing widely.
declare -A rps p50 p99 cpu fails warmup_fails
median() { tr ' ' '\n' | grep . | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
# Failed requests in a wrk report: "Non-2xx or 3xx responses: N" plus "Socket errors: connect A,
# read B, write C, timeout D" (wrk prints either line only when it is not zero). Prints
# "TOTAL NON2XX CONNECT READ WRITE TIMEOUT".
failures() { # wrk output
    awk '/Non-2xx or 3xx responses:/ { bad += $5 }
        /Socket errors:/ { gsub(",", ""); c += $4; r += $6; w += $8; t += $10 }
        END { printf "%d %d %d %d %d %d\n", bad + c + r + w + t, bad, c, r, w, t }' <<<"$1"
}
# CPU time (user + system, all threads) the given processes used so far, in clock ticks.
hz="$(getconf CLK_TCK)"
cpu_ticks() { # pid…
    local total=0 pid f fields
    for pid in "$@"; do
        for f in /proc/"$pid"/task/*/stat; do
            read -ra fields <<<"$(sed 's/.*) //' "$f" 2>/dev/null)" || continue
            total=$((total + ${fields[11]:-0} + ${fields[12]:-0}))
        done
    done
    echo "$total"
}
run() { # name url pid…
    local out warmup_failed before after requests
    out="$(wrk -t1 -c"$connections" -d1s -H "Host: $host" "$2")" # warm-up
    warmup_failed="$(failures "$out" | cut -d' ' -f1)"
    warmup_fails[$1]=$((${warmup_fails[$1]:-0} + warmup_failed))
    if ((warmup_failed)); then
        echo "warning: $1 had $warmup_failed failed requests in the warm-up" >&2
    fi
    before="$(cpu_ticks "${@:3}")"
    out="$(wrk -t1 -c"$connections" -d"$duration" --latency -H "Host: $host" "$2")"
    after="$(cpu_ticks "${@:3}")"
    requests="$(awk '/ requests in / { print $1 }' <<<"$out")"
    cpu[$1]+=" $(awk -v t=$((after - before)) -v r="$requests" -v hz="$hz" \
        'BEGIN { if (r > 0) printf "%.1f", t * 1e6 / hz / r; else print 0 }')"
    if grep -q 'Non-2xx' <<<"$out"; then
        echo "warning: $1 answered non-2xx: $(grep 'Non-2xx' <<<"$out")" >&2
    fi
    rps[$1]+=" $(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' <<<"$out")"
    p50[$1]+=" $(to_ms "$(awk '$1 == "50%" { print $2 }' <<<"$out")")"
    p99[$1]+=" $(to_ms "$(awk '$1 == "99%" { print $2 }' <<<"$out")")"
    fails[$1]+="$(failures "$out");"
}
names=("upstream direct" "kiln edge, 2 thr" "kiln 2 thr, pinned" "kiln edge, 1 thr"
    "nginx, 1 worker" "nginx, per core" "caddy" "caddy, 1 proc")
urls=("http://$upstream/" "http://$edge2/" "http://$edge2p/" "http://$edge1/"
    "http://127.0.0.1:$nginx_port/" "http://127.0.0.1:$nginx_all_port/"
    "http://127.0.0.1:$caddy_port/" "http://127.0.0.1:$caddy1_port/")
procs=("$upstream_pid" "$edge2_pid" "$edge2p_pid" "$edge1_pid" "$nginx_workers"
    "$nginx_all_workers" "$caddy_pid" "$caddy1_pid")
tls_names=("kiln 1 thr, TLS" "nginx 1w, TLS")
measured=("${names[@]}" "${tls_names[@]}")
urls+=("https://$edge1_tls/" "https://127.0.0.1:$nginx_tls_port/")
procs+=("$edge1_pid" "$nginx_workers")
for round in $(seq "$rounds"); do
    echo "round $round of $rounds" >&2
    for i in "${!measured[@]}"; do
        # shellcheck disable=SC2086 # nginx may have several worker pids
        run "${measured[$i]}" "${urls[$i]}" ${procs[$i]}
    done
done
for name in "${measured[@]}"; do
    echo "$name: req/s${rps[$name]}" >&2
    rps[$name]="$(median <<<"${rps[$name]}")"
    p50[$name]="$(median <<<"${p50[$name]}")"
    p99[$name]="$(median <<<"${p99[$name]}")"
    cpu[$name]="$(median <<<"${cpu[$name]}")"
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
echo
echo "wrk -t1 -c$connections -d$duration, 13-byte body, loopback, $(nproc) cores shared with wrk;"
echo "median of $rounds interleaved rounds"
echo
printf '| %-18s | %8s | %8s | %8s | %11s | %10s | %11s | %9s | %11s |\n' target req/s "p50 ms" \
    "p99 ms" "CPU us/req" "/ nginx 1w" "/ nginx all" "/ caddy" "/ caddy 1p"
printf '|%s|%s|%s|%s|%s|%s|%s|%s|%s|\n' -------------------- ---------- ---------- ---------- \
    ------------- ------------ ------------- ----------- -------------
for name in "${names[@]}"; do
    printf '| %-18s | %8s | %8s | %8s | %11s | %10s | %11s | %9s | %11s |\n' "$name" \
        "${rps[$name]}" "${p50[$name]}" "${p99[$name]}" "${cpu[$name]}" \
        "$(ratio "${rps[$name]}" "${rps[nginx, 1 worker]}")" \
        "$(ratio "${rps[$name]}" "${rps[nginx, per core]}")" \
        "$(ratio "${rps[$name]}" "${rps[caddy]}")" "$(ratio "${rps[$name]}" "${rps[caddy, 1 proc]}")"
done
echo
echo "Like for like: the 1-thread edge against nginx's one worker and caddy held to one core; the"
echo "2-thread edge against nginx with a worker per core and caddy as installed."
echo
echo "CPU us/req: user + system time of the proxy's own processes (all threads) per request served"
echo "in the measured run (the upstream row: the upstream's); it does not depend on how the cores"
echo "were shared, so it is the steadiest column on a busy machine."
echo
echo "over TLS: HTTP/1.1 on kept-alive connections, one ECDSA P-256 certificate, same rounds"
echo
printf '| %-18s | %8s | %8s | %8s | %11s | %14s |\n' target req/s "p50 ms" "p99 ms" "CPU us/req" \
    "/ nginx 1w TLS"
printf '|%s|%s|%s|%s|%s|%s|\n' -------------------- ---------- ---------- ---------- ------------- \
    ----------------
for name in "${tls_names[@]}"; do
    printf '| %-18s | %8s | %8s | %8s | %11s | %14s |\n' "$name" "${rps[$name]}" "${p50[$name]}" \
        "${p99[$name]}" "${cpu[$name]}" "$(ratio "${rps[$name]}" "${rps[nginx 1w, TLS]}")"
done

# --- under route churn ------------------------------------------------------------------------
# The 2-thread edge again, in front of the same upstream, while it publishes a brand-new table
# (the bench route plus 1,000 others on changing backends) $churn_rate times a second.
"$bench_bin" --churn "$churn_rate" --upstream "$upstream" >"$tmp/churn.out" 2>"$tmp/churn.err" &
pids+=($!)
churn_pid=$!
edge_churn="$(addr_of "$tmp/churn.out" edge)"
wait_http "http://$edge_churn/" "$upstream_body"
churn_name="kiln 2 thr, churn"
echo "churn run: $churn_rate tables/s" >&2
churn_lines_before="$(wc -l <"$tmp/churn.err")"
run "$churn_name" "http://$edge_churn/" "$churn_pid"
# The edge reports "churn: published X tables/s" once a second; average the reports made
# while wrk ran (warm-up included: the edge was under the same load then).
churn_reports="$(tail -n +"$((churn_lines_before + 1))" "$tmp/churn.err" |
    awk '/^churn: published [0-9]+ tables\/s$/ { print $3 }')"
churn_achieved="$(awk 'NF { s += $1; n++ } END { if (n) printf "%.0f", s / n; else print "none" }' \
    <<<"$churn_reports")"
churn_min="$(sort -g <<<"$churn_reports" | awk 'NF { print; exit }')"
if grep -qv '^churn: published [0-9]* tables/s$' "$tmp/churn.err"; then
    echo "churn edge stderr:" >&2
    grep -v '^churn: published [0-9]* tables/s$' "$tmp/churn.err" >&2
fi

sum_failures() { # "T N C R W O;" per run -> the same six counts summed over runs
    tr ';' '\n' | awk 'NF { for (i = 1; i <= 6; i++) v[i] += $i }
        END { printf "%d %d %d %d %d %d\n", v[1], v[2], v[3], v[4], v[5], v[6] }'
}
echo
echo "under route churn: a new $((1000 + 1))-route table published through the edge's Routes handle"
echo "$churn_rate times/s; wrk -t1 -c$connections -d$duration, one run (plain kiln rows from above)"
echo
printf '| %-18s | %8s | %8s | %8s | %8s | %8s |\n' target req/s "p50 ms" "p99 ms" failed "tables/s"
printf '|%s|%s|%s|%s|%s|%s|\n' -------------------- ---------- ---------- ---------- ---------- ----------
breakdown=()
churn_failed=0
for name in "kiln edge, 2 thr" "kiln 2 thr, pinned" "kiln edge, 1 thr" "$churn_name"; do
    read -r total bad connect readerr writeerr timeout <<<"$(sum_failures <<<"${fails[$name]}")"
    tables="-"
    if [[ "$name" == "$churn_name" ]]; then
        churn_failed=$((total + ${warmup_fails[$name]}))
        tables="$churn_achieved"
    fi
    printf '| %-18s | %8s | %8s | %8s | %8s | %8s |\n' "$name" \
        "$(median <<<"${rps[$name]}")" "$(median <<<"${p50[$name]}")" \
        "$(median <<<"${p99[$name]}")" "$total" "$tables"
    breakdown+=("$name: $total (non-2xx/3xx $bad; socket errors: connect $connect, read $readerr, write $writeerr, timeout $timeout; ${warmup_fails[$name]} more in warm-ups)")
done
echo
echo "achieved publish rate during the churn run: $churn_achieved tables/s on average (target $churn_rate,"
echo "lowest second ${churn_min:-none}, $(grep -c . <<<"$churn_reports" || true) one-second reports)"
echo "failed requests = wrk's non-2xx/3xx responses + socket errors; plain runs summed over $rounds round(s):"
printf '  %s\n' "${breakdown[@]}"
if ((churn_failed)); then
    echo "FAIL: $churn_failed requests failed under route churn" >&2
    exit 1
fi
