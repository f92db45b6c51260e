#!/usr/bin/env bash
# Real engines for eventfn's tests, without Docker: PostgreSQL from Debian's
# packages and Apache Kafka (KRaft) from Maven Central.
#
#   ci/services.sh up [--cluster]   start PostgreSQL and a one-node Kafka
#                                   (--cluster: three Kafka nodes, RF 3, min ISR 2)
#   ci/services.sh down             stop what this script started
#   ci/services.sh status           show what runs
#   ci/services.sh env              print the test variables: eval "$(ci/services.sh env)"
#   ci/services.sh kafka-node N kill|stop|pause|resume|start   a fault on node N
#   ci/services.sh pg restart|crash|stop|start|pause|resume|read-only|writable|fill-locks|free-locks
#                                   a fault on PostgreSQL
#
# It is idempotent, keeps state and logs under $EVENTFN_SERVICES_DIR (default
# ci/.services), caches the Kafka jars under $EVENTFN_CACHE_DIR (default
# ~/.cache/eventfn), and only ever stops processes it started itself.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${EVENTFN_SERVICES_DIR:-$ROOT/ci/.services}
CACHE=${EVENTFN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/eventfn}
LOGS=$STATE/logs
PG_PORT=${EVENTFN_PG_PORT:-5432}
PG_DB=eventfn_test
KAFKA_VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$ROOT/ci/kafka/pom.xml")
LIBS=$CACHE/kafka-$KAFKA_VERSION/libs
KAFKA_STATE=$STATE/kafka
KAFKA_TIMEOUT=${EVENTFN_KAFKA_TIMEOUT:-180}
# Secured listeners of the one-node Kafka, and the test CA that signs them.
TLS_DIR=$STATE/tls
KAFKA_SASL_SSL_PORT=9192 # SASL_SSL, SCRAM-SHA-512
KAFKA_MTLS_PORT=9193     # SSL with a required client certificate
SCRAM_USER=eventfn
SCRAM_PASSWORD=eventfn-scram-password
PG_CERT_USER=eventfn_cert # PostgreSQL user that logs in by client certificate
# Exists before anything below looks at it, so every command of this script
# (up, then env, status, down) sees the same layout.
mkdir -p "$LOGS"

say() { printf 'services: %s\n' "$*" >&2; }
die() { say "error: $*"; say "logs are in $LOGS"; exit 1; }

# --- packages -------------------------------------------------------------

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

install_packages() {
  local missing=()
  command -v kcat >/dev/null || missing+=(kcat)
  command -v openssl >/dev/null || missing+=(openssl)
  [ -n "$(pg_bin)" ] || missing+=(postgresql)
  command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null || missing+=(maven)
  # Tests start PgBouncer in front of PostgreSQL (store: a pooler that
  # shares sessions is refused at start); Debian puts it in /usr/sbin.
  command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "missing ${missing[*]}; install them (apt-get install ${missing[*]}) or run as root"
  say "installing ${missing[*]}"
  # Keep apt from starting Debian's own PostgreSQL cluster on our port.
  local policy=/usr/sbin/policy-rc.d added=""
  if [ ! -e $policy ]; then printf '#!/bin/sh\nexit 101\n' >$policy && chmod +x $policy && added=1; fi
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; } >"$LOGS/apt.log" 2>&1 ||
    { [ -n "$added" ] && rm -f $policy; tail -n 30 "$LOGS/apt.log" >&2; die "apt-get install ${missing[*]} failed"; }
  [ -n "$added" ] && rm -f $policy
  return 0
}

# --- TLS material ---------------------------------------------------------------

