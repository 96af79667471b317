"""DynamicRNN: the outputs against a numpy recurrence run sequence by sequence, gradients of
the whole RNN against finite differences, and a sentiment-style model that trains."""
import numpy as np
import pytest

import fleetkit as fk
from fleetkit import layers
from fleetkit.errors import InvalidArgumentError
from fleetkit.testing.program_gradcheck import check_program_grad

D, H = 3, 4
LENGTHS = [2, 4, 1, 3]


def _lod(lengths):
    return [np.cumsum([0] + list(lengths)).tolist()]


def _inputs(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(sum(lengths), D))


def _rnn(x, init=None, static=None, need_reorder=False, shape_memory=True, outputs=1):
    """h_t = tanh(fc([x_t, h_{t-1}] (+ static))); returns (out, fc's parameter names)."""
    drnn = layers.DynamicRNN()
    with drnn.block():
        x_t = drnn.step_input(x)
        if init is not None:
            h = drnn.memory(init=init, need_reorder=need_reorder)
        else:
            h = drnn.memory(shape=[H], value=0.5 if shape_memory else 0.0, dtype="float64")
        ins = [x_t, h] + ([drnn.static_input(static)] if static is not None else [])
        new_h = layers.fc(ins, H, act="tanh")
        drnn.update_memory(h, new_h)
        drnn.output(*([new_h] + ([layers.scale(new_h, 2.0)] if outputs == 2 else [])))
    return drnn()


def _params(main, scope):
    return {p.name: np.array(scope.get(p.name)) for p in main.all_parameters()}


def _reference(x, lengths, params, h0, static=None):
    """The same recurrence, one sequence at a time, in numpy."""
    ws = sorted(n for n in params if ".w_" in n)
    b = params[next(n for n in params if ".b_" in n)]
    out, start = np.zeros((x.shape[0], H)), 0
    for i, n in enumerate(lengths):
        h = h0[i]
        for t in range(n):
            pre = x[start + t] @ params[ws[0]] + h @ params[ws[1]] + b
            if static is not None:
                pre = pre + static[i] @ params[ws[2]]
            h = np.tanh(pre)
            out[start + t] = h
        start += n
    return out


def _run(build, feed, lengths=LENGTHS):
    main, startup = fk.Program(), fk.Program()
    main.random_seed = startup.random_seed = 5
    with fk.program_guard(main, startup):
        x = layers.data("x", shape=[D], dtype="float64", lod_level=1)
        out = build(x)
    scope = fk.Scope()
    exe = fk.Executor(fk.CPUPlace())
    exe.run(startup, scope=scope)
    got = exe.run(main, feed={"x": fk.LoDTensor(_inputs(lengths), _lod(lengths)), **feed},
                  fetch_list=out if isinstance(out, list) else [out], scope=scope, return_numpy=False)
    return got, _params(main, scope)


@pytest.mark.parametrize("lengths", [LENGTHS, [3], [2, 2, 2], [3, 0, 1], [0, 0]])
def test_outputs_match_a_recurrence_run_sequence_by_sequence(lengths):
    (out,), params = _run(lambda x: _rnn(x), {}, lengths)
    assert out.lod() == _lod(lengths)
    h0 = np.full((len(lengths), H), 0.5)
    np.testing.assert_allclose(np.asarray(out), _reference(_inputs(lengths), lengths, params, h0), rtol=1e-12)


def test_memory_with_init_in_table_order_or_reordered():
    h0 = np.random.default_rng(3).normal(size=(len(LENGTHS), H))
    order = np.argsort(-np.asarray(LENGTHS), kind="stable")  # the rank table's order: longest first

    def build(reorder):
        def inner(x):
            init = layers.data("h0", shape=[H], dtype="float64")
            return _rnn(x, init=init, need_reorder=reorder)
        return inner
    (out,), params = _run(build(True), {"h0": h0})
    want = _reference(_inputs(LENGTHS), LENGTHS, params, h0)
    np.testing.assert_allclose(np.asarray(out), want, rtol=1e-12)
    # without need_reorder the init is taken to be in rank-table order already (as in fluid)
    (out,), _ = _run(build(False), {"h0": h0[order]})
    np.testing.assert_allclose(np.asarray(out), want, rtol=1e-12)


