"""More layers (fluid 1.4 names, arguments and defaults): adaptive_pool2d, image_resize_short,
continuous_value_model, ctc_greedy_decoder, mean_iou, sequence_scatter, random_crop,
merge_selected_rows, get_tensor_from_selected_rows, affine_grid, grid_sampler, fsp_matrix, space_to_depth,
temporal_shift, teacher_student_sigmoid_loss, warpctc, hash, load, py_func, similarity_focus, tree_conv."""
from __future__ import annotations

from typing import Any, Sequence

from ...errors import InvalidArgumentError
from ..framework import Variable
from ..layer_helper import LayerHelper
from .conv import _require_4d, _to_pair
from .conv_ext import image_resize
from .metric_op import topk
from .checks import need_vars

__all__ = ["adaptive_pool2d", "image_resize_short", "continuous_value_model", "ctc_greedy_decoder", "mean_iou",
           "sequence_scatter", "random_crop", "merge_selected_rows", "get_tensor_from_selected_rows", "affine_grid",
           "grid_sampler", "fsp_matrix", "space_to_depth", "temporal_shift", "teacher_student_sigmoid_loss",
           "warpctc", "hash", "load", "py_func", "similarity_focus", "tree_conv"]


def _op(op_type: str, inputs: dict, attrs: dict | None = None, out_slot: str = "Out", dtype: str | None = None,
        name: str | None = None, stop_gradient: bool = False) -> Variable:
    helper = LayerHelper(op_type, name=name)
    first = next(iter(inputs.values()))
    out = helper.create_variable_for_type_inference(dtype or first.dtype, stop_gradient=stop_gradient)
    helper.append_op(op_type, {k: [v] for k, v in inputs.items()}, {out_slot: [out]}, attrs or {})
    return out


def adaptive_pool2d(input: Variable, pool_size: Any, pool_type: str = "max", require_index: bool = False,
                    name: str | None = None) -> Variable:
    """Max or average pooling to a fixed ``pool_size`` output grid, whatever the input size."""
    need_vars("adaptive_pool2d", input=input)
    _require_4d("adaptive_pool2d", input)
    if pool_type not in ("max", "avg"):
        raise InvalidArgumentError(f"adaptive_pool2d: pool_type must be 'max' or 'avg', got {pool_type!r}")
    if require_index:
        raise InvalidArgumentError("adaptive_pool2d: require_index (the max positions) is not supported")
    return _op("adaptive_pool2d", {"X": input}, {"ksize": _to_pair(pool_size, "adaptive_pool2d", "pool_size"),
                                                 "pooling_type": pool_type}, name=name)


def image_resize_short(input: Variable, out_short_len: int, resample: str = "BILINEAR") -> Variable:
    """Resize so the shorter of H and W becomes ``out_short_len``, keeping the aspect ratio."""
    need_vars("image_resize_short", input=input)
    hw = list(input.shape[2:4])
    if len(hw) != 2 or min(hw) <= 0:
        raise InvalidArgumentError(f"image_resize_short: input '{input.name}' needs known H and W, got "
                                   f"{list(input.shape)}")
    short = hw.index(min(hw))
    out = list(hw)
    out[short] = int(out_short_len)
    out[1 - short] = int(float(hw[1 - short]) * (float(out_short_len) / float(hw[short])) + 0.5)
    return image_resize(input, out_shape=out, resample=resample)


def continuous_value_model(input: Variable, cvm: Variable, use_cvm: bool = True) -> Variable:
    """The CVM op of Paddle's CTR stack: input's first two columns are show and click counts;
    with ``use_cvm`` they become log(show + 1) and log(click + 1) - log(show + 1), else they are
    dropped.  Their gradient is the ``cvm`` input itself, as in fluid."""
    need_vars("continuous_value_model", input=input, cvm=cvm)
    return _op("cvm", {"X": input, "CVM": cvm}, {"use_cvm": bool(use_cvm)}, out_slot="Y")


