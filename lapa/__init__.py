"""LAPA: latent action pretraining from videos, and the tools that run it on a Franka."""

import os

# MuJoCo picks its GL backend when it is first imported; headless machines need EGL.
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

__version__ = "0.1.0"
