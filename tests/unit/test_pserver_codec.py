"""pserver wire codec: every value type round-trips through raw bytes, chunking, plain-protobuf
compatibility, and malformed input is rejected with a clear error (no sockets here)."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from fleetkit.core.scope import LoDTensor, SelectedRows
from fleetkit.errors import DTypeError
from fleetkit.proto.sendrecv_pb2 import VariableMessage
from fleetkit.pserver import codec


def _wire(value, max_bytes=codec.DEFAULT_MAX_MESSAGE_BYTES, **kw):
    envs = codec.encode("v", value, max_bytes=max_bytes, **kw)
    asm, whole = codec.Reassembler(), None
    for env in reversed(envs):  # out of order on purpose
        whole = asm.add(codec.from_bytes(codec.to_bytes(env))) or whole
    return envs, codec.decode(whole)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "int64", "int32", "int16",
                                   "int8", "uint8", "bool"])
def test_dense_round_trip_every_dtype(dtype):
    a = (np.arange(24) % 7).astype(dtype).reshape(2, 3, 4)
    _, b = _wire(a)
    assert b.dtype == a.dtype and b.shape == a.shape and np.array_equal(a, b)


def test_scalar_empty_noncontiguous_and_big_endian():
    for a in (np.float32(3.5) * np.ones(()), np.zeros((0, 5), np.float32),
              np.arange(20, dtype=np.float64).reshape(4, 5).T, np.arange(6, dtype=">f4")):
        _, b = _wire(a)
        assert np.array_equal(a, b) and b.shape == a.shape


def test_lod_tensor_and_selected_rows():
    lt = LoDTensor(np.arange(10, dtype=np.int64).reshape(5, 2), [[0, 2, 5]])
    _, out = _wire(lt)
    assert isinstance(out, LoDTensor) and out.lod() == [[0, 2, 5]] and np.array_equal(out.values, lt.values)
    sr = SelectedRows([3, 1, 3], np.arange(6, dtype=np.float32).reshape(3, 2), height=10)
    _, out = _wire(sr)
    assert isinstance(out, SelectedRows) and out.height == 10
    assert out.rows.tolist() == [3, 1, 3] and np.array_equal(out.values, sr.values)


@pytest.mark.parametrize("max_bytes", [1, 7, 64, 1000])
def test_chunking_reassembles_any_split(max_bytes):
    sr = SelectedRows(np.arange(50) * 3, np.random.RandomState(0).rand(50, 4), height=200)
    envs, out = _wire(sr, max_bytes=max_bytes)
    assert len(envs) > 1
    assert all(memoryview(e.rows).nbytes + memoryview(e.data).nbytes <= max_bytes for e in envs)
    assert np.array_equal(out.rows, sr.rows) and np.array_equal(out.values, sr.values)
    dense = np.random.RandomState(1).rand(33, 7).astype(np.float32)
    envs, out = _wire(dense, max_bytes=max_bytes)
    assert np.array_equal(out, dense)
    assert out.flags.writeable == (len(envs) > 1)  # reassembled buffers are ours


def test_encode_is_zero_copy_and_decode_views_the_buffer():
    a = np.arange(1 << 16, dtype=np.float32)
    env = codec.encode("a", a)[0]
    assert np.shares_memory(np.frombuffer(env.data, np.float32), a)
    raw = codec.to_bytes(env)
    out = codec.decode(codec.from_bytes(raw))
    assert np.array_equal(out, a) and not out.flags.owndata


def test_plain_protobuf_reads_and_writes_the_same_bytes():
    sr = SelectedRows([4, 2], np.ones((2, 3), np.float32), height=9)
    env = codec.encode("g", sr, trainer_id=1, round=5)[0]
    msg = VariableMessage.FromString(codec.to_bytes(env))
    assert msg.varname == "g" and msg.trainer_id == 1 and msg.round == 5 and msg.slr_height == 9
    assert np.frombuffer(msg.rows, np.int64).tolist() == [4, 2]
    back = codec.decode(codec.from_bytes(msg.SerializeToString()))
    assert back.rows.tolist() == [4, 2] and np.array_equal(back.values, sr.values)
    assert codec.to_message(env) == msg


def test_truncated_and_malformed_messages_are_rejected_clearly():
    env = codec.encode("w", np.ones((4, 4), np.float32))[0]
    env.data = memoryview(env.data)[:10]
    with pytest.raises(codec.PayloadError, match=r"truncated payload for variable 'w'.*64 tensor bytes"):
        codec.decode(env)
    raw = codec.to_bytes(codec.encode("w", np.ones((4, 4), np.float32))[0])
    with pytest.raises(codec.PayloadError, match="truncated"):
        codec.from_bytes(raw[:-5])
    with pytest.raises(codec.PayloadError):
        codec.from_bytes(b"\xff\xff\xff")
    bad = codec.control("x")
    bad.header.data_type = 17  # no such code
    bad.header.dims.extend([2])
    with pytest.raises(codec.PayloadError, match="unknown data_type"):
        codec.decode(bad)
    sr = codec.encode("s", SelectedRows([1, 12], np.ones((2, 2), np.float32), height=10))[0]
    with pytest.raises(codec.PayloadError, match="outside"):
        codec.decode(sr)
    lod = codec.encode("l", LoDTensor(np.ones((3, 1)), [[0, 1, 3]]))[0]
    lod.header.lod[0].lod_data[-1] = 7
    with pytest.raises(codec.PayloadError, match="bad LoD"):
        codec.decode(lod)


def test_unsupported_dtype_names_the_variable():
    with pytest.raises(DTypeError, match="'c'.*complex"):
        codec.encode("c", np.ones(3, np.complex64))


def test_grpc_failures_map_to_retryable_or_permanent_fleetkit_errors():
    import grpc

    from fleetkit import errors
    from fleetkit.pserver import rpc

    class Failed(grpc.RpcError):
        def __init__(self, code, details="why", md=()):
            self._c, self._d, self._md = code, details, md

        def code(self):
            return self._c

        def details(self):
            return self._d

        def trailing_metadata(self):
            return self._md

    S = grpc.StatusCode
    cases = {S.UNAVAILABLE: (errors.PServerUnavailableError, errors.RetryableError),
             S.DEADLINE_EXCEEDED: (errors.RPCDeadlineError, errors.RetryableError),
             S.UNAUTHENTICATED: (errors.RPCAuthError, errors.PermanentError),
             S.INVALID_ARGUMENT: (errors.RPCRequestError, errors.PermanentError),
             S.NOT_FOUND: (errors.RPCRequestError, errors.PermanentError),
             S.INTERNAL: (errors.PServerError, errors.PermanentError),
             S.ABORTED: (errors.PServerError, errors.PermanentError)}
    for code, (cls, family) in cases.items():
        e = rpc.map_rpc_error(Failed(code), "10.0.0.1:6174", "fc.w@GRAD", "SendVariable")
        assert type(e) is cls and isinstance(e, family) and isinstance(e, errors.RPCError), code
        assert "10.0.0.1:6174" in str(e) and "'fc.w@GRAD'" in str(e) and code.name in str(e)
        assert e.endpoint == "10.0.0.1:6174" and e.varname == "fc.w@GRAD" and e.code == code.name
        assert rpc.is_retryable(Failed(code)) == (code == S.UNAVAILABLE)
    e = rpc.map_rpc_error(Failed(S.ABORTED, "round failed", ((rpc.MISSING_TRAINERS_KEY, "1,3"),)),
                          "h:1", "w", "GetVariable")
    assert isinstance(e, errors.BarrierTimeoutError) and e.missing_trainers == (1, 3)


# ------------------------------------------------------------ reassembly bounds
def _chunks(name="g", n=1 << 12, count=4, trainer=0, dtype=np.float32):
    envs = codec.encode(name, np.ones(n, dtype), trainer, max_bytes=(n * np.dtype(dtype).itemsize) // count)
    assert len(envs) == count
    return envs


def test_reassembly_holds_only_bytes_received_never_what_a_header_declares():
    """Two tiny chunks declaring a 1 GiB value hold a few hundred bytes (the old code
    zero-filled the declared size), and are refused above the per-trainer limit."""
    asm = codec.Reassembler(max_bytes_per_trainer=1 << 31, max_bytes=1 << 32)
    tracemalloc.start()
    for k in (0, 1):
        h = VariableMessage(varname="w@GRAD", data_type=VariableMessage.FP32, dims=[1 << 28],
                            chunk_index=k, chunk_count=1 << 26)
        env = codec.Envelope(h, b"", b"\0" * 16)
        assert asm.add(env) is None
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1 << 20 and asm.held == 2 * (16 + codec.Reassembler.OVERHEAD)
    small = codec.Reassembler(max_bytes_per_trainer=1 << 20)
    h = VariableMessage(varname="w@GRAD", data_type=VariableMessage.FP32, dims=[1 << 28],
                        chunk_index=0, chunk_count=1 << 26)
    with pytest.raises(codec.PayloadError, match=r"'w@GRAD'.*1073741824 bytes exceeds .*limit of 1048576"):
        small.add(codec.Envelope(h, b"", b"\0" * 16))
    assert small.held == 0


def test_a_wrong_sized_chunk_is_refused_before_it_is_stored():
    asm = codec.Reassembler()
    env = _chunks()[1]
    env.data = memoryview(env.data)[:10]
    with pytest.raises(codec.PayloadError, match=r"truncated chunk 1/4 of variable 'g': expected 4096 bytes, got 10"):
        asm.add(env)
    assert asm.held == 0


def test_per_trainer_and_per_server_limits_and_stale_transfers():
    now = [0.0]
    per_chunk = 4096 + codec.Reassembler.OVERHEAD
    asm = codec.Reassembler(max_bytes_per_trainer=(1 << 14) + 1000, max_bytes=5 * per_chunk, timeout_s=10,
                            clock=lambda: now[0])
    a = _chunks("a")
    for e in a[:3]:
        asm.add(e)
    with pytest.raises(codec.PayloadError, match=r"'a': chunk 3 would make trainer 0's unfinished .* "
                                                 r"limit of \d+ bytes per trainer"):
        asm.add(a[3])
    now[0] = 5.0
    for e in _chunks("b", trainer=1)[:2]:
        asm.add(e)
    with pytest.raises(codec.PayloadError, match="'c': chunk 0 would make unfinished chunked values exceed"):
        asm.add(_chunks("c", trainer=2)[0])
    now[0] = 11.0   # trainer 0's value went stale: dropped, its bytes freed
    assert asm.expire() == [(0, "a", 0, "")]
    assert asm.held == 2 * per_chunk
    asm.discard(1)
    assert asm.held == 0
    # a complete value still reassembles, and a retried chunk is not counted twice
    c = _chunks("c", n=1 << 10)
    whole = None
    for e in (c[0], c[0], c[1], c[2], c[3]):
        whole = asm.add(e) or whole
    assert np.array_equal(codec.decode(whole), np.ones(1 << 10, np.float32)) and asm.held == 0


@pytest.mark.parametrize("value", [np.arange(64, dtype=np.float32).reshape(64, 1), np.zeros((0, 3), np.int64),
                                   np.ones(()), np.arange(6, dtype=np.int8).reshape(2, 3)])
def test_dense_parts_are_what_encode_writes(value):
    env = codec.encode("w", value)[0]
    for _ in range(2):   # the second time from the header cache
        head, data = codec.dense_parts("w", value)
        assert head == env.header.SerializeToString() and bytes(data) == bytes(env.data)
    assert codec.dense_parts("w", np.full_like(value, 7))[0] == head   # same name, dtype, shape: same header


def test_dense_parts_leave_other_values_to_encode():
    for value in (np.ones((3, 4))[:, :2], np.ones(3, ">f4"), np.float64(1.0), LoDTensor(np.ones((2, 1)), [[0, 2]]),
                  SelectedRows(np.array([1]), np.ones((1, 2)), 4), np.array(["a"])):
        assert codec.dense_parts("w", value) is None


def test_header_from_bytes_refuses_a_payload_and_junk():
    env = codec.encode("w", np.ones(3, np.float32), trainer_id=2, seq=9)[0]
    h = codec.header_from_bytes(memoryview(env.header.SerializeToString()))
    assert (h.varname, h.trainer_id, h.seq, list(h.dims)) == ("w", 2, 9, [3])
    with pytest.raises(codec.PayloadError, match="payload inside the bulk frame's header"):
        codec.header_from_bytes(codec.to_bytes(env))
    with pytest.raises(codec.PayloadError, match="malformed message header"):
        codec.header_from_bytes(b"\x0a\xff\xff\xff\x0f")
