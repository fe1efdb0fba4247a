"""The compile cache: a hit is exactly a fresh compile, a bad entry is never trusted,
problems are never cached, and no sensitive value is stored in clear."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from reconciler import compile_cache
from reconciler.compile_cache import (
    CACHE_DIR,
    MAX_ENTRIES,
    Entry,
)
from reconciler.desired import CompileInputs, DesiredState, as_running, content_revision
from reconciler.observed import ObservedState
from reconciler.plan.planner import plan_changes
from reconciler.plan.serialize import plan_to_json
from reconciler.reconcile import Compiled, compile_files
from reconciler.sources.files import Collected, collect
from reconciler.statedir import KEY_FILE
from tests.conftest import REPO


def compile_cached(
    collected: Collected, given: CompileInputs, state: Path | None, revision: str | None = None
) -> Compiled:
    """The pipeline's compile through the cache in ``state``."""
    return compile_files(collected, given, revision, cache=state)


def compile_collected(collected: Collected, given: CompileInputs, revision: str) -> Compiled:
    """The pipeline's compile without a cache."""
    return compile_files(collected, given, revision)


KEY = b"compile-cache-test-key-0123456789"
SPEC = """\
version: v1
deployment: shop
services:
  db:
    image: {name: "postgres:16"}
    env:
      POSTGRES_PASSWORD: "$S:db-password"
      LOG_LEVEL: "$E:SHOP_LOG_LEVEL"
  web:
    image: {name: "shop:1"}
    env: {DB_HOST: db, API_TOKEN: literal-token-value}
    depends:
      - {service: db, condition: healthy, timeout: 30s}
    health:
      check: {type: http, url: "http://admin:probe-pw@localhost:8080/health"}
    init:
      steps:
        - {id: wait, uses: init.wait_tcp, with: {host: db, port: 5432, timeout: 20s}}
"""
ENV = {"SHOP_LOG_LEVEL": "debug"}
SECRETS = {"db-password": "pw-one"}


@pytest.fixture
def state(tmp_path: Path) -> Path:
    directory = tmp_path / "state"
    directory.mkdir(mode=0o700)
    (directory / KEY_FILE).write_bytes(KEY)
    return directory


def specs(root: Path, files: dict[str, str]) -> Collected:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name).write_text(text)
    return collect([root])


def inputs(
    env: dict[str, str] | None = None,
    secrets: dict[str, str] | None = None,
    key: bytes | None = KEY,
) -> CompileInputs:
    return CompileInputs(
        env=ENV if env is None else env,
        secret_key=key,
        secret=(SECRETS if secrets is None else secrets).get,
    )


def fresh(collected: Collected, given: CompileInputs) -> Compiled:
    return compile_collected(collected, given, content_revision(collected.files))


def entry_files(state: Path) -> list[Path]:
    directory = state / CACHE_DIR
    return sorted(directory.iterdir()) if directory.exists() else []


def the_entry(state: Path) -> Path:
    found = entry_files(state)
    assert len(found) == 1, found
    return found[0]


def plans(desired: DesiredState, against: list[ObservedState]) -> list[str]:
    return [plan_to_json(plan_changes(desired, observed), "test") for observed in against]


def assert_hit_equals_fresh(collected: Collected, given: CompileInputs, state: Path) -> None:
    """A miss compiles and stores; the next call is a hit equal to a fresh compile in
    every field (secrets included), fingerprint and plan."""
    expected = fresh(collected, given)
    before = {p: p.read_bytes() for p in entry_files(state)}
    first = compile_cached(collected, given, state)
    assert not first.cached
    assert first == expected
    if expected.desired is None:
        assert expected.load_problems or expected.compile_problems
        assert {p: p.read_bytes() for p in entry_files(state)} == before  # never stored
        return
    second = compile_cached(collected, given, state)
    assert second.cached
    assert second.desired == expected.desired
    desired, hit = expected.desired, second.desired
    assert hit is not None
    assert hit.fingerprint() == desired.fingerprint()
    assert [s.fingerprint for s in hit.services.values()] == [
        s.fingerprint for s in desired.services.values()
    ]
    assert [s.launch_config() for s in hit.services.values()] == [
        s.launch_config() for s in desired.services.values()
    ]
    against = [ObservedState(runtime="fake"), as_running(desired)]
    assert plans(hit, against) == plans(desired, against)


