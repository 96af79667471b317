"""PaddlePaddle book chapter 8 (machine_translation: an LSTM encoder, a DynamicRNN decoder
trained with teacher forcing, then a While loop of beam_search steps and
beam_search_decode), as fluid 1.4 users wrote it.

Usage: machine_translation.py PASSES.  Changed from the book: the imports; the sizes
(dict_size 8, hidden_dim 32, word_dim 16, beam_size 2, max_length 6); Adam at 0.005
instead of Adagrad at 1e-4 and the passes an argument (the book's settings fit WMT14, not
a test); names on the decoder's fc parameters, and both programs built under
unique_name.guard(), so that decode() reuses what train_decoder() learned (the book's
decode ran a fresh startup program); memory(init=context, need_reorder=True) (without it,
in fluid 1.4 as here, a batch whose targets differ in length pairs contexts with the wrong
targets: the memory is taken in rank-table order, longest target first, and the model
learns next to nothing); the data source (paddle.dataset.wmt14 downloads; the stand-in
yields the same triples, source ids, <s> + target ids, target ids + <e>, for a synthetic
task whose target is its source reversed); the loop stops on its length only (the book
also stops on is_empty(selected_ids); fleetkit has no is_empty yet, and a source whose
beams have all ended gets no rows, so the remaining steps run empty); decode prints each
source's best sentence instead of the book's raw result.
"""
from __future__ import print_function

import sys

import numpy as np

import fleetkit as paddle
import fleetkit as fluid
import fleetkit.layers as pd


# ---- data: stand-in for paddle.dataset.wmt14 (downloads are out of scope) ----------
class wmt14:  # noqa: N801
    START, END = 0, 1

    @staticmethod
    def _reader(seed, count):
        def reader():
            rng = np.random.RandomState(seed)
            for _ in range(count):
                src = [int(w) for w in rng.randint(2, dict_size, size=rng.randint(1, 4))]
                trg = src[::-1]
                yield src, [wmt14.START] + trg, trg + [wmt14.END]
        return reader

    train = staticmethod(lambda dict_size: wmt14._reader(1, 2048))
    test = staticmethod(lambda dict_size: wmt14._reader(2, 16))
# ------------------------------------------------------------------------------------

dict_size = 8
source_dict_dim = target_dict_dim = dict_size
hidden_dim = 32
word_dim = 16
batch_size = 32
max_length = 6
topk_size = 50
beam_size = 2

decoder_size = hidden_dim


def encoder(is_sparse):
    src_word_id = pd.data(name="src_word_id", shape=[1], dtype='int64', lod_level=1)
    src_embedding = pd.embedding(input=src_word_id, size=[dict_size, word_dim], dtype='float32',
                                 is_sparse=is_sparse, param_attr=fluid.ParamAttr(name='vemb'))
    fc1 = pd.fc(input=src_embedding, size=hidden_dim * 4, act='tanh')
    lstm_hidden0, lstm_0 = pd.dynamic_lstm(input=fc1, size=hidden_dim * 4)
    encoder_out = pd.sequence_last_step(input=lstm_hidden0)
    return encoder_out


def train_decoder(context, is_sparse):
    trg_language_word = pd.data(name="target_language_word", shape=[1], dtype='int64', lod_level=1)
    trg_embedding = pd.embedding(input=trg_language_word, size=[dict_size, word_dim], dtype='float32',
                                 is_sparse=is_sparse, param_attr=fluid.ParamAttr(name='vemb'))
    rnn = pd.DynamicRNN()
    with rnn.block():
        current_word = rnn.step_input(trg_embedding)
        pre_state = rnn.memory(init=context, need_reorder=True)
        current_state = pd.fc(input=[current_word, pre_state], size=decoder_size, act='tanh',
                              param_attr=['state_w_word', 'state_w_state'], bias_attr='state_b')
        current_score = pd.fc(input=current_state, size=target_dict_dim, act='softmax',
                              param_attr='score_w', bias_attr='score_b')
        rnn.update_memory(pre_state, current_state)
        rnn.output(current_score)
    return rnn()