# tls_material: a throwaway CA, and certificates it signs for the servers
# (127.0.0.1 and localhost) and for a client (CN $PG_CERT_USER, which
# PostgreSQL's cert authentication takes as the user name). Kafka reads them
# as PEM key stores, so openssl is all it takes.
tls_material() {
  [ -f "$TLS_DIR/.complete" ] && return 0
  command -v openssl >/dev/null || die "openssl is missing (apt-get install openssl)"
  rm -rf "$TLS_DIR" && mkdir -p "$TLS_DIR"
  local d=$TLS_DIR
  {
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=eventfn test CA" \
      -keyout "$d/ca-key.pem" -out "$d/ca.pem"
    local name cn ext
    for name in server client; do
      cn=127.0.0.1; ext="subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth"
      [ $name = client ] && { cn=$PG_CERT_USER; ext="extendedKeyUsage=clientAuth"; }
      openssl req -newkey rsa:2048 -nodes -subj "/CN=$cn" -keyout "$d/$name-key.pem" -out "$d/$name.csr"
      openssl x509 -req -days 3650 -in "$d/$name.csr" -CA "$d/ca.pem" -CAkey "$d/ca-key.pem" -CAcreateserial \
        -extfile <(printf "$ext\n") -out "$d/$name.pem"
    done
  } >>"$LOGS/tls.log" 2>&1 || die "making the test certificates failed (see $LOGS/tls.log)"
  cat "$d/server-key.pem" "$d/server.pem" >"$d/server-keystore.pem"
  chmod 600 "$d"/*-key.pem "$d/server-keystore.pem"
  touch "$d/.complete"
}

# --- PostgreSQL -------------------------------------------------------------

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

# PostgreSQL runs as the postgres user when we are root; if that user cannot
# reach $STATE (a checkout under /root, say), its files live in /var/tmp and
# the log is linked into $LOGS.
PGBASE=$STATE/postgres
if [ "$(id -u)" = 0 ] && id postgres >/dev/null 2>&1 && ! runuser -u postgres -- test -x "$STATE" 2>/dev/null; then
  PGBASE=/var/tmp/eventfn-postgres
fi
PGDATA=$PGBASE/data
PGRUN=$PGBASE/run
PGLOG=$PGBASE/postgres.log

# pg_opts: the server settings, test-grade: durability off (the data is
# throwaway), room for parallel tests, TLS with the test CA (client
# certificates are verified against it).
pg_opts() {
  echo "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $PGRUN -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
    "-c ssl=on -c ssl_cert_file=$PGBASE/tls/server.pem -c ssl_key_file=$PGBASE/tls/server-key.pem -c ssl_ca_file=$PGBASE/tls/ca.pem"
}

# pg_tls: PostgreSQL's copy of the certificates (it refuses a key others can
# read, and may not reach $STATE), and a pg_hba.conf whose first line makes
# $PG_CERT_USER log in by client certificate over TLS only.
pg_tls() {
  mkdir -p "$PGBASE/tls"
  cp "$TLS_DIR/server.pem" "$TLS_DIR/server-key.pem" "$TLS_DIR/ca.pem" "$PGBASE/tls/"
  chmod 600 "$PGBASE/tls/server-key.pem"
  if [ "$(id -u)" = 0 ]; then chown -R postgres "$PGBASE/tls"; fi
  local hba=$PGDATA/pg_hba.conf rule="hostssl all $PG_CERT_USER 127.0.0.1/32 cert"
  if ! grep -qF "$rule" "$hba"; then
    as_pg sh -c "{ echo '$rule'; echo 'host all $PG_CERT_USER 127.0.0.1/32 reject'; cat '$hba'; } >'$hba.new' && mv '$hba.new' '$hba'"
  fi
}

pg_running() { [ -f "$PGDATA/postmaster.pid" ] && as_pg "$(pg_bin)/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; }

# pg_writable_again undoes a 'pg read-only' that a fault test stopped before
# its 'pg writable' left behind, in the running server and in the cluster's
# postgresql.auto.conf.
pg_writable_again() {
  if [ "$("$(pg_bin)/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -Atc "SHOW default_transaction_read_only")" = on ]; then
    say "PostgreSQL was left read-only by a fault test; making it writable"
    pg_fault writable
  fi
}

pg_up() {
  local bin; bin=$(pg_bin)
  if pg_running; then say "PostgreSQL already running on 127.0.0.1:$PG_PORT"; pg_writable_again; return 0; fi
  if "$bin/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; then
    die "127.0.0.1:$PG_PORT already serves a PostgreSQL this script did not start; stop it or set EVENTFN_PG_PORT"
  fi
  mkdir -p "$PGRUN"
  touch "$PGLOG"
  [ "$PGLOG" = "$LOGS/postgres.log" ] || ln -sf "$PGLOG" "$LOGS/postgres.log"
  if [ "$(id -u)" = 0 ]; then chown -R postgres "$PGBASE"; fi
  if [ ! -f "$PGDATA/PG_VERSION" ]; then
    say "creating a PostgreSQL cluster in $PGDATA"
    as_pg "$bin/initdb" -D "$PGDATA" -U postgres --auth=trust -E UTF8 >>"$PGLOG" 2>&1 || die "initdb failed"
  fi
  pg_tls
  as_pg "$bin/pg_ctl" -D "$PGDATA" -l "$PGLOG" -w -t 60 -o "$(pg_opts)" \
    start >/dev/null || die "PostgreSQL did not start (see $LOGS/postgres.log)"
  if ! "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -Atc "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'" | grep -q 1; then
    "$bin/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres "$PG_DB" || die "createdb $PG_DB failed"
  fi
  if ! "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -Atc "SELECT 1 FROM pg_roles WHERE rolname = '$PG_CERT_USER'" | grep -q 1; then
    "$bin/psql" -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -c "CREATE ROLE $PG_CERT_USER LOGIN SUPERUSER" || die "creating role $PG_CERT_USER failed"
  fi
  pg_writable_again
  say "PostgreSQL on 127.0.0.1:$PG_PORT, database $PG_DB"
}

pg_down() {
  pg_running || return 0
  as_pg "$(pg_bin)/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null && say "PostgreSQL stopped"
}

# --- Kafka ------------------------------------------------------------------

kafka_fetch() {
  [ -f "$LIBS/.complete" ] && return 0
  say "fetching Apache Kafka $KAFKA_VERSION from Maven Central into $LIBS"
  rm -rf "$LIBS.tmp"
  mvn -B -q -f "$ROOT/ci/kafka/pom.xml" \
    org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$LIBS.tmp" >"$LOGS/maven.log" 2>&1 ||
    { tail -n 30 "$LOGS/maven.log" >&2; die "could not fetch the Kafka jars"; }
  rm -rf "$LIBS" && mv "$LIBS.tmp" "$LIBS" && touch "$LIBS/.complete"
}

kafka_java() { java -cp "$LIBS/*" "$@"; }

# node_props N NODES: server.properties of node N in a cluster of NODES.
node_props() {
  local n=$1 nodes=$2 voters="" i rf=1 isr=1
  for i in $(seq 1 "$nodes"); do voters+="${voters:+,}$i@127.0.0.1:$((19092 + i))"; done
  if [ "$nodes" -gt 1 ]; then rf=3; isr=2; fi
  # A one-node Kafka also has the secured listeners of the TLS tests.
  local listeners="PLAINTEXT://127.0.0.1:$((9091 + n))" map="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
  if [ "$nodes" = 1 ]; then
    listeners+=",SASL_SSL://127.0.0.1:$KAFKA_SASL_SSL_PORT,SSL://127.0.0.1:$KAFKA_MTLS_PORT"
    map+=",SASL_SSL:SASL_SSL,SSL:SSL"
  fi
  cat <<PROPS
process.roles=broker,controller
node.id=$n
controller.quorum.voters=$voters
listeners=$listeners,CONTROLLER://127.0.0.1:$((19092 + n))
advertised.listeners=$listeners
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=$map
log.dirs=$KAFKA_STATE/node$n/data
num.partitions=4
default.replication.factor=$rf
min.insync.replicas=$isr
offsets.topic.replication.factor=$rf
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$isr
group.initial.rebalance.delay.ms=0
log.cleaner.dedupe.buffer.size=16777216
auto.create.topics.enable=true
PROPS
  [ "$nodes" = 1 ] || return 0
  cat <<PROPS
ssl.keystore.type=PEM
ssl.keystore.location=$TLS_DIR/server-keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location=$TLS_DIR/ca.pem
listener.name.ssl.ssl.client.auth=required
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
PROPS
}

kafka_nodes_running() {
  local n=0 f
  for f in "$KAFKA_STATE"/node*/pid; do
    [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null && n=$((n + 1))
  done
  echo $n
}

kafka_brokers() {
  local nodes; nodes=$(cat "$KAFKA_STATE/nodes" 2>/dev/null || echo 1)
  local i out=""
  for i in $(seq 1 "$nodes"); do out+="${out:+,}127.0.0.1:$((9091 + i))"; done
  echo "$out"
}

# kafka_node_start N: start node N of the formatted cluster in the background.
kafka_node_start() {
  local i=$1 nodes heap=512m dir=$KAFKA_STATE/node$1
  nodes=$(cat "$KAFKA_STATE/nodes")
  [ "$nodes" -gt 1 ] && heap=384m
  nohup java -Xms128m -Xmx$heap -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
    -Dlog4j2.configurationFile="$ROOT/ci/kafka/log4j2.properties" \
    -cp "$LIBS/*" kafka.Kafka "$dir/server.properties" >>"$LOGS/kafka-$i.log" 2>&1 </dev/null &
  echo $! >"$dir/pid"
}

# kafka_node_fault N ACTION: kill (SIGKILL), stop (SIGTERM, waits), pause
# (SIGSTOP), resume (SIGCONT) or start node N; for fault tests.
kafka_node_fault() {
  local n=$1 action=$2 pidf=$KAFKA_STATE/node$1/pid pid
  [ -d "$KAFKA_STATE/node$n" ] || die "no Kafka node $n"
  pid=$(cat "$pidf" 2>/dev/null || true)
  case "$action" in
    kill) if [ -n "$pid" ]; then kill -KILL "$pid" 2>/dev/null || true; fi; rm -f "$pidf" ;;
    stop)
      if [ -n "$pid" ]; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
      fi
      rm -f "$pidf" ;;
    pause) if [ -n "$pid" ]; then kill -STOP "$pid"; fi ;;
    resume) if [ -n "$pid" ]; then kill -CONT "$pid"; fi ;;
    start)
      if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then say "Kafka node $n already runs"; return 0; fi
      kafka_node_start "$n" ;;
    *) die "kafka-node: unknown action $action (kill, stop, pause, resume, start)" ;;
  esac
}

