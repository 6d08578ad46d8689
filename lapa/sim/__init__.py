"""The simulated Franka tabletop: scene, drivers, tasks and scripted experts."""
