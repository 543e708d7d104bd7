"""Workers: liveness of recorded processes, re-queueing (nas.study.workers)."""

from __future__ import annotations

from nas.study import workers
from tests.conftest import dead_pid


def test_worker_liveness():
    me = workers.worker_id()
    assert workers.worker_alive(me) is True
    assert workers.worker_alive({**me, "pid": dead_pid()}) is False
    assert workers.worker_alive({**me, "host": "elsewhere"}) is None
    assert workers.worker_alive({**me, "ns": "pid:[1]"}) is None  # another container
