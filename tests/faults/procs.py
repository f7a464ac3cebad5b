"""Process helpers of the fault tests: the pool of a master as the kernel sees it."""

from __future__ import annotations

import os
import time

import psutil


def children(master: int) -> list[int]:
    """Pids of the children of ``master`` (zombies included), read cheaply from
    ``/proc/PID/task/PID/children`` on Linux (psutil scans every process instead)."""
    try:
        with open(f"/proc/{master}/task/{master}/children") as listing:
            return [int(pid) for pid in listing.read().split()]
    except FileNotFoundError:
        if os.path.exists(f"/proc/{master}"):  # a kernel without CONFIG_PROC_CHILDREN
            try:
                return [kid.pid for kid in psutil.Process(master).children()]
            except psutil.NoSuchProcess:
                pass
        return []


def is_worker(pid: int) -> bool:
    """Whether ``pid`` runs (is no zombie) and is titled ``prefork: worker ...`` (it has booted
    as far as setting its title)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read().startswith(b"prefork: worker")  # empty for a zombie
    except OSError:
        return False


def pool(master: int) -> set[int]:
    """Pids of the live (not zombie) workers of master ``master``, titled as workers."""
    return {pid for pid in children(master) if is_worker(pid)}


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def zombies(master: int) -> list[int]:
    """Pids of the master's children that exited and were not reaped."""
    found: list[int] = []
    try:
        kids = psutil.Process(master).children()
    except psutil.NoSuchProcess:
        return found
    for kid in kids:
        try:
            if kid.status() == psutil.STATUS_ZOMBIE:
                found.append(kid.pid)
        except psutil.ZombieProcess:
            found.append(kid.pid)
        except psutil.NoSuchProcess:
            pass
    return found


def wait_pool(
    master: int, size: int, timeout: float = 10.0, without: set[int] | frozenset[int] = frozenset()
) -> set[int]:
    """Wait until master ``master`` has ``size`` live workers, none of them in ``without``;
    return their pids. Fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        pids = pool(master)
        if len(pids) == size and not pids & without:
            return pids
        if time.monotonic() > deadline:
            raise AssertionError(f"pool of {master} not {size} workers without {without} after {timeout} s")
        time.sleep(0.005)


def wait_gone(pid: int, timeout: float = 10.0) -> None:
    """Wait until ``pid`` has exited (a zombie counts as exited); fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} still runs after {timeout} s")
        time.sleep(0.005)
