"""nettrain.heap: freed blocks stay in the process, so a step's arrays are not faulted in again."""

import platform
import subprocess
import sys

import pytest

from nettrain import cli, heap

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                           reason="mallopt is glibc's")

STEPS = """
import resource, sys
import numpy as np
from nettrain.heap import keep_freed_memory
took = keep_freed_memory()
def step():  # a training step's pattern: large arrays made, used, freed together
    arrays = [np.ones(6 << 20, np.float32) for _ in range(3)]  # 24 MiB each
    del arrays
step(); step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(took, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


def faults_per_step(env_value: str) -> tuple[bool, float]:
    env = {"NETTRAIN_KEEP_FREED_MEMORY": env_value, "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", STEPS], capture_output=True, text=True, env=env, timeout=60,
                         check=True).stdout.split()
    return out[0] == "True", float(out[1])


@glibc
def test_kept_memory_is_not_faulted_in_again():
    took, kept = faults_per_step("1")
    off, fresh = faults_per_step("0")
    assert took and not off
    assert fresh >= 20  # glibc's defaults hand the blocks back and fault them in again at every step
    assert kept * 10 <= fresh


def test_malloc_tuned_by_the_user_is_left_alone(monkeypatch):
    monkeypatch.setattr(heap, "active", False)
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0")
    assert heap.user_tuned() and not heap.keep_freed_memory() and not heap.active
    monkeypatch.delenv("GLIBC_TUNABLES")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert not heap.keep_freed_memory()


def test_the_cli_keeps_freed_memory_before_any_command(monkeypatch):
    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append("heap"))
    monkeypatch.setattr(cli, "supervise", lambda: None)
    monkeypatch.setattr(cli, "limit_blas_threads", lambda: calls.append("blas"))
    monkeypatch.setattr(cli, "app", lambda: calls.append("app"))
    cli.main()
    assert calls == ["blas", "heap", "app"]
