"""Eager loading set on the mapping, and ``library_paths`` for call sites (SQLite file
database, real driver)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, ForeignKey, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

import dbprobe
from dbprobe.config import DbprobeConfig


class Base(DeclarativeBase):
    pass


class Shelf(Base):
    __tablename__ = "shelves"
    id: Mapped[int] = mapped_column(primary_key=True)
    boxes: Mapped[list[Box]] = relationship(lazy="selectin")


class Box(Base):
    __tablename__ = "boxes"
    id: Mapped[int] = mapped_column(primary_key=True)
    shelf_id: Mapped[int] = mapped_column(ForeignKey("shelves.id"))


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'store.db'}")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all([Shelf(id=i, boxes=[Box(id=10 * i + j) for j in range(3)]) for i in (1, 2)])
        session.commit()
    yield engine
    engine.dispose()


def test_eager_load_from_the_mapping_is_not_called_an_option(
    engine: Engine, config: DbprobeConfig
) -> None:
    with Session(engine) as session, dbprobe.capture() as log:
        assert len(session.scalars(select(Shelf)).all()) == 2
    (finding,) = [f for f in log.findings(config) if f.rule == "unused-eager-load"]
    assert finding.evidence["by_mapping"] is True
    assert 'relationship(lazy="selectin")' in finding.recommendation
    assert ".options(lazyload(Shelf.boxes))" in finding.recommendation
    assert "drop" not in finding.recommendation


HELPER = """
from sqlalchemy import text

def count_rows(conn, table_ids):
    return [conn.execute(text("SELECT count(*) FROM boxes WHERE shelf_id = :s"), {"s": s}).scalar()
            for s in table_ids]
"""


def test_library_paths_move_the_call_site_to_the_caller(engine: Engine, tmp_path: Path) -> None:
    helpers = tmp_path / "helpers"
    helpers.mkdir()
    (helpers / "shelf_helpers.py").write_text(HELPER)
    sys.path.insert(0, str(helpers))
    try:
        import shelf_helpers

        with engine.connect() as conn, dbprobe.capture(use_project_config=False) as app:
            shelf_helpers.count_rows(conn, [1, 2])
        with (
            engine.connect() as conn,
            dbprobe.capture(library_paths=[str(helpers)], use_project_config=False) as lib,
        ):
            shelf_helpers.count_rows(conn, [1, 2])  # caller-line
        # A scope's directories end with it: the helper is application code again.
        with engine.connect() as conn, dbprobe.capture(use_project_config=False) as after:
            shelf_helpers.count_rows(conn, [1])
    finally:
        sys.path.remove(str(helpers))
        sys.modules.pop("shelf_helpers", None)
    helper_file = str(helpers / "shelf_helpers.py")
    assert {r.call_site[0] for r in app.statements} == {helper_file}
    this = Path(__file__).read_text().splitlines()
    (line,) = [i for i, t in enumerate(this, 1) if t.rstrip().endswith("# caller-line")]
    assert {(r.call_site[0], r.call_site[1]) for r in lib.statements} == {(__file__, line)}
    assert {r.call_site[0] for r in after.statements} == {helper_file}
