"""The faults `lapa bench faults` injects: how each is caused, cleared, and what the node must do.

Every fault is real: processes are signalled (SIGKILL, SIGSTOP/SIGCONT, restart), the camera
misbehaves in lapa_sim's publisher (`camera_fault` parameter), the policy server's backend answers
NaN, huge, wrong-shaped or late actions (bench/fault_policy.py), franky-sim aborts the running
motion as a reflex does or drops the client's connections, and the operator's inputs go through
the node's topics and services.

Per kind:
  inject(stack, rng) -> info   cause it; info["detect_after_s"] is when the node can first know
                               (a stale image, for instance, is only stale once older than its limit),
                               counted from info["effective_at"] (monotonic) where the fault only
                               takes effect at the end of the call (a parameter set, a mode file
                               replaced), else from the start of inject
  clear(stack, info)           remove the cause (restart, resume, healthy camera, healthy replies)
  stops                        the arm must come to rest (else it must keep running within limits)
  states, reason               the /lapa/status state(s) and a reason fragment the node must show
  recovery                     "self": moves again by itself once cleared; "start": latched, moves
                               again after /lapa/start; "instruction": after a new instruction;
                               "restart": the restarted node comes up idle and runs a new instruction
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

MAX_IMAGE_AGE_S = 0.5  # lapa_policy's max_image_age_s (its default; the bench does not change it)
SERVER_TIMEOUT_S = 0.5  # lapa_policy's server_timeout_s
MAX_ROBOT_STATE_AGE_S = 0.5  # lapa_policy's max_robot_state_age_s


@dataclass(frozen=True)
class FaultKind:
    name: str
    description: str
    inject: Callable[[Any, np.random.Generator], dict]
    clear: Callable[[Any, dict], None]
    stops: bool
    states: tuple[str, ...]
    reason: str | None
    recovery: str | None
    observe_s: float = 2.0  # after the fault is detectable


def _nothing(stack, info) -> None:
    pass


# ---------------------------------------------------------------------------- policy server
def _server_kill(stack, rng) -> dict:
    stack.kill("lapa_server")
    return {"detect_after_s": 0.0}


def _server_restart_after(stack, info) -> None:
    stack.restart("lapa_server")


def _server_stop(stack, rng) -> dict:
    pause = float(rng.uniform(0.2, 5.0))
    stack.signal("lapa_server", signal.SIGSTOP)
    timer = threading.Timer(pause, stack.signal, ("lapa_server", signal.SIGCONT))
    timer.start()
    return {"detect_after_s": 0.0, "pause_s": round(pause, 3), "timer": timer, "observe_s": pause + 1.0}


def _server_stop_clear(stack, info) -> None:
    info["timer"].join()
    stack.signal("lapa_server", signal.SIGCONT)  # already resumed by the timer; harmless


def _server_restart(stack, rng) -> dict:
    stack.terminate("lapa_server")  # a graceful stop (an upgrade, a redeploy), then the same server again
    return {"detect_after_s": 0.0}


# ---------------------------------------------------------------------------- camera
def _camera(mode: str) -> Callable:
    def inject(stack, rng) -> dict:
        stack.set_camera_fault(mode)
        return {"detect_after_s": MAX_IMAGE_AGE_S, "effective_at": time.monotonic()}

    return inject


def _camera_clear(stack, info) -> None:
    stack.set_camera_fault("")


# ---------------------------------------------------------------------------- replies
def _reply(mode: Callable[[np.random.Generator], str], detect_after_s: float = 0.0) -> Callable:
    def inject(stack, rng) -> dict:
        m = mode(rng)
        stack.set_mode(m)
        return {"detect_after_s": detect_after_s, "mode": m, "effective_at": time.monotonic()}

    return inject


def _reply_clear(stack, info) -> None:
    stack.set_mode("")


def _shape(rng) -> str:
    return str(rng.choice(["shape:1,6", "shape:1,8", "shape:0,7", "shape:2,3"]))


def _late(rng) -> str:
    return f"late:{rng.uniform(0.7, 2.0):.3f}"


# ---------------------------------------------------------------------------- robot
def _reflex(stack, rng) -> dict:
    ok, message = stack.trigger("/lapa_sim/reflex")
    return {"detect_after_s": 0.0, "aborted": ok, "message": message}


def _drop_connection(stack, rng) -> dict:
    stack.trigger("/lapa_sim/drop_connection")
    # Known at once only if a read fails; otherwise when the measured state is older than its limit.
    return {"detect_after_s": MAX_ROBOT_STATE_AGE_S}


# ---------------------------------------------------------------------------- the node itself
def _policy_kill(stack, rng) -> dict:
    stack.kill("lapa_policy")
    return {"detect_after_s": 0.0}


def _policy_restart(stack, info) -> None:
    stack.restart("lapa_policy")


# ---------------------------------------------------------------------------- operator inputs
MID_EPISODE_INSTRUCTIONS = ("reach the red block", "reach the green block", "reach the blue block",
                            "push the red block left", "push the blue block right")


def _new_instruction(stack, rng) -> dict:
    text = str(rng.choice(MID_EPISODE_INSTRUCTIONS))
    stack.say(text)
    return {"detect_after_s": 0.0, "instruction": text}


def _stop_word(stack, rng) -> dict:
    word = str(rng.choice(["stop", "cancel", "halt", "Stop the robot."]))
    stack.say(word)
    return {"detect_after_s": 0.0, "word": word}


def _estop(stack, rng) -> dict:
    stack.trigger("/lapa/emergency_stop")
    return {"detect_after_s": 0.0}


KINDS: dict[str, FaultKind] = {k.name: k for k in (
    FaultKind("server_kill", "policy server SIGKILLed (restarted after)", _server_kill, _server_restart_after,
              True, ("holding",), "server", "self"),
    FaultKind("server_freeze", "policy server SIGSTOPped 0.2-5 s, then SIGCONT", _server_stop, _server_stop_clear,
              True, ("holding", "running"), None, "self"),
    FaultKind("server_restart", "policy server stopped (SIGTERM) and started again", _server_restart,
              _server_restart_after, True, ("holding",), "server", "self"),
    FaultKind("camera_freeze", "camera republishes its last image (same stamp)", _camera("freeze"), _camera_clear,
              True, ("holding",), "image", "self"),
    FaultKind("camera_silent", "camera publishes nothing", _camera("silent"), _camera_clear,
              True, ("holding",), "image", "self"),
    FaultKind("camera_backwards", "camera stamps jump backwards", _camera("backwards"), _camera_clear,
              True, ("holding",), "image", "self"),
    FaultKind("reply_nan", "the server's actions contain NaN", _reply(lambda rng: "nan"), _reply_clear,
              True, ("fault",), "non-finite", "start"),
    FaultKind("reply_huge", "the server's actions are 1000x too large (finite)", _reply(lambda rng: "huge"),
              _reply_clear, False, ("running",), None, None),
    FaultKind("reply_shape", "the server's actions have a wrong shape", _reply(_shape), _reply_clear,
              True, ("fault",), "shape", "start"),
    FaultKind("reply_late", "the server answers 0.7-2 s late", _reply(_late), _reply_clear,
              True, ("holding", "running"), None, "self"),
    FaultKind("robot_reflex", "franky-sim aborts the running motion with a reflex", _reflex, _nothing,
              True, ("fault",), "robot error", "start"),
    FaultKind("robot_connection_lost", "franky-sim drops the client's connections", _drop_connection, _nothing,
              True, ("fault",), "robot error", "start"),
    FaultKind("policy_node_kill", "lapa_policy SIGKILLed mid-episode, then started again", _policy_kill,
              _policy_restart, True, ("idle",), None, "restart", observe_s=2.0),
    FaultKind("instruction_mid_episode", "a new instruction arrives mid-episode", _new_instruction, _nothing,
              False, ("running",), None, None),
    FaultKind("stop_word", "a stop word arrives mid-episode", _stop_word, _nothing,
              True, ("stopped",), "instruction", "instruction"),
    FaultKind("emergency_stop", "/lapa/emergency_stop during a motion", _estop, _nothing,
              True, ("fault",), "emergency stop", "start"),
)}


def observe_s(kind: FaultKind, info: dict) -> float:
    return float(info.get("observe_s", kind.observe_s))


def sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        time.sleep(delay)
