"""PaddlePaddle book chapter 4 (word2vec, N-gram model), as fluid 1.4 users wrote it.

Usage: word2vec.py SAVE_DIR [COST_THRESHOLD].  Changed from the book: the imports,
``float(x[0][0])`` for the book's ``float(x[0])`` (numpy >= 2.4), Adagrad's learning
rate 5e-2 instead of 3e-3 and the cost threshold an argument (the book's 5.8 and its
hours of training fit imikolov, not a test), and the data source
(paddle.dataset.imikolov downloads; the stand-in yields the same samples, five int
word ids, from a synthetic corpus where the next word follows from the previous ones).
"""
from __future__ import print_function

import math
import sys

import numpy

import fleetkit as paddle
import fleetkit as fluid


# ---- data: stand-in for paddle.dataset.imikolov (downloads are out of scope) --------
class imikolov:  # noqa: N801
    @staticmethod
    def build_dict():
        return {"w%d" % i: i for i in range(400)}

    @staticmethod
    def _reader(word_dict, n, seed, count):
        size = len(word_dict)
        rng = numpy.random.RandomState(seed)

        def reader():
            for _ in range(count):
                w = [int(rng.randint(size))]
                for _ in range(n - 1):
                    w.append((w[-1] * 7 + 3) % size)  # the corpus' "grammar": a word fixes the next
                yield tuple(w)
        return reader

    train = staticmethod(lambda word_dict, n: imikolov._reader(word_dict, n, 1, 2000))
    test = staticmethod(lambda word_dict, n: imikolov._reader(word_dict, n, 2, 100))
# ------------------------------------------------------------------------------------

EMBED_SIZE = 32
HIDDEN_SIZE = 256
N = 5
BATCH_SIZE = 100
PASS_NUM = 100

use_cuda = False  # set to True if training with GPU

word_dict = imikolov.build_dict()
dict_size = len(word_dict)


def inference_program(words, is_sparse):
    embed_first = fluid.layers.embedding(input=words[0], size=[dict_size, EMBED_SIZE], dtype='float32',
                                         is_sparse=is_sparse, param_attr='shared_w')
    embed_second = fluid.layers.embedding(input=words[1], size=[dict_size, EMBED_SIZE], dtype='float32',
                                          is_sparse=is_sparse, param_attr='shared_w')
    embed_third = fluid.layers.embedding(input=words[2], size=[dict_size, EMBED_SIZE], dtype='float32',
                                         is_sparse=is_sparse, param_attr='shared_w')
    embed_fourth = fluid.layers.embedding(input=words[3], size=[dict_size, EMBED_SIZE], dtype='float32',
                                          is_sparse=is_sparse, param_attr='shared_w')

    concat_embed = fluid.layers.concat(input=[embed_first, embed_second, embed_third, embed_fourth], axis=1)
    hidden1 = fluid.layers.fc(input=concat_embed, size=HIDDEN_SIZE, act='sigmoid')
    predict_word = fluid.layers.fc(input=hidden1, size=dict_size, act='softmax')
    return predict_word


def train_program(predict_word):
    # The declaration of 'next_word' must be after the invoking of inference_program,
    # or the data input order of train program would be [next_word, firstw, secondw,
    # thirdw, fourthw], which is not correct.
    next_word = fluid.layers.data(name='nextw', shape=[1], dtype='int64')
    cost = fluid.layers.cross_entropy(input=predict_word, label=next_word)
    avg_cost = fluid.layers.mean(cost)
    return avg_cost


def optimizer_func():
    return fluid.optimizer.AdagradOptimizer(
        learning_rate=5e-2, regularization=fluid.regularizer.L2DecayRegularizer(8e-4))


