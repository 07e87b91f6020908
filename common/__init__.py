"""common: the leaf of freshrec's package graph; it imports nothing of the project.

Every package (``paramserver``, ``trainer``, ``versions``, ``serving``, ``cluster``) may import
from here; nothing here imports them back (``tests/unit/test_package_graph.py`` checks it).
"""

from common.config import ConfigError, check_keys, load_yaml_config

__all__ = ["ConfigError", "check_keys", "load_yaml_config"]