# pg_fault ACTION: restart (fast), crash (immediate stop), start, pause
# (SIGSTOP the postmaster and its backends), resume, read-only (every
# session, the open ones too, takes no writes: as a managed service does when
# its disk fills, or a standby), writable, fill-locks (another session fills
# the shared lock table: writes fail with out of shared memory) or
# free-locks; for fault tests.
pg_fault() {
  local bin; bin=$(pg_bin)
  case "$1" in
    restart) as_pg "$bin/pg_ctl" -D "$PGDATA" -m fast -w -t 60 restart -o "$(pg_opts)" >/dev/null ;;
    crash) as_pg "$bin/pg_ctl" -D "$PGDATA" -m immediate -w stop >/dev/null ;;
    stop) as_pg "$bin/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null ;;
    start) pg_up ;;
    pause|resume)
      local sig=STOP pid; [ "$1" = resume ] && sig=CONT
      pid=$(head -n 1 "$PGDATA/postmaster.pid")
      kill -$sig "$pid" $(pgrep -P "$pid" || true) ;;
    read-only|writable)
      local set="SET default_transaction_read_only = on"; [ "$1" = writable ] && set="RESET default_transaction_read_only"
      # A reload applies the setting to open sessions as well. The session
      # that sets it must itself be writable to turn it off again.
      PGOPTIONS="-c default_transaction_read_only=off" "$bin/psql" -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres \
        -c "ALTER SYSTEM $set" -c "SELECT pg_reload_conf()" >/dev/null ;;
    fill-locks)
      # Another session takes advisory locks until the server's shared lock
      # table is full, and holds them (session locks outlive the failed
      # statement): every transaction that needs an entry of its own (any
      # write, for its transaction id) and every new connection fail with
      # out of shared memory (53200), while reads on open connections go
      # on. Held until free-locks, which ends that session from outside:
      # with the table full, no connection could end it from inside.
      "$bin/psql" -Atq -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -c "SELECT pg_backend_pid()" \
        -c "SELECT count(pg_advisory_lock(i)) FROM generate_series(1, 100000000) i" -c "SELECT pg_sleep(86400)" \
        >"$STATE/fill-locks.pid" 2>>"$LOGS/fill-locks.log" &
      local i
      for i in $(seq 600); do
        if ! "$bin/psql" -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -Atc "SELECT pg_current_xact_id()" >/dev/null 2>&1; then
          return 0
        fi
        sleep 0.1
      done
      die "pg fill-locks: the lock table did not fill within 60 s" ;;
    free-locks)
      local pid; pid=$(head -n 1 "$STATE/fill-locks.pid" 2>/dev/null || true)
      [ -n "$pid" ] || return 0
      # SIGTERM ends one backend, as pg_terminate_backend does.
      kill -TERM "$pid" 2>/dev/null || true
      rm -f "$STATE/fill-locks.pid"
      for i in $(seq 300); do
        "$bin/psql" -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -Atc "SELECT pg_current_xact_id()" >/dev/null 2>&1 && return 0
        sleep 0.1
      done
      die "pg free-locks: writes still fail 30 s after the locks' session was ended" ;;
    *) die "pg: unknown action $1 (restart, crash, stop, start, pause, resume, read-only, writable, fill-locks, free-locks)" ;;
  esac
}