def ctc_greedy_decoder(input: Variable, blank: int, name: str | None = None) -> Variable:
    """Best path decoding of per-step class probabilities [T, C] (a LoD tensor): the arg max
    of each step, repeats merged, ``blank`` removed.  Returns int64 [T', 1] with the LoD."""
    need_vars("ctc_greedy_decoder", input=input)
    _, ids = topk(input, k=1)
    return _op("ctc_align", {"Input": ids}, {"blank": int(blank), "merge_repeated": True}, out_slot="Output",
               dtype="int64", name=name, stop_gradient=True)


def mean_iou(input: Variable, label: Variable, num_classes: int) -> tuple[Variable, Variable, Variable]:
    """Mean intersection-over-union of predicted and true class ids; returns
    (mean_iou, wrong counts per class, correct counts per class)."""
    need_vars("mean_iou", input=input, label=label)
    helper = LayerHelper("mean_iou")
    outs = {s: helper.create_variable_for_type_inference(dt, stop_gradient=True)
            for s, dt in (("OutMeanIou", "float32"), ("OutWrong", "int32"), ("OutCorrect", "int32"))}
    helper.append_op("mean_iou", {"Predictions": [input], "Labels": [label]}, {k: [v] for k, v in outs.items()},
                     {"num_classes": int(num_classes)})
    return outs["OutMeanIou"], outs["OutWrong"], outs["OutCorrect"]


def sequence_scatter(input: Variable, index: Variable, updates: Variable, name: str | None = None) -> Variable:
    """Add ``updates`` into row i of ``input`` at the columns ``index`` lists for sequence i."""
    need_vars("sequence_scatter", input=input, index=index, updates=updates)
    return _op("sequence_scatter", {"X": input, "Ids": index, "Updates": updates}, name=name)


def random_crop(x: Variable, shape: Sequence[int], seed: Any = None) -> Variable:
    """A random ``shape`` window of the trailing dims of every instance."""
    need_vars("random_crop", x=x)
    if isinstance(seed, Variable):
        raise InvalidArgumentError("random_crop: a Variable seed is not supported; pass an int")
    return _op("random_crop", {"X": x}, {"shape": [int(d) for d in shape], "startup_seed": int(seed or 0)},
               stop_gradient=True)


def merge_selected_rows(x: Variable, name: str | None = None) -> Variable:
    """Sum the repeated rows of a SelectedRows (e.g. a sparse gradient)."""
    need_vars("merge_selected_rows", x=x)
    helper = LayerHelper("merge_selected_rows", name=name)
    out = helper.create_variable(name=f"{helper.name}.out", dtype=x.dtype, type="selected_rows",
                                 stop_gradient=True)
    helper.append_op("merge_selected_rows", {"X": [x]}, {"Out": [out]})
    return out


def get_tensor_from_selected_rows(x: Variable, name: str | None = None) -> Variable:
    """The value tensor of a SelectedRows."""
    need_vars("get_tensor_from_selected_rows", x=x)
    return _op("get_tensor_from_selected_rows", {"X": x}, name=name, stop_gradient=True)


def affine_grid(theta: Variable, out_shape: Sequence[int], name: str | None = None) -> Variable:
    """The sampling grid [N, H, W, 2] of the affine maps ``theta`` [N, 2, 3] for an output of
    ``out_shape`` [N, C, H, W] (a list)."""
    need_vars("affine_grid", theta=theta)
    if isinstance(out_shape, Variable):
        raise InvalidArgumentError("affine_grid: out_shape must be a list here (a Variable is not supported)")
    return _op("affine_grid", {"Theta": theta}, {"output_shape": [int(d) for d in out_shape]}, out_slot="Output",
               name=name)


def grid_sampler(x: Variable, grid: Variable, name: str | None = None) -> Variable:
    """Bilinear samples of ``x`` [N, C, H, W] at ``grid`` [N, H', W', 2] (coordinates in [-1, 1],
    zero outside the image)."""
    need_vars("grid_sampler", x=x, grid=grid)
    return _op("grid_sampler", {"X": x, "Grid": grid}, out_slot="Output", name=name)


