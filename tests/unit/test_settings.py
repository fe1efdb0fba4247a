"""zlayer's settings (``reconciler.settings``): the config file's every key, checked and
named in its error; the environment's overrides; a full file read back to its values."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from reconciler import settings as settings_module
from reconciler.backoff import BackoffPolicy
from reconciler.errors import ConfigError
from reconciler.settings import (
    DEFAULT_POOL,
    DaemonSettings,
    Settings,
    config_path,
    load_settings,
)
from tests.conftest import REPO

STRINGS = ("source", "path", "repo", "branch", "ref", "subdir", "listen")
PATHS = ("trusted_keys", "socket", "token_file", "webhook_secret_file")
BOOLS = ("allow_rewrite", "verify_signatures")
NUMBERS = ("interval", "resync", "journal_retention")
BACKOFF = ("initial", "factor", "cap", "reset_after", "jitter", "give_up_after")
DURATIONS = {"daemon": ("interval", "resync"), "backoff": ("initial", "cap", "reset_after")}
"""Keys that also take a duration string (``30s``), as ZLayer writes durations."""
NOT_A_DURATION = "must be a duration (like 30s or 5m) or a number of seconds, not"
TOP_LEVEL = "autoscale, backoff, daemon, docker, process, runtime, state_dir, swarm"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ZLAYER_* variables, and no /etc/zlayer/config.toml even where the host has one."""
    for name in ("ZLAYER_RUNTIME", "ZLAYER_CONFIG", "ZLAYER_STATE_DIR", "ZLAYER_PUBLISH_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(settings_module, "DEFAULT_CONFIG", tmp_path / "etc-zlayer-config.toml")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return tmp_path / "config.toml"


def refused(config: Path, text: str) -> str:
    config.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    message = str(caught.value)
    assert "\n" not in message, "one error per message"
    return message


def test_the_tests_know_every_key() -> None:
    keys = {f.name for f in dataclasses.fields(DaemonSettings)}
    assert keys == {*STRINGS, *PATHS, *BOOLS, *NUMBERS}
    assert set(BackoffPolicy.__dataclass_fields__) == set(BACKOFF)


# --- a wrong type names the key, the file and what was wanted -------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("runtime = 3", "runtime must be a string, not 3"),
        ("state_dir = 3", "state_dir must be a string, not 3"),
        ("[process]\nnetwork_pool = 3", "process.network_pool must be a string, not 3"),
        ("[docker]\npublish_address = true", "docker.publish_address must be a string, not True"),
        *[(f"[daemon]\n{key} = 1", f"daemon.{key} must be a string, not 1") for key in STRINGS],
        *[(f"[daemon]\n{key} = 1", f"daemon.{key} must be a string, not 1") for key in PATHS],
        *[
            (f'[daemon]\n{key} = "yes"', f"daemon.{key} must be true or false, not 'yes'")
            for key in BOOLS
        ],
        *[
            (f'[daemon]\n{key} = "5"', f"daemon.{key} must be a number of at least 0, not '5'")
            for key in NUMBERS
            if key not in DURATIONS["daemon"]
        ],
        *[
            (f'[{table}]\n{key} = "5"', f"{table}.{key} {NOT_A_DURATION} '5' (time unit needed "
                                         "after 5 (for example 5s or 5ms))")
            for table, keys in DURATIONS.items()
            for key in keys
        ],
        *[
            (f"[daemon]\n{key} = true", f"daemon.{key} must be a number of at least 0, not True")
            for key in NUMBERS
        ],
        *[
            (f'[backoff]\n{key} = "1"', f"backoff.{key} must be a number of at least 0, not '1'")
            for key in BACKOFF
            if key not in (*DURATIONS["backoff"], "give_up_after")
        ],
        ("[backoff]\ngive_up_after = 1.5", "backoff.give_up_after must be a whole number of "
                                            "at least 0, not 1.5"),
        ('[backoff]\ngive_up_after = "3"', "backoff.give_up_after must be a whole number of "
                                            "at least 0, not '3'"),
        *[
            (f"[backoff]\n{key} = -1", f"backoff.{key} must be a number of at least 0, not -1")
            for key in BACKOFF
        ],
        ("[daemon]\nresync = -1", "daemon.resync must be a number of at least 0, not -1"),
        ("[daemon]\njournal_retention = nan", "daemon.journal_retention must be a number of "
                                              "at least 0, not nan"),
        ("daemon = {path = {a = 1}}", "daemon.path must be a string, not {'a': 1}"),
        *[(f"{table} = 1", f"{table} must be a table ([{table}])")
          for table in ("process", "docker", "daemon", "backoff")],
        ("[[daemon]]\npath = '/srv'", "daemon must be a table ([daemon])"),
    ],
)  # fmt: skip
def test_a_value_of_the_wrong_type_is_an_error_naming_its_key(
    config: Path, text: str, message: str
) -> None:
    assert refused(config, text) == f"{config}: {message}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[daemon]\nresync = 0", "daemon.resync must be more than 0 seconds"),
        ("[daemon]\ninterval = 0.0", "daemon.interval must be more than 0 seconds"),
        ("[daemon]\nsource = 'svn'", "daemon.source 'svn' is not dir or git"),
        (
            "[process]\nnetwork_pool = 'nope'",
            "process.network_pool 'nope': Expected 4 octets in 'nope'",
        ),
        (
            "[process]\nnetwork_pool = '10.1.2.3/16'",
            "process.network_pool '10.1.2.3/16': 10.1.2.3/16 has host bits set",
        ),
        ("[process]\nnetwork_pool = '10.1.2.0/25'", "process.network_pool 10.1.2.0/25 is smaller "
                                                    "than a /24"),
        ("[backoff]\nfactor = 0.5", "backoff: factor 0.5 must be at least 1"),
        ("[backoff]\njitter = 1", "backoff: jitter 1 must be in [0, 1)"),
    ],
)  # fmt: skip
def test_a_value_out_of_range_is_an_error_naming_its_key(
    config: Path, text: str, message: str
) -> None:
    assert refused(config, text) == f"{config}: {message}"


