"""Backend loading: names, lazy imports, clear errors, and the CLI refusing what cannot work."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from policy_fakes import REPO_ROOT, TESTS_DIR, FakePolicy, free_port

from policy_server.backends import BACKENDS, BackendError, check_backend, load_backend

pytestmark = pytest.mark.timeout(60)


def test_module_factory_backend(tmp_path):
    policy = load_backend("policy_fakes:make_policy", None, threads=2)
    assert isinstance(policy, FakePolicy) and policy.metadata["chunk_size"] == 4


@pytest.mark.parametrize("name", ["onnxruntime", "tensorrt"])
def test_missing_backends_say_what_they_need(tmp_path, name, monkeypatch):
    """A backend whose module is not installed (e.g. a build without export/) names what it needs."""
    module_name, class_name, what = BACKENDS[name]
    monkeypatch.setitem(BACKENDS, name, (f"{module_name}_not_installed", class_name, what))
    with pytest.raises(BackendError, match=f"backend '{name}' is not available: .*needs {re.escape(what)}"):
        load_backend(name, tmp_path)


def test_bad_names_and_missing_models(tmp_path):
    with pytest.raises(BackendError, match="unknown backend"):
        check_backend("jax", tmp_path)
    with pytest.raises(BackendError, match="needs --model"):
        check_backend("torch", None)
    with pytest.raises(BackendError, match="does not exist"):
        check_backend("torch", tmp_path / "nope")
    with pytest.raises(BackendError, match="no callable"):
        load_backend("policy_fakes:nothing_here", None)
    with pytest.raises(BackendError, match="not available"):
        load_backend("no_such_module_xyz:make", None)


@pytest.mark.parametrize(("args", "message"), [
    (["--backend", "jax"], "unknown backend"),
    (["--backend", "torch"], "needs --model"),
    (["--backend", "onnxruntime", "--model", "/nonexistent/model"], "does not exist"),
])
def test_cli_refuses_to_start(args, message):
    proc = subprocess.run([sys.executable, "-m", "policy_server.app", "--port", str(free_port()), *args],
                          cwd=REPO_ROOT, env={"PYTHONPATH": f"{TESTS_DIR}:{REPO_ROOT}", "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and message in proc.stderr
