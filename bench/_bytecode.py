"""Bytecode for the benchmarks: reconciler's ``__pycache__``, written as ``pip install`` does.

An installed zlayer runs from bytecode that pip wrote at install time, as Debian's
docker-compose does. A checkout under ``PYTHONDONTWRITEBYTECODE=1`` (some CI images and
sandboxes set it) would compile every module from source in every run instead, which
costs a plan or an apply 0.1-0.2 s that no installed zlayer pays; so every benchmark
writes the bytecode first (a child process: the measuring process imports nothing of
reconciler) and says so.
"""

from __future__ import annotations

import subprocess
import sys

_SCRIPT = (
    "import compileall, os, reconciler; "
    "print(os.path.dirname(reconciler.__file__)) if compileall.compile_dir("
    "os.path.dirname(reconciler.__file__), quiet=1) else exit(1)"
)


def compile_bytecode() -> None:
    done = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"FAILED: writing reconciler's bytecode:\n{done.stdout}{done.stderr}")
    print(f"bytecode: written for {done.stdout.strip()} (as pip install does)")
