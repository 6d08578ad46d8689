"""How the console is started: `console:=true` in the launch plan (franka.launch.py, `lapa bringup`),
`lapa console`'s arguments, and the bind rule (loopback, or an API key)."""

from __future__ import annotations

import argparse
import importlib.util

import pytest
from ros_helpers import REPO_ROOT

from lapa.errors import UserError
from lapa_ros.console import cli
from lapa_ros.console.node import http_base
from lapa_ros.launch_plan import LaunchPlanError, plan


def test_console_is_off_by_default_and_on_with_console_true():
    assert "lapa_console" not in [n.name for n in plan({"model": "expert"}).nodes]
    p = plan({"model": "expert", "console": "true", "console_port": "9123", "server_url": "ws://127.0.0.1:8123"})
    node = next(n for n in p.nodes if n.name == "lapa_console")
    assert node.parameters["host"] == "127.0.0.1" and node.parameters["port"] == 9123
    assert node.parameters["server_url"] == "ws://127.0.0.1:8123"
    assert f'"{node.executable} = {node.module}:main"' in (REPO_ROOT / "setup.py").read_text()
    assert importlib.util.find_spec(node.module) is not None
    for bad in ({"console": "perhaps"}, {"console": "true", "console_port": "http"},
                {"console": "true", "console_port": "70000"}):
        with pytest.raises(LaunchPlanError):
            plan({"model": "expert", **bad})


def test_with_the_console_the_server_serves_the_default_models_intent_preview():
    p = plan({"console": "true", "confirm_before_motion": "true"})
    server = p.processes[0]
    assert "--intent" in server.arguments
    assert server.arguments[server.arguments.index("--intent") + 1] == server.arguments[1]  # the served model
    assert next(n for n in p.nodes if n.name == "lapa_console").parameters["confirm_before_motion"] is True
    assert "--intent" not in plan({}).processes[0].arguments  # no console: no preview to load
    assert "--intent" not in plan({"console": "true", "model": "expert"}).processes[0].arguments


def test_the_page_and_its_assets_ship_with_the_package():
    setup_py = (REPO_ROOT / "setup.py").read_text()
    assert '"lapa_ros.console": ["static/*"]' in setup_py
    from lapa_ros.console.app import STATIC_FILES

    static = REPO_ROOT / "lapa_ros" / "console" / "static"
    assert sorted(p.name for p in static.iterdir()) == sorted(STATIC_FILES)


def args(**kw) -> argparse.Namespace:
    base = dict(host="127.0.0.1", port=8080, api_key=None, server_url="ws://127.0.0.1:8000", record_dir="rec",
                confirm_before_motion=False, domain_id=None)
    return argparse.Namespace(**{**base, **kw})


def test_lapa_console_refuses_to_serve_beyond_loopback_without_a_key(monkeypatch):
    monkeypatch.delenv("LAPA_API_KEY", raising=False)
    with pytest.raises(UserError, match="API key"):
        cli.run(args(host="0.0.0.0"))
    with pytest.raises(UserError, match="port"):
        cli.run(args(port=0))


def test_lapa_console_passes_typed_ros_parameters():
    out = cli.ros_arguments(args(api_key="k", confirm_before_motion=True, port=9001))
    assert out[:2] == ["lapa_console", "--ros-args"]
    params = dict(item.split(":=", 1) for item in out[3::2])
    assert params == {"host": '"127.0.0.1"', "port": "9001", "server_url": '"ws://127.0.0.1:8000"',
                      "record_dir": '"rec"', "confirm_before_motion": "true", "api_key": '"k"'}


def test_http_base_of_the_policy_server_url():
    assert http_base("ws://127.0.0.1:8000") == "http://127.0.0.1:8000"
    assert http_base("wss://robot:443/v1/stream") == "https://robot:443"
    assert http_base("127.0.0.1:9000") == "http://127.0.0.1:9000"


def test_config_yaml_has_the_consoles_parameters():
    import yaml

    from lapa_ros.console.node import PARAMETERS

    params = yaml.safe_load((REPO_ROOT / "config" / "lapa_ros.yaml").read_text())["lapa_console"]["ros__parameters"]
    assert params == {name: default for name, (default, _) in PARAMETERS.items()}
