"""What every process of ``fleetkit demo`` runs (started by ``fleetkit launch``).

    fleetkit launch --server_num 2 --worker_num 2 -- python -m fleetkit.demo.job --out DIR
    fleetkit launch --worker_num 2 -- python -m fleetkit.demo.job --out DIR --mode collective [--dgc]

Parameter-server mode: the wide&deep model with ``is_distributed`` tables (the
embeddings live on the pservers), async updates.  Collective mode: the same
model data-parallel (all-reduce; ``--dgc`` for Deep Gradient Compression).  Each
trainer reads its share of the click log through the ``DataGenerator`` pipe
command into an ``InMemoryDataset``, shuffles it globally across the trainers,
and runs ``train_from_dataset`` once per epoch, reporting its metrics to the
launcher.  Trainer 0 then scores the held-out log, exports an inference model
(pulling the tables from the pservers) and writes ``result.json``.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from typing import Any

import numpy as np

import fleetkit as fk
from fleetkit import fleet

from .. import env as envmod
from ..fleet.launch_report import report_metrics
from . import ctr_model
from .ctr_data import CTRConfig, auc
from .reader import parse_click_line

__all__ = ["list_url", "main", "read_click_log", "s3_options"]

#: the model's sizes (small enough for 2 cores, skewed ids like real click logs)
DATA = CTRConfig(num_slots=3, vocab=10_000, max_len=4, dense_dim=4)


def read_click_log(path: str) -> tuple[dict[str, Any], np.ndarray]:
    """A raw click-log file as one feed dict (every line) and its labels."""
    with open(path) as f:
        return _feed_of([parse_click_line(line) for line in f if line.strip()])


def _feed_of(samples: list[list[tuple[str, list]]]) -> tuple[dict[str, Any], np.ndarray]:
    feed: dict[str, Any] = {}
    for s in range(len(samples[0]) - 2):
        ids = [x[s][1] for x in samples]
        feed[f"slot{s}"] = (np.concatenate(ids).astype(np.int64).reshape(-1, 1), [[len(i) for i in ids]])
    feed["dense"] = np.array([x[-2][1] for x in samples], dtype=np.float32)
    labels = np.array([x[-1][1] for x in samples], dtype=np.int64)
    feed["label"] = labels
    return feed, labels


def s3_options(endpoint: str | None) -> dict[str, Any]:
    """fsspec options for ``--s3_endpoint`` (key and secret: s3fs reads AWS_ACCESS_KEY_ID /
    AWS_SECRET_ACCESS_KEY itself)."""
    return {"client_kwargs": {"endpoint_url": endpoint, "region_name": envmod.aws_region()}} \
        if endpoint else {}


def list_url(url: str, options: dict[str, Any]) -> list[str]:
    """The ``part-*`` objects under ``url`` (e.g. ``s3://bucket/demo/train``), sorted, as URLs."""
    import fsspec
    fs, path = fsspec.core.url_to_fs(url, **options)
    scheme = url.split("://", 1)[0]
    found = sorted(fs.glob(path.rstrip("/") + "/part-*"))
    if not found:
        raise FileNotFoundError(f"no part-* files under {url}")
    return [f"{scheme}://{p}" for p in found]


def _build(args: argparse.Namespace) -> ctr_model.CTRModel:
    if args.mode == "ps":
        strategy = fleet.DistributeTranspilerConfig(sync_mode=False)
        return ctr_model.build(DATA, is_distributed=True, wide=True, with_auc=True,
                               make_optimizer=lambda: fk.optimizer.Adagrad(args.lr),
                               wrap_optimizer=lambda o: fleet.distributed_optimizer(o, strategy))
    from ..fleet import DistributedStrategy
    if args.dgc:
        # dense warm-up steps, then sparsity walked up to 98.4%: DGC's paper recipe, shortened
        make = lambda: fk.optimizer.DGCMomentumOptimizer(args.lr, momentum=0.9, rampup_begin_step=50,  # noqa: E731
                                                         rampup_step=100, sparsity=[0.75, 0.9375, 0.984375])
    else:
        make = lambda: fk.optimizer.Adagrad(args.lr)  # noqa: E731
    return ctr_model.build(DATA, is_sparse=False, wide=True, with_auc=True, make_optimizer=make,
                           wrap_optimizer=lambda o: fleet.distributed_optimizer(o, DistributedStrategy()))


def _dataset(args: argparse.Namespace, model: ctr_model.CTRModel) -> Any:
    ds = fk.DatasetFactory().create_dataset("InMemoryDataset")
    ds.set_use_var(model.feeds)
    ds.set_pipe_command(f"{sys.executable} -m fleetkit.demo.reader")
    ds.set_batch_size(args.batch_size)
    ds.set_thread(1)
    if args.train_url:  # the same files from S3 (or any fsspec URL): credentials from AWS_* variables
        options = s3_options(args.s3_endpoint)
        ds.set_fs(options)
        files = list_url(args.train_url, options)
    else:
        files = sorted(glob.glob(os.path.join(args.data, "train", "part-*")))
    mine = fleet.split_files(files)
    print(f"trainer {fleet.worker_index()}: training parts {', '.join(mine)}", flush=True)
    ds.set_filelist(mine)
    ds.load_into_memory()
    if envmod.restarts():
        ds.local_shuffle(seed=args.seed)  # rejoining a running job: the peers are past their shuffle
    else:
        ds.global_shuffle(fleet, seed=args.seed)
    return ds


def _train(args: argparse.Namespace, exe: Any, model: ctr_model.CTRModel, ds: Any) -> dict[str, float]:
    """``--epochs`` passes over the dataset; after each, this trainer's held-out loss and AUC
    (on its slice of the held-out log) go to the launcher with the training metrics."""
    test = (fleet.current()._t().get_trainer_test_program(model.test_program) if args.mode == "ps"
            else model.test_program)
    held_out = _held_out_slice(args)
    steps = examples = 0
    seconds = 0.0
    last: dict[str, float] = {}
    for epoch in range(1, args.epochs + 1):
        stats = exe.train_from_dataset(fleet.main_program, ds, thread=1, fetch_list=[model.loss, model.auc],
                                       fetch_info=["loss", "auc"], print_period=10 ** 9)
        steps, examples, seconds = steps + stats.batches, examples + stats.examples, seconds + stats.seconds
        (prob,) = exe.run(test, feed=held_out[0], fetch_list=[model.predict])
        last = {"loss": float(np.asarray(stats.fetched["loss"]).reshape(-1)[0]),
                "auc": float(np.asarray(stats.fetched["auc"]).reshape(-1)[0]),
                "test_loss": _log_loss(held_out[1], prob[:, 1]), "test_auc": auc(held_out[1], prob[:, 1])}
        report_metrics(epoch=epoch, step=steps, examples=examples, seconds=round(seconds, 3), **last)
        ds.local_shuffle(seed=args.seed + epoch)
    return {"steps": steps, "examples": examples, "seconds": seconds, **last}


def _held_out_slice(args: argparse.Namespace) -> tuple[dict[str, Any], np.ndarray]:
    """The first ``--eval_examples`` lines of the held-out log (the per-epoch check)."""
    path = os.path.join(args.data, "test", "part-00000")
    with open(path) as f:
        head = [next(f) for _ in range(args.eval_examples)]
    return _feed_of([parse_click_line(line) for line in head])


def _log_loss(labels: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(labels).reshape(-1)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _export_ps() -> tuple[ctr_model.CTRModel, Any]:
    """A single-process copy of the model, its tables pulled from the pservers."""
    from .ctr_train import pull_table
    local = ctr_model.build(DATA, is_distributed=False, wide=True)
    scope = fk.Scope()
    for name, value in fleet.current()._pull_params().items():
        scope.set(name, value)
    for table in ("ctr_emb", "ctr_wide"):
        scope.set(table, pull_table(DATA.table_rows, table))
    return local, scope


def _finish_chief(args: argparse.Namespace, exe: Any, model: ctr_model.CTRModel, trained: dict) -> None:
    feed, labels = read_click_log(os.path.join(args.data, "test", "part-00000"))
    if args.mode == "ps":  # score exactly what is saved: async peers may still be pushing updates
        local, scope = _export_ps()
        program, predict = local.test_program, local.predict
    else:
        program, predict, scope = model.test_program, model.predict, fk.global_scope()
    (prob,) = exe.run(program, feed=feed, fetch_list=[predict], scope=scope)
    test_auc = auc(labels, prob[:, 1])
    model_dir = os.path.join(args.out, "model")
    fk.io.save_inference_model(model_dir, [f"slot{s}" for s in range(DATA.num_slots)] + ["dense"], [predict],
                               exe, program, scope=scope)
    result = {"last_epoch": trained, "mode": args.mode, "dgc": args.dgc, "test_auc": test_auc,
              "test_examples": int(len(labels)), "model_dir": model_dir}
    with open(os.path.join(args.out, "result.json"), "w") as f:
        json.dump(result, f)
    print(f"trainer 0: held-out AUC {test_auc:.4f} on {len(labels)} examples; inference model in {model_dir}",
          flush=True)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="directory with train/part-* and test/part-00000 click logs")
    ap.add_argument("--train_url", default=None, help="read the training parts from this URL instead "
                    "(e.g. s3://bucket/demo/train)")
    ap.add_argument("--s3_endpoint", default=None, help="S3 endpoint URL for --train_url (e.g. SeaweedFS, MinIO)")
    ap.add_argument("--out", required=True, help="where trainer 0 writes result.json and model/")
    ap.add_argument("--mode", choices=("ps", "collective"), default="ps")
    ap.add_argument("--dgc", action="store_true", help="collective: DGCMomentumOptimizer")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--eval_examples", type=int, default=2000, help="held-out lines scored after each epoch")
    ap.add_argument("--batch_size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--checkpoint_dir", default=None,
                    help="pservers checkpoint here (ps<i>/) and a restarted one resumes from it")
    ap.add_argument("--checkpoint_interval_s", type=float, default=1.0)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    fleet.init(fleet.PaddleCloudRoleMaker(is_collective=args.mode == "collective"))
    model = _build(args)
    if fleet.is_server():
        ckpt = os.path.join(args.checkpoint_dir, f"ps{fleet.server_index()}") if args.checkpoint_dir else None
        fleet.init_server(checkpoint_dir=ckpt, checkpoint_interval_s=args.checkpoint_interval_s if ckpt else 0.0)
        fleet.run_server()
        return
    exe = fk.Executor(fk.CPUPlace())
    t0 = time.perf_counter()
    if args.mode == "ps":
        fleet.init_worker()
        exe.run(fleet.startup_program)
        ds = _dataset(args, model)
    else:  # the shuffle's own connections on the trainer endpoints come before the group's
        ds = _dataset(args, model)
        fleet.init_worker()
        exe.run(fleet.startup_program)
    trained = _train(args, exe, model, ds)
    trained["wall_s"] = time.perf_counter() - t0
    if fleet.worker_index() == 0:
        _finish_chief(args, exe, model, trained)
    fleet.stop_worker()


if __name__ == "__main__":
    main()
