"""Storage specs and opening storages (nas.study.storage)."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import optuna
import pytest

from nas.errors import UsageError
from nas.study.storage import open_storage, parse_storage, storage_of_target


def test_storage_specs(tmp_path):
    assert parse_storage(None, tmp_path).kind == "sqlite"
    assert parse_storage(None, tmp_path).path == tmp_path / "study.db"
    assert parse_storage("journal:x/j.log").kind == parse_storage("a/b.log").kind == "journal"
    assert parse_storage("a/b.log").path == Path("a/b.log")
    rdb = parse_storage("postgresql+psycopg2://u:secret@h/db")
    assert rdb.kind == "rdb" and rdb.path is None and "secret" not in rdb.display()
    assert parse_storage("sqlite:///x/y.db").folder == Path("x")
    with pytest.raises(UsageError, match="expected sqlite"):
        parse_storage("study.db")
    with pytest.raises(UsageError, match="no storage given"):
        parse_storage(None)


def test_storage_of_target(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "study.db").write_bytes(b"")
    assert storage_of_target(str(tmp_path / "a")).url == f"sqlite:///{tmp_path / 'a' / 'study.db'}"
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "j.log").write_text("")
    spec = storage_of_target(str(tmp_path / "b"))
    assert spec.kind == "journal" and spec.folder == tmp_path / "b"
    (tmp_path / "b" / "k.log").write_text("")
    with pytest.raises(UsageError, match="several journal files"):
        storage_of_target(str(tmp_path / "b"))
    (tmp_path / "c").mkdir()
    with pytest.raises(UsageError, match="no study.db or journal"):
        storage_of_target(str(tmp_path / "c"))
    with pytest.raises(UsageError, match="no such results folder"):
        storage_of_target(str(tmp_path / "nothing"))


def test_open_storage(tmp_path):
    st = open_storage(parse_storage(None, tmp_path / "o"), heartbeat_interval=5)
    assert isinstance(st, optuna.storages.RDBStorage) and (tmp_path / "o" / "study.db").is_file()
    st = open_storage(parse_storage(str(tmp_path / "j" / "journal.log")))
    assert isinstance(st, optuna.storages.JournalStorage)
    with pytest.raises(UsageError, match="no such study database"):
        open_storage(parse_storage(f"sqlite:///{tmp_path / 'missing.db'}"), create=False)
    assert not (tmp_path / "missing.db").exists()
    with pytest.raises(UsageError, match="no such journal file"):
        open_storage(parse_storage(f"journal:{tmp_path / 'missing.log'}"), create=False)


def test_unreachable_storage_is_a_usage_error():
    # nothing listens on port 1; without psycopg2 the message names the missing driver instead
    with pytest.raises(UsageError, match=r"--storage postgresql\+psycopg2://u:\*\*\*@127\.0\.0\.1:1/x"):
        open_storage(parse_storage("postgresql+psycopg2://u:secret@127.0.0.1:1/x"))
    with pytest.raises(UsageError, match="--storage nosuchdb://x"):
        open_storage(parse_storage("nosuchdb://x"))


def test_missing_driver_names_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pg(name, *a, **kw):
        if name.startswith("psycopg2"):
            raise ModuleNotFoundError("No module named 'psycopg2'", name="psycopg2")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_pg)
    with pytest.raises(UsageError, match=r"acla-nas\[postgres\]") as e:
        open_storage(parse_storage("postgresql+psycopg2://u@127.0.0.1:1/x"))
    assert "Failed to import" not in str(e.value)


def _create(args):
    url, name = args
    from nas.study.storage import init_lock, open_storage, parse_storage

    spec = parse_storage(url)
    with init_lock(spec):
        st = open_storage(spec)
        try:
            optuna.create_study(storage=st, study_name=name, directions=["maximize", "minimize"])
            return "created"
        except optuna.exceptions.DuplicatedStudyError:
            return "joined"


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_concurrent_first_open_creates_once(tmp_path, kind):
    """Four processes open a new storage and create the study at the same moment."""
    for rep in range(3):
        url = (f"sqlite:///{tmp_path / f'r{rep}' / 'study.db'}" if kind == "sqlite"
               else f"journal:{tmp_path / f'r{rep}' / 'j.log'}")
        with mp.get_context("fork").Pool(4) as pool:
            got = pool.map(_create, [(url, "s")] * 4)
        assert sorted(got) == ["created", "joined", "joined", "joined"]
