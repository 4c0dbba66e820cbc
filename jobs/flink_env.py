"""Build a StreamExecutionEnvironment from flink-conf/config.yaml plus per-run overrides."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml

from connectors import kafka
from jobs.config import REPO_ROOT, JobConfig

FLINK_CONF = REPO_ROOT / "flink-conf" / "config.yaml"
# The at-least-once delivery's checkpoint interval unless the run sets one (see settings_for).
ALO_CHECKPOINT_INTERVAL = "5s"
ALO_BUFFER_TIMEOUT = "10ms"  # and its network buffer timeout (see settings_for)
# Cluster-only settings that make no sense inside the embedded mini-cluster.
CLUSTER_ONLY = ("metrics.reporters", "metrics.reporter.", "jobmanager.", "taskmanager.memory.", "rest.", "env.")


def flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        elif isinstance(value, bool):
            out[name] = "true" if value else "false"
        else:
            out[name] = str(value)
    return out


def load_flink_conf(path: Path = FLINK_CONF) -> dict[str, str]:
    with open(path, encoding="utf-8") as fh:
        return flatten(yaml.safe_load(fh) or {})


def settings_for(config: JobConfig, embedded: bool) -> dict[str, str]:
    """Embedded: flink-conf/config.yaml is the job's whole configuration. On a cluster the cluster's
    own configuration (the same file, deployed as its FLINK_CONF_DIR) applies, and the job sets only
    its parallelism and the per-run overrides, so an operator's cluster settings are not shadowed."""
    settings: dict[str, str] = {}
    if embedded:
        settings = {k: v for k, v in load_flink_conf().items() if not k.startswith(CLUSTER_ONLY)}
        settings["execution.checkpointing.dir"] = (REPO_ROOT / ".run" / "checkpoints").as_uri()
        settings["execution.checkpointing.savepoint-dir"] = (REPO_ROOT / ".run" / "savepoints").as_uri()
        # Thread mode runs Python inside the JVM: it must be this interpreter (the venv's).
        settings["python.executable"] = sys.executable
        settings["python.client.executable"] = sys.executable
        # The mini-cluster is one TaskManager (one process, one GIL whatever the slots): give it a
        # slot per subtask. Clusters keep one slot per TaskManager (flink-conf).
        settings["taskmanager.numberOfTaskSlots"] = str(config.parallelism)
    settings["parallelism.default"] = str(config.parallelism)
    settings["pipeline.max-parallelism"] = str(config.max_parallelism)
    if not config.exactly_once:
        # At-least-once output does not need aligned barriers. With them, a subtask that got a
        # checkpoint barrier on one input stops reading it until the barrier arrives on every
        # other input: at 200 alerts/s that made 0.5-1 s stalls every few seconds (p99 0.67 s;
        # without alignment 0.32 s, docs/operations.md, Performance). Unaligned at-least-once
        # snapshots may hold the effect of a record the source replays after a restore: the
        # replay is then dropped as a duplicate, and its outputs were already flushed by the
        # same checkpoint (the sink is chained behind the operator), so nothing is lost.
        settings["execution.checkpointing.mode"] = "AT_LEAST_ONCE"
        # Output is visible as soon as the producer sends it, so the interval does not bound
        # latency here; it bounds what a restore replays. Each checkpoint stops the task thread
        # for RocksDB's synchronous snapshot (~70 ms here): every 250 ms that was in most
        # records' way (p95 0.26-0.37 s), every 5 s it is not (p95 0.15-0.16 s).
        settings["execution.checkpointing.interval"] = ALO_CHECKPOINT_INTERVAL
        # Records between tasks travel in network buffers, sent when full or after this long. The
        # default 100 ms, paid at each of the job's exchanges (into the guard, into the decisions),
        # was most of at-least-once latency at steady rates: 2,000 alerts/s, p50 0.46 -> 0.23 s,
        # p99 0.82 -> 0.45 s at 10 ms. Exactly-once waits for the checkpoint, whose barriers flush
        # the buffers anyway, and keeps the default.
        settings["execution.buffer-timeout.interval"] = ALO_BUFFER_TIMEOUT
    settings.update(dict(config.flink_conf))
    return settings


def use_this_interpreter() -> None:
    """Thread mode embeds Python in the JVM (pemja), which finds its packages through the
    environment the JVM inherits: make that this venv even when it was not activated. Must run
    before the JVM starts (the first pyflink call that needs the gateway)."""
    venv = Path(sys.executable).parent
    if sys.prefix != sys.base_prefix:
        os.environ["VIRTUAL_ENV"] = sys.prefix
        path = os.environ.get("PATH", "")
        if not path.startswith(str(venv) + os.pathsep):
            os.environ["PATH"] = f"{venv}{os.pathsep}{path}"


def create_env(config: JobConfig, embedded: bool = True):
    from pyflink.common import Configuration
    from pyflink.datastream import StreamExecutionEnvironment

    use_this_interpreter()
    conf = Configuration()
    for key, value in settings_for(config, embedded).items():
        conf.set_string(key, value)
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.set_parallelism(config.parallelism)
    env.set_max_parallelism(config.max_parallelism)
    env.add_jars(*kafka.jar_urls())
    return env
