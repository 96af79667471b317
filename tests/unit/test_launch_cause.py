"""Which failure the launcher reports (fleet/launch_report.pick_cause), on plain Outcome records."""
from fleetkit.fleet import launch_report as report


def _outcome(name, lines, code=None, stopped=False):
    o = report.Outcome(name, "TRAINER", "127.0.0.1:1", 1, None)
    for line in lines:
        o.see(line)
    o.code, o.stopped = code, stopped
    if code is not None:
        o.ended = o.started + 1.0
    return o


PEER = ["Traceback (most recent call last):", "fleetkit.errors.PeerFailedError: rank 1 closed its backend"]
OWN = ["Traceback (most recent call last):", "ValueError: rank one read a corrupt shard"]


def test_an_own_error_wins_over_an_earlier_peer_report():
    peer, crash = _outcome("worker.0", PEER, code=1), _outcome("worker.1", OWN, code=1)
    assert report.pick_cause([peer, crash]) is crash


def test_a_raising_process_stopped_in_its_teardown_is_the_cause_not_the_peer_that_saw_it():
    peer = _outcome("worker.0", PEER, code=1)
    crash = _outcome("worker.1", OWN, code=-15, stopped=True)
    assert report.pick_cause([peer, crash]) is crash


def test_a_stopped_process_without_an_error_is_never_the_cause():
    peer = _outcome("worker.0", PEER, code=1)
    quiet = _outcome("worker.1", ["step 10"], code=-15, stopped=True)
    assert report.pick_cause([peer, quiet]) is peer
    assert report.pick_cause([quiet]) is None


def test_a_stopped_process_does_not_displace_a_real_failure():
    crash = _outcome("worker.1", OWN, code=1)
    logged = _outcome("pserver.0", ["Traceback (most recent call last):", "OSError: bulk connection failed"],
                      code=-15, stopped=True)
    logged.traceback_at = crash.traceback_at - 10      # printed earlier, but it kept running
    assert report.pick_cause([logged, crash]) is crash
