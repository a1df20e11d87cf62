"""The one packaging rule pyproject.toml cannot express: the top-level conf/ directory (next to
src/, where Hydra users expect it) ships inside the package as ``lm_lightning/conf``, every
subdirectory and every ``_*.yaml`` included, so a non-editable ``pip install .`` has its
configs. Everything else is in pyproject.toml. config.location.find_conf_dir() picks the checkout's
conf/ in a development (editable) install and this copy otherwise.
"""

from setuptools import find_namespace_packages, setup

setup(
    packages=[*find_namespace_packages("src", include=["lm_lightning", "lm_lightning.*"],
                                       exclude=["*.__pycache__"]), "lm_lightning.conf"],
    package_dir={"": "src", "lm_lightning.conf": "conf"},
    package_data={"lm_lightning.conf": ["**/*.yaml"]},
)
