"""The PaddleRec (PaddlePaddle/models, fluid 1.4) CTR DNN: network_conf.py + train.py.

Local: ``ctr_dnn.py --is_local 1``; cluster: ``--cloud_train 1`` with PaddleCloud's
variables (TRAINING_ROLE, PADDLE_PSERVERS, PADDLE_PORT, PADDLE_TRAINERS_NUM,
PADDLE_TRAINER_ID, POD_IP, PADDLE_IS_LOCAL).  Changed from PaddleRec: the imports, the
data source (Criteo downloads; the stand-in reader yields the same samples, 13 dense
floats, 26 sparse id lists and a label, with a learnable signal), smaller layers,
``exe.close()`` at the end of training (so hand-started pservers stop), and an
``--is_distributed`` flag for the embedding (PaddleRec hard-codes False), and
``--pserver_init_dir`` (pservers resume from a saved directory, fluid 1.4's
``load_persistables(exe, dir, pserver_program)``).  Saves
``model_output_dir/pass-<i>`` with ``fluid.io.save_persistables`` after every pass on
trainer 0, and ``model_output_dir/inference`` with ``save_inference_model`` at the end.
"""
from __future__ import print_function

import argparse
import logging
import math
import os
import time

import numpy as np

import fleetkit as paddle
import fleetkit as fluid

logging.basicConfig(format='%(asctime)s - %(levelname)s - %(message)s')
logger = logging.getLogger("fluid")
logger.setLevel(logging.INFO)

dense_feature_dim = 13


# ---- data: stand-in for PaddleRec's reader.CriteoDataset (downloads are out of scope) ---
class CriteoDataset(object):
    def __init__(self, sparse_feature_dim):
        self.sparse_feature_dim = sparse_feature_dim
        rng = np.random.RandomState(3)
        self.w_dense = rng.normal(0, 1, dense_feature_dim)
        self.w_ids = rng.normal(0, 1, (26, sparse_feature_dim))

    def _reader_creator(self, seed, count, trainer_num, trainer_id):
        def reader():
            rng = np.random.RandomState(seed)
            for line_idx in range(count):
                dense = rng.uniform(0, 1, dense_feature_dim).astype("float32")
                # hashed ids: popular ones repeat, as in Criteo
                sparse = [[int(rng.zipf(1.5) % self.sparse_feature_dim)] for _ in range(26)]
                logit = (dense - 0.5).dot(self.w_dense) + sum(self.w_ids[i, s[0]] for i, s in enumerate(sparse)) / 3
                label = int(rng.uniform() < 1 / (1 + math.exp(-logit)))
                if line_idx % trainer_num == trainer_id:
                    yield [dense.tolist()] + sparse + [[label]]
        return reader

    def train(self, file_list, trainer_num, trainer_id):
        return self._reader_creator(1, 2000, trainer_num, trainer_id)

    def test(self, file_list):
        return self._reader_creator(2, 1000, 1, 0)
# -----------------------------------------------------------------------------------------


