"""A throwaway PostgreSQL server in a folder of this machine, for trying a PostgreSQL store
without a database administrator (and for the test suite and the benchmarks).

The server's binaries come from the ``pgserver`` package (in the ``postgres`` extra), or
from an installed PostgreSQL (``pg_ctl`` on the PATH, or Debian's ``/usr/lib/postgresql``).
It listens on 127.0.0.1 only, with password authentication over TCP. PostgreSQL refuses to
run as root; started by root, the server runs as the user ``nobody``.

    with LocalPostgres("/tmp/pg") as server:
        url = server.create_database("arena")   # postgresql://attnarena:...@127.0.0.1:PORT/arena
"""
from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
from pathlib import Path

USER = "attnarena"


def find_binaries() -> Path | None:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres``, or None."""
    places = []
    spec = importlib.util.find_spec("pgserver")  # its bundled binaries, never imported
    if spec is not None and spec.submodule_search_locations:
        places.append(Path(spec.submodule_search_locations[0]) / "pginstall" / "bin")
    found = shutil.which("pg_ctl")
    if found:
        places.append(Path(found).resolve().parent)
    places += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for place in places:
        if all((place / name).exists() for name in ("initdb", "pg_ctl", "postgres")):
            return place
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalPostgres:
    """A PostgreSQL server with its data in ``folder`` (made by ``initdb`` on first start).

    Args:
        folder: where the data, the socket and the log go.
        password: the password of the user ``attnarena``.
        port: the TCP port on 127.0.0.1 (default: a free one).
        durable: False turns fsync off (tests: faster, and a machine crash may lose data).
    """

    def __init__(self, folder, password: str = "attnarena", port: int | None = None,
                 durable: bool = True):
        self.bin = find_binaries()
        if self.bin is None:
            raise RuntimeError("no PostgreSQL server binaries found: pip install "
                               "'attnarena[postgres]' (pgserver bundles them), or install "
                               "your system's postgresql package")
        self.folder = Path(folder).resolve()
        self.data, self.log = self.folder / "data", self.folder / "server.log"
        self.password, self.port = password, port or _free_port()
        self.durable = durable
        self._as = None
        if os.geteuid() == 0:  # postgres will not run as root
            nobody = pwd.getpwnam("nobody")
            self._as = (nobody.pw_uid, nobody.pw_gid)

    def _run(self, *args, check=True):
        def drop():
            if self._as:
                os.setgid(self._as[1])
                os.setuid(self._as[0])
        return subprocess.run([str(self.bin / args[0]), *args[1:]], check=check,
                              capture_output=True, text=True, preexec_fn=drop, timeout=120)

    def _own(self, path: Path):
        if self._as:
            os.chown(path, *self._as)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def start(self) -> "LocalPostgres":
        self.folder.mkdir(parents=True, exist_ok=True)
        self._own(self.folder)
        if not (self.data / "PG_VERSION").exists():
            secret = self.folder / "password"
            secret.write_text(self.password + "\n")
            self._own(secret)
            self._run("initdb", "-D", str(self.data), "-U", USER, "--pwfile", str(secret),
                      "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8",
                      "--locale=C")
            secret.unlink()
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-o",
                  f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
                  "-c max_connections=200" + ("" if self.durable else " -c fsync=off"),
                  "start")
        return self

    def stop(self, mode: str = "fast"):
        """Stop the server (``mode="immediate"``: as a crash would)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def restart(self):
        self.stop()
        self.start()

    def create_database(self, name: str) -> str:
        """Make an empty database ``name`` and return its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False
