# Minimal shim so that `pip install -e .` works with older pip/setuptools; metadata is in setup.cfg.
from setuptools import setup

setup()
