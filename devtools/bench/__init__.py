"""Benchmarks of the penalty job (`python -m devtools.bench throughput|latency|all|core|calls`): the
whole job on the local stack, the pure decision path without a JVM, single PyFlink state calls."""
