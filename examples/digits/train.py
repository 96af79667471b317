"""Train an MLP or a small conv net on scikit-learn's bundled digits (no download).

    python examples/digits/train.py --model mlp
    python examples/digits/train.py --model conv --epochs 15
    python examples/digits/train.py --use_cuda      # on CUDAPlace(0) (needs cupy and a GPU)

Prints the loss and accuracy each epoch and the final test accuracy.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import fleetkit as fk
from fleetkit import layers


def load_data(seed: int = 0) -> tuple[np.ndarray, ...]:
    """Digits as float32 images in [0, 1], int64 labels, a fixed 75/25 split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype("float32").reshape(-1, 1, 8, 8)
    y = d.target.astype("int64").reshape(-1, 1)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    n_train = int(0.75 * len(x))
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def build_mlp(image: fk.Variable) -> fk.Variable:
    h = layers.fc(image, 128, act="relu")
    h = layers.fc(h, 64, act="relu")
    return layers.fc(h, 10, act="softmax")


def build_conv(image: fk.Variable) -> fk.Variable:
    h = image
    for channels in (16, 32):
        h = layers.conv2d(h, num_filters=channels, filter_size=3, padding=1, bias_attr=False)
        h = layers.batch_norm(h, act="relu")
        h = layers.pool2d(h, pool_size=2, pool_type="max", pool_stride=2)
    return layers.fc(h, 10, act="softmax")


def build(model: str, lr: float) -> dict:
    """Build train/test programs; returns the pieces a training loop needs."""
    main, startup = fk.Program(), fk.Program()
    main.random_seed = startup.random_seed = 1
    with fk.program_guard(main, startup), fk.unique_name.guard():
        image = layers.data("image", [1, 8, 8])
        label = layers.data("label", [1], dtype="int64")
        predict = (build_mlp if model == "mlp" else build_conv)(image)
        loss = layers.mean(layers.cross_entropy(predict, label))
        acc = layers.accuracy(predict, label)
        test_program = main.clone(for_test=True)
        fk.optimizer.Adam(learning_rate=lr).minimize(loss)
    return dict(main=main, startup=startup, test=test_program, loss=loss, acc=acc)


def train(model: str = "mlp", epochs: int = 20, batch_size: int = 64, lr: float = 0.003,
          verbose: bool = True, use_cuda: bool = False) -> tuple[list[float], float]:
    """Train and return (per-epoch mean losses, test accuracy)."""
    xtr, ytr, xte, yte = load_data()
    net = build(model, lr)
    exe = fk.Executor(fk.CUDAPlace(0) if use_cuda else fk.CPUPlace())
    scope = fk.Scope()
    exe.run(net["startup"], scope=scope)
    order_rng = np.random.default_rng(0)
    losses = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        order = order_rng.permutation(len(xtr))
        epoch_loss, epoch_acc, n = 0.0, 0.0, 0
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            lv, av = exe.run(net["main"], feed={"image": xtr[idx], "label": ytr[idx]},
                             fetch_list=[net["loss"], net["acc"]], scope=scope)
            epoch_loss += float(lv[0]) * len(idx)
            epoch_acc += float(av[0]) * len(idx)
            n += len(idx)
        losses.append(epoch_loss / n)
        if verbose:
            print(f"epoch {epoch + 1:2d}  loss {epoch_loss / n:.4f}  train acc {epoch_acc / n:.4f}  "
                  f"({n / (time.perf_counter() - t0):.0f} examples/s)", flush=True)
    (test_acc,) = exe.run(net["test"], feed={"image": xte, "label": yte}, fetch_list=[net["acc"]], scope=scope)
    return losses, float(test_acc[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["mlp", "conv"], default="mlp")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.003)
    ap.add_argument("--use_cuda", action="store_true", help="train on CUDAPlace(0)")
    args = ap.parse_args()
    _, acc = train(args.model, args.epochs, args.batch_size, args.lr, use_cuda=args.use_cuda)
    print(f"final test accuracy ({args.model}): {acc:.4f}")


if __name__ == "__main__":
    main()
