#!/usr/bin/env bash
# Container entrypoint: render FLINK_CONF_DIR from flink-conf/config.yaml + $FLINK_PROPERTIES, then
# run one role. Roles: jobmanager | taskmanager | submit [JOB ARGS] | anything else is exec'd.
set -euo pipefail
cd /opt/penalty
FLINK_HOME=$(python -c 'import os, pyflink; print(os.path.dirname(pyflink.__file__))')
python -m devtools.cluster render --conf-dir "$FLINK_CONF_DIR" --lib-dir "$FLINK_LIB_DIR"

case "${1:-jobmanager}" in
  jobmanager) exec "$FLINK_HOME/bin/jobmanager.sh" start-foreground ;;
  taskmanager) exec "$FLINK_HOME/bin/taskmanager.sh" start-foreground ;;
  submit)
    shift
    # Resume from the newest savepoint when one exists (a restart after `flink stop`).
    latest=$(ls -1dt /var/lib/penalty/savepoints/savepoint-* 2>/dev/null | head -1 || true)
    restore=()
    [ -n "$latest" ] && restore=(--restore-from "$latest")
    exec "$FLINK_HOME/bin/flink" run -d -py jobs/penalty_job.py --cluster "${restore[@]}" "$@" ;;
  *) exec "$@" ;;
esac
