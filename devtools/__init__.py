"""Development tooling around the penalty job: the local broker + Redis, the standalone Flink cluster
helper, the demo alert generator, `make run`'s driver and the benchmarks. Nothing here runs inside the job."""