def test_static_input_follows_its_sequence():
    static = np.random.default_rng(4).normal(size=(len(LENGTHS), 2))

    def build(x):
        return _rnn(x, static=layers.data("s", shape=[2], dtype="float64"))
    (out,), params = _run(build, {"s": static})
    h0 = np.full((len(LENGTHS), H), 0.5)
    np.testing.assert_allclose(np.asarray(out), _reference(_inputs(LENGTHS), LENGTHS, params, h0, static),
                               rtol=1e-12)


def test_two_outputs():
    (a, b), _ = _run(lambda x: _rnn(x, outputs=2), {})
    np.testing.assert_allclose(np.asarray(b), 2 * np.asarray(a))
    assert b.lod() == _lod(LENGTHS)


def test_gradient_of_the_whole_rnn_matches_finite_differences():
    """x, the initial memory, a static input and the step's parameters, through memories
    that shrink as sequences end."""
    lengths = [2, 3, 1]
    main, startup = fk.Program(), fk.Program()
    main.random_seed = startup.random_seed = 7
    with fk.program_guard(main, startup):
        x = layers.data("x", shape=[D], dtype="float64", lod_level=1)
        h0 = layers.data("h0", shape=[H], dtype="float64")
        s = layers.data("s", shape=[2], dtype="float64")
        out = _rnn(x, init=h0, static=s, need_reorder=True)
        weight = layers.assign(np.random.default_rng(9).uniform(-1, 1, size=(sum(lengths), H)))
        loss = layers.reduce_sum(layers.elementwise_mul(out, weight))
    rng = np.random.default_rng(2)
    feed = {"x": fk.LoDTensor(_inputs(lengths), _lod(lengths)), "h0": rng.normal(size=(3, H)),
            "s": rng.normal(size=(3, 2))}
    names = ["x", "h0", "s"] + [p.name for p in main.all_parameters()]
    check_program_grad(loss, feed, names, startup=startup)
    assert "dynamic_rnn_grad" in [op.type for op in main.global_block().ops]


def test_sentiment_style_model_trains():
    """embedding -> DynamicRNN (fc step) -> last step -> fc -> cross_entropy: the loss falls."""
    rng = np.random.default_rng(0)
    vocab, n = 30, 32
    lengths = rng.integers(1, 7, size=n)
    ids = rng.integers(0, vocab, size=(int(lengths.sum()), 1))
    # label: does the sequence hold more "positive" words (ids < 15) than negative ones?
    starts = np.cumsum([0] + lengths.tolist())
    labels = np.array([[int((ids[a:b] < 15).mean() > 0.5)] for a, b in zip(starts, starts[1:])])
    main, startup = fk.Program(), fk.Program()
    main.random_seed = startup.random_seed = 11
    with fk.program_guard(main, startup):
        words = layers.data("words", shape=[1], dtype="int64", lod_level=1)
        label = layers.data("label", shape=[1], dtype="int64")
        emb = layers.embedding(words, size=[vocab, 8])
        drnn = layers.DynamicRNN()
        with drnn.block():
            w = drnn.step_input(emb)
            prev = drnn.memory(shape=[16], value=0.0)
            hidden = layers.fc([w, prev], 16, act="tanh")
            drnn.update_memory(prev, hidden)
            drnn.output(hidden)
        last = layers.sequence_last_step(drnn())
        predict = layers.fc(last, 2, act="softmax")
        loss = layers.mean(layers.cross_entropy(predict, label))
        fk.optimizer.Adam(learning_rate=0.02).minimize(loss)
    scope = fk.Scope()
    exe = fk.Executor(fk.CPUPlace())
    exe.run(startup, scope=scope)
    feed = {"words": fk.LoDTensor(ids, _lod(lengths)), "label": labels}
    before = _params(main, scope)
    losses = [float(np.asarray(exe.run(main, feed=feed, fetch_list=[loss], scope=scope)[0]).reshape(-1)[0])
              for _ in range(60)]
    assert losses[-1] < 0.5 * losses[0], losses[::10]
    # the gradient reached the embedding and the step's weights, through the RNN
    after = _params(main, scope)
    assert all(not np.allclose(before[n], after[n]) for n in before), sorted(
        n for n in before if np.allclose(before[n], after[n]))


