"""jobs/bundle_writes.py: a bundle's writes reach Flink once per user, last value wins, reads see
what the bundle wrote, and the user's timer moves at most once (delete the one from before the
bundle, register the one wanted at its end)."""

from __future__ import annotations

from jobs.bundle_writes import BundleWrites


class FakeBackend:
    """Keyed map state + timer service of a fake JVM; records every call."""

    def __init__(self):
        self.key, self.data, self.timers, self.calls = None, {}, set(), []

    def switch(self, user_id):
        if user_id != self.key:
            self.calls.append(("switch", user_id))
        self.key = user_id

    def get(self, key):
        self.calls.append(("get", self.key, key))
        return self.data.get(self.key, {}).get(key)

    def put_all(self, entries):
        self.calls.append(("put_all", self.key, dict(entries)))
        self.data.setdefault(self.key, {}).update(entries)

    def remove(self, key):
        self.calls.append(("remove", self.key, key))
        self.data.get(self.key, {}).pop(key, None)

    def clear(self):
        self.calls.append(("clear", self.key))
        self.data.pop(self.key, None)

    def register_event_time_timer(self, time_ms):
        self.calls.append(("register", self.key, time_ms))
        self.timers.add((self.key, time_ms))

    def delete_event_time_timer(self, time_ms):
        self.calls.append(("delete", self.key, time_ms))
        self.timers.discard((self.key, time_ms))


def test_each_user_is_written_once_per_bundle_with_the_last_values():
    backend = FakeBackend()
    writes = BundleWrites(backend, backend.switch)
    for user, value in (("a", "1"), ("b", "1"), ("a", "2"), ("a", "3")):
        writes.user = user
        writes.put_all({"L": value, f"s{value}": "x"})
    assert backend.calls == []  # nothing reached the JVM yet
    writes.flush(backend)
    put_alls = [c for c in backend.calls if c[0] == "put_all"]
    assert put_alls == [("put_all", "a", {"L": "3", "s1": "x", "s2": "x", "s3": "x"}),
                        ("put_all", "b", {"L": "1", "s1": "x"})]
    assert writes.pending == {}


def test_reads_see_the_bundles_writes_removes_and_clears():
    backend = FakeBackend()
    backend.data = {"a": {"L": "old", "s1": "x"}}
    writes = BundleWrites(backend, backend.switch)
    writes.user = "a"
    assert writes.get("L") == "old"
    writes.put_all({"L": "new"})
    writes.remove("s1")
    assert writes.get("L") == "new" and writes.get("s1") is None
    writes.clear()
    assert writes.get("L") is None and writes.get("s1") is None
    writes.put_all({"L": "again"})
    writes.flush(backend)
    assert backend.data == {"a": {"L": "again"}}
    assert [c[0] for c in backend.calls if c[0] != "get"] == ["switch", "clear", "put_all"]


def test_a_timer_moves_once_from_its_place_before_the_bundle_to_the_last_one_wanted():
    backend = FakeBackend()
    backend.timers = {("a", 100)}
    writes = BundleWrites(backend, backend.switch)
    writes.user = "a"
    writes.move_timer(100, 200)
    writes.move_timer(200, 300)
    writes.user = "b"
    writes.move_timer(None, 50)
    writes.move_timer(50, None)  # wanted and dropped again within the bundle: no call at all
    writes.flush(backend)
    assert backend.timers == {("a", 300)}
    assert [c for c in backend.calls if c[0] in ("register", "delete")] == [("delete", "a", 100), ("register", "a", 300)]
