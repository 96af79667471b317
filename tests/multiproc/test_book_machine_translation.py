"""The book's machine_translation chapter (tests/multiproc/book/machine_translation.py, fluid
1.4 style), run as a real script: a DynamicRNN seq2seq trains on a synthetic reverse task,
then a While loop of beam_search steps and beam_search_decode translates held-out sources."""
import re

from test_book_chapters import run_script  # noqa: E402


def test_machine_translation_trains_and_beam_search_decodes(tmp_path):
    out = run_script("machine_translation.py", 6, cwd=tmp_path)
    costs = [float(c) for c in re.findall(r"batch_id=0, avg_cost=([\d.e-]+)", out)]
    assert len(costs) == 6 and costs[-1] < 0.3 * costs[0], out[-2000:]
    rows = re.findall(r"source \[(.*?)\] translated \[(.*?)\] expected \[(.*?)\]", out)
    assert len(rows) == 16, out[-2000:]
    right = sum(got == want for _, got, want in rows)
    assert right >= 12, rows  # mostly right: the best beam is <s> + the source reversed + <e>