def test_a_runtime_not_known_says_where_it_came_from(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = "is not one of auto, docker, process, swarm"
    assert refused(config, 'runtime = "podman"') == f"runtime 'podman' (from {config}) {expected}"
    monkeypatch.setenv("ZLAYER_RUNTIME", "lxc")
    assert refused(config, "") == f"runtime 'lxc' (from ZLAYER_RUNTIME) {expected}"
    with pytest.raises(ConfigError, match=r"^runtime 'lxc' \(from ZLAYER_RUNTIME\) is not one of"):
        load_settings()  # no file at all


# --- unknown keys ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('runtme = "docker"', f"unknown key 'runtme' (known: {TOP_LEVEL})"),
        ("network_pool = '10.1.0.0/16'", f"unknown key 'network_pool' (known: {TOP_LEVEL})"),
        ("[process]\npool = '10.1.0.0/16'", "unknown key process.pool (known: network_pool)"),
        ("[docker]\npublish = '::'", "unknown key docker.publish (known: publish_address)"),
        ("[swarm]\nproxy = 'x'", "unknown key swarm.proxy (known: endpoint_mode, proxy_image)"),
        (
            "[daemon]\nfoo = 1",
            "unknown key daemon.foo (known: allow_rewrite, branch, interval, journal_retention, "
            "listen, path, ref, repo, resync, socket, source, subdir, token_file, trusted_keys, "
            "verify_signatures, webhook_secret_file)",
        ),
        (
            "[backoff]\nmax = 60",
            "unknown key backoff.max "
            "(known: cap, factor, give_up_after, initial, jitter, reset_after)",
        ),
    ],
)
def test_an_unknown_key_is_refused_naming_the_known_ones(
    config: Path, text: str, message: str
) -> None:
    assert refused(config, text) == f"{config}: {message}"