# --- a hit is a fresh compile -----------------------------------------------------------------


def test_a_hit_on_the_repository_specs_is_the_fresh_compile(state: Path) -> None:
    collected = collect([REPO / "specs"])
    assert len(collected.files) >= 3
    assert_hit_equals_fresh(collected, inputs(env=dict(os.environ)), state)


def test_a_hit_with_every_kind_of_value_is_the_fresh_compile(tmp_path: Path, state: Path) -> None:
    collected = specs(tmp_path / "specs", {"shop.yaml": SPEC})
    assert_hit_equals_fresh(collected, inputs(), state)
    hit = compile_cached(collected, inputs(), state).desired
    assert hit is not None
    db, web = hit.services[("shop", "db")], hit.services[("shop", "web")]
    assert db.runtime_env() == {"POSTGRES_PASSWORD": "pw-one", "LOG_LEVEL": "debug"}
    assert web.runtime_env()["API_TOKEN"] == "literal-token-value"
    assert web.policy.health.url == "http://admin:probe-pw@localhost:8080/health"
    assert web.policy.init[0].timeout == 20.0


PLAN_CASES = sorted((REPO / "tests" / "planning" / "plan_cases").glob("*.yaml"))


@pytest.mark.parametrize("case", PLAN_CASES, ids=[p.stem for p in PLAN_CASES])
def test_a_hit_on_each_plan_case_is_the_fresh_compile(
    case: Path, tmp_path: Path, state: Path
) -> None:
    data: dict[str, Any] = YAML(typ="safe").load(case.read_text())
    secrets = data.get("secrets", {})
    given = (
        inputs(env=data.get("env", {}), key=None)
        if secrets == "offline"
        else inputs(env=data.get("env", {}), secrets=secrets or {})
    )
    collected = specs(tmp_path / "specs", data["specs"])
    assert_hit_equals_fresh(collected, given, state)


CORPUS = sorted((REPO / "tests" / "compat" / "corpus").glob("*.yaml"))


def test_a_hit_on_each_corpus_file_is_the_fresh_compile_and_problems_are_not_kept(
    tmp_path: Path, state: Path
) -> None:
    compiled = 0
    for index, path in enumerate(CORPUS):
        collected = specs(tmp_path / f"corpus-{index}", {path.name: path.read_text()})
        assert_hit_equals_fresh(collected, inputs(env={}), state)
        compiled += fresh(collected, inputs(env={})).desired is not None
    assert 50 < compiled < len(CORPUS)  # both paths were taken, many times


def test_the_revision_is_the_callers(tmp_path: Path, state: Path) -> None:
    collected = specs(tmp_path / "specs", {"shop.yaml": SPEC})
    compile_cached(collected, inputs(), state, revision="git:abc")
    hit = compile_cached(collected, inputs(), state, revision="git:def")
    assert hit.cached and hit.desired is not None
    assert hit.desired.revision == "git:def"


def test_offline_compiles_are_cached_too(tmp_path: Path, state: Path) -> None:
    collected = specs(tmp_path / "specs", {"shop.yaml": SPEC})
    offline = CompileInputs(env=ENV, secret_key=None, secret=None)
    assert_hit_equals_fresh(collected, offline, state)
    hit = compile_cached(collected, offline, state).desired
    assert hit is not None
    assert hit.services[("shop", "db")].config["env"]["POSTGRES_PASSWORD"] == {
        "secret": "db-password"
    }


# --- what the key covers ----------------------------------------------------------------------


def test_changed_file_contents_miss_and_replace_the_entry(tmp_path: Path, state: Path) -> None:
    root = tmp_path / "specs"
    compile_cached(specs(root, {"shop.yaml": SPEC}), inputs(), state)
    before = the_entry(state).read_bytes()
    changed = specs(root, {"shop.yaml": SPEC.replace("shop:1", "shop:2")})
    result = compile_cached(changed, inputs(), state)
    assert not result.cached
    assert result == fresh(changed, inputs())
    assert the_entry(state).read_bytes() != before
    assert compile_cached(changed, inputs(), state).cached


