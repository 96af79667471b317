"""The book's understand_sentiment chapter with its DynamicRNN LSTM (tests/multiproc/book/
understand_sentiment_dyn_rnn.py, fluid 1.4 style), run as a real script: it trains, exports an
inference model, and the reloaded model tells a positive review from a negative one."""
import re

from test_book_chapters import run_script  # noqa: E402


def test_understand_sentiment_dyn_rnn(tmp_path):
    out = run_script("understand_sentiment_dyn_rnn.py", tmp_path / "model", 3, cwd=tmp_path)
    accs = [float(a) for a in re.findall(r"Test Loss [\d.e-]+, Acc ([\d.]+)", out)]
    assert len(accs) == 3 and accs[-1] > 0.85, out[-2000:]
    probs = {review: float(p) for p, review in re.findall(r"Predict probability of\s+([\d.e-]+)\s+to be "
                                                          r"positive .* for review '\s*(.*?)\s*'", out)}
    assert probs["good great good movie"] > 0.5 > probs["bad boring bad movie"], probs
    assert (tmp_path / "model" / "__model__").is_file()
