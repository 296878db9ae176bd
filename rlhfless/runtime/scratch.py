"""Scratch directories that go with the process that made them, even one killed with SIGKILL.

An agent and a runtime each make a private directory (their ipc sockets); an agent also makes
its weight cache in /dev/shm, which is RAM: a leaked cache holding a model's weights takes
gigabytes until reboot. Their normal and error exits remove them; a process killed with SIGKILL
cannot. So each directory carries an ``owner.pid`` marker, and the next agent or runtime on the
machine removes the marked directories whose owner is gone.

The owner is the pid with its start time (``/proc/PID/stat`` field 22), the boot id and the pid
namespace: a reused pid has another start time, so a live process's directory is never taken
for a leftover. A marker from another pid namespace (a container sharing /tmp) cannot be
judged from here and is left alone, as is any directory without a readable marker, one of
another user, and a symbolic link.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile

log = logging.getLogger("rlhfless.scratch")
OWNER_FILE = "owner.pid"
SHM = "/dev/shm"


def make(prefix: str, parent: str | None = None) -> str:
    """``mkdtemp`` (mode 0700) plus the owner marker; nothing is left if the marker fails."""
    path = tempfile.mkdtemp(prefix=prefix, dir=parent)
    try:
        me = _identity(os.getpid())
        if me is not None:  # not Linux: no marker, and no sweeping either
            with open(os.path.join(path, OWNER_FILE), "x") as f:
                f.write(f"{os.getpid()} {me}\n")
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    return path


def remove(paths: list[str]) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


def sweep_leftovers() -> list[str]:
    """Remove the directories agents and runtimes left here when they were killed; the paths."""
    removed = sweep(tempfile.gettempdir(), "rlhfless-")
    if os.path.isdir(SHM):
        removed += sweep(SHM, "rlhfless-weights-")
    if removed:
        log.info("removed %d directories left by dead processes: %s", len(removed), removed)
    return removed


def sweep(parent: str, prefix: str) -> list[str]:
    """Remove the ``prefix*`` directories in ``parent`` whose marked owner is dead."""
    removed: list[str] = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            continue
        if owner_gone(entry.path):
            # rmtree refuses a top that became a symlink and never follows one inside.
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.path)
    return removed


def owner_gone(path: str) -> bool:
    """True only when ``path`` has a marker and the process it names is certainly gone."""
    try:
        fd = os.open(os.path.join(path, OWNER_FILE), os.O_RDONLY | os.O_NOFOLLOW)
        try:
            text = os.read(fd, 256).decode()
        finally:
            os.close(fd)
        pid_s, start, boot, pidns = text.split()
        pid = int(pid_s)
    except (OSError, ValueError, UnicodeDecodeError):
        return False  # no marker (not ours, or one being written) or a torn one: keep it
    if boot != _boot_id():
        return True  # made before a reboot: every process of that boot is gone
    if pidns != _pid_namespace():
        return False  # its pids mean other processes here
    return _start_time(pid) != start  # None (gone, or a zombie) or a reused pid


def _identity(pid: int) -> str | None:
    start, boot, pidns = _start_time(pid), _boot_id(), _pid_namespace()
    if start is None or boot is None or pidns is None:
        return None
    return f"{start} {boot} {pidns}"


def _start_time(pid: int) -> str | None:
    """Field 22 of ``/proc/PID/stat``; None when the process is gone or a zombie (it runs no
    code, so no cleanup of its own will come)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # the name may hold spaces and ')'
    except (OSError, IndexError):
        return None
    if len(fields) < 20 or fields[0] in ("Z", "X"):  # fields[0] is field 3, the state
        return None
    return fields[19]


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip() or None
    except OSError:
        return None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid").replace(" ", "")
    except OSError:
        return None
