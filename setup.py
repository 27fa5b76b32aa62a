"""deepcens: a detectron2 extension for cell and nucleus instance segmentation."""
from setuptools import find_packages, setup

setup(
    name="deepcens",
    version="0.1.0",
    description="Cell and nucleus instance segmentation methods on detectron2 (DeepCeNS, XB-Net, ...)",
    packages=find_packages(include=["deepcens", "deepcens.*"]),
    python_requires=">=3.10",
    # Versions are pinned in requirements.txt; detectron2 and resnest are installed by the
    # Makefile (see README) because neither installs from the index with its own metadata.
    install_requires=[],
    entry_points={"console_scripts": ["deepcens=deepcens.cli:main"]},
)