def fsp_matrix(x: Variable, y: Variable) -> Variable:
    """The flow-of-solution-procedure matrix [N, C_x, C_y] of two feature maps (distillation)."""
    need_vars("fsp_matrix", x=x, y=y)
    return _op("fsp_matrix", {"X": x, "Y": y})


def space_to_depth(x: Variable, blocksize: int, name: str | None = None) -> Variable:
    """[N, C, H, W] -> [N, C * b * b, H / b, W / b], with fluid's (darknet reorg) element order."""
    need_vars("space_to_depth", x=x)
    return _op("space_to_depth", {"X": x}, {"blocksize": int(blocksize)}, name=name)


def temporal_shift(x: Variable, seg_num: int, shift_ratio: float = 0.25, name: str | None = None) -> Variable:
    """Temporal shift (TSM) of [N * seg_num, C, H, W] frames: the first shift_ratio of the
    channels read the previous frame, the next shift_ratio the following one."""
    need_vars("temporal_shift", x=x)
    return _op("temporal_shift", {"X": x}, {"seg_num": int(seg_num), "shift_ratio": float(shift_ratio)}, name=name)


def teacher_student_sigmoid_loss(input: Variable, label: Variable, soft_max_up_bound: float = 15.0,
                                 soft_max_lower_bound: float = -15.0) -> Variable:
    """Sigmoid cross entropy against a click and, when present, a teacher's score (label -2:
    no click, no score; -1: click, no score; q in [0, 1): no click, score q; 1 + q: click)."""
    need_vars("teacher_student_sigmoid_loss", input=input, label=label)
    return _op("teacher_student_sigmoid_loss", {"X": input, "Label": label},
               {"soft_max_up_bound": float(soft_max_up_bound), "soft_max_lower_bound": float(soft_max_lower_bound)},
               out_slot="Y")


def warpctc(input: Variable, label: Variable, blank: int = 0, norm_by_times: bool = False,
            use_cudnn: bool = False) -> Variable:
    """CTC loss [N, 1] of unnormalized logits ``input`` [T, C] (a LoD tensor; the softmax is
    applied inside) against int label sequences ``label`` (a LoD tensor without blanks)."""
    need_vars("warpctc", input=input, label=label)
    helper = LayerHelper("warpctc")
    loss = helper.create_variable_for_type_inference(input.dtype)
    grad = helper.create_variable_for_type_inference(input.dtype, stop_gradient=True)
    helper.append_op("warpctc", {"Logits": [input], "Label": [label]}, {"Loss": [loss], "WarpCTCGrad": [grad]},
                     {"blank": int(blank), "norm_by_times": bool(norm_by_times)})
    return loss


def hash(input: Variable, hash_size: int, num_hash: int = 1, name: str | None = None) -> Variable:
    """``num_hash`` hashes of each row of int64 ids (XXH64 with seeds 0, 1, ..., as fluid) modulo
    ``hash_size``: [..., num_hash, 1], keeping the input's LoD."""
    need_vars("hash", input=input)
    return _op("hash", {"X": input}, {"num_hash": int(num_hash), "mod_by": int(hash_size)}, name=name,
               stop_gradient=True)


def load(out: Variable, file_path: str, load_as_fp16: bool | None = None) -> None:
    """Fill ``out`` from ``file_path`` (one variable in the LoDTensor file layout that
    ``io.save_vars`` writes) each time the program runs."""
    need_vars("load", out=out)
    helper = LayerHelper("load")
    helper.append_op("load", {}, {"Out": [out]}, {"file_path": str(file_path), "load_as_fp16": bool(load_as_fp16)})


