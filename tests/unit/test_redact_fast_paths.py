"""The shortcuts redaction takes for speed answer exactly what the long way answers."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.redact import (
    EMBEDDED_RE,
    URL_USERINFO_RE,
    has_embedded_secret,
    has_unhashed,
    has_userinfo,
    is_sensitive_name,
    unhashed_paths,
)

PLACEHOLDERS = st.sampled_from(
    [
        {"secret": "db"},
        {"secret": "db", "hmac": "hmac-sha256:00"},
        {"sensitive": "$E:X"},
        {"sensitive": "literal", "hmac": "hmac-sha256:11"},
        {"sensitive": "literal", "hmac": "h", "extra": "not a placeholder"},
    ]
)
JSON: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8) | PLACEHOLDERS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=30,
)
TEXT = st.text(alphabet="ab=@:/ -PASSWORD_$'\"x", max_size=40) | st.sampled_from(
    ["postgres://app:pw@db/app", "mysql --password=pw", "https://x/p@v2", "A=1 B=$C"]
)


@settings(max_examples=400, deadline=None)
@given(JSON)
def test_has_unhashed_is_unhashed_paths_not_empty(config: Any) -> None:
    assert has_unhashed(config) == bool(unhashed_paths(config))


@settings(max_examples=400, deadline=None)
@given(TEXT)
def test_the_sensitive_text_shortcuts_change_no_answer(text: str) -> None:
    assert has_userinfo(text) == (URL_USERINFO_RE.search(text) is not None)
    long_way = any(is_sensitive_name(m["name"]) for m in EMBEDDED_RE.finditer(text))
    assert has_embedded_secret(text) == long_way
