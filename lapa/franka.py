"""The Franka through `franky`: what the real-robot backend and the franky-sim driver share.

Connection with a timeout (`connect_franky`), a stop without a jump (`halt`), franky's exception
types (`franky_errors`), the home pose, the gripper commands, and how one 7-D delta action becomes
one motion (`velocity_motion`). `franky` is imported only inside the functions that call it.

Motion type. Each action becomes one asynchronous `CartesianVelocityMotion`: twist = delta /
period, held for one period, then ramped down unless the next action preempts it. So the delta
applies to the pose the robot is at when the action arrives, like franky's relative motions, and a
stream of actions cruises without stopping between steps. It is also franky's maintainers' advice
for streaming small increments. Measured on franky-sim, 8 steps of +2 cm in x then 8 of +2 cm in y
at 10 Hz (measured TCP at 1 kHz, 9 ms smoothing; "cruise" = the straight x leg; speed ripple =
std / mean of the speed there; "expert pick" = the scripted expert closing the loop on `pick`,
seeds 0 and 1):

    motion, delta applied to ... (dynamics factor)    cruise jerk  peak acc  ripple  end err  expert pick
    CartesianMotion Relative, franky's own (1.0)*     1590 m/s3  17.5 m/s2   0.67   6.9 mm
    CartesianMotion Relative, franky's own (0.5)*      986       11.1        0.39   0.7
    CartesianMotion Absolute, a running target (0.5)* 1316       10.3        0.41   0.01     fails
    CartesianMotion Absolute, commanded pose (0.5)*    962       11.3        0.41   2.2      27 steps
    CartesianVelocityMotion, running target (0.5)       56        8.7        0.00   0.06     fails
    CartesianVelocityMotion, delta/period (0.5) CHOSEN  14        9.6        0.00   4.1      26-27 steps
    (* with franky-sim's joint kp x8; with its stock gains position motions trail by 0.1 s.)

Position motions stop and go: each new target is planned to rest, so the speed dips every step
(10x the jerk). Steering towards a running target (the sum of all deltas) ends exactly on it in
open loop but winds up in closed loop: the FR3's rotational limits (25 rad/s2 at factor 1) cannot
finish the expert's 0.15 rad yaw steps in 0.1 s, the target runs ahead and the arm overshoots and
oscillates. Applying each delta to where the robot is has no windup; the price is an open-loop
drift of ~1% of the distance (4 mm over 32 cm), which a closed-loop policy corrects. A lone 2 cm
step lands within ~0.3 mm, a lone 0.1 rad yaw 0-2 mrad long.

Gripper: a command issued while another is in flight can deadlock franky-sim (its simulator is a
Python thread that the blocking call starves), so both users send one only once the previous one
has finished. franky 2.0's `Robot.poll_motion()` returns True once the motion has *finished*,
despite its docstring; `is_in_control` tells whether a motion runs.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from lapa.geometry import rotation_error, rpy_to_matrix

logger = logging.getLogger(__name__)

# A joint configuration that puts the gripper 25 cm above the table centre, pointing down.
HOME_JOINT_POS_RAD = (0.0, -0.0418, 0.0, -2.3343, 0.0, 2.2925, 0.7854)
HOME_GRIPPER_WIDTH_M = 0.08
GRIPPER_SPEED_M_S = 0.1  # franky-sim caps finger speed at 0.05 m/s
GRASP_FORCE_N = 30.0
GRASP_EPSILON_OUTER_M = 0.1  # "grasp whatever is there": any width between 0 and 0.1 m counts
MAX_LINEAR_SPEED_M_S = 1.0  # a larger delta per period is scaled down to these speeds
MAX_ANGULAR_SPEED_RAD_S = 2.0


def franky_errors() -> tuple[type[BaseException], ...]:
    import franky

    return (franky.Exception, franky.GripperException, franky.InvalidMotionTypeException,
            franky.MotionReuseException, franky.ReactionRecursionException)


def connect_franky(hostname: str, timeout_s: float = 10.0, relative_dynamics_factor: float = 1.0):
    """Connect `franky.Robot` and `franky.Gripper` to `hostname`; fail clearly within `timeout_s`.

    libfranka has no timeout of its own against a listener that accepts but never answers, so the
    constructors run in a helper thread (they release the GIL while they wait). On a timeout that
    thread is abandoned; it ends when the peer closes the connection.
    """
    import franky

    result: dict = {}

    def connect() -> None:
        try:
            result["robot"] = franky.Robot(hostname, relative_dynamics_factor=relative_dynamics_factor,
                                           realtime_config=franky.RealtimeConfig.Ignore)
            result["gripper"] = franky.Gripper(hostname)
        except Exception as e:  # noqa: BLE001 - reported below with the hostname
            result["error"] = e

    thread = threading.Thread(target=connect, name=f"franky-connect-{hostname}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise TimeoutError(f"no answer from a Franka (libfranka protocol) at {hostname} within "
                           f"{timeout_s:g} s; is the robot or franky-sim server running there, FCI enabled?")
    if "error" in result:
        error = result["error"]
        raise ConnectionError(f"could not connect to a Franka at {hostname}: {error}") from error
    return result["robot"], result["gripper"]


def halt(robot, timeout_s: float = 5.0) -> None:
    """Stop any running motion without a jump.

    A Cartesian velocity stream (what `velocity_motion` makes) is preempted by a jerk-limited
    `CartesianVelocityStopMotion` (franky-sim: 9 m/s2 peak, 4 mm from 0.2 m/s); any other motion
    by libfranka's stop, which holds the last desired pose (an abrupt 40 m/s2 halt in franky-sim).
    """
    import franky

    try:
        robot.poll_motion()  # raises the error the last motion ended with, if any
    except franky_errors() as e:
        logger.info("last motion ended with: %s", e)
    if not robot.is_in_control:
        return
    try:
        robot.move(franky.CartesianVelocityStopMotion(), asynchronous=True)
    except franky_errors():
        robot.stop()
    try:
        if not robot.join_motion(timeout_s):
            robot.stop()
            robot.join_motion(timeout_s)
    except franky_errors() as e:  # a stop preempts the running motion, which reports exactly that
        logger.debug("motion ended by stop: %s", e)


def velocity_for(action: np.ndarray, period_s: float) -> tuple[np.ndarray, np.ndarray]:
    """(linear m/s, angular rad/s) in the base frame that cover the delta in one period, capped."""
    v = action[:3] / period_s
    w = rotation_error(rpy_to_matrix(action[3:6]), np.eye(3)) / period_s  # base-frame axis-angle rate
    v = v * min(1.0, MAX_LINEAR_SPEED_M_S / max(float(np.linalg.norm(v)), 1e-12))
    w = w * min(1.0, MAX_ANGULAR_SPEED_RAD_S / max(float(np.linalg.norm(w)), 1e-12))
    return v, w


def velocity_motion(action: np.ndarray, period_s: float):
    """The `CartesianVelocityMotion` of one validated 7-D action: its twist held for one period."""
    import franky

    v, w = velocity_for(action, period_s)
    return franky.CartesianVelocityMotion(franky.Twist(v, w), duration=franky.Duration(round(period_s * 1000)))


def home_motion():
    """The joint motion to `HOME_JOINT_POS_RAD`."""
    import franky

    return franky.JointMotion(franky.JointState(np.array(HOME_JOINT_POS_RAD)))


def command_gripper(gripper, open_gripper: bool):
    """Start opening the gripper to the home width, or grasping whatever is between the fingers;
    returns franky's future. Send it only once the previous command's future has finished."""
    if open_gripper:
        return gripper.move_async(HOME_GRIPPER_WIDTH_M, GRIPPER_SPEED_M_S)
    return gripper.grasp_async(0.0, GRIPPER_SPEED_M_S, GRASP_FORCE_N, epsilon_inner=0.005,
                               epsilon_outer=GRASP_EPSILON_OUTER_M)
