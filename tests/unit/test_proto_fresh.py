"""The committed protobuf modules are what scripts/gen_proto.sh generates from the .proto files,
pyproject.toml pins the generator exactly (a new upstream release cannot make them look stale),
and it requires a protobuf runtime that can load that generated code."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "src" / "fleetkit" / "proto"
GENERATED = re.compile(r".*_pb2(_grpc)?\.pyi?$")


def _generated(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in d.iterdir() if GENERATED.match(p.name)}


def _pinned_generator() -> str:
    pyproject = (ROOT / "pyproject.toml").read_text()
    pin = re.search(r'"grpcio-tools==([0-9.]+)"', pyproject)
    assert pin, "pyproject.toml must pin grpcio-tools exactly (==): its protoc decides the generated code"
    return pin.group(1)


def test_generator_is_pinned_and_installed_at_the_pin():
    from importlib.metadata import PackageNotFoundError, version

    pinned = _pinned_generator()
    try:
        installed = version("grpcio-tools")
    except PackageNotFoundError:
        pytest.fail(f"grpcio-tools is not installed: pip install -e '.[test]' (it pins =={pinned})")
    assert installed == pinned, (f"grpcio-tools {installed} is installed but the committed modules are "
                                 f"compared against grpcio-tools=={pinned}: pip install -e '.[test]'")


def test_committed_generated_modules_are_fresh(tmp_path):
    pytest.importorskip("grpc_tools", reason="grpcio-tools is in the 'test' extra")
    env = {**os.environ, "PYTHON": sys.executable}
    r = subprocess.run(["bash", str(ROOT / "scripts" / "gen_proto.sh"), str(tmp_path)], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    fresh = _generated(tmp_path / "fleetkit" / "proto")
    committed = _generated(PROTO_DIR)
    assert fresh, "gen_proto.sh generated nothing"
    assert sorted(committed) == sorted(fresh), "generated files differ: run scripts/gen_proto.sh"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale generated files {stale}: run scripts/gen_proto.sh and commit the result"


def test_pyproject_requires_the_gencode_protobuf_version():
    header = (PROTO_DIR / "framework_pb2.py").read_text()
    gencode = re.search(r"# Protobuf Python Version: (\d+)\.(\d+)\.(\d+)", header)
    assert gencode, "no version header in framework_pb2.py"
    pyproject = (ROOT / "pyproject.toml").read_text()
    req = re.search(r'"protobuf>=(\d+)\.(\d+)(?:\.(\d+))?', pyproject)
    assert req, "pyproject.toml does not pin a protobuf lower bound"
    lower = tuple(int(x or 0) for x in req.groups())
    assert lower >= tuple(map(int, gencode.groups())), (
        f"generated code needs protobuf>={'.'.join(gencode.groups())}, pyproject allows {lower}")
    cap = re.search(r'"protobuf>=[0-9.]+,<(\d+)"', pyproject)
    assert cap and int(cap.group(1)) == lower[0] + 1, (
        f"pyproject.toml must cap protobuf below {lower[0] + 1}: a new major runtime refuses this gencode")


def test_generated_modules_import_with_the_installed_runtime():
    from fleetkit.proto import framework_pb2

    desc = framework_pb2.ProgramDesc(version=1)
    desc.blocks.add(idx=0, parent_idx=-1)
    assert framework_pb2.ProgramDesc.FromString(desc.SerializeToString()) == desc


def test_sendrecv_service_matches_the_runtime_method_paths():
    """The pserver runtime builds its stubs from method paths by hand (rpc.py); they must be
    exactly the service the .proto declares, and the Paddle field numbers must hold."""
    from fleetkit.proto import sendrecv_pb2
    from fleetkit.pserver import rpc

    svc = sendrecv_pb2.DESCRIPTOR.services_by_name["SendRecvService"]
    assert svc.full_name == rpc.SERVICE
    assert sorted(m.name for m in svc.methods) == sorted(rpc.METHODS)
    for m in svc.methods:
        void = m.output_type.name == "VoidMessage"
        assert void == (m.name in rpc.VOID_METHODS), m.name
    fields = {f.name: f.number for f in sendrecv_pb2.VariableMessage.DESCRIPTOR.fields}
    paddle = ["varname", "type", "data_type", "dims", "lod_level", "lod", "slr_height", "serialized",
              "rows", "out_varname", "profile", "trainer_id", "table_name"]
    assert [fields[n] for n in paddle] == list(range(1, 14))
    assert all(fields[n] >= 20 for n in ("chunk_index", "chunk_count", "round", "transfer_id"))
