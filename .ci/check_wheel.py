"""Check the built wheel: its platform tag, the files it carries, and its
extension module (stripped, small, needing no glibc newer than allowed).

Usage: check_wheel.py DIST_DIR --tag TAG --max-so-bytes N --max-glibc X.Y
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import subprocess
import sys
import tempfile
import zipfile

REQUIRED_FILES = [
    "data_juicer_accel/__init__.py",
    "data_juicer_accel/py.typed",
    "data_juicer_accel/_native.pyi",
]
REQUIRED_LICENSE_FILES = ["LICENSE", "NOTICE"]


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def wheel_tags(filename: str) -> set[tuple[str, str, str]]:
    """The (python, abi, platform) tags a wheel's file name declares, in any order."""
    python, abi, platform = filename.removesuffix(".whl").split("-")[-3:]
    return {(p, a, q) for p in python.split(".") for a in abi.split(".") for q in platform.split(".")}


def readelf(*args: str) -> str:
    return subprocess.run(["readelf", "--wide", *args], capture_output=True, text=True, check=True).stdout


def check_extension(so_path: str, max_bytes: int, max_glibc: str) -> list[str]:
    problems = []
    size = os.path.getsize(so_path)
    print(f"  {os.path.basename(so_path)}: {size / 1e6:.2f} MB")
    if size > max_bytes:
        problems.append(f"extension module is {size} bytes, more than {max_bytes}")
    if ".symtab" in readelf("--section-headers", so_path):
        problems.append("extension module is not stripped (it has a .symtab section)")
    needed = set(re.findall(r"GLIBC_(\d+(?:\.\d+)+)", readelf("--version-info", so_path)))
    newest = max(needed, key=version_tuple, default="none")
    print(f"  newest glibc symbol version needed: {newest}")
    if needed and version_tuple(newest) > version_tuple(max_glibc):
        problems.append(f"extension module needs GLIBC_{newest}, newer than {max_glibc}")
    return problems


def check_wheel(path: str, tag: str, max_bytes: int, max_glibc: str) -> list[str]:
    print(f"{os.path.basename(path)}: {os.path.getsize(path) / 1e6:.2f} MB")
    problems = []
    if wheel_tags(os.path.basename(path)) != wheel_tags(f"x-0-{tag}.whl"):
        problems.append(f"wheel tag is not {tag}")
    with zipfile.ZipFile(path) as wheel:
        names = wheel.namelist()
        for name in REQUIRED_FILES:
            if name not in names:
                problems.append(f"missing {name}")
        for name in REQUIRED_LICENSE_FILES:
            if not any(n.endswith(f".dist-info/licenses/{name}") or n.endswith(f".dist-info/{name}") for n in names):
                problems.append(f"missing {name} in the .dist-info")
        for name in names:
            if name.endswith(".dist-info/licenses/LICENSE") or name.endswith(".dist-info/LICENSE"):
                if b"Apache License" not in wheel.read(name) or b"END OF TERMS AND CONDITIONS" not in wheel.read(name):
                    problems.append(f"{name} is not the full Apache-2.0 text")
        modules = [n for n in names if n.startswith("data_juicer_accel/_native") and n.endswith(".so")]
        if len(modules) != 1:
            return problems + [f"expected one extension module, found {modules}"]
        with tempfile.TemporaryDirectory() as tmp:
            problems += check_extension(wheel.extract(modules[0], tmp), max_bytes, max_glibc)
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dist_dir")
    parser.add_argument("--tag", required=True)
    parser.add_argument("--max-so-bytes", type=int, required=True)
    parser.add_argument("--max-glibc", required=True)
    args = parser.parse_args()
    wheels = glob.glob(os.path.join(args.dist_dir, "*.whl"))
    if len(wheels) != 1:
        print(f"expected one wheel in {args.dist_dir}, found {wheels}")
        return 1
    problems = check_wheel(wheels[0], args.tag, args.max_so_bytes, args.max_glibc)
    for problem in problems:
        print(f"  PROBLEM: {problem}")
    print("wheel OK" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