def decode(context, is_sparse):
    init_state = context
    array_len = pd.fill_constant(shape=[1], dtype='int64', value=max_length)
    counter = pd.zeros(shape=[1], dtype='int64', force_cpu=True)

    # fill the first element with init_state
    state_array = pd.create_array('float32')
    pd.array_write(init_state, array=state_array, i=counter)

    # ids, scores as memory
    ids_array = pd.create_array('int64')
    scores_array = pd.create_array('float32')

    init_ids = pd.data(name="init_ids", shape=[1], dtype="int64", lod_level=2)
    init_scores = pd.data(name="init_scores", shape=[1], dtype="float32", lod_level=2)

    pd.array_write(init_ids, array=ids_array, i=counter)
    pd.array_write(init_scores, array=scores_array, i=counter)

    cond = pd.less_than(x=counter, y=array_len)

    while_op = pd.While(cond=cond)
    with while_op.block():
        pre_ids = pd.array_read(array=ids_array, i=counter)
        pre_state = pd.array_read(array=state_array, i=counter)
        pre_score = pd.array_read(array=scores_array, i=counter)

        # expand the lod of pre_state to be the same with pre_score
        pre_state_expanded = pd.sequence_expand(pre_state, pre_score)

        pre_ids_emb = pd.embedding(input=pre_ids, size=[dict_size, word_dim], dtype='float32',
                                   is_sparse=is_sparse, param_attr=fluid.ParamAttr(name='vemb'))

        # use rnn unit to update rnn
        current_state = pd.fc(input=[pre_state_expanded, pre_ids_emb], size=decoder_size, act='tanh',
                              param_attr=['state_w_state', 'state_w_word'], bias_attr='state_b')
        current_state_with_lod = pd.lod_reset(x=current_state, y=pre_score)
        # use score to do beam search
        current_score = pd.fc(input=current_state_with_lod, size=target_dict_dim, act='softmax',
                              param_attr='score_w', bias_attr='score_b')
        topk_scores, topk_indices = pd.topk(current_score, k=beam_size)
        # calculate accumulated scores after topk to reduce computation cost
        accu_scores = pd.elementwise_add(x=pd.log(topk_scores), y=pd.reshape(pre_score, shape=[-1]), axis=0)
        selected_ids, selected_scores = pd.beam_search(pre_ids, pre_score, topk_indices, accu_scores, beam_size,
                                                       end_id=wmt14.END, level=0)

        pd.increment(x=counter, value=1, in_place=True)

        # update the memories
        pd.array_write(current_state, array=state_array, i=counter)
        pd.array_write(selected_ids, array=ids_array, i=counter)
        pd.array_write(selected_scores, array=scores_array, i=counter)

        # update the break condition: up to the max length or all candidates of
        # source sentences have ended.
        pd.less_than(x=counter, y=array_len, cond=cond)

    translation_ids, translation_scores = pd.beam_search_decode(ids=ids_array, scores=scores_array,
                                                                beam_size=beam_size, end_id=wmt14.END)

    # return init_ids, init_scores
    return translation_ids, translation_scores


def train_program():
    context = encoder(False)
    rnn_out = train_decoder(context, False)
    label = pd.data(name="target_language_next_word", shape=[1], dtype='int64', lod_level=1)
    cost = pd.cross_entropy(input=rnn_out, label=label)
    avg_cost = pd.mean(cost)
    return avg_cost


def train(use_cuda, pass_num):
    place = fluid.CUDAPlace(0) if use_cuda else fluid.CPUPlace()
    with fluid.unique_name.guard():
        avg_cost = train_program()
    fluid.optimizer.Adam(learning_rate=0.005).minimize(avg_cost)
    train_reader = paddle.batch(paddle.reader.shuffle(wmt14.train(dict_size), buf_size=1000), batch_size=batch_size)
    feeder = fluid.DataFeeder(feed_list=['src_word_id', 'target_language_word', 'target_language_next_word'],
                              place=place)
    exe = fluid.Executor(place)
    exe.run(fluid.default_startup_program())
    for pass_id in range(pass_num):
        for batch_id, data in enumerate(train_reader()):
            outs = exe.run(feed=feeder.feed(data), fetch_list=[avg_cost])
            if batch_id % 20 == 0:
                print('pass_id=%d, batch_id=%d, avg_cost=%f' % (pass_id, batch_id, float(np.array(outs[0]).reshape(-1)[0])))


def decode_main(use_cuda):
    place = fluid.CUDAPlace(0) if use_cuda else fluid.CPUPlace()
    infer_program = fluid.Program()
    with fluid.program_guard(infer_program, fluid.Program()), fluid.unique_name.guard():
        context = encoder(False)
        translation_ids, translation_scores = decode(context, False)
    exe = fluid.Executor(place)  # the parameters trained above are in the global scope
    test_data = [row for row in wmt14.test(dict_size)()]
    n = len(test_data)
    init_ids = fluid.create_lod_tensor(np.zeros((n, 1), dtype='int64'), [[1] * n, [1] * n], place)
    init_scores = fluid.create_lod_tensor(np.ones((n, 1), dtype='float32'), [[1] * n, [1] * n], place)
    src = fluid.create_lod_tensor([row[0] for row in test_data],
                                  [[len(row[0]) for row in test_data]], place)
    result_ids, result_scores = exe.run(infer_program, feed={'src_word_id': src, 'init_ids': init_ids,
                                                             'init_scores': init_scores},
                                        fetch_list=[translation_ids, translation_scores], return_numpy=False)
    lod = result_ids.lod()
    ids = np.array(result_ids)
    for i, row in enumerate(test_data):
        best = lod[1][lod[0][i]], lod[1][lod[0][i] + 1]
        print("source %s translated %s expected %s" % (row[0], ids[best[0]:best[1]].tolist(), row[1] + [wmt14.END]))


def main(use_cuda, pass_num):
    train(use_cuda, pass_num)
    decode_main(use_cuda)


if __name__ == '__main__':
    main(False, int(sys.argv[1]))
