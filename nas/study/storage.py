"""Optuna storages of a study: one parser for every way a user names one, and opening them.

Storage specs (``--storage``, ``hpo.storage``, or the STUDY argument of ``pareto``/``export``):

* ``None`` -> ``sqlite:///<out>/study.db`` (embedded, zero set-up);
* ``journal:PATH`` or a ``*.log`` path -> ``JournalStorage(JournalFileBackend(PATH))`` (several
  processes on one machine);
* a SQLAlchemy URL: ``sqlite:///FILE``, ``postgresql+psycopg2://user@host/db``,
  ``mysql+pymysql://...`` (workers on several machines);
* for reading, a results folder (holding ``study.db`` or one journal ``*.log``) or a file.

Workers that start together on a new SQLite or journal study serialise the creation of the
tables and of the study with a lock file beside the storage (:func:`init_lock`); RDB servers
retry the table creation race.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from nas.errors import UsageError

#: database drivers and the extra that installs them
DRIVER_EXTRAS = {"postgresql": "pip install 'acla-nas[postgres]' (psycopg2-binary)",
                 "mysql": "pip install pymysql"}


@dataclass(frozen=True)
class StorageSpec:
    """A parsed storage spec.

    Attributes:
        kind: ``sqlite``, ``journal`` or ``rdb`` (a database server).
        url: the SQLAlchemy URL (``sqlite``/``rdb``) or the journal file path.
        folder: the study folder the file lives in (``None`` for servers).
    """

    kind: str
    url: str
    folder: Path | None

    @property
    def path(self) -> Path | None:
        """The storage file (SQLite database or journal), ``None`` for servers and memory."""
        if self.kind == "journal":
            return Path(self.url)
        if self.kind == "sqlite":
            db = self.url.split(":///", 1)[1] if ":///" in self.url else ""
            return Path(db) if db and db != ":memory:" else None
        return None

    def display(self) -> str:
        """The spec for messages and records, password hidden."""
        return f"journal:{self.url}" if self.kind == "journal" else redact(self.url)


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***``."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL
        return url


def default_storage_url(out_dir: str | os.PathLike) -> str:
    """``sqlite:///<out_dir>/study.db``."""
    return f"sqlite:///{Path(out_dir) / 'study.db'}"


def parse_storage(spec: str | None, out_dir: str | os.PathLike | None = None) -> StorageSpec:
    """Parse a storage spec (see the module docstring) without touching anything.

    Args:
        spec: the spec; ``None`` for the default SQLite file of ``out_dir``.
        out_dir: the results folder (default storage).

    Raises:
        UsageError: neither a URL, a ``journal:`` path nor a ``.log`` path, or no ``out_dir`` for
            the default.
    """
    if spec is None:
        if out_dir is None:
            raise UsageError("--storage: no storage given")
        return StorageSpec("sqlite", default_storage_url(out_dir), Path(out_dir))
    if spec.startswith("journal:") or ("://" not in spec and spec.endswith(".log")):
        raw = spec[len("journal:"):] if spec.startswith("journal:") else spec
        if not raw.strip():
            raise UsageError(f"--storage {spec}: no journal file given (journal:FILE)")
        path = Path(raw)
        return StorageSpec("journal", str(path), path.parent)
    if "://" not in spec:
        raise UsageError(f"--storage {spec}: expected sqlite:///FILE, journal:FILE, a .log path "
                         "or a database URL such as postgresql+psycopg2://user@host/db")
    if spec.startswith("sqlite"):
        p = StorageSpec("sqlite", spec, None)
        return StorageSpec("sqlite", spec, p.path.parent if p.path else None)
    return StorageSpec("rdb", spec, None)


