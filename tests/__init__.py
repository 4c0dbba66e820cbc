"""The test suite: pure logic (no JVM), the local mini-cluster (`-m minicluster`) and the real local
stack of broker, Redis and standalone cluster (`-m stack`); `make test` runs all of it."""
