"""The secrets directory (``reconciler.statedir.SecretsDir``): the file each key
names, and a field out of a JSON object as ZLayer gives it."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.errors import SourceError
from reconciler.statedir import SecretsDir


@pytest.fixture
def secrets(tmp_path: Path) -> SecretsDir:
    (tmp_path / "plain").write_text("value\n")
    (tmp_path / "db").write_text(
        '{"password": "pw", "port": 5432, "ratio": 1.5, "tls": false, "none": null,'
        ' "hosts": ["a", "b"], "opts": {"x": 1}}'
    )
    (tmp_path / "services/demo/api").mkdir(parents=True)
    (tmp_path / "services/demo/api/token").write_text("svc-token")
    (tmp_path / "list").write_text("[1, 2]")
    (tmp_path / "text").write_text("not json")
    return SecretsDir(tmp_path)


def test_a_key_is_a_file_path_in_the_directory(secrets: SecretsDir) -> None:
    assert secrets("plain") == "value"  # one trailing newline dropped
    assert secrets("services/demo/api/token") == "svc-token"
    assert secrets("services/demo/web/token") is None
    assert secrets("absent") is None
    assert secrets("plain/below") is None  # a file is no directory


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("password", "pw"),
        ("port", "5432"),
        ("ratio", "1.5"),
        ("tls", "false"),
        ("none", ""),
        ("hosts", '["a","b"]'),
        ("opts", '{"x":1}'),
        ("missing", None),
    ],
)
def test_a_field_of_a_json_object(secrets: SecretsDir, field: str, value: str | None) -> None:
    assert secrets(f"db#{field}") == value


@pytest.mark.parametrize("name", ["list", "text", "plain"])
def test_a_field_of_what_is_no_json_object_is_an_error_naming_the_secret(
    secrets: SecretsDir, name: str
) -> None:
    with pytest.raises(SourceError, match=f"secret {name}: .* needs a JSON object"):
        secrets(f"{name}#field")


@pytest.mark.parametrize("key", ["../plain", "services/../plain", "/plain", "a//b", ".hidden", ""])
def test_a_key_that_leaves_the_directory_or_names_a_hidden_file_reads_nothing(
    secrets: SecretsDir, key: str, tmp_path: Path
) -> None:
    (tmp_path / ".hidden").write_text("hidden")
    assert secrets(key) is None
