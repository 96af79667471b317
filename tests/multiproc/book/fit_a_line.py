"""PaddlePaddle book chapter 1 (fit_a_line), as fluid 1.4 users wrote it.

Changed from the book: the imports (``import fleetkit as paddle / fluid``), ``val[0]``
in two prints (numpy 2 refuses ``"%f" % array([v])``), and the data source
(paddle.dataset.uci_housing downloads; the stand-in below yields the same samples:
13 float features, one float target).  Prints "final test cost X".
"""
import math
import sys

import numpy

import fleetkit as paddle
import fleetkit as fluid


# ---- data: stand-in for paddle.dataset.uci_housing (downloads are out of scope) ----
def _housing(seed, n):
    rng = numpy.random.RandomState(seed)
    w = numpy.random.RandomState(0).uniform(-1, 1, 13)

    def reader():
        for _ in range(n):
            x = rng.uniform(-1, 1, 13).astype("float32")
            yield x, numpy.array([x.dot(w) + 0.5], dtype="float32")
    return reader


class uci_housing:  # noqa: N801
    train = staticmethod(lambda: _housing(1, 400))
    test = staticmethod(lambda: _housing(2, 100))
# ------------------------------------------------------------------------------------

BATCH_SIZE = 20
num_epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 30
params_dirname = sys.argv[2] if len(sys.argv) > 2 else "fit_a_line.inference.model"

train_reader = paddle.batch(
    paddle.reader.shuffle(uci_housing.train(), buf_size=500), batch_size=BATCH_SIZE)
test_reader = paddle.batch(
    paddle.reader.shuffle(uci_housing.test(), buf_size=500), batch_size=BATCH_SIZE)

x = fluid.layers.data(name='x', shape=[13], dtype='float32')
y = fluid.layers.data(name='y', shape=[1], dtype='float32')
y_predict = fluid.layers.fc(input=x, size=1, act=None)

main_program = fluid.default_main_program()
startup_program = fluid.default_startup_program()

cost = fluid.layers.square_error_cost(input=y_predict, label=y)
avg_loss = fluid.layers.mean(cost)

sgd_optimizer = fluid.optimizer.SGD(learning_rate=0.01)
sgd_optimizer.minimize(avg_loss)

test_program = main_program.clone(for_test=True)

use_cuda = False
place = fluid.CUDAPlace(0) if use_cuda else fluid.CPUPlace()
exe = fluid.Executor(place)


def train_test(executor, program, reader, feeder, fetch_list):
    accumulated = 1 * [0]
    count = 0
    for data_test in reader():
        outs = executor.run(program=program, feed=feeder.feed(data_test), fetch_list=fetch_list)
        accumulated = [x_c[0] + x_c[1][0] for x_c in zip(accumulated, outs)]
        count += 1
    return [x_d / count for x_d in accumulated]


feeder = fluid.DataFeeder(place=place, feed_list=[x, y])
exe.run(startup_program)

train_prompt = "train cost"
test_prompt = "test cost"
step = 0
exe_test = fluid.Executor(place)

for pass_id in range(num_epochs):
    for data_train in train_reader():
        avg_loss_value, = exe.run(main_program, feed=feeder.feed(data_train), fetch_list=[avg_loss])
        if step % 10 == 0:
            print("%s, Step %d, Cost %f" % (train_prompt, step, avg_loss_value[0]))
        if step % 100 == 0:
            test_metics = train_test(executor=exe_test, program=test_program, reader=test_reader,
                                     fetch_list=[avg_loss.name], feeder=feeder)
            print("%s, Step %d, Cost %f" % (test_prompt, step, test_metics[0]))
        step += 1
        if math.isnan(float(avg_loss_value[0])):
            sys.exit("got NaN loss, training failed.")
    if params_dirname is not None:
        fluid.io.save_inference_model(params_dirname, ['x'], [y_predict], exe)

test_metics = train_test(executor=exe_test, program=test_program, reader=test_reader,
                         fetch_list=[avg_loss.name], feeder=feeder)
print("final test cost %f" % test_metics[0])

infer_exe = fluid.Executor(place)
inference_scope = fluid.core.Scope()

with fluid.scope_guard(inference_scope):
    [inference_program, feed_target_names, fetch_targets] = fluid.io.load_inference_model(params_dirname, infer_exe)
    batch_size = 10
    infer_reader = paddle.batch(uci_housing.test(), batch_size=batch_size)
    infer_data = next(infer_reader())
    infer_feat = numpy.array([data[0] for data in infer_data]).astype("float32")
    infer_label = numpy.array([data[1] for data in infer_data]).astype("float32")
    assert feed_target_names[0] == 'x'
    results = infer_exe.run(inference_program, feed={feed_target_names[0]: numpy.array(infer_feat)},
                            fetch_list=fetch_targets)
    print("infer results: (House Price)")
    for idx, val in enumerate(results[0]):
        print("%d: %.2f" % (idx, val[0]))  # numpy 2 no longer formats a size-1 array as a float
    print("ground truth:")
    for idx, val in enumerate(infer_label):
        print("%d: %.2f" % (idx, val[0]))
    print("infer mse %f" % float(numpy.mean((results[0] - infer_label) ** 2)))