kafka_up() {
  local nodes=$1 i
  local running; running=$(kafka_nodes_running)
  if [ "$running" -gt 0 ]; then
    [ "$(cat "$KAFKA_STATE/nodes")" = "$nodes" ] || die "a Kafka of $(cat "$KAFKA_STATE/nodes") node(s) runs; 'ci/services.sh down' first"
    [ "$running" = "$nodes" ] && { say "Kafka already running on $(kafka_brokers)"; return 0; }
    die "only $running of $nodes Kafka nodes run; 'ci/services.sh down' first"
  fi
  kafka_fetch
  if [ "$(cat "$KAFKA_STATE/nodes" 2>/dev/null)" != "$nodes" ]; then rm -rf "$KAFKA_STATE"; fi
  mkdir -p "$KAFKA_STATE"
  echo "$nodes" >"$KAFKA_STATE/nodes"
  [ -f "$KAFKA_STATE/cluster.id" ] || kafka_java kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1 >"$KAFKA_STATE/cluster.id"
  local heap=512m; [ "$nodes" -gt 1 ] && heap=384m
  for i in $(seq 1 "$nodes"); do
    local dir=$KAFKA_STATE/node$i
    mkdir -p "$dir"
    node_props "$i" "$nodes" >"$dir/server.properties"
    if [ ! -f "$dir/data/meta.properties" ]; then
      kafka_java kafka.tools.StorageTool format -t "$(cat "$KAFKA_STATE/cluster.id")" -c "$dir/server.properties" \
        >>"$LOGS/kafka-$i.log" 2>&1 || die "formatting Kafka storage of node $i failed (see $LOGS/kafka-$i.log)"
    fi
    kafka_node_start "$i"
  done
  # Ready when a standard client sees every broker in the cluster metadata.
  local deadline=$((SECONDS + KAFKA_TIMEOUT)) seen=0
  while [ $SECONDS -lt $deadline ]; do
    [ "$(kafka_nodes_running)" = "$nodes" ] || { tail -n 40 "$LOGS"/kafka-*.log >&2; die "a Kafka node exited while starting"; }
    seen=$(kcat -b "$(kafka_brokers)" -L -m 3 2>/dev/null | sed -n 's/^ *\([0-9]*\) brokers:.*/\1/p' | head -n 1 || true)
    if [ "${seen:-0}" = "$nodes" ]; then
      say "Kafka $KAFKA_VERSION on $(kafka_brokers) ($nodes node(s))"
      [ "$nodes" = 1 ] && kafka_scram_user
      return 0
    fi
    sleep 0.5
  done
  tail -n 40 "$LOGS"/kafka-*.log >&2
  die "Kafka did not become ready within ${KAFKA_TIMEOUT}s"
}

