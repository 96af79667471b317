"""Op kernels, one module per family.  Importing this package registers them all."""
from . import basic, math, activation, tensor, tensor_index, nn, loss, metric, sequence, optimizer  # noqa: F401
from . import sequence_ext, rnn, nn_ext, sampled, model_average, activation_ext  # noqa: F401
from . import (tensor_ext, loss_ext, sequence_pad, metric_ext, crf, misc_ext, conv_ext,  # noqa: F401
               sequence_more, nn_more, extra, spatial, ctc, lstmp, conv3d, hash, io_ops, tree_conv, control_flow)
from . import lod_rank, dynamic_rnn, beam_search  # noqa: F401
