"""Which mounted file systems are kernel views rather than files (proc, sysfs, devtmpfs):
the scanner never enters them, since a link there (`/proc/<pid>/cwd`) leads back into the
whole tree and their files are not pictures."""

from __future__ import annotations

import os
from functools import lru_cache

PSEUDO_FILE_SYSTEMS = frozenset(
    {
        "autofs",
        "binfmt_misc",
        "bpf",
        "cgroup",
        "cgroup2",
        "configfs",
        "debugfs",
        "devpts",
        "devtmpfs",
        "efivarfs",
        "fusectl",
        "hugetlbfs",
        "mqueue",
        "nsfs",
        "proc",
        "pstore",
        "securityfs",
        "selinuxfs",
        "sysfs",
        "tracefs",
    }
)


@lru_cache(maxsize=1)
def _mounted_types() -> dict[int, str]:
    """st_dev -> file system type of every mount this process sees (Linux's mountinfo;
    empty elsewhere, where nothing is treated as a pseudo file system)."""
    types: dict[int, str] = {}
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as lines:
            for line in lines:
                # id parent major:minor root mountpoint options [optional...] - fstype ...
                fields = line.split()
                if "-" not in fields:
                    continue
                major, _, minor = fields[2].partition(":")
                fs_type = fields[fields.index("-") + 1]
                types[os.makedev(int(major), int(minor))] = fs_type
    except (OSError, ValueError):
        return {}
    return types


def pseudo_file_system(st_dev: int) -> str | None:
    """The type name when the device `st_dev` holds a pseudo file system, else None."""
    fs_type = _mounted_types().get(st_dev)
    return fs_type if fs_type in PSEUDO_FILE_SYSTEMS else None
