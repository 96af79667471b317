"""The PaddleRec CTR DNN (tests/multiproc/book/ctr_dnn.py, fluid 1.4 style): local training, then
2 pservers x 2 trainers started by hand with PaddleCloud's variables, checkpointing every pass
with save_persistables on trainer 0 and exporting an inference model."""
import importlib.util
import os
import socket
import subprocess

import numpy as np
import pytest

import fleetkit as fluid
from fleetkit.pserver import checkpoint
from test_book_chapters import BOOK, run_script, script_command  # noqa: E402

SCRIPT = BOOK / "ctr_dnn.py"
DENSE = ["fc_0.w_0", "fc_0.b_0", "fc_1.w_0", "fc_2.w_0", "fc_3.w_0", "fc_3.b_0"]


def _script_module():
    spec = importlib.util.spec_from_file_location("ctr_dnn_book", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _test_auc(ctr, persist_dir):
    """AUC on the script's test data of a fresh local net loaded from ``persist_dir``, and its predictions."""
    from sklearn.metrics import roc_auc_score
    main, start = fluid.Program(), fluid.Program()
    with fluid.program_guard(main, start):
        _, _, _, _, words, predict = ctr.ctr_dnn_model(10, 1000, use_py_reader=False)
    exe = fluid.Executor()
    scope = fluid.Scope()
    exe.run(start, scope=scope)
    fluid.io.load_persistables(exe, str(persist_dir), main, scope=scope)
    feeder = fluid.DataFeeder(words, fluid.CPUPlace(), program=main)
    samples = list(ctr.CriteoDataset(1000).test(None)())
    probs = exe.run(main, feed=feeder.feed(samples), fetch_list=[predict], scope=scope)[0][:, 1]
    labels = [s[-1][0] for s in samples]
    return roc_auc_score(labels, probs), probs, samples


def _infer(model_dir, samples):
    exe = fluid.Executor()
    with fluid.scope_guard(fluid.Scope()):
        program, feeds, fetches = fluid.io.load_inference_model(str(model_dir), exe)
        feeder = fluid.DataFeeder(feeds, fluid.CPUPlace(), program=program)
        return exe.run(program, feed=feeder.feed([s[:-1] for s in samples]), fetch_list=fetches)[0][:, 1]


def test_ctr_local(tmp_path):
    run_script("ctr_dnn.py", "--is_local", 1, "--model_output_dir", tmp_path / "out", cwd=tmp_path)
    ctr = _script_module()
    for p in (0, 1):
        files = set(os.listdir(tmp_path / "out" / f"pass-{p}"))
        assert {"SparseFeatFactors", "SparseFeatFactors_moment1_0", *DENSE} <= files
    auc, probs, samples = _test_auc(ctr, tmp_path / "out" / "pass-1")
    assert auc > 0.65
    np.testing.assert_allclose(_infer(tmp_path / "out" / "inference", samples), probs, rtol=1e-5, atol=1e-6)


def _free_port(hosts):
    for _ in range(50):
        s = socket.socket()
        s.bind((hosts[0], 0))
        port = s.getsockname()[1]
        try:
            with socket.socket() as t:
                t.bind((hosts[1], port))
            return port
        except OSError:
            continue
        finally:
            s.close()
    pytest.skip("no port free on both loopback addresses")


def _run_job(tmp_path, out, is_distributed, *extra):
    """2 pservers + 2 trainers of the script, by hand, as PaddleCloud starts them; every exit code."""
    ips = ["127.0.0.1", "127.0.0.2"]  # PaddleCloud: every pserver on its own host, one shared port
    port = _free_port(ips)
    common = {"PADDLE_PSERVERS": ",".join(ips), "PADDLE_PORT": str(port), "PADDLE_TRAINERS_NUM": "2",
              "PADDLE_IS_LOCAL": "0", "FLEETKIT_PS_NOTIFY_DIRS": str(out)}
    roles = [("PSERVER", ips[0], 0), ("PSERVER", ips[1], 0), ("TRAINER", ips[0], 0), ("TRAINER", ips[0], 1)]
    procs = []
    for role, ip, tid in roles:
        env = {**os.environ, **common, "TRAINING_ROLE": role, "POD_IP": ip, "PADDLE_TRAINER_ID": str(tid)}
        log = open(tmp_path / f"{out.name}-{role}{ip}{tid}.log", "w")
        cmd = script_command(SCRIPT.name, "--cloud_train", 1, "--model_output_dir", out,
                             "--is_distributed", is_distributed, *extra)
        procs.append((subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    try:
        # the pservers stop by themselves once both trainers' Executor.close() told them so
        codes = [p.wait(timeout=120) for p, _ in procs]
    finally:
        for p, log in procs:
            if p.poll() is None:
                p.kill()
            log.close()
    logs = {f.name: f.read_text()[-3000:] for f in tmp_path.glob(f"{out.name}-*.log")}
    assert codes == [0, 0, 0, 0], logs


def _inference_params(model_dir):
    scope = fluid.Scope()
    fluid.io.load_inference_model(str(model_dir), fluid.Executor(), scope=scope)
    return scope


@pytest.mark.parametrize("is_distributed", [0, 1], ids=["sliced_table", "distributed_table"])
def test_ctr_cluster_2x2_saves_every_pass_and_resumes(tmp_path, is_distributed):
    out = tmp_path / "out"
    _run_job(tmp_path, out, is_distributed)
    ctr = _script_module()
    table = [] if is_distributed else ["SparseFeatFactors"]  # a distributed table stays in the pservers' files
    saved = {}
    for p in (0, 1):
        d = out / f"pass-{p}"
        files = set(os.listdir(d))
        # parameters pulled from the pservers; the pservers' own state written by them on notify
        assert {*table, *DENSE, "__lookup_table__"} <= files, files
        assert sorted(os.listdir(d / "__lookup_table__")) == ["pserver_0.fkckpt", "pserver_1.fkckpt"]
        assert not any("moment" in f or "learning_rate" in f for f in files), files
        assert is_distributed == ("SparseFeatFactors" not in files)
        saved[p] = {n: (d / n).read_bytes() for n in DENSE + table}
    assert all(saved[0][n] != saved[1][n] for n in saved[0])  # pass 1 trained on
    if is_distributed:
        from sklearn.metrics import roc_auc_score

        scope = fluid.Scope()
        fluid.io.load_inference_model(str(out / "inference"), fluid.Executor(), scope=scope)
        table = scope.numpy("SparseFeatFactors")
        assert table.shape == (1000, 10)
        for i in (0, 1):  # the model's table (gathered whole) holds exactly the rows each pserver trained
            shard = checkpoint.load(str(out / "pass-1" / "__lookup_table__" / f"pserver_{i}.fkckpt"))
            ids = shard["SparseFeatFactors@ids"]
            assert len(ids) > 100 and np.all(ids % 2 == i)
            np.testing.assert_array_equal(table[ids], shard["SparseFeatFactors"])
        samples = list(ctr.CriteoDataset(1000).test(None)())
        probs = _infer(out / "inference", samples)
        assert roc_auc_score([s[-1][0] for s in samples], probs) > 0.6
    else:
        auc, probs, samples = _test_auc(ctr, out / "pass-1")
        assert auc > 0.65
        # the inference model needs no pserver, and holds the pass-1 parameters
        np.testing.assert_allclose(_infer(out / "inference", samples), probs, rtol=1e-5, atol=1e-6)

    # a new job whose pservers resume from pass-1 (and train 0 passes): its trainers start from pass 1
    out2 = tmp_path / "resumed"
    _run_job(tmp_path, out2, is_distributed, "--num_passes", "0", "--pserver_init_dir", str(out / "pass-1"))
    before, after = _inference_params(out / "inference"), _inference_params(out2 / "inference")
    for name in DENSE:
        np.testing.assert_array_equal(after.numpy(name), before.numpy(name))
    if is_distributed:  # the table rows the first job trained come back from the pservers' own files
        for i in (0, 1):
            shard = checkpoint.load(str(out / "pass-1" / "__lookup_table__" / f"pserver_{i}.fkckpt"))
            ids = shard["SparseFeatFactors@ids"]
            np.testing.assert_array_equal(after.numpy("SparseFeatFactors")[ids], shard["SparseFeatFactors"])
    else:
        np.testing.assert_array_equal(after.numpy("SparseFeatFactors"), before.numpy("SparseFeatFactors"))