def ctr_dnn_model(embedding_size, sparse_feature_dim, use_py_reader=True, is_distributed=False):

    def embedding_layer(input):
        emb = fluid.layers.embedding(
            input=input, is_sparse=True,
            # you need to patch https://github.com/PaddlePaddle/Paddle/pull/14190
            # if you want to set is_distributed to True
            is_distributed=is_distributed,
            size=[sparse_feature_dim, embedding_size],
            param_attr=fluid.ParamAttr(name="SparseFeatFactors", initializer=fluid.initializer.Uniform()))
        return fluid.layers.sequence_pool(input=emb, pool_type='average')

    dense_input = fluid.layers.data(name="dense_input", shape=[dense_feature_dim], dtype='float32')
    sparse_input_ids = [fluid.layers.data(name="C" + str(i), shape=[1], lod_level=1, dtype='int64')
                        for i in range(1, 27)]
    label = fluid.layers.data(name='label', shape=[1], dtype='int64')

    words = [dense_input] + sparse_input_ids + [label]

    py_reader = None
    if use_py_reader:
        py_reader = fluid.layers.create_py_reader_by_data(capacity=64, feed_list=words, name='py_reader',
                                                          use_double_buffer=True)
        words = fluid.layers.read_file(py_reader)

    sparse_embed_seq = list(map(embedding_layer, words[1:-1]))
    concated = fluid.layers.concat(sparse_embed_seq + words[0:1], axis=1)

    fc1 = fluid.layers.fc(input=concated, size=64, act='relu', param_attr=fluid.ParamAttr(
        initializer=fluid.initializer.Normal(scale=1 / math.sqrt(concated.shape[1]))))
    fc2 = fluid.layers.fc(input=fc1, size=64, act='relu', param_attr=fluid.ParamAttr(
        initializer=fluid.initializer.Normal(scale=1 / math.sqrt(fc1.shape[1]))))
    fc3 = fluid.layers.fc(input=fc2, size=64, act='relu', param_attr=fluid.ParamAttr(
        initializer=fluid.initializer.Normal(scale=1 / math.sqrt(fc2.shape[1]))))
    predict = fluid.layers.fc(input=fc3, size=2, act='softmax', param_attr=fluid.ParamAttr(
        initializer=fluid.initializer.Normal(scale=1 / math.sqrt(fc3.shape[1]))))

    cost = fluid.layers.cross_entropy(input=predict, label=words[-1])
    avg_cost = fluid.layers.reduce_sum(cost)
    fluid.layers.accuracy(input=predict, label=words[-1])  # the 1.4 script builds it and never fetches it
    auc_var, batch_auc_var, auc_states = fluid.layers.auc(input=predict, label=words[-1],
                                                          num_thresholds=2 ** 12, slide_steps=20)

    return avg_cost, auc_var, batch_auc_var, py_reader, words, predict


def parse_args():
    parser = argparse.ArgumentParser(description="PaddlePaddle CTR example")
    parser.add_argument('--train_data_path', type=str, default='./data/raw/train.txt')
    parser.add_argument('--test_data_path', type=str, default='./data/raw/valid.txt')
    parser.add_argument('--batch_size', type=int, default=100)
    parser.add_argument('--embedding_size', type=int, default=10)
    parser.add_argument('--num_passes', type=int, default=2)
    parser.add_argument('--model_output_dir', type=str, default='models')
    parser.add_argument('--sparse_feature_dim', type=int, default=1000)
    parser.add_argument('--is_local', type=int, default=1)
    parser.add_argument('--cloud_train', type=int, default=0)
    parser.add_argument('--trainer_id', type=int, default=0)
    parser.add_argument('--trainers', type=int, default=1)
    parser.add_argument('--endpoints', type=str, default='127.0.0.1:6000')
    parser.add_argument('--current_endpoint', type=str, default='127.0.0.1:6000')
    parser.add_argument('--role', type=str, default='pserver')
    parser.add_argument('--is_distributed', type=int, default=0)
    parser.add_argument('--pserver_init_dir', type=str, default='')
    return parser.parse_args()


