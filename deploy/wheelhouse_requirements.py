"""Turn the locked requirements into the list of wheels an air-gapped image build needs.

``pip download`` evaluates environment markers against the interpreter running it, not the
image's: a host on Python 3.11.7 skips ``async-timeout; python_full_version < '3.11.3'``,
which Debian bookworm's Python 3.11.2 then needs. This script keeps every requirement
whose marker holds for *some* CPython 3.11 patch release on Linux, and writes it without
its marker, so the wheelhouse serves any 3.11 base image; the image's own ``pip install``
still evaluates the original markers (and hashes) against its interpreter.

Usage: python deploy/wheelhouse_requirements.py LOCKED.txt DOWNLOAD.txt [ARCH]
"""

from __future__ import annotations

import sys
from pathlib import Path

from packaging.markers import Marker

PATCH_RELEASES = range(0, 15)  # 3.11.0 ... 3.11.14


def target_environments(arch: str) -> list[dict[str, str]]:
    """Marker environments of CPython 3.11.x on glibc Linux for ``arch``."""
    return [
        {
            "implementation_name": "cpython",
            "implementation_version": f"3.11.{patch}",
            "os_name": "posix",
            "platform_machine": arch,
            "platform_python_implementation": "CPython",
            "platform_release": "",
            "platform_system": "Linux",
            "platform_version": "",
            "python_full_version": f"3.11.{patch}",
            "python_version": "3.11",
            "sys_platform": "linux",
        }
        for patch in PATCH_RELEASES
    ]


def logical_lines(text: str) -> list[str]:
    """Join backslash-continued lines (the exported file puts each hash on its own line)."""
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.rstrip()
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        if current.strip() and not current.lstrip().startswith("#"):
            lines.append(" ".join(current.split()))
        current = ""
    return lines


def needed(line: str, environments: list[dict[str, str]]) -> str | None:
    """The requirement without its marker, or None when no target needs it."""
    head, *hashes = line.split(" --hash=")
    requirement, _, marker = head.partition(";")
    if marker.strip() and not any(Marker(marker.strip()).evaluate(env) for env in environments):
        return None
    return " --hash=".join([requirement.strip(), *hashes])


def main(argv: list[str]) -> int:
    if len(argv) not in (3, 4):
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    source, target = Path(argv[1]), Path(argv[2])
    arch = argv[3] if len(argv) == 4 else "x86_64"
    environments = target_environments(arch)
    kept = [
        req for line in logical_lines(source.read_text()) if (req := needed(line, environments))
    ]
    target.write_text("".join(f"{req}\n" for req in kept))
    print(f"{len(kept)} requirements for CPython 3.11 on linux/{arch}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
