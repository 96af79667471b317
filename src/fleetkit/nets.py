"""``fluid.nets``: common sub-networks built from layers, with fluid 1.4 names and arguments."""
from __future__ import annotations

from typing import Any, Sequence

from .core import layers
from .core.framework import Variable
from .errors import InvalidArgumentError

__all__ = ["simple_img_conv_pool", "img_conv_group", "sequence_conv_pool", "glu", "scaled_dot_product_attention"]


def simple_img_conv_pool(input: Variable, num_filters: int, filter_size: Any, pool_size: Any, pool_stride: Any,
                         pool_padding: Any = 0, pool_type: str = "max", global_pooling: bool = False,
                         conv_stride: Any = 1, conv_padding: Any = 0, conv_dilation: Any = 1, conv_groups: int = 1,
                         param_attr: Any = None, bias_attr: Any = None, act: str | None = None,
                         use_cudnn: bool = True) -> Variable:
    """``conv2d`` (with ``act``) followed by ``pool2d``."""
    conv = layers.conv2d(input=input, num_filters=num_filters, filter_size=filter_size, stride=conv_stride,
                         padding=conv_padding, dilation=conv_dilation, groups=conv_groups, param_attr=param_attr,
                         bias_attr=bias_attr, act=act, use_cudnn=use_cudnn)
    return layers.pool2d(input=conv, pool_size=pool_size, pool_type=pool_type, pool_stride=pool_stride,
                         pool_padding=pool_padding, global_pooling=global_pooling, use_cudnn=use_cudnn)