def test_the_same_contents_under_other_names_miss(tmp_path: Path, state: Path) -> None:
    compile_cached(specs(tmp_path / "a", {"shop.yaml": SPEC}), inputs(), state)
    moved = specs(tmp_path / "b", {"shop.yaml": SPEC})
    result = compile_cached(moved, inputs(), state)
    assert not result.cached
    assert result.desired is not None
    assert {s.file for s in result.desired.services.values()} == {str(tmp_path / "b/shop.yaml")}


@pytest.mark.parametrize(
    ("change", "value"),
    [("env", {"SHOP_LOG_LEVEL": "info"}), ("secrets", {"db-password": "pw-two"})],
)
def test_a_changed_env_or_secret_value_misses(
    change: str, value: dict[str, str], tmp_path: Path, state: Path
) -> None:
    collected = specs(tmp_path / "specs", {"shop.yaml": SPEC})
    first = compile_cached(collected, inputs(), state).desired
    moved = inputs(env=value) if change == "env" else inputs(secrets=value)
    result = compile_cached(collected, moved, state)
    assert not result.cached
    assert result == fresh(collected, moved)
    assert result.desired is not None and first is not None
    assert result.desired.fingerprint() != first.fingerprint()
    assert compile_cached(collected, moved, state).cached


@pytest.mark.parametrize(
    ("moved", "message"),
    [
        (inputs(env={}), "$E:SHOP_LOG_LEVEL is not set in the environment"),
        (inputs(secrets={}), "secret db-password is not set"),
    ],
)
def test_an_unset_reference_reports_its_problem_every_time(
    moved: CompileInputs, message: str, tmp_path: Path, state: Path
) -> None:
    collected = specs(tmp_path / "specs", {"shop.yaml": SPEC})
    compile_cached(collected, inputs(), state)
    entry = the_entry(state).read_bytes()
    for _ in range(2):
        result = compile_cached(collected, moved, state)
        assert result.desired is None and not result.cached
        assert [p.render() for p in result.compile_problems] == [
            p.render() for p in fresh(collected, moved).compile_problems
        ]
        assert any(message in p.render() for p in result.compile_problems)
        assert all(p.mark is not None for p in result.compile_problems)
    assert the_entry(state).read_bytes() == entry  # the good entry stays
    assert compile_cached(collected, inputs(), state).cached


def test_invalid_specs_report_their_problems_every_time_and_store_nothing(
    tmp_path: Path, state: Path
) -> None:
    bad = SPEC.replace("condition: healthy", "condition: sometimes")
    collected = specs(tmp_path / "specs", {"shop.yaml": bad})
    for _ in range(2):
        result = compile_cached(collected, inputs(), state)
        assert result.desired is None and not result.cached
        rendered = [p.render() for p in result.load_problems]
        assert any(r.startswith(f"{tmp_path}/specs/shop.yaml:13:") for r in rendered), rendered
    assert entry_files(state) == []


