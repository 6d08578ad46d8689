"""`python -m lapa_ros.console --ros-args ...`: the lapa_console node (node.py)."""

import sys

from lapa_ros.console.node import main

sys.exit(main())