def train_loop(args, train_program, py_reader, loss, auc_var, batch_auc_var, trainer_num, trainer_id,
               predict, words):
    dataset = CriteoDataset(args.sparse_feature_dim)
    train_reader = paddle.batch(
        paddle.reader.shuffle(dataset.train([args.train_data_path], trainer_num, trainer_id),
                              buf_size=args.batch_size * 100),
        batch_size=args.batch_size)

    py_reader.decorate_paddle_reader(train_reader)

    place = fluid.CPUPlace()
    exe = fluid.Executor(place)

    exec_strategy = fluid.ExecutionStrategy()
    build_strategy = fluid.BuildStrategy()

    if os.getenv("NUM_THREADS", ""):
        exec_strategy.num_threads = int(os.getenv("NUM_THREADS"))

    cpu_num = int(os.environ.get('CPU_NUM', 1))
    build_strategy.reduce_strategy = \
        fluid.BuildStrategy.ReduceStrategy.Reduce if cpu_num > 1 \
        else fluid.BuildStrategy.ReduceStrategy.AllReduce

    pe = fluid.ParallelExecutor(use_cuda=False, loss_name=loss.name, main_program=train_program,
                                build_strategy=build_strategy, exec_strategy=exec_strategy)

    exe.run(fluid.default_startup_program())

    for pass_id in range(args.num_passes):
        pass_start = time.time()
        batch_id = 0
        py_reader.start()

        try:
            while True:
                loss_val, auc_val, batch_auc_val = pe.run(fetch_list=[loss.name, auc_var.name, batch_auc_var.name])
                loss_val = np.mean(loss_val)
                auc_val = np.mean(auc_val)
                batch_auc_val = np.mean(batch_auc_val)

                logger.info("TRAIN --> pass: {} batch: {} loss: {} auc: {}, batch_auc: {}"
                            .format(pass_id, batch_id, loss_val / args.batch_size, auc_val, batch_auc_val))
                batch_id += 1
        except fluid.core.EOFException:
            py_reader.reset()
        print("pass_id: %d, pass_time_cost: %f" % (pass_id, time.time() - pass_start))

        model_dir = args.model_output_dir + '/pass-' + str(pass_id)
        if args.trainer_id == 0:
            fluid.io.save_persistables(executor=exe, dirname=model_dir, main_program=fluid.default_main_program())
    if args.trainer_id == 0:
        fluid.io.save_inference_model(args.model_output_dir + '/inference', [w.name for w in words[:-1]],
                                      [predict], exe)
    exe.close()


def train():
    args = parse_args()
    if not os.path.isdir(args.model_output_dir):
        os.mkdir(args.model_output_dir)

    fluid.default_main_program().random_seed = fluid.default_startup_program().random_seed = 5
    loss, auc_var, batch_auc_var, py_reader, words, predict = ctr_dnn_model(
        args.embedding_size, args.sparse_feature_dim, is_distributed=bool(args.is_distributed))
    optimizer = fluid.optimizer.Adam(learning_rate=1e-2)
    optimizer.minimize(loss)
    if args.cloud_train:
        # the port of all pservers, needed by both trainer and pserver
        port = os.getenv("PADDLE_PORT", "6174")
        # comma separated ips of all pservers, needed by trainer and
        pserver_ips = os.getenv("PADDLE_PSERVERS", "")
        eplist = []
        for ip in pserver_ips.split(","):
            eplist.append(':'.join([ip, port]))
        args.endpoints = ",".join(eplist)
        args.trainers = int(os.getenv("PADDLE_TRAINERS_NUM", "1"))
        args.current_endpoint = os.getenv("POD_IP", "localhost") + ":" + port
        args.role = os.getenv("TRAINING_ROLE", "TRAINER")
        args.trainer_id = int(os.getenv("PADDLE_TRAINER_ID", "0"))
        args.is_local = bool(int(os.getenv("PADDLE_IS_LOCAL", 0)))

    if args.is_local:
        logger.info("run local training")
        main_program = fluid.default_main_program()
        train_loop(args, main_program, py_reader, loss, auc_var, batch_auc_var, 1, 0, predict, words)
    else:
        logger.info("run dist training")
        t = fluid.DistributeTranspiler()
        t.transpile(args.trainer_id, pservers=args.endpoints, trainers=args.trainers)
        if args.role == "pserver" or args.role == "PSERVER":
            logger.info("run pserver")
            prog = t.get_pserver_program(args.current_endpoint)
            startup = t.get_startup_program(args.current_endpoint, pserver_program=prog)
            exe = fluid.Executor(fluid.CPUPlace())
            exe.run(startup)
            if args.pserver_init_dir:  # resume from a save_persistables directory
                fluid.io.load_persistables(exe, args.pserver_init_dir, prog)
            exe.run(prog)
        elif args.role == "trainer" or args.role == "TRAINER":
            logger.info("run trainer")
            train_prog = t.get_trainer_program()
            train_loop(args, train_prog, py_reader, loss, auc_var, batch_auc_var, args.trainers,
                       args.trainer_id, predict, words)
        else:
            raise ValueError('PADDLE_TRAINING_ROLE environment variable must be either TRAINER or PSERVER')


if __name__ == '__main__':
    train()
