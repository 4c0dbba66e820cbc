"""The penalty job: `python -m jobs.penalty_job [flags]` runs it on the embedded mini-cluster;
`flink run -py jobs/penalty_job.py [flags]` submits it to a cluster.

Rules are validated before anything starts: a broken rule file fails fast with every problem
listed, and the job (and any savepoint it would restore from) is left untouched.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # `flink run -py jobs/penalty_job.py`: make the packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jobs import config as job_config  # noqa: E402
from rules.loader import RuleFileError, load_policy  # noqa: E402


def load_rules(path: str) -> tuple[bytes, str]:
    """Validate the rule file; return its bytes for the operators (they parse it again in open())."""
    load_policy(path)  # raises RuleFileError with every problem
    return Path(path).read_bytes(), path


def build(config: job_config.JobConfig, embedded: bool = True):
    from jobs.flink_env import create_env
    from jobs.pipeline import build_pipeline

    policy_bytes, policy_file = load_rules(config.rules_path)
    env = create_env(config, embedded)
    build_pipeline(env, config, policy_bytes, policy_file)
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="penalty-job", description=__doc__.splitlines()[0])
    job_config.add_arguments(parser)
    parser.add_argument("--cluster", action="store_true", help="submitted with `flink run`: keep cluster settings")
    args = parser.parse_args(argv)
    config = job_config.from_args(args)
    try:
        env = build(config, embedded=not args.cluster)
    except RuleFileError as exc:
        print(exc, file=sys.stderr)
        return 2
    env.execute("penalty-job")
    return 0


if __name__ == "__main__":
    sys.exit(main())
