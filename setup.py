"""Lists the packages so that ops/ and deploy/ install under the one import root `perception`."""

from setuptools import find_packages, setup


def _packages_under(folder: str, prefix: str) -> list[str]:
    return [prefix] + [f"{prefix}.{name}" for name in find_packages(folder)]


setup(
    packages=find_packages(include=["perception", "perception.*"])
    + _packages_under("ops", "perception.ops")
    + _packages_under("deploy", "perception.deploy")
)
