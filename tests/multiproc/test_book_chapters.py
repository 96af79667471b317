"""The PaddlePaddle book chapters, written as fluid 1.4 users wrote them (tests/multiproc/book/),
run as real scripts: fit_a_line, recognize_digits (MLP and conv), word2vec."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BOOK = Path(__file__).parent / "book"

# fluid 1.4's reader.shuffle draws from Python's global `random`, which the scripts never seed (nor
# does Paddle): each script runs with `random` seeded, so its data order, and with the program's
# random_seed its whole run, is reproducible and a threshold cannot pass or fail by chance.
PY_RANDOM_SEED = 1
_SEEDED_RUN = ("import random, runpy, sys, os; random.seed(int(sys.argv[1])); sys.argv = sys.argv[2:]; "
               "sys.path[0] = os.path.dirname(sys.argv[0]); runpy.run_path(sys.argv[0], run_name='__main__')")


def script_command(name, *args):
    """The command line that runs book script ``name`` as ``python name args...``, `random` seeded."""
    return [sys.executable, "-c", _SEEDED_RUN, str(PY_RANDOM_SEED), str(BOOK / name), *map(str, args)]


def run_script(name, *args, cwd, timeout=120, env=None):
    """Run a book script in a fresh interpreter; its stdout, or a failure showing its output."""
    out = subprocess.run(script_command(name, *args), cwd=cwd, capture_output=True,
                         text=True, timeout=timeout, env={**os.environ, **(env or {})})
    assert out.returncode == 0, f"{name} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    return out.stdout


def _number(pattern, text):
    m = re.search(pattern, text)
    assert m, f"no match for {pattern!r} in:\n{text[-2000:]}"
    return float(m.group(1))


def test_fit_a_line(tmp_path):
    out = run_script("fit_a_line.py", 30, tmp_path / "model", cwd=tmp_path)
    assert _number(r"final test cost ([\d.e-]+)", out) < 0.01
    assert _number(r"infer mse ([\d.e-]+)", out) < 0.01
    assert (tmp_path / "model" / "__model__").is_file()


@pytest.mark.parametrize("net,passes,min_acc", [("mlp", 5, 80.0), ("conv", 2, 50.0)])
def test_recognize_digits(tmp_path, net, passes, min_acc):
    out = run_script("recognize_digits.py", net, passes, tmp_path / "model", cwd=tmp_path)
    assert _number(r"classification accuracy is ([\d.]+)%", out) > min_acc
    label = int(_number(r"Inference result of image/infer_3.png is: (\d+)", out))
    assert 0 <= label <= 9


def test_word2vec(tmp_path):
    out = run_script("word2vec.py", tmp_path / "model", 5.0, cwd=tmp_path)
    costs = [float(c) for c in re.findall(r"Average Cost ([\d.]+)", out)]
    assert costs[0] > 5.5 and costs[-1] < 5.0  # log(400) = 6.0 untrained
    lines = out.strip().splitlines()
    assert lines[-1] == f"expected {lines[-3]}"  # the model predicts the corpus' next word
