"""fluid 1.4's public API (tests/data/fluid14_api.txt, from PaddlePaddle's API.spec) against fleetkit.

Every name either exists under fleetkit (``paddle.fluid.X`` -> ``fleetkit.X``, ``paddle.reader.X`` ->
``fleetkit.reader.X``) and is callable, or is listed as unsupported, with its reason, in
docs/porting.md (``paddle.fluid.layers.*`` in docs/porting-layers.md).  A listed class covers its
methods.  A name listed as unsupported that now exists fails the test, so the guide stays true.
"""
import re
from pathlib import Path

import pytest

import fleetkit

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "tests" / "data" / "fluid14_api.txt"
LAYERS = "paddle.fluid.layers."


def spec_names():
    return [ln.strip() for ln in SPEC.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def resolve(name):
    """The fleetkit object for a fluid 1.4 name, or None."""
    if name.startswith("paddle.fluid."):
        obj, rest = fleetkit, name[len("paddle.fluid."):]
    elif name.startswith("paddle.reader."):
        obj, rest = fleetkit.reader, name[len("paddle.reader."):]
    else:
        raise AssertionError(f"unexpected name {name}")
    for part in rest.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _reasons(doc, heading, prefix=""):
    text = (ROOT / "docs" / doc).read_text()
    m = re.search(heading + r"[^\n]*\n.*?```\n(.*?)```", text, re.S)
    assert m, f"docs/{doc} lost its list under {heading!r}"
    reasons = {prefix + k: v for k, v in (ln.split(": ", 1) for ln in m.group(2).strip().splitlines())}
    assert int(m.group(1)) == len(reasons), f"docs/{doc}: the heading says {m.group(1)}, the list has {len(reasons)}"
    return reasons


def unsupported():
    """fluid name -> reason, from both porting guides."""
    out = _reasons("porting.md", r"## Not supported outside layers \((\d+)\), and why")
    out.update(_reasons("porting-layers.md", r"## Not supported \((\d+)\), and why", LAYERS))
    return out


def _listed(name, reasons):
    parts = name.split(".")
    return any(".".join(parts[:i]) in reasons for i in range(2, len(parts) + 1))


def test_spec_file_is_the_14_list():
    names = spec_names()
    assert len(names) == len(set(names)) == 572
    assert "paddle.fluid.layers.fc" in names and "paddle.fluid.DataFeeder.feed" in names


def test_every_fluid_name_exists_and_is_callable_or_is_documented_unsupported(capsys):
    names, reasons = spec_names(), unsupported()
    found = {n: resolve(n) for n in names}
    present = [n for n in names if found[n] is not None]
    not_callable = [n for n in present if not callable(found[n])]
    assert not not_callable, f"exist but are not callable: {not_callable}"
    undocumented = [n for n in names if found[n] is None and not _listed(n, reasons)]
    assert not undocumented, f"neither in fleetkit nor in the porting guides' unsupported lists: {undocumented}"
    assert all(r.strip() for r in reasons.values())
    with capsys.disabled():
        print(f"\nfluid 1.4 API: {len(present)} of {len(names)} names exist in fleetkit "
              f"({len(names) - len(present)} documented as unsupported)")


def test_unsupported_lists_are_up_to_date():
    reasons = unsupported()
    spec = set(spec_names())
    assert not [n for n in reasons if n not in spec], "unsupported lists name things fluid 1.4 does not have"
    now_there = [n for n in reasons if resolve(n) is not None]
    assert not now_there, f"now in fleetkit: remove them from the unsupported list: {now_there}"


@pytest.mark.parametrize("path", [
    "fleetkit.incubate.fleet.parameter_server.distribute_transpiler", "fleetkit.incubate.fleet.collective",
    "fleetkit.incubate.fleet.base.role_maker", "fleetkit.incubate.data_generator", "fleetkit.transpiler",
    "fleetkit.core", "fleetkit.data_feeder", "fleetkit.param_attr", "fleetkit.backward", "fleetkit.io",
    "fleetkit.layers", "fleetkit.nets", "fleetkit.metrics", "fleetkit.profiler", "fleetkit.reader"])
def test_fluid_import_paths(path):
    import importlib
    mod = importlib.import_module(path)
    want = {"fleetkit.incubate.fleet.parameter_server.distribute_transpiler": ["fleet", "TranspilerOptimizer"],
            "fleetkit.incubate.fleet.collective": ["fleet", "DistributedStrategy"],
            "fleetkit.incubate.fleet.base.role_maker": ["PaddleCloudRoleMaker", "UserDefinedRoleMaker"],
            "fleetkit.incubate.data_generator": ["MultiSlotDataGenerator"],
            "fleetkit.core": ["Scope", "LoDTensor", "EOFException"]}.get(path, [])
    for name in want:
        assert getattr(mod, name, None) is not None, f"{path}.{name}"


#: fluid 1.4 argument lists (API.spec) of the names this surface implements: scripts pass them
#: by position and by keyword, so ours must start with exactly these parameters, in this order
SIGNATURES = {
    "paddle.fluid.DataFeeder": "feed_list place program",
    "paddle.fluid.DataFeeder.decorate_reader": "reader multi_devices num_places drop_last",
    "paddle.fluid.DataFeeder.feed": "iterable",
    "paddle.fluid.DataFeeder.feed_parallel": "iterable num_places",
    "paddle.fluid.io.PyReader": "feed_list capacity use_double_buffer iterable",
    "paddle.fluid.io.PyReader.decorate_batch_generator": "reader places",
    "paddle.fluid.io.PyReader.decorate_sample_generator": "sample_generator batch_size drop_last places",
    "paddle.fluid.io.PyReader.decorate_sample_list_generator": "reader places",
    "paddle.fluid.layers.py_reader": "capacity shapes dtypes lod_levels name use_double_buffer",
    "paddle.fluid.layers.create_py_reader_by_data": "capacity feed_list name use_double_buffer",
    "paddle.fluid.layers.read_file": "reader",
    "paddle.fluid.layers.double_buffer": "reader place name",
    "paddle.fluid.ParallelExecutor": "use_cuda loss_name main_program share_vars_from exec_strategy "
                                     "build_strategy num_trainers trainer_id scope",
    "paddle.fluid.ParallelExecutor.run": "fetch_list feed feed_dict return_numpy",
    "paddle.fluid.memory_optimize": "input_program skip_opt_set print_log level skip_grads",
    "paddle.fluid.release_memory": "input_program skip_opt_set",
    "paddle.fluid.transpiler.memory_optimize": "input_program skip_opt_set print_log level skip_grads",
    "paddle.fluid.nets.simple_img_conv_pool": "input num_filters filter_size pool_size pool_stride pool_padding "
                                              "pool_type global_pooling conv_stride conv_padding conv_dilation "
                                              "conv_groups param_attr bias_attr act use_cudnn",
    "paddle.fluid.nets.sequence_conv_pool": "input num_filters filter_size param_attr act pool_type bias_attr",
    "paddle.fluid.nets.glu": "input dim",
    "paddle.fluid.nets.scaled_dot_product_attention": "queries keys values num_heads dropout_rate",
    "paddle.fluid.nets.img_conv_group": "input conv_num_filter pool_size conv_padding conv_filter_size conv_act "
                                        "param_attr conv_with_batchnorm conv_batchnorm_drop_rate pool_stride "
                                        "pool_type use_cudnn",
    "paddle.fluid.profiler.cuda_profiler": "output_file output_mode config",
    "paddle.fluid.profiler.reset_profiler": "",
    "paddle.fluid.profiler.profiler": "state sorted_key profile_path",
    "paddle.fluid.profiler.start_profiler": "state",
    "paddle.fluid.profiler.stop_profiler": "sorted_key profile_path",
    "paddle.fluid.io.save_persistables": "executor dirname main_program filename",
    "paddle.fluid.io.save_params": "executor dirname main_program filename",
    "paddle.fluid.io.load_persistables": "executor dirname main_program filename",
    "paddle.fluid.io.save_inference_model": "dirname feeded_var_names target_vars executor main_program "
                                            "model_filename params_filename export_for_deployment",
    "paddle.fluid.cuda_places": "device_ids",
    "paddle.fluid.cpu_places": "device_count",
    "paddle.fluid.cuda_pinned_places": "device_count",
    "paddle.fluid.name_scope": "prefix",
    "paddle.fluid.create_random_int_lodtensor": "recursive_seq_lens base_shape place low high",
    "paddle.reader.cache": "reader",
    "paddle.reader.buffered": "reader size",
    "paddle.reader.shuffle": "reader buf_size",
    "paddle.reader.firstn": "reader n",
    "paddle.reader.xmap_readers": "mapper reader process_num buffer_size order",
    "paddle.reader.multiprocess_reader": "readers use_pipe queue_size",
    "paddle.reader.PipeReader": "command bufsize file_type",
    "paddle.reader.PipeReader.get_line": "cut_lines line_break",
    "paddle.reader.creator.np_array": "x",
    "paddle.reader.creator.text_file": "path",
}


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_surface_takes_fluid_14_arguments(name):
    import inspect
    obj = resolve(name)
    assert obj is not None, name
    params = [p.name for p in inspect.signature(obj).parameters.values()
              if p.name != "self" and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    want = SIGNATURES[name].split()
    assert params[:len(want)] == want, f"{name}: fleetkit takes {params}, fluid 1.4 {want}"


def test_layer_submodules_import_by_path_and_answer_every_layer():
    """``import paddle.fluid.layers.nn as nn`` (PaddleRec ssr/tagspace) and friends."""
    import importlib

    from fleetkit.core.layers.fluid_modules import FLUID_SUBMODULES
    import fleetkit.layers.nn as nn
    from fleetkit.layers.tensor import concat
    import fleetkit.layers.ops as ops
    fluid = fleetkit
    assert concat is fluid.layers.concat and ops.sigmoid is fluid.layers.sigmoid
    assert nn.sequence_conv is fluid.layers.sequence_conv   # kept in another fleetkit module
    for name in FLUID_SUBMODULES:
        mod = importlib.import_module(f"fleetkit.layers.{name}")
        assert mod.fc is fluid.layers.fc and mod.data is fluid.layers.data, name
    with pytest.raises(AttributeError, match=r"fleetkit.layers.multiclass_nms \(fluid 1.4\) is not supported"):
        getattr(importlib.import_module("fleetkit.layers.detection"), "multiclass_nms")
    with pytest.raises(AttributeError):
        getattr(nn, "no_such_layer")
