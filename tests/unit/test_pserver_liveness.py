"""Transport-free liveness and restart bookkeeping: TrainerLiveness (heartbeat timeout,
dropped streams, COMPLETE), SyncRounds.lose, RestartWatch (what a new incarnation means)."""
from __future__ import annotations

import numpy as np
import pytest

from fleetkit.errors import BarrierTimeoutError, PServerRestartedError
from fleetkit.pserver.liveness import FRESH, RESEEDED, TrainerLiveness
from fleetkit.pserver.restarts import OK, REFETCH, RestartWatch
from fleetkit.pserver.rounds import SyncRounds


def test_a_silent_trainer_is_lost_after_the_timeout_a_completed_one_never():
    now, lost = [0.0], []
    alive = TrainerLiveness(10.0, lambda t, why: lost.append((t, why)), 2, clock=lambda: now[0])
    s0, s1 = alive.opened(0), alive.opened(1)
    now[0] = 9.0
    alive.beat(0)
    alive.complete(1)
    alive.closed(1, s1, "dropped")          # closing after COMPLETE is no loss
    now[0] = 15.0
    alive.check()
    assert lost == []
    now[0] = 19.5
    alive.check()
    assert lost == [(0, "no heartbeat for 10 s")] and alive.lost == {0: "no heartbeat for 10 s"}
    alive.check()
    alive.closed(0, s0, "dropped")          # reported once
    assert len(lost) == 1


def test_only_the_newest_stream_of_a_trainer_counts():
    lost = []
    alive = TrainerLiveness(10.0, lambda t, why: lost.append(t))
    old = alive.opened(2)
    new = alive.opened(2)                   # a restarted trainer reconnected first
    alive.closed(2, old, "dropped")
    assert lost == []
    alive.closed(2, new, "dropped")
    assert lost == [2]


def test_a_lost_trainer_fails_the_sync_round_and_every_later_call_naming_it():
    applied = []
    r = SyncRounds(3, 300.0, applied.append, "ps:1")
    r.add_grad(0, "g", np.ones(2))
    r.batch_barrier(0)
    r.complete(2)
    r.lose(1, "its connection dropped")
    for call in (lambda: r.wait_applied(0), lambda: r.add_grad(0, "g", np.ones(2)), lambda: r.batch_barrier(0)):
        with pytest.raises(BarrierTimeoutError, match=r"ps:1: sync training cannot go on: trainer\(s\) 1 lost") as e:
            call()
        assert e.value.missing_trainers == (1,)
    assert applied == []


def _watch(trainer=0, reseed=False, polls=()):
    seeded, polls = [], list(polls)
    w = RestartWatch(trainer, reseed, lambda ep, values: seeded.append((ep, sorted(values))),
                     lambda ep: polls.pop(0), wait_s=5)
    return w, seeded


def test_restart_watch_fresh_restart_without_reseed_raises_every_time():
    w, _ = _watch()
    assert w.observe("ps:1", (5, 0, FRESH)) == OK          # first contact: a fresh start is normal
    assert w.observe("ps:1", (5, 7, FRESH)) == OK
    for _ in range(2):
        with pytest.raises(PServerRestartedError, match=r"pserver ps:1 restarted without a checkpoint \(incarnation "
                                                        r"5 -> 9\): the parameters it held were lost"):
            w.observe("ps:1", (9, 0, FRESH))


def test_restart_watch_checkpoint_rollback_and_reseed():
    w, _ = _watch()
    w.observe("ps:1", (5, 10, FRESH))
    assert w.observe("ps:1", (6, 4, 4)) == OK and w.events[-1]["last_seen"] == 10
    zero, seeded = _watch(reseed=True)
    zero.observe("ps:1", (5, 3, FRESH))
    zero.pulled("ps:1", "w", np.ones(2))
    assert zero.observe("ps:1", (6, 0, FRESH)) == REFETCH and seeded == [("ps:1", ["w"])]
    assert zero.observe("ps:1", (6, 0, RESEEDED)) == OK
    other, _ = _watch(trainer=1, reseed=True, polls=[(6, 0, FRESH), (6, 0, RESEEDED)])
    other.observe("ps:1", (5, 3, FRESH))
    assert other.observe("ps:1", (6, 0, FRESH)) == REFETCH   # waited for trainer 0's re-seed


def test_a_trainer_never_heard_from_is_lost_after_the_first_contact_timeout():
    now, lost = [0.0], []
    alive = TrainerLiveness(10.0, lambda t, why: lost.append((t, why)), 3, first_contact_s=600, clock=lambda: now[0])
    alive.start()
    alive.opened(0)
    alive.complete(2)
    now[0] = 5.0
    alive.beat(0)
    now[0] = 599.0
    alive.check()
    assert [t for t, _ in lost] == [0]       # trainer 0: silent for 594 s
    now[0] = 601.0
    alive.check()
    assert lost[1] == (1, "never contacted this pserver within 600 s of its start") and len(lost) == 2


def test_lost_for_counts_from_the_loss():
    now = [0.0]
    alive = TrainerLiveness(10.0, lambda t, why: None, 2, clock=lambda: now[0])
    s = alive.opened(1)
    now[0] = 3.0
    alive.closed(1, s, "dropped")
    now[0] = 20.0
    assert alive.lost_for(30.0) == set() and alive.lost_for(15.0) == {1}
    alive.beat(1)                            # it came back
    assert alive.lost_for(0.0) == set()


def test_grpc_reply_trailer_follows_every_update_and_restart():
    """The trailer is formatted again only when (incarnation, updates, resumed) changed,
    and then always: a client reads the update count from it."""
    from fleetkit.pserver.handler import ServerHandler
    from fleetkit.pserver.liveness import parse_incarnation
    from fleetkit.pserver.server import ParameterServer, ServerOptions

    class Handler(ServerHandler):
        def apply(self, grads):
            pass

        def get(self, name):
            return np.zeros(1)

        def state(self):
            return {}

        def load_state(self, state):
            pass

    server = ParameterServer("127.0.0.1:0", Handler(), 1, sync_mode=False, options=ServerOptions(bulk=False))

    def trailer():
        ((key, value),) = server._incarnation_metadata()
        return parse_incarnation(value)
    first = trailer()
    assert first == server.incarnation.info() and trailer() == first
    assert server._incarnation_metadata() is server._incarnation_metadata()   # nothing changed: reused
    server._apply({"w@GRAD": np.ones(1)}, 0)
    assert trailer() == (first[0], first[1] + 1, first[2])
    server.incarnation.resumed = RESEEDED
    assert trailer()[2] == RESEEDED
