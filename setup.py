"""Build entry point. Metadata, extras and tool configuration live in pyproject.toml; this file
exists for the native extension that the C++ engine adds (one source list, built here)."""

from setuptools import setup

setup()
