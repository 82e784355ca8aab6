"""ament_python package for vl2spike_ros; also installs with pip (see README)."""
from glob import glob

from setuptools import setup

PACKAGE = "vl2spike_ros"
# pytest 9 rejects launch_testing's pytest plugin (hook argument `path`); requirements-dev.txt pins 8.4.2.
TEST_REQUIRES = ["pytest>=7,<9"]

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=[
        PACKAGE,
        f"{PACKAGE}.model",
        f"{PACKAGE}.core",
        f"{PACKAGE}.core.place_map",
        f"{PACKAGE}.sources",
        f"{PACKAGE}.evaluation",
        f"{PACKAGE}.ros",
        f"{PACKAGE}.demo",
        f"{PACKAGE}.benchmark",
    ],
    # training/ (vl2spike_training, `vl2spike-train`) is a package of its own (training/pyproject.toml), so
    # that the colcon install on a robot carries no training code.
    package_data={PACKAGE: ["models/*.safetensors", "models/*.json"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
        # The shipped model is package data only (vl2spike_ros/models, found with importlib.resources).
    ],
    python_requires=">=3.10",
    # spikingjelly is deliberately not listed: its declared torchvision/torchaudio pull a CUDA torch.
    # Install it with `pip install --no-deps spikingjelly==2.0.0` (the Makefile does).
    install_requires=[
        "numpy>=1.24",
        "torch>=2.2",
        "faiss-cpu>=1.8",
        "opencv-python-headless>=4.8",
        "safetensors>=0.4",
        "pyyaml>=6",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "loguru",
        "h5py",
        "rosbags>=0.10",
        "rosbags-image>=0.9",
        "scikit-image>=0.22",  # its bundled photographs are the embedded demo route
        "onnx>=1.17", "onnxruntime>=1.20", "onnxscript>=0.5",  # --backend onnxruntime, vl2spike export
    ],
    extras_require={
        # The ROS 2 Python wheels from PyPI; on a ROS 2 install these come from apt/rosdep instead.
        "ros": [
            "ros-rclpy", "ros-sensor-msgs", "ros-std-msgs", "ros-geometry-msgs",
            "ros-diagnostic-msgs", "ros-std-srvs", "ros-lifecycle-msgs", "ros-rmw-fastrtps-cpp",
        ],
        "test": TEST_REQUIRES,
        "dev": [*TEST_REQUIRES, "colcon-common-extensions"],
    },
    zip_safe=False,
    maintainer="vl2spike_ros maintainers",
    maintainer_email="maintainers@vl2spike.invalid",
    description="Spiking-transformer visual place recognition for ROS 2 (VL2Spike).",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "vl2spike = vl2spike_ros.cli:main",
            "vpr_node = vl2spike_ros.ros.node:main",
        ],
    },
)
