"""Print pip's configured package sources as ``uv pip install`` options.

``make venv`` installs with uv (several times faster than pip); uv does not read pip's
configuration, so the constraints, find-links and extra indexes that pip is configured with
(``pip config list``) are passed on explicitly.  Local paths that do not exist are left out.
"""

import os
import shlex
import subprocess
import sys

OPTIONS = {"constraint": "--constraint", "find-links": "--find-links", "extra-index-url": "--extra-index-url",
           "index-url": "--index-url"}


def _exists(value: str) -> bool:
    path = value[len("file://"):] if value.startswith("file://") else value
    return "://" in value and not value.startswith("file://") or os.path.exists(path)


def main() -> None:
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    args = []
    for line in out.splitlines():
        key, _, value = line.partition("=")
        option = OPTIONS.get(key.rsplit(".", 1)[-1])
        if option is None:
            continue
        for v in shlex.split(value.strip().strip("'\"")):
            if _exists(v) and [option, v] not in [args[i:i + 2] for i in range(0, len(args), 2)]:
                args += [option, v]
    print(shlex.join(args))


if __name__ == "__main__":
    main()
