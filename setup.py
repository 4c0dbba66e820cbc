# Metadata lives in setup.cfg; this shim lets `pip install -e .` work with old pip.
from setuptools import setup

setup()