def test_another_zlayer_version_misses(
    tmp_path: Path, state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    collected = specs(tmp_path / "specs", {"shop.yaml": SPEC})
    monkeypatch.setattr(compile_cache, "__version__", "0.0.0-another")
    compile_cached(collected, inputs(), state)
    assert compile_cached(collected, inputs(), state).cached
    monkeypatch.undo()
    result = compile_cached(collected, inputs(), state)
    assert not result.cached
    assert result == fresh(collected, inputs())
    assert compile_cached(collected, inputs(), state).cached


def test_another_host_key_misses(tmp_path: Path, state: Path) -> None:
    collected = specs(tmp_path / "specs", {"shop.yaml": SPEC})
    compile_cached(collected, inputs(), state)
    other = b"another-host-key-0123456789abcdef"
    (state / KEY_FILE).write_bytes(other)
    result = compile_cached(collected, inputs(key=other), state)
    assert not result.cached
    assert result == fresh(collected, inputs(key=other))
    assert compile_cached(collected, inputs(key=other), state).cached


def test_a_key_that_is_not_the_hosts_bypasses_the_cache(tmp_path: Path, state: Path) -> None:
    collected = specs(tmp_path / "specs", {"shop.yaml": SPEC})
    throwaway = inputs(key=b"throwaway-key-of-plan-against-ref")
    for _ in range(2):
        result = compile_cached(collected, throwaway, state)
        assert not result.cached and result == fresh(collected, throwaway)
    assert entry_files(state) == []
    (state / KEY_FILE).unlink()  # no host key yet: any key is a throwaway
    assert not compile_cached(collected, inputs(), state).cached
    assert entry_files(state) == []


def test_no_state_directory_no_cache_and_none_created(tmp_path: Path) -> None:
    collected = specs(tmp_path / "specs", {"shop.yaml": SPEC})
    offline = CompileInputs(env=ENV, secret_key=None, secret=None)
    missing = tmp_path / "missing-state"
    for _ in range(2):
        assert not compile_cached(collected, offline, missing).cached
        assert not compile_cached(collected, offline, None).cached
    assert not missing.exists()


def test_path_problems_bypass_the_cache(tmp_path: Path, state: Path) -> None:
    root = tmp_path / "specs"
    specs(root, {"shop.yaml": SPEC})
    collected = collect([root, tmp_path / "nope"])
    result = compile_cached(collected, inputs(), state)
    assert result.desired is None
    assert [p.message for p in result.load_problems] == ["no such file or directory"]
    assert entry_files(state) == []


# --- damaged and foreign entries --------------------------------------------------------------


def _truncate_half(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip(offset: int) -> Callable[[Path], None]:
    def flip(path: Path) -> None:
        data = bytearray(path.read_bytes())
        data[offset] ^= 0x01
        path.write_bytes(bytes(data))

    return flip


DAMAGE: dict[str, Callable[[Path], None]] = {
    "empty": lambda p: p.write_bytes(b""),
    "truncated to the magic": lambda p: p.write_bytes(compile_cache.MAGIC),
    "truncated by half": _truncate_half,
    "tag cut off": lambda p: p.write_bytes(p.read_bytes()[:-1]),
    "garbage": lambda p: p.write_bytes(os.urandom(4096)),
    "another format's magic": lambda p: p.write_bytes(
        b"zlayer-compile-cache 9\n" + p.read_bytes()[23:]
    ),
    "a flipped body byte": _flip(len(compile_cache.MAGIC) + compile_cache.NONCE_BYTES + 5),
    "a flipped nonce byte": _flip(len(compile_cache.MAGIC) + 1),
    "a flipped tag byte": _flip(-1),
    "plain JSON": lambda p: p.write_text('{"deployments": [], "services": []}'),
    "a symlink": lambda p: (p.unlink(), p.symlink_to(REPO / "specs/hello.yaml")),
    "a FIFO": lambda p: (p.unlink(), os.mkfifo(p)),
}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_a_damaged_entry_is_ignored_and_rewritten(
    damage: Callable[[Path], None], tmp_path: Path, state: Path
) -> None:
    collected = specs(tmp_path / "specs", {"shop.yaml": SPEC})
    compile_cached(collected, inputs(), state)
    damage(the_entry(state))
    result = compile_cached(collected, inputs(), state)
    assert not result.cached
    assert result == fresh(collected, inputs())
    assert the_entry(state).is_file() and not the_entry(state).is_symlink()
    assert compile_cached(collected, inputs(), state).cached


def test_a_directory_in_place_of_the_entry_is_ignored(tmp_path: Path, state: Path) -> None:
    collected = specs(tmp_path / "specs", {"shop.yaml": SPEC})
    compile_cached(collected, inputs(), state)
    entry = the_entry(state)
    entry.unlink()
    entry.mkdir()
    for _ in range(2):
        result = compile_cached(collected, inputs(), state)
        assert not result.cached and result == fresh(collected, inputs())


def _good(state: Path, collected: Collected) -> dict[str, Any]:
    entry = _entry(state, collected)
    data: dict[str, Any] = entry.open(entry.path.read_bytes())
    return data


def _entry(state: Path, collected: Collected) -> Entry:
    entry = Entry.locate(collected, inputs(), state)
    assert entry is not None
    return entry


def _service(data: dict[str, Any], **change: Any) -> dict[str, Any]:
    return {**data, "services": [{**data["services"][0], **change}, *data["services"][1:]]}


WRONG_SHAPES: dict[str, Callable[[dict[str, Any]], Any]] = {
    "a list": lambda d: [d],
    "null": lambda d: None,
    "no services": lambda d: {"deployments": d["deployments"]},
    "an extra key": lambda d: {**d, "more": 1},
    "services a mapping": lambda d: {**d, "services": {"a": 1}},
    "a service missing a key": lambda d: {
        **d,
        "services": [{k: v for k, v in d["services"][0].items() if k != "file"}],
    },
    "replicas a bool": lambda d: _service(d, replicas=True),
    "replicas a string": lambda d: _service(d, replicas="1"),
    "config a list": lambda d: _service(d, config=[]),
    "an unknown health kind": lambda d: _service(
        d, health=["udp", *d["services"][0]["health"][1:]]
    ),
    "health too short": lambda d: _service(d, health=d["services"][0]["health"][:-1]),
    "depends of the wrong type": lambda d: _service(d, depends=[[1, 2, 3, 4]]),
    "a secret of an unknown kind": lambda d: _service(d, secrets=[[["env", "X"], "vault", "x"]]),
    "a secret where there is no placeholder": lambda d: _service(
        d, secrets=[[["image"], "literal", "x"]]
    ),
    "a secret path of floats": lambda d: _service(d, secrets=[[[1.5], "literal", "x"]]),
    "a deployment name a number": lambda d: {**d, "deployments": [1]},
}


@pytest.mark.parametrize("reshape", WRONG_SHAPES.values(), ids=WRONG_SHAPES.keys())
def test_a_sealed_entry_of_the_wrong_shape_is_ignored_and_rewritten(
    reshape: Callable[[dict[str, Any]], Any], tmp_path: Path, state: Path
) -> None:
    collected = specs(tmp_path / "specs", {"shop.yaml": SPEC})
    compile_cached(collected, inputs(), state)
    _entry(state, collected).write_data(reshape(_good(state, collected)))
    result = compile_cached(collected, inputs(), state)
    assert not result.cached
    assert result == fresh(collected, inputs())
    assert compile_cached(collected, inputs(), state).cached


def test_the_forging_helper_makes_entries_that_are_read(tmp_path: Path, state: Path) -> None:
    """The wrong-shape test above could pass with a helper that wrote unreadable
    entries; the good data written by it is a hit."""
    collected = specs(tmp_path / "specs", {"shop.yaml": SPEC})
    compile_cached(collected, inputs(), state)
    good = _good(state, collected)
    _entry(state, collected).write_data(good)
    assert compile_cached(collected, inputs(), state).cached
    renamed = _service(good, pull_policy="never")
    _entry(state, collected).write_data(renamed)
    hit = compile_cached(collected, inputs(), state)
    assert hit.cached and hit.desired is not None
    assert next(iter(hit.desired.services.values())).pull_policy == "never"


# --- what is stored, and how ------------------------------------------------------------------


def canary(tag: str) -> str:
    return f"cnry{tag}Q7"


CANARY_SPEC = textwrap.dedent(
    f"""\
    version: v1
    deployment: canaries
    services:
      app:
        image: {{name: "app:1"}}
        labels: {{zlayer.sensitive: FAVOURITE, api_token: {canary("label")}}}
        env:
          DB_PASSWORD: {canary("literal")}
          DATABASE_URL: "postgres://app:{canary("userinfo")}@db/app"
          FAVOURITE: {canary("marked")}
          FROM_ENV: "$E:ZL_CACHE_CANARY"
          FROM_SECRET: "$S:canary"
          JAVA_OPTS: "-Xmx1g -Ddb.password={canary("embedded")}"
        command:
          args: ["--password={canary("args")}", "--auth-token", "{canary("argsep")}"]
        health:
          check: {{type: http, url: "http://probe:{canary("health")}@localhost:80/"}}
        init:
          steps:
            - id: wait
              uses: init.wait_http
              with: {{url: "http://u:{canary("init")}@localhost:80/"}}
    """
)
LITERALS = [
    "label",
    "literal",
    "userinfo",
    "marked",
    "embedded",
    "args",
    "argsep",
    "health",
    "init",
]


@pytest.mark.parametrize("key", [KEY, None], ids=["keyed", "offline"])
def test_the_entry_holds_no_sensitive_value_in_clear(
    key: bytes | None, tmp_path: Path, state: Path
) -> None:
    collected = specs(tmp_path / "specs", {"canaries.yaml": CANARY_SPEC})
    given = CompileInputs(
        env={"ZL_CACHE_CANARY": canary("env")},
        secret_key=key,
        secret={"canary": canary("secret")}.get if key else None,
    )
    compile_cached(collected, given, state)
    hit = compile_cached(collected, given, state)
    assert hit.cached and hit.desired is not None
    service = hit.desired.services[("canaries", "app")]
    revealed = json.dumps(service.launch_config()) + service.policy.health.url
    revealed += json.dumps(service.policy.init[0].with_)
    resolved = LITERALS + ["env"] + (["secret"] if key else [])
    for tag in resolved:  # the hit does know every value (the test cannot pass by losing them)
        assert canary(tag) in revealed, tag
    stored = the_entry(state).read_bytes()
    for tag in [*LITERALS, "env", "secret"]:
        for form in (canary(tag).encode(), canary(tag).encode("utf-16-le")):
            assert form not in stored, tag
    plain = json.dumps(_entry_data(state, collected, given))
    for tag in ("env", "secret"):  # references: not even sealed, resolved when read
        assert canary(tag) not in plain
    assert canary("literal") in plain  # sealed, not dropped


def _entry_data(state: Path, collected: Collected, given: CompileInputs) -> Any:
    entry = Entry.locate(collected, given, state)
    assert entry is not None
    return entry.open(entry.path.read_bytes())


def test_entries_are_private_and_written_by_rename(tmp_path: Path, state: Path) -> None:
    collected = specs(tmp_path / "specs", {"shop.yaml": SPEC})
    compile_cached(collected, inputs(), state)
    entry = the_entry(state)
    assert (state / CACHE_DIR).stat().st_mode & 0o777 == 0o700
    assert entry.stat().st_mode & 0o777 == 0o600
    inode = entry.stat().st_ino
    compile_cached(specs(tmp_path / "specs", {"shop.yaml": SPEC + "\n"}), inputs(), state)
    assert the_entry(state).stat().st_ino != inode  # a new file took its place
    assert [p.name for p in entry_files(state)] == [entry.name]  # no temporary file left


def test_at_most_max_entries_are_kept(tmp_path: Path, state: Path) -> None:
    for index in range(MAX_ENTRIES + 3):
        compile_cached(specs(tmp_path / f"set-{index}", {"shop.yaml": SPEC}), inputs(), state)
        assert len(entry_files(state)) == min(index + 1, MAX_ENTRIES)
    newest = specs(tmp_path / f"set-{MAX_ENTRIES + 2}", {"shop.yaml": SPEC})
    assert compile_cached(newest, inputs(), state).cached


def test_an_unwritable_cache_directory_only_costs_time(tmp_path: Path, state: Path) -> None:
    (state / CACHE_DIR).write_text("not a directory")
    collected = specs(tmp_path / "specs", {"shop.yaml": SPEC})
    for _ in range(2):
        result = compile_cached(collected, inputs(), state)
        assert not result.cached and result == fresh(collected, inputs())


def test_a_hit_imports_neither_the_spec_models_nor_yaml(tmp_path: Path, state: Path) -> None:
    collected = specs(tmp_path / "specs", {"shop.yaml": SPEC})
    compile_cached(collected, inputs(), state)
    script = textwrap.dedent(
        f"""
        import json, sys
        from pathlib import Path
        from reconciler.reconcile import compile_files
        from reconciler.desired import CompileInputs
        from reconciler.sources.files import collect
        inputs = CompileInputs(env={ENV!r}, secret_key={KEY!r}, secret={SECRETS!r}.get)
        files = collect([{str(tmp_path / "specs")!r}])
        result = compile_files(files, inputs, cache=Path({str(state)!r}))
        print(json.dumps([result.cached, sorted(sys.modules)]))
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    cached, modules = json.loads(run.stdout)
    assert cached
    heavy = ("ruamel", "reconciler.spec.models", "reconciler.spec.blocks", "reconciler.spec.rules")
    assert [m for m in modules if m.startswith(heavy)] == []
    assert "reconciler.desired" in modules  # the script did run the cache
