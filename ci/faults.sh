#!/usr/bin/env bash
# The fault suite (e2e/faults) on a three-broker KRaft cluster and PostgreSQL,
# in a network namespace of its own so its engines can use the usual ports
# beside any others. Needs root (ip netns). Run from anywhere:
#
#   ci/faults.sh [go test flags...]     e.g. ci/faults.sh -run TestBaseline -v
#
# It starts and stops its own services (state in ci/.services-faults) and
# appends each scenario's counts to $EVENTFN_FAULTS_REPORT when that is set.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
NS=eventfn-faults-$$
export EVENTFN_SERVICES_DIR=$ROOT/ci/.services-faults

[ "$(id -u)" = 0 ] || { echo "faults: needs root for ip netns" >&2; exit 1; }
command -v ip >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q iproute2 >/dev/null; }

cleanup() {
  ip netns exec "$NS" ci/services.sh down >/dev/null 2>&1 || true
  ip netns del "$NS" 2>/dev/null || true
}
trap cleanup EXIT
ip netns add "$NS"
ip netns exec "$NS" ip link set lo up

# Build the test binary outside: the namespace has no network, and the module
# cache then holds everything the suite's own `go build` needs.
go vet ./e2e/faults/ ./router/
go build -o /dev/null .

ip netns exec "$NS" ci/services.sh up --cluster
eval "$(ip netns exec "$NS" ci/services.sh env)"
# Start-up's wait for the topics it creates: only several brokers can apply a
# new topic apart, so this runs here as well as in the one-broker passes.
ip netns exec "$NS" env EVENTFN_TEST_KAFKA_BROKERS="$EVENTFN_TEST_KAFKA_BROKERS" \
  go test -count=1 -run '^TestEnsureTopics' -v ./router/
ip netns exec "$NS" env EVENTFN_TEST_ENGINES=faults \
  EVENTFN_TEST_KAFKA_BROKERS="$EVENTFN_TEST_KAFKA_BROKERS" \
  EVENTFN_TEST_DATABASE_URL="$EVENTFN_TEST_DATABASE_URL" \
  go test -count=1 -timeout 40m "${@:--v}" ./e2e/faults/