def py_func(func: Any, x: Any, out: Any, backward_func: Any = None,
            skip_vars_in_backward_input: Any = None) -> Any:
    """An op that calls ``func(*x)`` (LoDTensors in, arrays or LoDTensors out) into the
    pre-created ``out`` variables; ``backward_func(*x, *out, *out_grads)`` (minus the
    skipped variables) returns the gradients of ``x``.  Without it the outputs stop the
    gradient.  The functions live in this process: such a program cannot be saved and run
    elsewhere."""
    from ..ops.io_ops import register_py_func
    xs = list(x) if isinstance(x, (list, tuple)) else ([] if x is None else [x])
    outs = list(out) if isinstance(out, (list, tuple)) else [out]
    need_vars("py_func", **{f"x[{i}]": v for i, v in enumerate(xs)}, **{f"out[{i}]": v for i, v in enumerate(outs)})
    skip = skip_vars_in_backward_input
    skip = [skip] if isinstance(skip, Variable) else list(skip or [])
    known = {v.name for v in xs + outs}
    names = [v.name if isinstance(v, Variable) else str(v) for v in skip]
    if any(n not in known for n in names):
        raise InvalidArgumentError(f"py_func: skip_vars_in_backward_input {names} must be inputs or outputs of the op")
    helper = LayerHelper("py_func")
    helper.append_op("py_func", {"X": xs}, {"Out": outs},
                     {"forward_callable_id": register_py_func(func), "backward_callable_id": register_py_func(
                         backward_func), "backward_skip_vars": names})
    if backward_func is None:
        for v in outs:
            v.stop_gradient = True
    return out


def similarity_focus(input: Variable, axis: int, indexes: Sequence[int], name: str | None = None) -> Variable:
    """A 0/1 mask of ``input`` [N, C, A, B]: for each channel in ``indexes`` along ``axis``, the
    largest entries of that 2-D slice taken greedily with distinct rows and columns, marked
    across the whole axis (unioned over the indexes)."""
    need_vars("similarity_focus", input=input)
    return _op("similarity_focus", {"X": input}, {"axis": int(axis), "indexes": [int(i) for i in indexes]},
               name=name, stop_gradient=True)


def tree_conv(nodes_vector: Variable, edge_set: Variable, output_size: int, num_filters: int = 1,
              max_depth: int = 2, act: str | None = "tanh", param_attr: Any = None, bias_attr: Any = None,
              name: str | None = None) -> Variable:
    """Tree-based convolution of node features [N, nodes, F] over the trees ``edge_set``
    [N, edges, 2] (1-based (parent, child) ids, (0, 0) ends a list): [N, nodes, output_size,
    num_filters], then a bias over those dims and ``act``."""
    need_vars("tree_conv", nodes_vector=nodes_vector, edge_set=edge_set)
    if len(nodes_vector.shape) != 3 or any(d <= 0 for d in nodes_vector.shape[1:]):
        raise InvalidArgumentError(f"tree_conv: nodes_vector '{nodes_vector.name}' must be [N, nodes, F] with nodes "
                                   f"and F known, got {list(nodes_vector.shape)}")
    helper = LayerHelper("tree_conv", act=act, name=name)
    w = helper.create_parameter(param_attr, [nodes_vector.shape[2], 3, int(output_size), int(num_filters)],
                                nodes_vector.dtype)
    out = helper.create_variable_for_type_inference(nodes_vector.dtype)
    helper.append_op("tree_conv", {"NodesVector": [nodes_vector], "EdgeSet": [edge_set], "Filter": [w]},
                     {"Out": [out]}, {"max_depth": int(max_depth)})
    if bias_attr is not False:  # as fluid: one bias per (node, output, filter)
        b = helper.create_parameter(bias_attr, list(out.shape[1:]), out.dtype, is_bias=True)
        biased = helper.create_variable_for_type_inference(out.dtype)
        helper.append_op("elementwise_add", {"X": [out], "Y": [b]}, {"Out": [biased]}, {"axis": 1})
        out = biased
    return helper.append_activation(out)