def test_inference_model_with_a_dynamic_rnn_saves_and_reloads(tmp_path):
    main, startup = fk.Program(), fk.Program()
    with fk.program_guard(main, startup):
        x = layers.data("x", shape=[D], dtype="float64", lod_level=1)
        s = layers.data("s", shape=[2], dtype="float64")
        out = _rnn(x, static=s)
        fk.optimizer.SGD(0.1).minimize(layers.mean(out))
    exe = fk.Executor(fk.CPUPlace())
    feed = {"x": fk.LoDTensor(_inputs(LENGTHS), _lod(LENGTHS)), "s": np.ones((len(LENGTHS), 2))}
    with fk.scope_guard(fk.Scope()):
        exe.run(startup)
        want, = exe.run(main.clone(for_test=True), feed=feed, fetch_list=[out], return_numpy=False)
        fk.io.save_inference_model(str(tmp_path), ["x", "s"], [out], exe, main)
    with fk.scope_guard(fk.Scope()):
        program, _, fetches = fk.io.load_inference_model(str(tmp_path), exe)
        got, = exe.run(program, feed=feed, fetch_list=fetches, return_numpy=False)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert got.lod() == _lod(LENGTHS)


def test_misuse_is_reported():
    with fk.program_guard(fk.Program(), fk.Program()):
        x = layers.data("x", shape=[D], dtype="float32", lod_level=1)
        drnn = layers.DynamicRNN()
        with pytest.raises(InvalidArgumentError, match=r"step_input\(\) must be called inside"):
            drnn.step_input(x)
        with pytest.raises(InvalidArgumentError, match="not updated"):
            with drnn.block():
                x_t = drnn.step_input(x)
                drnn.memory(shape=[H])
                drnn.output(x_t)
        with pytest.raises(InvalidArgumentError, match="once per DynamicRNN"):
            drnn.block()
        other = layers.DynamicRNN()
        with pytest.raises(InvalidArgumentError, match="must be called after step_input"):
            with other.block():
                other.static_input(x)


def test_dropout_in_the_step_draws_from_the_rnn_op_and_its_backward_runs():
    main, startup = fk.Program(), fk.Program()
    main.random_seed = startup.random_seed = 3
    with fk.program_guard(main, startup):
        x = layers.data("x", shape=[D], dtype="float32", lod_level=1)
        drnn = layers.DynamicRNN()
        with drnn.block():
            x_t = drnn.step_input(x)
            h = drnn.memory(shape=[H])
            new_h = layers.dropout(layers.fc([x_t, h], H, act="tanh"), dropout_prob=0.5)
            drnn.update_memory(h, new_h)
            drnn.output(new_h)
        out = drnn()
        loss = layers.mean(layers.square(out))
        fk.optimizer.SGD(0.1).minimize(loss)
    exe = fk.Executor(fk.CPUPlace())
    scope = fk.Scope()
    exe.run(startup, scope=scope)
    feed = {"x": fk.LoDTensor(_inputs(LENGTHS).astype("float32"), _lod(LENGTHS))}
    w = main.all_parameters()[0].name
    before = np.array(scope.get(w))
    value, = exe.run(main, feed=feed, fetch_list=[out], scope=scope)  # forward, backward, SGD
    assert 0.2 < float(np.mean(value == 0)) < 0.8  # about half the units dropped
    assert not np.allclose(before, np.array(scope.get(w)))