# kafka_scram_user: the SCRAM user of the SASL_SSL listener, made with
# Kafka's own tool over the PLAINTEXT listener (it is idempotent).
kafka_scram_user() {
  kafka_java kafka.admin.ConfigCommand --bootstrap-server "$(kafka_brokers)" --alter \
    --entity-type users --entity-name "$SCRAM_USER" \
    --add-config "SCRAM-SHA-512=[iterations=4096,password=$SCRAM_PASSWORD]" >>"$LOGS/kafka-1.log" 2>&1 ||
    die "creating the SCRAM user $SCRAM_USER failed (see $LOGS/kafka-1.log)"
  say "Kafka SASL_SSL (SCRAM-SHA-512, user $SCRAM_USER) on 127.0.0.1:$KAFKA_SASL_SSL_PORT, SSL with client certificates on 127.0.0.1:$KAFKA_MTLS_PORT"
}

kafka_down() {
  local f pid stopped=0
  for f in "$KAFKA_STATE"/node*/pid; do
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid"; stopped=1; fi
  done
  for f in "$KAFKA_STATE"/node*/pid; do
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    rm -f "$f"
  done
  [ $stopped = 1 ] && say "Kafka stopped"
  return 0
}

# --- commands ---------------------------------------------------------------

cmd=${1:-}
case "$cmd" in
  up)
    nodes=1
    [ "${2:-}" = "--cluster" ] && nodes=3
    install_packages
    tls_material
    pg_up
    kafka_up "$nodes"
    ;;
  down)
    kafka_down
    pg_down
    ;;
  status)
    if pg_running; then echo "postgres: running on 127.0.0.1:$PG_PORT ($PGDATA)"; else echo "postgres: stopped"; fi
    echo "kafka: $(kafka_nodes_running) node(s) running$( [ "$(kafka_nodes_running)" -gt 0 ] && echo " on $(kafka_brokers)")"
    echo "logs: $LOGS"
    ;;
  kafka-node)
    kafka_node_fault "${2:?kafka-node N ACTION}" "${3:?kafka-node N ACTION}"
    ;;
  pg)
    pg_fault "${2:?pg ACTION}"
    ;;
  env)
    if [ "$(kafka_nodes_running)" -gt 0 ]; then echo "export EVENTFN_TEST_KAFKA_BROKERS=$(kafka_brokers)"; fi
    if [ "$(kafka_nodes_running)" -gt 0 ] && [ "$(cat "$KAFKA_STATE/nodes")" = 1 ]; then
      echo "export EVENTFN_TEST_KAFKA_SASL_SSL_BROKERS=127.0.0.1:$KAFKA_SASL_SSL_PORT"
      echo "export EVENTFN_TEST_KAFKA_MTLS_BROKERS=127.0.0.1:$KAFKA_MTLS_PORT"
      echo "export EVENTFN_TEST_KAFKA_SCRAM_USER=$SCRAM_USER"
      echo "export EVENTFN_TEST_KAFKA_SCRAM_PASSWORD=$SCRAM_PASSWORD"
    fi
    if pg_running; then
      echo "export EVENTFN_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:$PG_PORT/$PG_DB?sslmode=disable"
      echo "export EVENTFN_TEST_DATABASE_TLS_URL='postgres://postgres@127.0.0.1:$PG_PORT/$PG_DB?sslmode=verify-full&sslrootcert=$TLS_DIR/ca.pem'"
      echo "export EVENTFN_TEST_DATABASE_CERT_URL='postgres://$PG_CERT_USER@127.0.0.1:$PG_PORT/$PG_DB?sslmode=verify-full&sslrootcert=$TLS_DIR/ca.pem&sslcert=$TLS_DIR/client.pem&sslkey=$TLS_DIR/client-key.pem'"
    fi
    [ -f "$TLS_DIR/.complete" ] && echo "export EVENTFN_TEST_TLS_DIR=$TLS_DIR"
    ;;
  *)
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
