"""The job's flags -> its configuration and Flink settings (no JVM)."""

from __future__ import annotations

import argparse

import pytest

from jobs import config as job_config
from jobs.flink_env import settings_for


def parse(*argv: str) -> job_config.JobConfig:
    parser = argparse.ArgumentParser()
    job_config.add_arguments(parser)
    return job_config.from_args(parser.parse_args(argv))


@pytest.mark.parametrize("embedded", [True, False])
def test_exactly_once_keeps_aligned_checkpoints_and_at_least_once_drops_alignment(embedded):
    exactly_once = settings_for(parse(), embedded)
    at_least_once = settings_for(parse("--delivery", "at_least_once"), embedded)
    # Embedded runs take flink-conf's exactly-once mode; a cluster keeps its own configuration.
    assert exactly_once.get("execution.checkpointing.mode", "EXACTLY_ONCE") == "EXACTLY_ONCE"
    assert ("execution.checkpointing.mode" in exactly_once) == embedded
    assert at_least_once["execution.checkpointing.mode"] == "AT_LEAST_ONCE"
    assert at_least_once["execution.checkpointing.interval"] == "5s"
    assert at_least_once["execution.buffer-timeout.interval"] == "10ms"
    assert "execution.buffer-timeout.interval" not in exactly_once


def test_explicit_settings_win_over_the_delivery_defaults():
    config = parse("--delivery", "at_least_once", "--conf", "execution.checkpointing.mode=EXACTLY_ONCE",
                   "--checkpoint-interval-ms", "250")
    settings = settings_for(config, embedded=True)
    assert settings["execution.checkpointing.mode"] == "EXACTLY_ONCE"
    assert settings["execution.checkpointing.interval"] == "250ms"


def test_kafka_properties_go_to_source_and_sink_and_the_specific_flags_win():
    config = parse("--kafka-property", "security.protocol=SASL_SSL", "--kafka-property", "client.rack=a",
                   "--source-property", "max.poll.records=2000", "--sink-property", "linger.ms=20",
                   "--sink-property", "client.rack=b")
    assert dict(config.source_properties) == {"security.protocol": "SASL_SSL", "client.rack": "a",
                                              "max.poll.records": "2000"}
    assert dict(config.sink_properties) == {"security.protocol": "SASL_SSL", "client.rack": "b", "linger.ms": "20"}


@pytest.mark.parametrize("flag", ["--conf", "--kafka-property", "--source-property", "--sink-property"])
@pytest.mark.parametrize("bad", ["no-equals-sign", "=value"])
def test_a_malformed_key_value_flag_is_refused_with_its_name(flag, bad):
    with pytest.raises(SystemExit, match=f"{flag} expects KEY=VALUE, got '{bad}'"):
        parse(flag, bad)


def test_the_bench_reports_the_interval_the_job_runs_with():
    from devtools.bench.job_under_test import checkpoint_interval_ms

    def args(delivery="exactly_once", interval=None, conf=()):
        return argparse.Namespace(delivery=delivery, checkpoint_interval_ms=interval, conf=list(conf),
                                  source_property=[], sink_property=[])

    assert checkpoint_interval_ms(args()) == 250  # flink-conf/config.yaml
    assert checkpoint_interval_ms(args("at_least_once")) == 5000
    assert checkpoint_interval_ms(args("at_least_once", interval=1000)) == 1000
    assert checkpoint_interval_ms(args(conf=["execution.checkpointing.interval=2 min"])) == 120_000


@pytest.mark.parametrize(("given", "expected"), [
    ("file:/var/lib/penalty/savepoints/savepoint-1a2b", "file:/var/lib/penalty/savepoints/savepoint-1a2b"),
    ("s3://bucket/savepoints/savepoint-1a2b", "s3://bucket/savepoints/savepoint-1a2b"),
    ("/var/lib/penalty/checkpoints/job/chk-7", "file:///var/lib/penalty/checkpoints/job/chk-7"),
])
def test_restore_from_takes_what_the_job_printed_a_uri_or_a_path(given, expected):
    conf = dict(parse("--restore-from", given).flink_conf)
    assert conf["execution.state-recovery.path"] == expected


def test_a_relative_restore_path_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    conf = dict(parse("--restore-from", "savepoints/savepoint-1").flink_conf)
    assert conf["execution.state-recovery.path"] == (tmp_path / "savepoints" / "savepoint-1").as_uri()


def test_the_source_pauses_after_an_empty_fetch_by_default_and_the_flag_sets_or_disables_it():
    assert parse().fetch_backoff_ms == 5
    assert parse("--fetch-backoff-ms", "0").fetch_backoff_ms == 0
    assert parse("--fetch-backoff-ms", "20").fetch_backoff_ms == 20
    with pytest.raises(SystemExit, match="--fetch-backoff-ms 0 or more"):
        parse("--fetch-backoff-ms", "-1")


def test_bundles_flush_by_delivery_unless_the_flag_says_how_long():
    # Exactly-once waits for the checkpoint anyway; at-least-once shows the flush in its latency.
    assert parse().flush_ms == 100
    assert parse("--delivery", "at_least_once").flush_ms == 20
    assert parse("--delivery", "at_least_once", "--bundle-ms", "100").flush_ms == 100
    assert parse("--bundle-ms", "0").flush_ms == 0
    with pytest.raises(SystemExit, match="--bundle-ms and --fetch-backoff-ms 0 or more"):
        parse("--bundle-ms", "-1")
