"""The one collector of package versions recorded in manifests (KB, reranker, student, bundle)."""

from __future__ import annotations

import importlib.metadata
import platform


def package_versions(*dists: str) -> dict[str, str]:
    """Python's version and each installed distribution's, by name; a distribution not installed is left out.

    Example:
        >>> sorted(package_versions("numpy", "no-such-dist-kardlite"))
        ['numpy', 'python']
    """
    out = {"python": platform.python_version()}
    for dist in dists:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out
