"""Keep AppWorld servers on the loopback interface.

An AppWorld server executes any code it is sent, without authentication, and AppWorld 0.1.3's
`appworld serve environment` binds `0.0.0.0` with no option to change it. Two defences, both standard library only:

- **Wrapper.** `python loopback.py PROGRAM ARGS...` runs the Python script PROGRAM (e.g. the `appworld` console script)
  in this interpreter with `socket.socket.bind` patched, so that a bind to every interface (`0.0.0.0`, `""`, `::`)
  binds the loopback address instead. Run it with the interpreter of PROGRAM's virtualenv (`loopback_command` reads it
  from the script's `#!` line). Sub-processes the program spawns are not covered; the check below is.
- **Check.** `public_listeners(port)` lists the non-loopback addresses on which something listens on `port`, read from
  `/proc/net/tcp` and `/proc/net/tcp6` (Linux; empty elsewhere). `scripts/setup_appworld.sh` and
  `AppWorldServerPool` refuse such a server unless `APPWORLD_ALLOW_PUBLIC=1`.
"""

from __future__ import annotations

import os
import runpy
import socket
import sys


ALLOW_PUBLIC_ENV_VAR = "APPWORLD_ALLOW_PUBLIC"
_WILDCARDS = {"", "0.0.0.0", "::", "::0", "0:0:0:0:0:0:0:0"}
_LOOPBACK_HEX = {"0100007F", "00000000000000000000000001000000"}  # 127.0.0.1 and ::1 as /proc/net/tcp* writes them
_LISTEN = "0A"
_bind = socket.socket.bind


def _loopback_bind(self: socket.socket, address: object) -> None:
    if isinstance(address, tuple) and address and address[0] in _WILDCARDS:
        address = ("::1" if self.family == socket.AF_INET6 else "127.0.0.1", *address[1:])
    _bind(self, address)


def loopback_command(program: str) -> list[str]:
    """The argv prefix that runs `program` under this wrapper, or `[]` if `program` is not a Python script."""
    try:
        with open(program, "rb") as f:
            first = f.readline(512).decode("utf-8", "replace")
    except OSError:
        return []
    interpreter = first[2:].strip().split(" ")[0] if first.startswith("#!") else ""
    if "python" not in os.path.basename(interpreter):
        return []
    return [interpreter, os.path.abspath(__file__)]


def public_listeners(port: int) -> list[str]:
    """Non-loopback addresses (hex, as in `/proc/net/tcp*`) listening on TCP `port`; `[]` where `/proc` is absent."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            address, _, hex_port = fields[1].partition(":")
            if fields[3] == _LISTEN and int(hex_port, 16) == port and address not in _LOOPBACK_HEX:
                found.append(address)
    return found


def public_allowed() -> bool:
    return os.environ.get(ALLOW_PUBLIC_ENV_VAR) == "1"


def main(argv: list[str]) -> None:
    if len(argv) >= 2 and argv[0] == "--check":
        public = public_listeners(int(argv[1]))
        if public:
            print(" ".join(public))
        sys.exit(1 if public else 0)
    if not argv:
        sys.exit("usage: loopback.py PROGRAM [ARGS...] | loopback.py --check PORT")
    socket.socket.bind = _loopback_bind  # type: ignore[method-assign]
    sys.argv = list(argv)
    runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
