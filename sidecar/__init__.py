"""apisix-sidecar: the Python plugin runner for Apache APISIX.

This module is the whole public SDK: a plugin author imports everything from here.
"""

from .http import Args, Headers, Request, Response, StopResponse
from .plugin import ConfError, Plugin, PluginError, from_json, register, registry

__version__ = "0.1.0"

__all__ = [
    "Args",
    "ConfError",
    "Headers",
    "Plugin",
    "PluginError",
    "Request",
    "Response",
    "StopResponse",
    "__version__",
    "from_json",
    "register",
    "registry",
]