def train(if_use_cuda, params_dirname, is_sparse=True, threshold=5.8):
    place = fluid.CUDAPlace(0) if if_use_cuda else fluid.CPUPlace()

    train_reader = paddle.batch(imikolov.train(word_dict, N), BATCH_SIZE)
    test_reader = paddle.batch(imikolov.test(word_dict, N), BATCH_SIZE)

    first_word = fluid.layers.data(name='firstw', shape=[1], dtype='int64')
    second_word = fluid.layers.data(name='secondw', shape=[1], dtype='int64')
    third_word = fluid.layers.data(name='thirdw', shape=[1], dtype='int64')
    forth_word = fluid.layers.data(name='fourthw', shape=[1], dtype='int64')
    next_word = fluid.layers.data(name='nextw', shape=[1], dtype='int64')

    word_list = [first_word, second_word, third_word, forth_word, next_word]
    feed_order = ['firstw', 'secondw', 'thirdw', 'fourthw', 'nextw']

    main_program = fluid.default_main_program()
    star_program = fluid.default_startup_program()
    main_program.random_seed = star_program.random_seed = 90

    predict_word = inference_program(word_list, is_sparse)
    avg_cost = train_program(predict_word)
    test_program = main_program.clone(for_test=True)

    sgd_optimizer = optimizer_func()
    sgd_optimizer.minimize(avg_cost)

    exe = fluid.Executor(place)

    def train_test(program, reader):
        count = 0
        feed_var_list = [program.global_block().var(var_name) for var_name in feed_order]
        feeder_test = fluid.DataFeeder(feed_list=feed_var_list, place=place)
        test_exe = fluid.Executor(place)
        accumulated = len([avg_cost]) * [0]
        for test_data in reader():
            avg_cost_np = test_exe.run(program=program, feed=feeder_test.feed(test_data), fetch_list=[avg_cost])
            accumulated = [x[0] + x[1][0] for x in zip(accumulated, avg_cost_np)]
            count += 1
        return [x / count for x in accumulated]

    def train_loop():
        step = 0
        feed_var_list_loop = [main_program.global_block().var(var_name) for var_name in feed_order]
        feeder = fluid.DataFeeder(feed_list=feed_var_list_loop, place=place)
        exe.run(star_program)
        for pass_id in range(PASS_NUM):
            for data in train_reader():
                avg_cost_np = exe.run(main_program, feed=feeder.feed(data), fetch_list=[avg_cost])

                if step % 10 == 0:
                    outs = train_test(test_program, test_reader)

                    print("Step %d: Average Cost %f" % (step, outs[0]))

                    # it will take a few hours.
                    # If average cost is lower than 5.8, we consider the model good enough to stop.
                    # Note 5.8 is a relatively high value. In order to get a better model, one
                    # should either reduce the threshold or increase the number of passes.
                    if outs[0] < threshold:
                        if params_dirname is not None:
                            fluid.io.save_inference_model(params_dirname, ['firstw', 'secondw', 'thirdw', 'fourthw'],
                                                          [predict_word], exe)
                        return
                step += 1
                if math.isnan(float(avg_cost_np[0][0])):
                    sys.exit("got NaN loss, training failed.")

        raise AssertionError("Cost is too large {0:2.2}".format(avg_cost_np[0][0]))

    train_loop()


def infer(use_cuda, params_dirname=None):
    place = fluid.CUDAPlace(0) if use_cuda else fluid.CPUPlace()

    exe = fluid.Executor(place)

    inference_scope = fluid.core.Scope()
    with fluid.scope_guard(inference_scope):
        # Use fluid.io.load_inference_model to obtain the inference program desc,
        # the feed_target_names (the names of variables that will be fed
        # data using feed operators), and the fetch_targets (variables that
        # we want to obtain data from using fetch operators).
        [inferencer, feed_target_names, fetch_targets] = fluid.io.load_inference_model(params_dirname, exe)

        # Setup inputs by creating 4 LoDTensors representing 4 words. Here each word
        # is simply an index to look up for the corresponding word vector and hence
        # the shape of word (base_shape) should be [1]. The recursive_sequence_lengths,
        # which is length-based level of detail (lod) of each LoDTensor, should be [[1]]
        # meaning there is only one level of detail and there is only one sequence of
        # one word on this level.
        # Note that recursive_sequence_lengths should be a list of lists.
        data1 = [[211]]  # 'among'
        data2 = [[(211 * 7 + 3) % dict_size]]
        data3 = [[(data2[0][0] * 7 + 3) % dict_size]]
        data4 = [[(data3[0][0] * 7 + 3) % dict_size]]
        lod = [[1]]

        first_word = fluid.create_lod_tensor(data1, lod, place)
        second_word = fluid.create_lod_tensor(data2, lod, place)
        third_word = fluid.create_lod_tensor(data3, lod, place)
        fourth_word = fluid.create_lod_tensor(data4, lod, place)

        assert feed_target_names[0] == 'firstw'
        assert feed_target_names[1] == 'secondw'
        assert feed_target_names[2] == 'thirdw'
        assert feed_target_names[3] == 'fourthw'

        # Construct feed as a dictionary of {feed_target_name: feed_target_data}
        # and results will contain a list of data corresponding to fetch_targets.
        results = exe.run(inferencer,
                          feed={feed_target_names[0]: first_word, feed_target_names[1]: second_word,
                                feed_target_names[2]: third_word, feed_target_names[3]: fourth_word},
                          fetch_list=fetch_targets, return_numpy=False)

        print(numpy.array(results[0]))
        most_possible_word_index = numpy.argmax(results[0])
        print(most_possible_word_index)
        print([key for key, value in word_dict.items() if value == most_possible_word_index][0])
        print("expected %d" % ((data4[0][0] * 7 + 3) % dict_size))


def main(use_cuda, is_sparse):
    if use_cuda and not fluid.core.is_compiled_with_cuda():
        return

    params_dirname = sys.argv[1] if len(sys.argv) > 1 else "word2vec.inference.model"
    threshold = float(sys.argv[2]) if len(sys.argv) > 2 else 5.8

    train(if_use_cuda=use_cuda, params_dirname=params_dirname, is_sparse=is_sparse, threshold=threshold)
    infer(use_cuda=use_cuda, params_dirname=params_dirname)


if __name__ == '__main__':
    main(use_cuda=use_cuda, is_sparse=True)
