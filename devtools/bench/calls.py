"""Cost of one PyFlink keyed-state or timer call from a thread-mode Python operator, as the job's
operator makes them (mini-cluster, parallelism 1, no Kafka): how much of an alert's time state
access can explain.

    python -m devtools.bench calls [--backend rocksdb|hashmap] [--keys 2000] [--calls 50]

For each of `keys` users the operator times `calls` calls of each kind (map put/get/remove of a
120-character value, put_all of `calls` entries, value update/read of 1.7 KB, get_current_key,
event-time timer register/delete, current_watermark, the job operator's switch to another user's
key) and reports the mean per call over the second half of the users (the first half warms the
JIT). One JSON line and a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

VALUE = "x" * 120  # about an incident's JSON
LEDGER = "y" * 1700  # about a user's ledger (state_bytes_per_user in the throughput bench)


def build_function(calls: int, keys: int):
    from pyflink.common import Types
    from pyflink.datastream import KeyedProcessFunction
    from pyflink.datastream.state import MapStateDescriptor, ValueStateDescriptor

    class TimeCalls(KeyedProcessFunction):
        def open(self, runtime_context):
            self.map = runtime_context.get_map_state(MapStateDescriptor("m", Types.STRING(), Types.STRING()))
            self.value = runtime_context.get_state(ValueStateDescriptor("v", Types.STRING()))
            self.totals: dict[str, list[float]] = {}
            self.seen = 0
            from jobs.operators import KeySwitch

            self.keys = KeySwitch.of(runtime_context)

        def timed(self, name: str, call, count: int) -> None:
            start = time.perf_counter()
            call()
            if self.seen >= keys // 2:
                total = self.totals.setdefault(name, [0.0, 0])
                total[0] += time.perf_counter() - start
                total[1] += count

        def process_element(self, value, ctx):
            names = [f"k{i}" for i in range(calls)]
            batch = {f"p{i}": VALUE for i in range(calls)}
            timers = ctx.timer_service()
            self.timed("map.put", lambda: [self.map.put(k, VALUE) for k in names], calls)
            self.timed(f"map.put_all({calls})", lambda: self.map.put_all(batch), 1)
            self.timed("map.get (present)", lambda: [self.map.get(k) for k in names], calls)
            self.timed("map.get (absent)", lambda: [self.map.get("z" + k) for k in names], calls)
            self.timed("map.remove", lambda: [self.map.remove(k) for k in names], calls)
            self.timed("value.update (1.7 KB)", lambda: [self.value.update(LEDGER) for _ in names], calls)
            self.timed("value.value (1.7 KB)", lambda: [self.value.value() for _ in names], calls)
            self.timed("get_current_key", lambda: [ctx.get_current_key() for _ in names], calls)
            self.timed("timer register", lambda: [timers.register_event_time_timer(10**12 + i) for i in range(calls)],
                       calls)
            self.timed("timer delete", lambda: [timers.delete_event_time_timer(10**12 + i) for i in range(calls)],
                       calls)
            self.timed("current_watermark", lambda: [timers.current_watermark() for _ in names], calls)
            self.timed("user key switch", lambda: [self.keys.switch(k) for k in names], calls)
            self.keys.switch(value)  # back to this record's own key
            self.map.clear()
            self.value.clear()
            self.seen += 1
            if self.seen == keys:
                yield json.dumps({name: round(t / n * 1e6, 2) for name, (t, n) in self.totals.items()})

    return TimeCalls()


def measure(backend: str, keys: int, calls: int) -> dict:
    from pyflink.common import Configuration, Types
    from pyflink.datastream import StreamExecutionEnvironment

    from connectors import kafka
    from jobs.flink_env import use_this_interpreter

    use_this_interpreter()
    conf = Configuration()
    conf.set_string("python.execution-mode", "thread")
    conf.set_string("python.executable", sys.executable)
    conf.set_string("state.backend.type", backend)
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.set_parallelism(1)
    env.add_jars(*kafka.jar_urls())  # the job's Java helpers: the operator's user key switch
    users = env.from_collection([f"user-{i:06d}" for i in range(keys)], Types.STRING())
    keyed = users.key_by(lambda user: user, Types.STRING())
    out = keyed.process(build_function(calls, keys), Types.STRING())
    with out.execute_and_collect("state call costs") as results:
        [line] = list(results)
    return {"benchmark": "state_calls", "backend": backend, "keys": keys, "calls_per_key": calls,
            "us_per_call": json.loads(line)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.bench calls", description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("rocksdb", "hashmap"), default="rocksdb")
    parser.add_argument("--keys", type=int, default=2000)
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args(argv)
    if args.keys < 2 or args.calls < 1:
        parser.error("--keys must be at least 2 and --calls at least 1")
    result = measure(args.backend, args.keys, args.calls)
    for name, us in result["us_per_call"].items():
        print(f"  {name:24s} {us:8.2f} us", file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
