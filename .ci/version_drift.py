"""Print the installed packages whose versions differ from constraints.txt (run with the venv's python).

The newest-packages pass of CI runs on what the ranges in pyproject.toml allow today; when it fails, these
lines name the packages and versions that moved since the suite last passed.
"""
import importlib.metadata
import re
import sys
from pathlib import Path

pinned = {}
for line in Path(sys.argv[1]).read_text().splitlines():
    match = re.match(r"([A-Za-z0-9_.\-]+)==(\S+)", line.strip())
    if match:
        pinned[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = match.group(2)
installed = {re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower(): d.version for d in importlib.metadata.distributions()}
moved = [f"{name} {pinned[name]} -> {version}" for name, version in sorted(installed.items())
         if name in pinned and pinned[name] != version]
new = [f"{name} {version} (not in constraints.txt)" for name, version in sorted(installed.items())
       if name not in pinned and name not in ("tgfr", "torch", "pip", "setuptools", "wheel")]
print("packages newer or other than constraints.txt:" if moved or new else "every package as in constraints.txt")
for line in moved + new:
    print("  " + line)
