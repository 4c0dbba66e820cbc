#!/usr/bin/env bash
# Idempotent set-up of everything the job and the tests need on a fresh machine:
# the venv, the Kafka connector jars (sha256-verified), the project's own Java helpers,
# redis-server, Prometheus (promtool and the server) and headless Chromium with its driver.
# A second run only checks stamps and returns in about a second.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/.venv
CACHE=${PENALTY_CACHE:-$ROOT/.cache}  # override: tests of the checksum check
JARS=$CACHE/jars
LIBS_PKG="shigawire-apache-flink-libraries==2.0.0.post1"
CONNECTOR_SHA=842885a51c768b2f31c946a2071656c166ee8cc6d3c02fe6c557e134e03bf228
CLIENTS_SHA=7568b998572d256f0b7bc0afdc1b7a2588b8b08415c62ce314c864a6851ae9d9
EXTRAS=${PENALTY_EXTRAS:-dev}        # the container image installs [runtime] deps only: PENALTY_EXTRAS=""
WITH_REDIS=${PENALTY_WITH_REDIS:-1}  # the container image has no local Redis: 0
WITH_PROMTOOL=${PENALTY_WITH_PROMTOOL:-1}  # nor the monitoring tests (promtool, prometheus): 0
WITH_BROWSER=${PENALTY_WITH_BROWSER:-1}    # nor the console's browser test (chromium, chromedriver): 0

die() { echo "setup: $*" >&2; exit 1; }
say() { echo "setup: $*"; }

command -v python3.11 >/dev/null 2>&1 || python3 -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null \
  || die "Python 3.11 is required (found: $(python3 --version 2>&1)). Install python3.11 and retry."
PY=$(command -v python3.11 || command -v python3)
command -v java >/dev/null 2>&1 || die "Java 11+ is required by Flink and was not found. Install it: apt-get install -y openjdk-17-jdk-headless"
command -v javac >/dev/null 2>&1 || die "javac was not found (the project compiles two small Flink helpers). Install: apt-get install -y openjdk-17-jdk-headless"
java_major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)
[ "${java_major:-0}" -ge 11 ] || die "Java 11+ is required by Flink, found Java ${java_major:-unknown}. Install openjdk-17-jdk-headless."

mkdir -p "$CACHE" "$JARS"