def test_threads_running_one_program_each_get_their_own_step_contexts():
    """train_from_dataset's worker threads run one program at once, each in its own scope:
    the step's prepared contexts (pointed at the running scope) must not be shared."""
    import threading

    from fleetkit.core.ops.control_flow import _sub_block_steps
    main, startup = fk.Program(), fk.Program()
    startup.random_seed = 8
    with fk.program_guard(main, startup):
        x = layers.data("x", shape=[D], dtype="float64", lod_level=1)
        out = _rnn(x)
    op = next(op for op in main.global_block().ops if op.type == "dynamic_rnn")
    ctx = fk.core.registry.KernelContext(op, np, None, fk.CPUPlace())
    seen = []
    thread = threading.Thread(target=lambda: seen.append(_sub_block_steps(op.attrs["sub_block"], ctx)))
    thread.start()
    thread.join()
    assert _sub_block_steps(op.attrs["sub_block"], ctx) is not seen[0]

    feeds = [{"x": fk.LoDTensor(_inputs(lengths, seed=i), _lod(lengths))} for i, lengths in
             enumerate([LENGTHS, [5, 1], [1, 1, 1, 2, 6]])]

    def run(feed, times):
        exe, scope = fk.Executor(fk.CPUPlace()), fk.Scope()
        exe.run(startup, scope=scope)
        return [np.asarray(exe.run(main, feed=feed, fetch_list=[out], scope=scope)[0]) for _ in range(times)]
    want = [run(f, 1)[0] for f in feeds]
    got: dict = {}
    threads = [threading.Thread(target=lambda i=i: got.setdefault(i, run(feeds[i], 5))) for i in range(len(feeds))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, w in enumerate(want):
        for g in got[i]:
            np.testing.assert_array_equal(g, w)


E = 2


def _attention_rnn(trg, enc, boot):
    """machine_translation's decoder: attention over the static (LoD) encoder states."""
    drnn = layers.DynamicRNN()
    with drnn.block():
        cur = drnn.step_input(trg)
        enc_t = drnn.static_input(enc)
        h = drnn.memory(init=boot, need_reorder=True)
        h_exp = layers.sequence_expand(layers.fc(h, E, bias_attr=False), enc_t)
        scores = layers.fc(layers.concat([enc_t, h_exp], axis=1), 1, act="tanh", bias_attr=False)
        weights = layers.reshape(layers.sequence_softmax(scores), [-1])
        context = layers.sequence_pool(layers.elementwise_mul(enc_t, weights, axis=0), "sum")
        new_h = layers.fc([cur, context, h], H, act="tanh")
        drnn.update_memory(h, new_h)
        drnn.output(new_h)
    return drnn()


def _attention_program(seed=13):
    main, startup = fk.Program(), fk.Program()
    main.random_seed = startup.random_seed = seed
    with fk.program_guard(main, startup):
        trg = layers.data("trg", shape=[D], dtype="float64", lod_level=1)
        enc = layers.data("enc", shape=[E], dtype="float64", lod_level=1)
        boot = layers.data("boot", shape=[H], dtype="float64")
        out = _attention_rnn(trg, enc, boot)
    return main, startup, out


def _attention_feed(trg_lengths, enc_lengths, seed=0):
    rng = np.random.default_rng(seed)
    return {"trg": fk.LoDTensor(rng.normal(size=(sum(trg_lengths), D)), _lod(trg_lengths)),
            "enc": fk.LoDTensor(rng.normal(size=(sum(enc_lengths), E)), _lod(enc_lengths)),
            "boot": rng.normal(size=(len(trg_lengths), H))}


def test_lod_static_input_matches_running_each_sequence_alone():
    """A batch gives each sequence what a batch of that sequence alone gives it: the static
    encoder states (whole LoD sequences) and the boot memory follow their sequence through
    the rank-table reordering and the shrinking."""
    main, startup, out = _attention_program()
    exe, scope = fk.Executor(fk.CPUPlace()), fk.Scope()
    exe.run(startup, scope=scope)
    trg_lengths, enc_lengths = [2, 4, 1, 3], [3, 1, 2, 2]
    feed = _attention_feed(trg_lengths, enc_lengths)
    batch, = exe.run(main, feed=feed, fetch_list=[out], scope=scope)
    t0, e0 = _lod(trg_lengths)[0], _lod(enc_lengths)[0]
    for i in range(len(trg_lengths)):
        one = {"trg": fk.LoDTensor(feed["trg"].values[t0[i]:t0[i + 1]], _lod([trg_lengths[i]])),
               "enc": fk.LoDTensor(feed["enc"].values[e0[i]:e0[i + 1]], _lod([enc_lengths[i]])),
               "boot": feed["boot"][i:i + 1]}
        alone, = exe.run(main, feed=one, fetch_list=[out], scope=scope)
        np.testing.assert_allclose(np.asarray(batch)[t0[i]:t0[i + 1]], np.asarray(alone), rtol=1e-12)


def test_gradient_of_the_attention_rnn_matches_finite_differences():
    main, startup, out = _attention_program()
    with fk.program_guard(main, startup):
        weight = layers.assign(np.random.default_rng(5).uniform(-1, 1, size=(6, H)))
        loss = layers.reduce_sum(layers.elementwise_mul(out, weight))
    feed = _attention_feed([2, 3, 1], [1, 3, 2], seed=1)
    check_program_grad(loss, feed, ["trg", "enc", "boot"] + [p.name for p in main.all_parameters()],
                       startup=startup)


def test_two_step_inputs_and_an_outer_tensor_read_in_the_step():
    """The gradient of a tensor of the enclosing block that the step reads directly (not a
    static input) is the sum over all steps; two step inputs share the first's rank table."""
    lengths = [1, 3, 2]
    main, startup = fk.Program(), fk.Program()
    main.random_seed = startup.random_seed = 2
    with fk.program_guard(main, startup):
        x = layers.data("x", shape=[D], dtype="float64", lod_level=1)
        y = layers.data("y", shape=[2], dtype="float64", lod_level=1)
        c = layers.data("c", shape=[H], dtype="float64")
        shift = layers.scale(c, 0.5)  # computed before the RNN, read by every step
        drnn = layers.DynamicRNN()
        with drnn.block():
            x_t, y_t = drnn.step_input(x), drnn.step_input(y)
            h = drnn.memory(shape=[H], dtype="float64")
            new_h = layers.elementwise_add(layers.fc([x_t, y_t, h], H, act="tanh"), shift)
            drnn.update_memory(h, new_h)
            drnn.output(new_h)
        weight = layers.assign(np.random.default_rng(1).uniform(-1, 1, size=(sum(lengths), H)))
        loss = layers.reduce_sum(layers.elementwise_mul(drnn(), weight))
    rng = np.random.default_rng(3)
    feed = {"x": fk.LoDTensor(rng.normal(size=(6, D)), _lod(lengths)),
            "y": fk.LoDTensor(rng.normal(size=(6, 2)), _lod(lengths)), "c": rng.normal(size=(1, H))}
    check_program_grad(loss, feed, ["x", "y", "c"], startup=startup)
    with pytest.raises(InvalidArgumentError, match="needs the same LoD as the rank table's input"):
        bad = dict(feed, y=fk.LoDTensor(feed["y"].values, _lod([2, 2, 2])))
        fk.Executor().run(main, feed=bad, fetch_list=[loss], scope=fk.Scope())


def test_training_program_round_trips_through_its_program_desc():
    """Both blocks (the step and its gradient) and the op's list attributes are serialized."""
    from fleetkit.core.program_desc import program_to_desc
    main, startup = fk.Program(), fk.Program()
    startup.random_seed = 3
    with fk.program_guard(main, startup):
        x = layers.data("x", shape=[D], dtype="float64", lod_level=1)
        h0 = layers.data("h0", shape=[H], dtype="float64")
        loss = layers.mean(_rnn(x, init=h0, need_reorder=True))
        fk.optimizer.SGD(0.5).minimize(loss)
    copy = fk.Program.parse_from_string(program_to_desc(main).SerializeToString())
    feed = {"x": fk.LoDTensor(_inputs(LENGTHS), _lod(LENGTHS)), "h0": np.ones((len(LENGTHS), H))}
    losses = []
    for program in (main, copy):
        exe, scope = fk.Executor(), fk.Scope()
        exe.run(startup, scope=scope)
        losses.append([np.asarray(exe.run(program, feed=feed, fetch_list=[loss.name], scope=scope)[0]).item()
                       for _ in range(3)])
    assert losses[0] == losses[1] and losses[0][2] < losses[0][0]


def test_a_test_program_keeps_no_step_scopes():
    """Step scopes exist for the backward pass; clone(for_test) marks the op is_test."""
    main, startup = fk.Program(), fk.Program()
    startup.random_seed = 1
    with fk.program_guard(main, startup):
        x = layers.data("x", shape=[D], dtype="float64", lod_level=1)
        out = _rnn(x)
    test_program = main.clone(for_test=True)
    name = next(op for op in main.global_block().ops if op.type == "dynamic_rnn").outputs["StepScopes"][0]
    exe, scope = fk.Executor(), fk.Scope()
    exe.run(startup, scope=scope)
    feed = {"x": fk.LoDTensor(_inputs(LENGTHS), _lod(LENGTHS))}
    train_out, = exe.run(main, feed=feed, fetch_list=[out], scope=scope)
    assert len(scope.get(name)) == max(LENGTHS)
    exe, test_scope = fk.Executor(), fk.Scope()
    exe.run(startup, scope=test_scope)
    test_out, = exe.run(test_program, feed=feed, fetch_list=[out], scope=test_scope)
    assert test_scope.find_var(name) is None
    np.testing.assert_array_equal(test_out, train_out)


def test_a_step_without_a_backward_runs_forward_and_says_so_when_trained():
    """A step with an IfElse runs forward for inference, and (IfElse has a backward now) trains."""
    main, startup = fk.Program(), fk.Program()
    with fk.program_guard(main, startup):
        x = layers.data("x", shape=[D], dtype="float64", lod_level=1)
        drnn = layers.DynamicRNN()
        with drnn.block():
            x_t = drnn.step_input(x)
            h = drnn.memory(shape=[D], dtype="float64")
            pre = layers.fc([x_t, h], D)
            ie = layers.IfElse(layers.fill_constant_batch_size_like(pre, [-1, 1], "bool", True))
            with ie.true_block():
                ie.output(layers.tanh(ie.input(pre)))
            with ie.false_block():
                ie.output(ie.input(pre))
            new_h, = ie()
            drnn.update_memory(h, new_h)
            drnn.output(new_h)
        out = drnn()
        test_program = main.clone(for_test=True)
        fk.optimizer.SGD(0.1).minimize(layers.mean(out))
    exe, scope = fk.Executor(), fk.Scope()
    exe.run(startup, scope=scope)
    feed = {"x": fk.LoDTensor(_inputs(LENGTHS), _lod(LENGTHS))}
    value, = exe.run(test_program, feed=feed, fetch_list=[out], scope=scope)
    assert value.shape == (sum(LENGTHS), D) and np.abs(value).max() < 1  # the tanh branch ran
    trained, = exe.run(main, feed=feed, fetch_list=[out], scope=scope)
    assert "dynamic_rnn_grad" in [op.type for op in main.global_block().ops] and np.isfinite(trained).all()


def test_a_step_writing_an_outer_variable_is_refused():
    with fk.program_guard(fk.Program(), fk.Program()):
        x = layers.data("x", shape=[D], dtype="float32", lod_level=1)
        total = layers.fill_constant([1], "float32", 0.0)
        drnn = layers.DynamicRNN()
        with pytest.raises(InvalidArgumentError, match=f"writes '{total.name}', a variable of the enclosing block"):
            with drnn.block():
                x_t = drnn.step_input(x)
                layers.assign(layers.reduce_sum(x_t), output=total)
                drnn.output(x_t)
