"""CheckpointNotify path policy (checkpoint.notify_path) and where listen_and_serv's
configuration puts the allowed directories (no sockets)."""
from __future__ import annotations

import os

import pytest

from fleetkit.errors import InvalidArgumentError
from fleetkit.pserver import checkpoint
from fleetkit.pserver.exec_handler import _server_options


def test_notify_path_accepts_only_paths_inside_the_configured_roots(tmp_path):
    root = tmp_path / "saves"
    root.mkdir()
    (tmp_path / "other").mkdir()
    os.symlink(tmp_path / "other", root / "link")
    assert checkpoint.notify_path([str(root)], str(root / "m" / "x.fkckpt")) == str(root / "m" / "x.fkckpt")
    for bad in (str(tmp_path / "other" / "x"), str(root / ".." / "other" / "x"), str(root / "link" / "x"),
                "/etc/passwd", str(tmp_path / "savesX" / "x")):
        with pytest.raises(InvalidArgumentError, match="outside this pserver's checkpoint directories"):
            checkpoint.notify_path([str(root)], bad)
    with pytest.raises(InvalidArgumentError, match="none configured"):
        checkpoint.notify_path([], str(root / "x"))
    with pytest.raises(InvalidArgumentError, match="NUL byte"):
        checkpoint.notify_path([str(root)], str(root) + "/a\0b")


def test_listen_and_serv_attrs_configure_the_allowed_directories():
    o = _server_options({"pserver_index": 1, "checkpoint_dir": "/ck", "notify_dirs": ["/saves"], "load_dir": "/m"})
    assert o.checkpoint_dir == "/ck" and o.notify_dirs == ("/saves", "/m") and not o.notify_load
    assert _server_options({}).notify_dirs == ()
