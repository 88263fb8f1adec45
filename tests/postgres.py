"""A PostgreSQL server of a test's own on 127.0.0.1, for the Prefect server the deploy tests start: on SQLite its
writes waited up to 60 s on `database is locked` while two dates ran. Import as `from postgres import ...`.

PostgreSQL refuses to run as root, so as root it runs as the `postgres` user (Debian's package makes it); as
anyone else, as that user. Durability is off (fsync, synchronous commit): the database lives as long as the test."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager


def _binary(name: str) -> str | None:
    # Debian keeps the server's programs out of PATH, under /usr/lib/postgresql/VERSION/bin.
    return shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def postgres(db: str = "prefect") -> Iterator[str]:
    """A fresh server with database `db`; yields its SQLAlchemy URL for Prefect
    (PREFECT_API_DATABASE_CONNECTION_URL); stopped and deleted afterwards."""
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    if not (initdb and pg_ctl):
        raise RuntimeError("PostgreSQL is not installed (no initdb/pg_ctl on PATH or in /usr/lib/postgresql/*/bin): "
                           "apt-get install postgresql")
    as_user: list[str] = []
    data = tempfile.mkdtemp(prefix="mathfactory-pg-")  # not under pytest's tmp: that is root's alone
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(data, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()

    def sh(*args: str) -> None:
        try:
            subprocess.run([*as_user, *args], check=True, capture_output=True, text=True, cwd=data)
        except subprocess.CalledProcessError as e:
            raise RuntimeError(f"PostgreSQL: {' '.join(e.cmd)} failed\n{e.stdout}{e.stderr}") from None

    try:
        sh(initdb, "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off " \
                  "-c full_page_writes=off -c max_connections=200"
        sh(pg_ctl, "-D", data, "-o", options, "-l", f"{data}/server.log", "-w", "-t", "60", "start")
        try:
            sh(_binary("psql") or "psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-c",
               f"CREATE DATABASE {db}")
            yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/{db}"
        finally:
            subprocess.run([*as_user, pg_ctl, "-D", data, "-m", "fast", "-w", "stop"], capture_output=True)
    finally:
        shutil.rmtree(data, ignore_errors=True)
