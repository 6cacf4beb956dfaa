"""engine/request.py: one request type for `xmr search`, both HTTP search routes and
`Engine.search`, with every bound checked in one place (no server, no model)."""

from __future__ import annotations

import inspect

import pytest

from xmr.engine.engine import Engine
from xmr.engine.query_input import QueryInput
from xmr.engine.request import FIELD_DOCS, MAX_K, BadField, SearchRequest
from xmr.retrieval.errors import InputError, ItemNotFound

EVERY_FIELD = SearchRequest(
    query=QueryInput("beach + 2:sunset", like=(3, 4), add=("blue",), sub=("people",)),
    target="images",
    k=7,
    candidates=64,
    rerank=False,
    under=("/photos/a", "/photos/b c"),
    after="2024-01-01",
    before="2024-02-01T10:30",
    ext="jpg,png",
    min_score=0.25,
    dedup=0.9,
)


def _getter(fields: dict):
    def get(name):
        value = fields.get(name)
        if value is None:
            return []
        return [str(v) for v in value] if isinstance(value, list) else [str(value)]

    return get


def test_what_the_cli_sends_a_server_reads_back_as_the_same_request():
    fields = EVERY_FIELD.as_fields()
    assert set(fields) == set(FIELD_DOCS)  # and the API's documentation lists each one
    again = SearchRequest.from_fields(_getter(fields))
    assert again == EVERY_FIELD
    assert again.where == EVERY_FIELD.where and again.where.active


def test_search_takes_a_request_or_keywords_never_positional_options():
    with pytest.raises(TypeError):
        SearchRequest(QueryInput("x"))  # type: ignore[misc]  # keyword-only, the point
    parameters = inspect.signature(Engine.search).parameters
    assert [p.kind for p in parameters.values()][1:] == [
        inspect.Parameter.POSITIONAL_OR_KEYWORD,  # the query, by position or as query=
        inspect.Parameter.VAR_KEYWORD,  # everything else by name only
    ]
    with pytest.raises(TypeError):
        SearchRequest(query="x", min_scor=0.5)  # a misspelt option is an error too


@pytest.mark.parametrize(
    ("fields", "error", "says"),
    [
        ({"q": "x", "k": "0"}, BadField, "k: 0 is out of range"),
        ({"q": "x", "k": str(MAX_K + 1)}, BadField, "k:"),
        ({"q": "x", "k": str(2**70)}, BadField, "k:"),
        ({"q": "x", "candidates": "-3"}, BadField, "candidates:"),
        ({"q": "x", "dedup": "nan"}, BadField, "dedup:"),
        ({"q": "x", "min_score": "inf"}, BadField, "min_score:"),
        ({"q": "x", "rerank": "maybe"}, BadField, "rerank:"),
        ({"q": ["x", "y"]}, BadField, "q: give it once"),
        ({"like": str(2**63)}, BadField, "like: 9223372036854775808 is out of range"),
        ({"like": "-1"}, ItemNotFound, "no indexed image has id -1"),
        ({"like": "12abc"}, BadField, "like:"),
        ({"q": " + ".join(["a"] * 33)}, InputError, "at most 32"),
        ({"q": "a" * 4097}, InputError, "at most 4,096"),
        ({"q": "x", "under": ["/a"] * 65}, InputError, "at most 64"),
        ({"q": "x", "under": "/a\x00b"}, InputError, "NUL"),
        ({"q": "x", "ext": "png\x00"}, InputError, "ext"),
        ({"q": "x", "after": "9999-12-31T23:59:59-14:00"}, InputError, "outside the dates"),
        ({"q": "x", "target": "videos"}, InputError, "unknown target"),
    ],
)
def test_every_bound_is_a_typed_error_naming_the_field(fields, error, says):
    with pytest.raises(error, match=says.replace("+", r"\+")):
        SearchRequest.from_fields(_getter(fields), paths_allowed=False)


def test_dates_past_the_range_of_file_times_are_kept_not_overflowed():
    from xmr.retrieval.db_read import local_ns

    for text, ns in (("3000-01-01", 2**63 - 1), ("0001-01-01", -(2**63 - 1))):
        request = SearchRequest(query="x", before=text)
        assert local_ns(request.where.before) == ns
