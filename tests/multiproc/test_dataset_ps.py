"""train_from_dataset on a parameter-server trainer program (fleetkit.demo's CTR model), in real
pserver and trainer processes: the program only has more ops (send/recv), the dataset path
is the same.  Each trainer gets 2 files, so thread=2 really runs 2 Hogwild readers.
Only learning is checked (test AUC); what one sync step means with several threads per
trainer is not specified here."""
from __future__ import annotations

import pytest

from fleetkit.demo import ctr_data, ctr_model
from fleetkit.testing import free_ports, run_workers

FILES, LINES, TEST_N = 4, 700, 3000




def _ctr():
    return ctr_data, ctr_model


def _job(rank, world, eps, files, sync, threads):
    import fleetkit as fk
    from fleetkit import fleet
    from fleetkit.fleet import Role, UserDefinedRoleMaker
    ctr_data, ctr_model = _ctr()
    trainers = world - 1
    rm = (UserDefinedRoleMaker(current_id=0, role=Role.SERVER, worker_num=trainers, server_endpoints=eps)
          if rank == 0 else
          UserDefinedRoleMaker(current_id=rank - 1, role=Role.WORKER, worker_num=trainers, server_endpoints=eps))
    fleet.init(rm)
    data = ctr_data.CTRData(ctr_data.CTRConfig())
    strategy = fleet.DistributeTranspilerConfig(sync_mode=sync)
    model = ctr_model.build(data.cfg, make_optimizer=lambda: fk.optimizer.Adagrad(0.05),
                            wrap_optimizer=lambda o: fleet.distributed_optimizer(o, strategy))
    if fleet.is_server():
        fleet.init_server()
        fleet.run_server()
        return None
    exe = fk.Executor()
    fleet.init_worker()
    exe.run(fleet.startup_program)
    ds = fk.DatasetFactory().create_dataset("QueueDataset")
    ds.set_use_var(model.feeds)
    ds.set_filelist(fleet.split_files(files))
    ds.set_batch_size(32)
    stats = exe.train_from_dataset(fleet.main_program, ds, thread=threads, fetch_list=[model.loss],
                                   print_period=10**9)
    test = fleet.current()._t().get_trainer_test_program(model.test_program)
    ex = data.examples(TEST_N, 77)
    (prob,) = exe.run(test, feed=data.feed(ex), fetch_list=[model.predict])
    auc = ctr_data.auc(ex["label"], prob[:, 1])
    fleet.stop_worker()
    return {"examples": stats.examples, "auc": auc}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    ctr_data, _ = _ctr()
    data = ctr_data.CTRData(ctr_data.CTRConfig())
    out = []
    for f in range(FILES):
        path = str(tmp_path_factory.mktemp("ps") / f"part-{f}")
        data.write_multislot(path, LINES, seed=f)
        out.append(path)
    return out


@pytest.mark.parametrize("sync,threads", [(False, 2), (True, 2)])
def test_train_from_dataset_on_ps_trainer_program(files, sync, threads):
    eps = [f"127.0.0.1:{p}" for p in free_ports(1)]
    res = run_workers(_job, 3, (eps, files, sync, threads), timeout=90, env={"OMP_NUM_THREADS": "1"})
    trainers = res[1:]
    assert sum(r["examples"] for r in trainers) == FILES * LINES
    assert all(r["auc"] > 0.7 for r in trainers), [r["auc"] for r in trainers]  # measured 0.76
