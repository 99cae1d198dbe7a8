"""Capture and N+1 detection on another dialect: SQLite (file database, real driver)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Column, Engine, ForeignKey, Table, create_engine, func, select
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    selectinload,
)

import dbprobe
from dbprobe.config import DbprobeConfig

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().relative_to(ROOT).as_posix()


class Base(DeclarativeBase):
    pass


book_genres = Table(
    "book_genres",
    Base.metadata,
    Column("book_id", ForeignKey("books.id"), primary_key=True),
    Column("genre_id", ForeignKey("genres.id"), primary_key=True),
)


class Author(Base):
    __tablename__ = "authors"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    books: Mapped[list[Book]] = relationship(back_populates="author", order_by="Book.id")


class Book(Base):
    __tablename__ = "books"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str]
    author_id: Mapped[int] = mapped_column(ForeignKey("authors.id"))
    author: Mapped[Author] = relationship(back_populates="books")
    reviews: Mapped[list[BookReview]] = relationship(back_populates="book")
    genres: Mapped[list[Genre]] = relationship(secondary=book_genres)


class BookReview(Base):
    __tablename__ = "book_reviews"
    id: Mapped[int] = mapped_column(primary_key=True)
    book_id: Mapped[int] = mapped_column(ForeignKey("books.id"))
    stars: Mapped[int]
    book: Mapped[Book] = relationship(back_populates="reviews")


class Genre(Base):
    __tablename__ = "genres"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    path = tmp_path_factory.mktemp("sqlite") / "library.db"
    engine = create_engine(f"sqlite:///{path}")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        genres = [Genre(name=f"g{i}") for i in range(3)]
        for a in range(5):
            author = Author(name=f"author {a}")
            for b in range(3):
                book = Book(title=f"book {a}.{b}", genres=genres[: b + 1])
                book.reviews = [BookReview(stars=s) for s in range(1, 3)]
                author.books.append(book)
            session.add(author)
        session.commit()
    yield engine
    engine.dispose()


@pytest.fixture
def config() -> DbprobeConfig:
    return DbprobeConfig(root=str(ROOT))


def _line(marker: str) -> str:
    text = Path(__file__).read_text().splitlines()
    (number,) = [i for i, line in enumerate(text, start=1) if line.rstrip().endswith(marker)]
    return f"{HERE}:{number}"


def nested_reviews(session: Session) -> int:
    authors = session.scalars(select(Author).options(selectinload(Author.books))).all()
    total = 0
    for author in authors:
        for book in author.books:
            total += len(book.reviews)  # marker: nested
    return total


def test_nested_collection_chain_on_sqlite(engine: Engine, config: DbprobeConfig) -> None:
    with Session(engine) as session, dbprobe.capture() as log:
        assert nested_reviews(session) == 30
    assert {r.dialect for r in log} == {"sqlite"}
    (finding,) = log.findings(config)
    assert finding.rule == "n-plus-one"
    assert finding.location == _line("# marker: nested")
    assert finding.count == 15
    assert finding.evidence["fix"] == "selectinload(Author.books).selectinload(Book.reviews)"
    assert finding.evidence["relationship"] == "Book.reviews"


def test_many_to_many_and_many_to_one_on_sqlite(engine: Engine, config: DbprobeConfig) -> None:
    with Session(engine) as session, dbprobe.capture() as log:
        books = session.scalars(select(Book).order_by(Book.id)).all()
        genre_counts = [len(book.genres) for book in books]  # marker: m2m
        session.expunge_all()
        books = session.scalars(select(Book).order_by(Book.id.desc())).all()
        names = [book.author.name for book in books]  # marker: m2o
    assert sum(genre_counts) == 30
    assert len(names) == 15
    fixes = {f.location: f.evidence["fix"] for f in log.findings(config)}
    assert fixes == {
        _line("# marker: m2m"): "selectinload(Book.genres)",
        _line("# marker: m2o"): "joinedload(Book.author)",
    }


def test_get_and_scalar_loops_on_sqlite(engine: Engine, config: DbprobeConfig) -> None:
    with Session(engine) as session, dbprobe.capture() as log:
        books = [session.get(Book, i) for i in range(1, 6)]  # marker: get
        titles = [book.title for book in books if book is not None]
        stars = []
        for i in range(1, 6):
            total = select(func.sum(BookReview.stars)).where(BookReview.book_id == i)
            stars.append(session.scalar(total))  # marker: scalar
    assert len(titles) == 5
    assert stars == [3] * 5
    fixes = {f.location: f.evidence["fix"] for f in log.findings(config)}
    assert fixes == {
        _line("# marker: get"): "select(Book).where(Book.id.in_(ids))",
        _line("# marker: scalar"): (
            "select(BookReview.book_id, func.sum(BookReview.stars))"
            ".where(BookReview.book_id.in_(ids)).group_by(BookReview.book_id)"
        ),
    }


def test_eager_loads_are_clean_on_sqlite(engine: Engine, config: DbprobeConfig) -> None:
    with Session(engine) as session, dbprobe.capture() as log:
        authors = session.scalars(
            select(Author).options(selectinload(Author.books).selectinload(Book.reviews))
        ).all()
        total = sum(len(book.reviews) for author in authors for book in author.books)
    assert total == 30
    assert len(log) == 3
    assert log.findings(config) == []


def book_title(session: Session, book_id: int) -> str:
    """A helper: one look-up per call."""
    book = session.get(Book, book_id)  # marker: helper
    return book.title if book is not None else ""


def test_helper_called_from_two_places_is_not_a_loop(engine: Engine, config: DbprobeConfig) -> None:
    with Session(engine) as session, dbprobe.capture() as log:
        first = book_title(session, 1)
        second = book_title(session, 2)
    assert first != second
    assert len(log) == 2
    assert log.findings(config) == []
    assert log.statements[0].caller_location(str(ROOT)) != log.statements[1].caller_location(
        str(ROOT)
    )
    with Session(engine) as session, dbprobe.capture() as loop_log:
        titles = [book_title(session, i) for i in range(1, 6)]  # marker: loop over helper
    assert len(titles) == 5
    (finding,) = loop_log.findings(config)
    assert finding.location == _line("# marker: helper")
    assert finding.evidence["called_from"] == _line("# marker: loop over helper")