def test_a_file_that_cannot_be_read_says_why(config: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file: No such file"):
        load_settings(config)
    assert refused(config, "runtime = ").startswith(f"{config}: not valid TOML: ")


# --- the environment -------------------------------------------------------------------------


def test_the_environment_overrides_the_file(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config.write_text(
        'runtime = "docker"\nstate_dir = "/srv/zl"\n[docker]\npublish_address = "10.0.0.1"\n'
    )
    monkeypatch.setenv("ZLAYER_RUNTIME", "process")
    monkeypatch.setenv("ZLAYER_STATE_DIR", "/elsewhere")
    monkeypatch.setenv("ZLAYER_PUBLISH_ADDRESS", "127.0.0.1")
    settings = load_settings(config)
    assert (settings.runtime, settings.state_dir, settings.publish_address) == (
        "process",
        Path("/elsewhere"),
        "127.0.0.1",
    )
    monkeypatch.setenv("ZLAYER_RUNTIME", "")  # empty: not set
    assert load_settings(config).runtime == "docker"


def test_the_environment_overrides_without_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    assert config_path() is None
    assert load_settings() == Settings()
    monkeypatch.setenv("ZLAYER_RUNTIME", "docker")
    monkeypatch.setenv("ZLAYER_STATE_DIR", "/elsewhere")
    monkeypatch.setenv("ZLAYER_PUBLISH_ADDRESS", "127.0.0.1")
    assert load_settings() == Settings(
        runtime="docker", state_dir=Path("/elsewhere"), publish_address="127.0.0.1"
    )


def test_a_key_the_environment_sets_is_not_checked_in_the_file(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = "runtime = 3\nstate_dir = 4\n[docker]\npublish_address = 5\n"
    assert refused(config, text) == f"{config}: runtime must be a string, not 3"
    monkeypatch.setenv("ZLAYER_RUNTIME", "process")
    monkeypatch.setenv("ZLAYER_STATE_DIR", "/elsewhere")
    monkeypatch.setenv("ZLAYER_PUBLISH_ADDRESS", "127.0.0.1")
    assert load_settings(config).publish_address == "127.0.0.1"
    config.write_text("docker = 5\n")  # but a table that is not one is still wrong
    with pytest.raises(ConfigError, match=r"docker must be a table \(\[docker\]\)"):
        load_settings(config)


def test_zlayer_config_names_the_file(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config.write_text('runtime = "process"\n')
    monkeypatch.setenv("ZLAYER_CONFIG", str(config))
    assert config_path() == config
    assert (load_settings().runtime, load_settings().source) == ("process", str(config))
    monkeypatch.delenv("ZLAYER_CONFIG")
    monkeypatch.setattr(settings_module, "DEFAULT_CONFIG", config)
    assert config_path() == config  # /etc/zlayer/config.toml, when it exists


# --- a whole file ----------------------------------------------------------------------------

FULL = """
runtime = "process"
state_dir = "/srv/zlayer"

[process]
network_pool = "10.99.0.0/255.255.240.0"

[docker]
publish_address = "192.0.2.7"

[daemon]
source = "git"
path = "/etc/zlayer/specs"
repo = "https://git.example/ops.git"
branch = "prod"
ref = "v1.2"
subdir = "hosts/web1"
interval = 90
resync = 12.5
allow_rewrite = true
verify_signatures = true
trusted_keys = "/etc/zlayer/keys"
socket = "/run/zl.sock"
listen = "127.0.0.1:9464"
token_file = "/etc/zlayer/token"
webhook_secret_file = "/etc/zlayer/hook"
journal_retention = 3

[backoff]
initial = 2
factor = 1.5
cap = 120
reset_after = 900
jitter = 0.25
"""


def test_a_full_file_reads_back_to_its_values(config: Path) -> None:
    config.write_text(FULL)
    settings = load_settings(config)
    assert settings == Settings(
        runtime="process",
        state_dir=Path("/srv/zlayer"),
        network_pool="10.99.0.0/20",  # normalised
        publish_address="192.0.2.7",
        source=str(config),
        daemon=DaemonSettings(
            source="git",
            path="/etc/zlayer/specs",
            repo="https://git.example/ops.git",
            branch="prod",
            ref="v1.2",
            subdir="hosts/web1",
            interval=90.0,
            resync=12.5,
            allow_rewrite=True,
            verify_signatures=True,
            trusted_keys=Path("/etc/zlayer/keys"),
            socket=Path("/run/zl.sock"),
            listen="127.0.0.1:9464",
            token_file=Path("/etc/zlayer/token"),
            webhook_secret_file=Path("/etc/zlayer/hook"),
            journal_retention=3.0,
        ),
        backoff=BackoffPolicy(initial=2, factor=1.5, cap=120, reset_after=900, jitter=0.25),
    )
    assert type(settings.daemon.interval) is float and type(settings.backoff.cap) is float
    assert isinstance(settings.daemon.socket, Path) and isinstance(settings.backoff, BackoffPolicy)


def test_the_shipped_example_config_loads() -> None:
    settings = load_settings(REPO / "contrib" / "systemd" / "config.toml")
    assert (settings.runtime, settings.state_dir, settings.network_pool) == (
        "auto",
        Path("/var/lib/zlayer"),
        DEFAULT_POOL,
    )
    defaults = dataclasses.asdict(DaemonSettings())
    set_keys = {k: v for k, v in dataclasses.asdict(settings.daemon).items() if v != defaults[k]}
    assert set_keys == {
        "source": "git",
        "repo": "https://git.example.org/ops/hosts.git",
        "branch": "main",
        "subdir": "hosts/web1",
        "socket": Path("/run/zlayer/zlayer.sock"),
    }
    assert settings.backoff == BackoffPolicy()


def test_an_empty_file_and_empty_strings_are_the_defaults(config: Path) -> None:
    config.write_text("")
    assert load_settings(config) == Settings(source=str(config))
    config.write_text(
        'runtime = ""\nstate_dir = ""\n[process]\nnetwork_pool = ""\n[docker]\npublish_address = ""'
    )
    assert load_settings(config) == Settings(source=str(config))


def test_settings_are_frozen_and_copied_with_changes(config: Path) -> None:
    config.write_text(FULL)
    settings = load_settings(config)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.runtime = "docker"  # type: ignore[misc]
    moved = dataclasses.replace(settings, state_dir=Path("/tmp/x"))
    assert moved.state_dir == Path("/tmp/x") and moved.daemon is settings.daemon
    assert settings.state_dir == Path("/srv/zlayer")


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"ZLAYER_RUNTIME": "process"},
        {"ZLAYER_STATE_DIR": "/elsewhere"},
        {"ZLAYER_PUBLISH_ADDRESS": "127.0.0.1"},
        {"ZLAYER_RUNTIME": "docker", "ZLAYER_STATE_DIR": "/e", "ZLAYER_PUBLISH_ADDRESS": "::1"},
    ],
)
def test_settings_from_the_environment_alone_are_the_models(
    env: dict[str, str], config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With nothing in the file, load_settings takes the environment without the
    pydantic model; what it gives is what the model gives."""
    from reconciler.settings import _with_env, model

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config.write_text("")
    data: dict[str, Any] = {}
    overridden = _with_env(data)
    assert load_settings(config) == model.checked(data, str(config), overridden)
    assert (load_settings(config) == Settings(source=str(config))) == (not env)


def test_durations_are_taken_as_zlayer_writes_them(config: Path) -> None:
    """``500ms``, ``30s``, ``5m``, ``1h`` wherever a time is configured; numbers stay
    seconds."""
    config.write_text(
        '[daemon]\ninterval = "5m"\nresync = "500ms"\n'
        '[backoff]\ninitial = "250ms"\ncap = "1h"\nreset_after = 90\n'
    )
    settings = load_settings(config)
    assert (settings.daemon.interval, settings.daemon.resync) == (300.0, 0.5)
    backoff = settings.backoff
    assert (backoff.initial, backoff.cap, backoff.reset_after) == (0.25, 3600.0, 90.0)
    assert refused(config, '[daemon]\nresync = "0s"') == (
        f"{config}: daemon.resync must be more than 0 seconds"
    )


@pytest.mark.parametrize(
    ("given", "seconds"), [("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("2.5", 2.5)]
)
def test_the_daemons_interval_and_resync_options_take_durations(given: str, seconds: float) -> None:
    from click.testing import CliRunner

    from reconciler.cli.daemon import _DURATION, daemon

    assert _DURATION.convert(given, None, None) == seconds
    for bad, why in (("30x", "unknown time unit 'x'"), ("0.01", "shorter than 0.1s")):
        result = CliRunner().invoke(daemon, ["--interval", bad, "--once"])
        assert result.exit_code == 2 and why in result.output, result.output


def test_the_autoscale_interval_takes_a_duration_and_refuses_less_than_100ms(
    config: Path,
) -> None:
    config.write_text("")
    assert load_settings(config).autoscale_interval == 15.0  # the default
    config.write_text('[autoscale]\ninterval = "2s"\n')
    assert load_settings(config).autoscale_interval == 2.0
    assert "autoscale.interval must be at least 100ms" in refused(
        config, "[autoscale]\ninterval = 0.01\n"
    )
    assert "autoscale.interval" in refused(config, '[autoscale]\ninterval = "soon"\n')


def test_the_swarms_proxy_image_comes_from_the_file_or_the_environment(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ZLAYER_SWARM_PROXY_IMAGE", raising=False)
    assert load_settings(None).swarm_proxy_image == "haproxy:lts"
    config.write_text('[swarm]\nproxy_image = ""\n')
    assert load_settings(config).swarm_proxy_image == ""  # no proxy: said in the file
    monkeypatch.setenv("ZLAYER_SWARM_PROXY_IMAGE", "local/haproxy:2")
    assert load_settings(config).swarm_proxy_image == "local/haproxy:2"
    assert load_settings(None).swarm_proxy_image == "local/haproxy:2"


def test_the_swarms_endpoint_mode_is_one_of_three(config: Path) -> None:
    config.write_text('[swarm]\nendpoint_mode = "vip"\n')
    assert load_settings(config).swarm_endpoint_mode == "vip"
    assert refused(config, '[swarm]\nendpoint_mode = "ipvs"\n').endswith(
        "swarm.endpoint_mode: Input should be 'auto', 'vip' or 'dnsrr'"
    )
