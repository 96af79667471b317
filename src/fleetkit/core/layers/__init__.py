"""``fleetkit.layers``: program builders with fluid 1.4 names and arguments."""
from .io import *  # noqa: F401,F403
from .nn import *  # noqa: F401,F403
from .tensor import *  # noqa: F401,F403
from .conv import *  # noqa: F401,F403
from .loss import *  # noqa: F401,F403
from .metric_op import *  # noqa: F401,F403
from .sequence import *  # noqa: F401,F403
from .learning_rate_scheduler import *  # noqa: F401,F403
from .sequence_ext import *  # noqa: F401,F403
from .rnn import *  # noqa: F401,F403
from .nn_ext import *  # noqa: F401,F403
from .activation_ext import *  # noqa: F401,F403
from .tensor_ext import *  # noqa: F401,F403
from .metric_ext import *  # noqa: F401,F403
from .crf import *  # noqa: F401,F403
from .misc_ext import *  # noqa: F401,F403
from .conv_ext import *  # noqa: F401,F403
from .nn_more import *  # noqa: F401,F403
from .extra import *  # noqa: F401,F403
from .conv3d import *  # noqa: F401,F403
from .control_flow import *  # noqa: F401,F403
from .static_rnn import *  # noqa: F401,F403
from .lod_rank import *  # noqa: F401,F403
from .dynamic_rnn import *  # noqa: F401,F403
from .beam_search import *  # noqa: F401,F403
# the 1.4 reader layers live beside PyReader (one module for the input pipeline)
from ..pyreader import create_py_reader_by_data, double_buffer, py_reader, read_file  # noqa: F401
from . import io, nn, tensor, conv, loss, metric_op, sequence, learning_rate_scheduler  # noqa: F401
from . import sequence_ext, rnn, nn_ext, activation_ext, tensor_ext, metric_ext, crf, misc_ext, conv_ext, nn_more, extra, conv3d  # noqa: F401


def __getattr__(name: str):
    # a fluid 1.4 layer fleetkit does not have: say why, instead of a bare AttributeError
    from .unsupported import REASONS
    if name in REASONS:
        raise AttributeError(f"fleetkit.layers.{name} (fluid 1.4) is not supported: {REASONS[name]} "
                             f"(docs/porting-layers.md)")
    raise AttributeError(f"module 'fleetkit.layers' has no attribute '{name}'")
