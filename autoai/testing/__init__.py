"""The one harness of tests, benchmarks and scripts: ports, the models cache, processes by PID
(psutil), a bounded wait, and ``autoai up`` as a real process.

- ``free_port`` / ``port_free``: for a process that needs its port number up front;
- ``models_dir`` / ``cache_dir``: ``$AUTOAI_CACHE/models``, else ``~/.cache/autoai/models``;
- ``cmdline``, ``alive``, ``pids_naming``, ``tree_pids``, ``cpu_seconds``, ``tree_cpu_seconds``,
  ``machine_busy_seconds``, ``machine_cpu_seconds``, ``usage``, ``wait_gone``, ``terminate``:
  processes by PID (psutil) and the machine's CPU time; ``cpu_model`` for tables' titles;
- ``wait``: poll a condition with a bound (``WaitTimeout``);
- ``ControlPlaneProcess`` / ``control_plane``: ``autoai up`` on a free port, its ``ControlClient``;
  ``kill_recorded_instances`` stops what a test deployed.

``autoai.testing.models`` builds tiny example ONNX models (needs ``onnx``); the pytest fixtures
live in ``autoai.testing.plugin`` (``pytest_plugins = ["autoai.testing.plugin"]``).
"""

from ._cache import cache_dir, models_dir
from ._controlplane import (
    ControlPlaneExited,
    ControlPlaneProcess,
    control_plane,
    kill_recorded_instances,
)
from ._ports import free_port, port_free
from ._process import (
    Usage,
    alive,
    cmdline,
    cpu_model,
    cpu_seconds,
    machine_busy_seconds,
    machine_cpu_seconds,
    pids_naming,
    terminate,
    tree_cpu_seconds,
    tree_pids,
    usage,
    wait_gone,
)
from ._wait import WaitTimeout, wait

__all__ = [
    "ControlPlaneExited",
    "ControlPlaneProcess",
    "Usage",
    "WaitTimeout",
    "alive",
    "cache_dir",
    "cmdline",
    "control_plane",
    "cpu_model",
    "cpu_seconds",
    "free_port",
    "kill_recorded_instances",
    "machine_busy_seconds",
    "machine_cpu_seconds",
    "models_dir",
    "pids_naming",
    "port_free",
    "terminate",
    "tree_cpu_seconds",
    "tree_pids",
    "usage",
    "wait",
    "wait_gone",
]