def _per_conv(value: Any, n: int, what: str) -> list[Any]:
    """A scalar repeated for each of the ``n`` convolutions, or a list of exactly ``n``."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise InvalidArgumentError(f"img_conv_group: {what} has {len(value)} entries for {n} convolutions")
        return list(value)
    return [value] * n


def img_conv_group(input: Variable, conv_num_filter: Sequence[int], pool_size: Any, conv_padding: Any = 1,
                   conv_filter_size: Any = 3, conv_act: str | None = None, param_attr: Any = None,
                   conv_with_batchnorm: Any = False, conv_batchnorm_drop_rate: Any = 0.0, pool_stride: Any = 1,
                   pool_type: str = "max", use_cudnn: bool = True) -> Variable:
    """A VGG block: ``len(conv_num_filter)`` convolutions (each optionally batch-normed and
    dropped out), then one pool."""
    if not isinstance(conv_num_filter, (list, tuple)) or not conv_num_filter:
        raise InvalidArgumentError(f"img_conv_group: conv_num_filter must be a non-empty list, got {conv_num_filter!r}")
    n = len(conv_num_filter)
    padding = _per_conv(conv_padding, n, "conv_padding")
    fsize = _per_conv(conv_filter_size, n, "conv_filter_size")
    pattrs = _per_conv(param_attr, n, "param_attr")
    with_bn = _per_conv(conv_with_batchnorm, n, "conv_with_batchnorm")
    drop = _per_conv(conv_batchnorm_drop_rate, n, "conv_batchnorm_drop_rate")
    tmp = input
    for i in range(n):
        # with batch norm the activation comes after it, and the conv needs no bias
        tmp = layers.conv2d(input=tmp, num_filters=conv_num_filter[i], filter_size=fsize[i], padding=padding[i],
                            param_attr=pattrs[i], act=None if with_bn[i] else conv_act, use_cudnn=use_cudnn,
                            bias_attr=False if with_bn[i] else None)
        if with_bn[i]:
            tmp = layers.batch_norm(input=tmp, act=conv_act)
            if abs(float(drop[i])) > 1e-5:
                tmp = layers.dropout(x=tmp, dropout_prob=float(drop[i]))
    return layers.pool2d(input=tmp, pool_size=pool_size, pool_type=pool_type, pool_stride=pool_stride,
                         use_cudnn=use_cudnn)


def sequence_conv_pool(input: Variable, num_filters: int, filter_size: int, param_attr: Any = None,
                       act: str = "sigmoid", pool_type: str = "max", bias_attr: Any = None) -> Variable:
    """``sequence_conv`` followed by ``sequence_pool`` (text CNN)."""
    conv = layers.sequence_conv(input=input, num_filters=num_filters, filter_size=filter_size,
                                param_attr=param_attr, bias_attr=bias_attr, act=act)
    return layers.sequence_pool(input=conv, pool_type=pool_type)


def glu(input: Variable, dim: int = -1) -> Variable:
    """Gated linear unit: split ``input`` in two halves along ``dim``, ``a * sigmoid(b)``."""
    a, b = layers.split(input, num_or_sections=2, dim=dim)
    return layers.elementwise_mul(a, layers.sigmoid(b))


def scaled_dot_product_attention(queries: Variable, keys: Variable, values: Variable, num_heads: int = 1,
                                 dropout_rate: float = 0.0) -> Variable:
    """Multi-head attention ``softmax(Q K^T / sqrt(d)) V`` on 3-D ``[batch, length, hidden]`` inputs.

    With ``num_heads`` > 1, Q, K and V are first projected by ``fc`` layers (no bias) and
    split into heads; the heads' outputs are concatenated back to ``[batch, length, hidden]``.
    """
    for name, v in (("queries", queries), ("keys", keys), ("values", values)):
        if len(v.shape) != 3:
            raise InvalidArgumentError(f"scaled_dot_product_attention: {name} must be 3-D [batch, length, hidden], "
                                       f"'{v.name}' has shape {list(v.shape)}")
    if queries.shape[-1] != keys.shape[-1]:
        raise InvalidArgumentError(f"scaled_dot_product_attention: queries and keys need the same hidden size, got "
                                   f"{list(queries.shape)} and {list(keys.shape)}")
    if keys.shape[1] != values.shape[1] and keys.shape[1] >= 0 and values.shape[1] >= 0:
        raise InvalidArgumentError(f"scaled_dot_product_attention: keys and values need the same length, got "
                                   f"{list(keys.shape)} and {list(values.shape)}")
    for name, v in (("queries", queries), ("values", values)):
        if v.shape[-1] % num_heads:
            raise InvalidArgumentError(f"scaled_dot_product_attention: hidden size {v.shape[-1]} of {name} is not "
                                       f"divisible by num_heads={num_heads}")
    q, k, v = queries, keys, values
    if num_heads > 1:
        q = layers.fc(q, size=q.shape[-1], num_flatten_dims=2, bias_attr=False)
        k = layers.fc(k, size=k.shape[-1], num_flatten_dims=2, bias_attr=False)
        v = layers.fc(v, size=v.shape[-1], num_flatten_dims=2, bias_attr=False)
    q, k, v = (_split_heads(t, num_heads) for t in (q, k, v))
    key_dim = keys.shape[-1] // num_heads
    scores = layers.matmul(q, k, transpose_y=True, alpha=key_dim ** -0.5)
    weights = layers.softmax(scores)
    if dropout_rate:
        weights = layers.dropout(weights, dropout_prob=dropout_rate, is_test=False)
    return _combine_heads(layers.matmul(weights, v), num_heads)


def _split_heads(x: Variable, num_heads: int) -> Variable:
    """[batch, length, hidden] -> [batch, heads, length, hidden / heads]."""
    if num_heads == 1:
        return x
    hidden = x.shape[-1]
    reshaped = layers.reshape(x, shape=[0, 0, num_heads, hidden // num_heads])
    return layers.transpose(reshaped, perm=[0, 2, 1, 3])


def _combine_heads(x: Variable, num_heads: int) -> Variable:
    """[batch, heads, length, d] -> [batch, length, heads * d]."""
    if num_heads == 1:
        return x
    t = layers.transpose(x, perm=[0, 2, 1, 3])
    return layers.reshape(t, shape=[0, 0, t.shape[2] * t.shape[3]])