# 1. venv, reinstalled only when setup.cfg changes.
stamp=$VENV/.setup-cfg.sha256
want=$( (cat setup.cfg; echo "extras=$EXTRAS") | sha256sum | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "creating venv and installing Python packages (first run takes about a minute)"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check --upgrade pip 'setuptools>=75.3,<82' wheel
  "$VENV/bin/pip" install -q --disable-pip-version-check -e ".${EXTRAS:+[$EXTRAS]}"
  echo "$want" > "$stamp"
fi

# 2. Connector jars: official Apache builds shipped inside a PyPI package (Maven Central is out
#    of reach). Only the two jars are extracted; the package itself is never installed.
verify() { # file sha
  local got; got=$(sha256sum "$1" | cut -d' ' -f1)
  [ "$got" = "$2" ] || die "checksum mismatch for $1: expected $2, got $got. Delete $CACHE and rerun; if it persists the package on the index changed: do not use it."
}
if [ ! -f "$JARS/flink-connector-kafka.jar" ] || [ ! -f "$JARS/kafka-clients.jar" ]; then
  say "fetching Kafka connector jars from $LIBS_PKG"
  dl=$CACHE/download; mkdir -p "$dl"
  ls "$dl"/shigawire_apache_flink_libraries-*.whl >/dev/null 2>&1 || \
    "$VENV/bin/pip" download -q --disable-pip-version-check --no-deps "$LIBS_PKG" -d "$dl" \
    || die "could not download $LIBS_PKG from PyPI (network?)"
  whl=$(ls "$dl"/shigawire_apache_flink_libraries-*.whl | head -1)
  "$VENV/bin/python" - "$whl" "$JARS" <<'PYEOF'
import sys, zipfile, pathlib
whl, out = sys.argv[1], pathlib.Path(sys.argv[2])
with zipfile.ZipFile(whl) as z:
    for name in ("flink-connector-kafka.jar", "kafka-clients.jar"):
        (out / (name + ".part")).write_bytes(z.read("pyflink/lib/" + name))
PYEOF
  verify "$JARS/flink-connector-kafka.jar.part" "$CONNECTOR_SHA"
  verify "$JARS/kafka-clients.jar.part" "$CLIENTS_SHA"
  mv "$JARS/flink-connector-kafka.jar.part" "$JARS/flink-connector-kafka.jar"
  mv "$JARS/kafka-clients.jar.part" "$JARS/kafka-clients.jar"
fi
verify "$JARS/flink-connector-kafka.jar" "$CONNECTOR_SHA"
verify "$JARS/kafka-clients.jar" "$CLIENTS_SHA"

# 3. The project's Java helpers (Kafka record (de)serializers), rebuilt when their source changes.
src=$ROOT/connectors/java
src_sha=$(cat $(find "$src" -name '*.java' | sort) | sha256sum | cut -d' ' -f1)
if [ ! -f "$JARS/penalty-connectors.jar" ] || [ "$(cat "$JARS/penalty-connectors.sha256" 2>/dev/null)" != "$src_sha" ]; then
  say "compiling Java helpers"
  flink_lib=$("$VENV/bin/python" -c 'import pyflink, os; print(os.path.join(os.path.dirname(pyflink.__file__), "lib"))')
  cp="$flink_lib/*:$JARS/flink-connector-kafka.jar:$JARS/kafka-clients.jar"
  build=$CACHE/javabuild; rm -rf "$build"; mkdir -p "$build"
  javac -nowarn -source 11 -target 11 -d "$build" -cp "$cp" $(find "$src" -name '*.java') 2>&1 | grep -v 'bootstrap classpath\|^1 warning' || true
  [ -n "$(find "$build" -name '*.class')" ] || die "compiling connectors/java failed (see above)"
  (cd "$build" && jar cf "$JARS/penalty-connectors.jar" .)
  echo "$src_sha" > "$JARS/penalty-connectors.sha256"
fi

# 4. Debian packages: redis-server (the real-stack tests, `make run`) and prometheus, which brings
#    promtool (tests/test_prometheus_rules.py checks and unit-tests deploy/prometheus/alerts.yml)
#    and the server (tests/test_cluster.py scrapes a standalone cluster with it).
#    The package lists are refreshed only when they do not know the package or are too old to
#    install from.
apt_install() { # package command
  local pkg=$1 cmd=$2
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    die "$cmd is missing: run 'sudo apt-get install -y $pkg' and retry"
  fi
  say "installing $pkg (for $cmd)"
  if ! apt-cache show "$pkg" >/dev/null 2>&1 \
     || ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg") >/dev/null \
      || die "apt-get install $pkg failed (see above), so $cmd is missing: install $pkg and retry"
  fi
  command -v "$cmd" >/dev/null 2>&1 || die "$pkg is installed but $cmd is not on PATH: install $pkg and retry"
}
if [ "$WITH_REDIS" = 1 ] && ! command -v redis-server >/dev/null 2>&1; then
  apt_install redis-server redis-server
fi
if [ "$WITH_PROMTOOL" = 1 ]; then
  for cmd in promtool prometheus; do
    command -v "$cmd" >/dev/null 2>&1 || apt_install prometheus "$cmd"
  done
fi
# Headless Chromium and its WebDriver: tests/test_console_browser.py drives the console in a real
# browser (Selenium, pointed at these two, never downloading a driver of its own).
if [ "$WITH_BROWSER" = 1 ]; then
  command -v chromium >/dev/null 2>&1 || apt_install chromium chromium
  command -v chromedriver >/dev/null 2>&1 || apt_install chromium-driver chromedriver
fi
say "ready (venv: .venv, jars: .cache/jars)"
