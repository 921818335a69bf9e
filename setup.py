"""Installs ccp (the CCP-DML library) and data_pipelines (benchmark data sets)."""
from setuptools import find_packages, setup

setup(
    name="ccp",
    version="0.1.0",
    description=(
        "Deep Metric Learning with Chance Constraints (CCP-DML) and a deep metric "
        "learning framework for TensorFlow/Keras."
    ),
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["ccp", "ccp.*", "data_pipelines", "data_pipelines.*"]),
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "keras>=3.10,<4",
        "numpy>=1.26,<3",
        "scikit-learn>=1.4,<2",
        "scipy>=1.11,<2",
        "absl-py>=2.1,<3",
        "tensorflow-datasets>=4.9,<5",
        # TFDS 4.9 imports it when preparing a data set but declares it only for Python < 3.9.
        "importlib_resources",
        "pillow>=10,<14",
        # Strict JPEG decoding (libjpeg warnings as errors) for the up-front image check.
        "simplejpeg>=1.9,<2",
        "matplotlib>=3.8,<4",
        "h5py>=3.10,<4",
        "tqdm>=4.66,<5",
        "tensorboard>=2.21,<2.22",
    ],
    extras_require={
        "test": ["pytest>=8,<10", "pytest-xdist>=3.5,<4", "pytest-timeout>=2.3,<3",
                 "ruff>=0.6,<1"],
    },
)
