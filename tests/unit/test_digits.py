"""The digits example trains to the accuracy the foundation issue promises, reproducibly
(``digits``: the example module, a fixture in tests/conftest.py)."""


def test_mlp_reaches_95_percent(digits):
    losses, acc = digits.train("mlp", epochs=20, verbose=False)
    assert acc >= 0.95, f"MLP test accuracy {acc:.4f} < 0.95"
    assert losses[-1] < losses[0] / 5


def test_fixed_seeds_give_identical_losses(digits):
    a, acc_a = digits.train("mlp", epochs=2, verbose=False)
    b, acc_b = digits.train("mlp", epochs=2, verbose=False)
    assert a == b and acc_a == acc_b


def test_conv_net_reaches_97_percent(digits):
    losses, acc = digits.train("conv", epochs=15, verbose=False)
    assert acc >= 0.97, f"conv net test accuracy {acc:.4f} < 0.97"
