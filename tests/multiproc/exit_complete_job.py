"""A fluid 1.4 style sync job for test_exit_complete.py, one process per role:

    python exit_complete_job.py pserver ENDPOINT
    python exit_complete_job.py trainer ENDPOINT clean|raise|thread-raise|sigkill

The trainer trains a few steps and never calls ``exe.close()`` (as most 1.4 scripts),
then ends as its mode says."""
import os
import signal
import sys
import threading

import numpy as np

import fleetkit as fk
from fleetkit import layers


def build(endpoint: str) -> tuple:
    x = layers.data("x", shape=[8])
    y = layers.data("y", shape=[1])
    loss = layers.mean(layers.square_error_cost(layers.fc(x, 1), y))
    fk.optimizer.SGD(0.05).minimize(loss)
    t = fk.DistributeTranspiler()
    t.transpile(0, pservers=endpoint, trainers=1)
    return t, loss


def pserver(endpoint: str) -> None:
    t, _ = build(endpoint)
    exe = fk.Executor(fk.CPUPlace())
    prog = t.get_pserver_program(endpoint)
    exe.run(t.get_startup_program(endpoint, prog))
    exe.run(prog)        # serves until the trainer sent COMPLETE (or was lost: raises)
    print("pserver: every trainer completed")


def trainer(endpoint: str, mode: str) -> None:
    t, loss = build(endpoint)
    exe = fk.Executor(fk.CPUPlace())
    exe.run(fk.default_startup_program())
    prog = t.get_trainer_program()
    rng = np.random.default_rng(0)
    for _ in range(3):
        xb = rng.normal(size=(4, 8)).astype("float32")
        exe.run(prog, feed={"x": xb, "y": xb[:, :1]}, fetch_list=[loss])
    print("trainer: trained", flush=True)
    if mode == "raise":
        raise RuntimeError("the trainer script failed after training")
    if mode == "thread-raise":
        worker = threading.Thread(target=lambda: 1 / 0, name="reader")
        worker.start()
        worker.join()
    if mode == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    role, endpoint, *rest = sys.argv[1:]
    pserver(endpoint) if role == "pserver" else trainer(endpoint, *rest)
