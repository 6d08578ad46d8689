"""The `main()` every lapa node shares: init, spin (a SingleThreadedExecutor for one thread, else a
MultiThreadedExecutor), clean up on SIGINT/SIGTERM."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable


def run_node(factory: Callable[[list[str] | None], object], argv: list[str] | None = None, threads: int = 2) -> int:
    """`factory(args)` returns an object with `.node` (an rclpy Node) and `.close()`."""
    import rclpy
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor

    args = sys.argv if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    rclpy.init(args=args)  # installs SIGINT/SIGTERM handlers that shut the context down
    holder = None
    code = 0
    try:
        holder = factory(args)
        # rclpy's MultiThreadedExecutor costs far more CPU per callback: only where callbacks must overlap
        executor = SingleThreadedExecutor() if threads == 1 else MultiThreadedExecutor(num_threads=threads)
        executor.add_node(holder.node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as e:  # noqa: BLE001 - say what failed, exit non-zero
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        code = 1
    finally:
        if holder is not None:
            holder.close()
        if rclpy.ok():
            rclpy.shutdown()
    return code