def storage_of_target(target: str) -> StorageSpec:
    """The storage a STUDY argument names: a results folder, a ``study.db``/journal file, or a
    storage URL (``results/<target>`` is tried for a bare name).

    Raises:
        UsageError: missing folder or file, a folder without a storage, several journals.
    """
    if "://" in target or target.startswith("journal:"):
        return parse_storage(target)
    p = Path(target)
    if not p.exists() and (Path("results") / target).is_dir():
        p = Path("results") / target
    if p.is_dir():
        if (p / "study.db").is_file():
            return StorageSpec("sqlite", default_storage_url(p), p)
        logs = sorted(p.glob("*.log"))
        if len(logs) == 1:
            return StorageSpec("journal", str(logs[0]), p)
        if logs:
            raise UsageError(f"{p}: several journal files ({', '.join(x.name for x in logs)}); "
                             "name one")
        raise UsageError(f"{p}: no study.db or journal *.log in this folder")
    if p.is_file():
        if p.suffix == ".log":
            return StorageSpec("journal", str(p), p.parent)
        return StorageSpec("sqlite", f"sqlite:///{p}", p.parent)
    raise UsageError(f"{target}: no such results folder, study file or storage URL")


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Silence Optuna's info logs and its ExperimentalWarning/FutureWarning for the APIs we use on
    purpose."""
    import optuna

    prev = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(max(prev, optuna.logging.WARNING))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        optuna.logging.set_verbosity(prev)


@contextlib.contextmanager
def init_lock(spec: StorageSpec) -> Iterator[None]:
    """An exclusive lock (``fcntl.flock`` on ``.<storage file>.acla-nas-init.lock``) around
    opening a storage and creating a study, so workers starting together on a new SQLite or
    journal study on one machine do not race to create tables or the study. No-op for servers."""
    path = spec.path
    if path is None:
        yield
        return
    from nas.io import ensure_dir

    ensure_dir(path.parent, "study folder")
    lock = path.with_name(f".{path.name}.acla-nas-init.lock")  # not Optuna's own <journal>.lock
    with open(lock, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def open_storage(spec: StorageSpec, *, heartbeat_interval: int | None = None,
                 grace_period: int | None = None, stale_trial_callback: Any = None,
                 create: bool = True):
    """Open an Optuna storage.

    Args:
        spec: from :func:`parse_storage` or :func:`storage_of_target`.
        heartbeat_interval, grace_period: seconds (RDB storages only; ``None``: no heartbeat).
        stale_trial_callback: called by Optuna with each trial it fails for a stopped heartbeat.
        create: allow creating a new file (``False`` for read-only commands: a missing file is an
            error instead of an empty new storage).

    Returns:
        The storage object.

    Raises:
        UsageError: missing file (``create=False``), an SQLite file without Optuna's tables
            (``create=False``; checked read-only, so it is not written), missing driver (naming
            the extra to install), unreachable or unreadable database.
    """
    import optuna

    path = spec.path
    if not create and path is not None and not path.is_file():
        raise UsageError(f"{path}: no such {'journal file' if spec.kind == 'journal' else 'study database'}")
    if not create and path is not None and spec.kind == "sqlite":
        check_study_database(path)
    if create and path is not None:
        from nas.io import ensure_dir

        ensure_dir(path.parent, "study folder")
    if spec.kind == "journal":
        from optuna.storages.journal import JournalFileBackend

        try:
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        except (OSError, ValueError) as e:
            raise UsageError(f"{path}: cannot open journal storage ({e})") from None
        except (KeyError, TypeError, AttributeError) as e:  # lines that are no journal operations
            raise UsageError(f"{path}: not an Optuna journal ({e.__class__.__name__}: {e})") \
                from None
    kwargs: dict[str, Any] = {}
    if spec.kind == "sqlite":
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    elif spec.url.startswith(("postgresql", "mysql")):
        kwargs["engine_kwargs"] = {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}
    if heartbeat_interval:
        kwargs.update(heartbeat_interval=int(heartbeat_interval),
                      grace_period=int(grace_period) if grace_period else None,
                      heartbeat_stale_trial_callback=stale_trial_callback)
    try:
        return _open_rdb(spec.url, kwargs)
    except ImportError as e:
        scheme = spec.url.split(":", 1)[0].split("+", 1)[0]
        hint = DRIVER_EXTRAS.get(scheme, "install the database driver named in the URL")
        name = getattr(e, "name", None) or (e.__cause__ and getattr(e.__cause__, "name", None)) \
            or "the driver"
        raise UsageError(f"--storage {redact(spec.url)}: database driver {name} is not installed "
                         f"({hint})") from None
    except Exception as e:  # noqa: BLE001 - sqlalchemy's many connection/URL errors
        first = (str(e).strip().splitlines() or [e.__class__.__name__])[0]
        raise UsageError(f"--storage {redact(spec.url)}: cannot open ({e.__class__.__name__}: "
                         f"{first[:200]})") from None


def _open_rdb(url: str, kwargs: dict, tries: int = 6):
    """``RDBStorage(url)``, retried when workers starting together race to create the tables."""
    import optuna
    from sqlalchemy import exc

    for attempt in range(tries):
        try:
            with quiet_optuna():
                return optuna.storages.RDBStorage(url, **kwargs)
        except (exc.IntegrityError, exc.ProgrammingError, exc.OperationalError) as e:
            race = (not isinstance(e, exc.OperationalError) or "already exists" in str(e)
                    or "locked" in str(e))
            if attempt == tries - 1 or not race:
                raise
            time.sleep(0.3 * (attempt + 1))
    raise AssertionError("unreachable")


def check_study_database(path: Path) -> None:
    """Refuse, without writing to it, an SQLite file that holds no Optuna tables (reading it
    through Optuna's storage would create them).

    Raises:
        UsageError: the file is not an SQLite database or has no Optuna ``studies`` table.
    """
    import sqlite3

    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            found = con.execute("SELECT name FROM sqlite_master WHERE type='table' AND "
                                "name='studies'").fetchone()
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        raise UsageError(f"{path}: not an Optuna study database ({e})") from None
    if found is None:
        raise UsageError(f"{path}: not an Optuna study database (no Optuna tables)")
