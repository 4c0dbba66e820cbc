"""The penalty job: `python -m jobs.penalty_job [flags]` runs it on the embedded mini-cluster;
`flink run -py jobs/penalty_job.py [flags]` submits it to a cluster.

Rules are validated before anything starts: a broken rule file fails fast with every problem
listed, and the job (and any savepoint it would restore from) is left untouched.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

if __package__ in (None, ""):  # `flink run -py jobs/penalty_job.py`: make the packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from connectors.signing import KEYS_ENV, SigningError, keys_from_env
from jobs import config as job_config
from rules.loader import RuleFileError, load_policy


def load_rules(path: str) -> tuple[bytes, str]:
    """Validate the rule file; return its bytes for the operators (they parse it again in open())."""
    load_policy(path)  # raises RuleFileError with every problem
    return Path(path).read_bytes(), path


def build(config: job_config.JobConfig, embedded: bool = True):
    from jobs.flink_env import create_env
    from jobs.pipeline import build_pipeline

    policy_bytes, policy_file = load_rules(config.rules_path)
    shadow = load_rules(config.shadow_rules_path) if config.shadow_rules_path else None
    env = create_env(config, embedded)
    build_pipeline(env, config, policy_bytes, policy_file, shadow)
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="penalty-job", description=__doc__.splitlines()[0])
    job_config.add_arguments(parser)
    parser.add_argument("--cluster", action="store_true", help="submitted with `flink run`: keep cluster settings")
    parser.add_argument("--savepoint-on-stop", metavar="DIR",
                        help="embedded run: on SIGTERM/Ctrl-C stop with a savepoint in DIR (its path is "
                             "printed as `savepoint: PATH`), to restart later with --restore-from PATH")
    args = parser.parse_args(argv)
    config = job_config.from_args(args)
    try:
        # Read again by the operator where it runs (the TaskManagers' environment); checked here
        # so that a malformed value fails the submit, not every restart of the job.
        if keys_from_env() is None:
            print(f"penalty job: {KEYS_ENV} is not set here: unless the TaskManagers have it, every moderator "
                  "decision goes to the DLQ as invalid_signature", file=sys.stderr)
        env = build(config, embedded=not args.cluster)
    except (RuleFileError, SigningError) as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.cluster:
        job = env.execute_async("penalty-job")  # `flink run -d`: submit and return
        print(f"penalty job {job.get_job_id()} submitted", flush=True)
        return 0
    return run_embedded(env, args.savepoint_on_stop)


def stop_with_savepoint(job_client, target_dir: str) -> str:
    """JobClient.stop_with_savepoint is broken in PyFlink 2.x (wrong Py4J signature): call the
    Java client directly. Returns the savepoint path."""
    from pyflink.java_gateway import get_gateway

    fmt = get_gateway().jvm.org.apache.flink.core.execution.SavepointFormatType.CANONICAL
    return job_client._j_job_client.stopWithSavepoint(False, target_dir, fmt).get()


def run_embedded(env, savepoint_dir: str | None) -> int:
    """Run on the mini-cluster until the job ends (bounded input) or a stop signal arrives."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    job = env.execute_async("penalty-job")
    print(f"penalty job {job.get_job_id()} running", flush=True)
    while not stop.wait(0.5):
        try:
            status = str(job.get_job_status().result())
        except Exception:  # noqa: BLE001 - the mini-cluster shuts down once a bounded job ends
            return 0
        if status in ("FINISHED", "CANCELED"):
            return 0
        if status == "FAILED":
            print("penalty job failed; see the Flink log", file=sys.stderr)
            return 1
    if savepoint_dir:
        path = stop_with_savepoint(job, Path(savepoint_dir).resolve().as_uri())
        print(f"savepoint: {path}", flush=True)
    else:
        job.cancel().result()
        print("penalty job cancelled", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
