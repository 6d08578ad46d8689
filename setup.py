"""ament_python package `lapa_ros`: colcon builds it on a ROS 2 machine, pip installs it anywhere."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE_NAME = "lapa_ros"

setup(
    name=PACKAGE_NAME,
    version="0.1.0",
    packages=find_packages(include=["lapa", "lapa.*", "lapa_ros", "lapa_ros.*", "policy_server",
                                    "policy_server.*", "export", "export.*", "calibration",
                                    "calibration.*", "bench", "bench.*"]),
    package_data={"calibration": ["*.yaml"], "lapa_ros.console": ["static/*"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE_NAME}"]),
        (f"share/{PACKAGE_NAME}", ["package.xml"]),
        (f"share/{PACKAGE_NAME}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE_NAME}/config", glob("config/*.yaml")),
    ],
    install_requires=["setuptools", "numpy"],
    # `pip install -e .[gpu]`: ONNX Runtime with the CUDA and TensorRT execution providers (export/ort_policy.py).
    # onnxruntime-gpu cannot share an environment with onnxruntime (requirements.txt): uninstall that one first.
    extras_require={"gpu": ["onnxruntime-gpu==1.30.0"]},
    python_requires=">=3.10",
    zip_safe=True,
    maintainer="lapa maintainers",
    maintainer_email="maintainers@lapa.invalid",
    description="LAPA: latent action pretraining from videos, served to a Franka arm at control rate.",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "lapa = lapa.cli:main",
            "lapa-server = policy_server.app:main",
            "lapa_speech = lapa_ros.speech_node:main",
            "lapa_policy_node = lapa_ros.policy_node:main",
            "lapa_camera_node = lapa_ros.camera_node:main",
            "lapa_sim_node = lapa_ros.sim_node:main",
            "lapa_console = lapa_ros.console.node:main",
        ],
    },
)
