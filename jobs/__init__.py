"""The penalty job as it runs inside Flink: configuration, environment, wiring, operators and their
state. Nothing here imports devtools/ (the local stack, cluster helper, generator and benchmarks)."""
