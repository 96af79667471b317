"""PaddlePaddle book chapter 2 (recognize_digits), as fluid 1.4 users wrote it.

Usage: recognize_digits.py {conv,mlp} PASSES SAVE_DIR.  Changed from the book: the
imports, ``float(x[0])`` where the book wrote ``float(x)`` of a fetched [1] array
(numpy >= 2.4 refuses that), and the data source (paddle.dataset.mnist downloads; the
stand-in yields the same samples: 784 floats in [-1, 1] and an int label, from
scikit-learn's bundled 8x8 digits upscaled to 28x28).  Prints the book's last lines.
"""
from __future__ import print_function

import sys

import numpy

import fleetkit as paddle
import fleetkit as fluid


# ---- data: stand-in for paddle.dataset.mnist (downloads are out of scope) ----------
def _digits(part):
    from sklearn.datasets import load_digits
    d = load_digits()
    img = numpy.kron(d.images, numpy.ones((4, 4)))[:, 2:30, 2:30]  # 8x8 -> 28x28 (trimmed)
    img = (img / 8.0 - 1.0).astype("float32").reshape(-1, 784)
    lo, hi = (0, 320) if part == "train" else (1500, 1564)

    def reader():
        for i in range(lo, hi):
            yield img[i], int(d.target[i])
    return reader


class mnist:  # noqa: N801
    train = staticmethod(lambda: _digits("train"))
    test = staticmethod(lambda: _digits("test"))
# ------------------------------------------------------------------------------------

BATCH_SIZE = 64
PASS_NUM = int(sys.argv[2]) if len(sys.argv) > 2 else 5


def loss_net(hidden, label):
    prediction = fluid.layers.fc(input=hidden, size=10, act='softmax')
    loss = fluid.layers.cross_entropy(input=prediction, label=label)
    avg_loss = fluid.layers.mean(loss)
    acc = fluid.layers.accuracy(input=prediction, label=label)
    return prediction, avg_loss, acc


def multilayer_perceptron(img, label):
    img = fluid.layers.fc(input=img, size=200, act='tanh')
    hidden = fluid.layers.fc(input=img, size=200, act='tanh')
    return loss_net(hidden, label)


def softmax_regression(img, label):
    return loss_net(img, label)


def convolutional_neural_network(img, label):
    conv_pool_1 = fluid.nets.simple_img_conv_pool(
        input=img, filter_size=5, num_filters=20, pool_size=2, pool_stride=2, act="relu")
    conv_pool_1 = fluid.layers.batch_norm(conv_pool_1)
    conv_pool_2 = fluid.nets.simple_img_conv_pool(
        input=conv_pool_1, filter_size=5, num_filters=50, pool_size=2, pool_stride=2, act="relu")
    return loss_net(conv_pool_2, label)


def train(nn_type, use_cuda, save_dirname=None, model_filename=None, params_filename=None):
    if use_cuda and not fluid.core.is_compiled_with_cuda():
        return
    startup_program = fluid.default_startup_program()
    main_program = fluid.default_main_program()
    startup_program.random_seed = main_program.random_seed = 90

    train_reader = paddle.batch(paddle.reader.shuffle(mnist.train(), buf_size=500), batch_size=BATCH_SIZE)
    test_reader = paddle.batch(mnist.test(), batch_size=BATCH_SIZE)

    img = fluid.layers.data(name='img', shape=[1, 28, 28], dtype='float32')
    label = fluid.layers.data(name='label', shape=[1], dtype='int64')

    if nn_type == 'softmax_regression':
        net_conf = softmax_regression
    elif nn_type == 'multilayer_perceptron':
        net_conf = multilayer_perceptron
    else:
        net_conf = convolutional_neural_network

    prediction, avg_loss, acc = net_conf(img, label)

    test_program = main_program.clone(for_test=True)
    optimizer = fluid.optimizer.Adam(learning_rate=0.001)
    optimizer.minimize(avg_loss)

    def train_test(train_test_program, train_test_feed, train_test_reader):
        acc_set = []
        avg_loss_set = []
        for test_data in train_test_reader():
            acc_np, avg_loss_np = exe.run(program=train_test_program, feed=train_test_feed.feed(test_data),
                                          fetch_list=[acc, avg_loss])
            acc_set.append(float(acc_np[0]))
            avg_loss_set.append(float(avg_loss_np[0]))
        acc_val_mean = numpy.array(acc_set).mean()
        avg_loss_val_mean = numpy.array(avg_loss_set).mean()
        return avg_loss_val_mean, acc_val_mean

    place = fluid.CUDAPlace(0) if use_cuda else fluid.CPUPlace()
    exe = fluid.Executor(place)
    feeder = fluid.DataFeeder(feed_list=[img, label], place=place)
    exe.run(startup_program)
    epochs = [epoch_id for epoch_id in range(PASS_NUM)]

    lists = []
    step = 0
    for epoch_id in epochs:
        for step_id, data in enumerate(train_reader()):
            metrics = exe.run(main_program, feed=feeder.feed(data), fetch_list=[avg_loss, acc])
            if step % 100 == 0:
                print("Pass %d, Batch %d, Cost %f" % (step, epoch_id, metrics[0][0]))
            step += 1
        avg_loss_val, acc_val = train_test(train_test_program=test_program, train_test_reader=test_reader,
                                           train_test_feed=feeder)
        print("Test with Epoch %d, avg_cost: %s, acc: %s" % (epoch_id, avg_loss_val, acc_val))
        lists.append((epoch_id, avg_loss_val, acc_val))
        if save_dirname is not None:
            fluid.io.save_inference_model(save_dirname, ["img"], [prediction], exe,
                                          model_filename=model_filename, params_filename=params_filename)

    best = sorted(lists, key=lambda list: float(list[1]))[0]
    print('Best pass is %s, testing Avgcost is %s' % (best[0], best[1]))
    print('The classification accuracy is %.2f%%' % (float(best[2]) * 100))


def infer(use_cuda, save_dirname=None, model_filename=None, params_filename=None):
    if save_dirname is None:
        return
    place = fluid.CUDAPlace(0) if use_cuda else fluid.CPUPlace()
    exe = fluid.Executor(place)
    img = next(mnist.test()())[0].reshape(1, 1, 28, 28)
    inference_scope = fluid.core.Scope()
    with fluid.scope_guard(inference_scope):
        [inference_program, feed_target_names, fetch_targets] = fluid.io.load_inference_model(
            save_dirname, exe, model_filename, params_filename)
        results = exe.run(inference_program, feed={feed_target_names[0]: img}, fetch_list=fetch_targets)
        lab = numpy.argsort(results)
        print("Inference result of image/infer_3.png is: %d" % lab[0][0][-1])


def main(use_cuda, nn_type):
    model_filename = None
    params_filename = None
    save_dirname = sys.argv[3] if len(sys.argv) > 3 else "recognize_digits_" + nn_type + ".inference.model"
    train(nn_type=nn_type, use_cuda=use_cuda, save_dirname=save_dirname, model_filename=model_filename,
          params_filename=params_filename)
    infer(use_cuda=use_cuda, save_dirname=save_dirname, model_filename=model_filename,
          params_filename=params_filename)


if __name__ == '__main__':
    use_cuda = False
    predict = 'convolutional_neural_network' if sys.argv[1] == "conv" else 'multilayer_perceptron'
    main(use_cuda=use_cuda, nn_type=predict)
