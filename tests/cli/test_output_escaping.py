"""Hostile values cannot forge output: spec values, snapshot contents and journal
records with newlines, terminal escapes, workflow commands, HTML, mentions and bidi
overrides, printed by the real CLI in every format.

What "forged" means per output:
- a terminal or a CI log (text formats, ``validate --format github``): no raw control
  character (a value cannot move the cursor, erase a line or start a line of its
  own), no line that GitHub Actions reads as a workflow command other than the real
  ones (``::…::`` at a line's start, ``##[…]`` anywhere), rich markup printed as it is;
- a pull-request comment (``--format markdown``): no HTML from a value (``<img>``,
  ``</details>``), no @mention, no table cell split by a value's pipe;
- JSON: the values round-trip exactly, control characters escaped.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from markdown_it import MarkdownIt
from rich.console import Console

from reconciler.cli.apply_render import EventPrinter, render_report
from reconciler.cli.escape import (
    md_code,
    md_text,
    visible,
    visible_line,
    workflow_data,
    workflow_property,
)
from reconciler.cli.main import cli
from reconciler.daemon.journal import Journal
from reconciler.desired import CompileInputs, as_running, compile_specs
from reconciler.drivers.fake import FakeDriver
from reconciler.executor import Event, Outcome, Report
from reconciler.observed import ObservedState, Workload
from reconciler.spec.load import SourceFile, load_sources
from tests.cli.test_cli import zlayer
from tests.cli.test_plan_cli import git

FORGED = "x\n::warning file=a.yaml,line=1::forged"
HOSTILE = {
    "GREETING": FORGED,
    "ERASE": "\x1b[1A\x1b[2K",
    "HTML": "<img src=x onerror=alert(1)>",
    "MENTION": "hi @octocat",
    "CLOSE": "</details>",
    "BIDI": "\u202eevil\u2066x\u2069",
    "MISC": "a\rb\x85c\u2028d\x7fe\u200bf",
    "LEGACY": "##[warning]legacy",
    "PIPE": "a|b`c``d",
    "MARKUP": "[bold red]fake[/] :warning:",
}
# Never raw in a terminal, a log or a comment: C0 (but the newlines between lines), DEL,
# C1, line/paragraph separators, bidi controls, zero-width characters.
RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\u200b-\u200f]")

SPEC = """\
version: v1
deployment: shop
services:
  web:
    image: {name: "shop:1"}
    env: {ENV}
"""
BASE = SPEC.replace("{ENV}", "{" + ", ".join(f"{key}: ok" for key in HOSTILE) + "}")


STRAY = "\x1b[2Kghost</details>@octocat"


def hostile_spec() -> str:
    """BASE with every value hostile: one change per value (``env.KEY ok → …``)."""
    return SPEC.replace(
        "{ENV}", "{" + ", ".join(f"{k}: {json.dumps(v)}" for k, v in HOSTILE.items()) + "}"
    )


def assert_terminal_safe(output: str, real_commands: int = 0) -> None:
    """No raw control character, no workflow command but the ``real_commands`` first
    lines, no legacy ``##[`` command anywhere."""
    assert not RAW.search(output), repr(RAW.findall(output))
    lines = output.splitlines()
    commands = [i for i, line in enumerate(lines) if line.lstrip().startswith("::")]
    assert commands == list(range(real_commands)), [lines[i] for i in commands]
    assert "##[" not in output


def render(markdown: str) -> str:
    """HTML as a CommonMark renderer with GFM tables makes it, raw HTML passed through."""
    return MarkdownIt("commonmark", {"html": True}).enable("table").render(markdown)


def assert_no_mention(html: str) -> None:
    """@octocat is there, and only inside <code> elements (GitHub mentions no one there)."""
    starts = [m.start() for m in re.finditer("@octocat", html)]
    assert starts
    for start in starts:
        before = html[:start]
        assert before.rfind("<code>") > before.rfind("</code>"), html[start - 80 : start + 20]


def snapshot(specs: str, runtime: str = "docker", extra: tuple[Workload, ...] = ()) -> str:
    loaded = load_sources([SourceFile("shop.yaml", specs.encode())])
    desired, problems = compile_specs(loaded.specs, "rev0", CompileInputs(secret_key=b"k" * 32))
    assert desired is not None, problems
    state = as_running(desired, runtime=runtime)
    return dataclasses.replace(state, workloads=state.workloads + extra).to_json()


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """specs/shop.yaml with the hostile env values; observed.json: a host running the
    base specs, reported by a hostile runtime with a hostile workload of its own."""
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs/shop.yaml").write_text(hostile_spec())
    (tmp_path / "state").mkdir()
    (tmp_path / "state/secret.key").write_bytes(b"k" * 32)
    stray = Workload(
        deployment="::warning file=b.yaml::stray",
        service=STRAY,
        replica=1,
        fingerprint="sha256:" + "0" * 64,
        status="running",
    )
    (tmp_path / "observed.json").write_text(
        snapshot(BASE, runtime="dock\x00er\n::error::runtime <b>", extra=(stray,))
    )
    return tmp_path


def plan(host: Path, fmt: str) -> tuple[str, str]:
    run = zlayer(
        "plan", "specs", "--observed", "observed.json", "--state-dir", "state",
        "--format", fmt, cwd=host,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    return run.stdout, run.stderr


def test_the_hostile_values_are_really_in_the_plan(host: Path) -> None:
    """The other tests mean something: every hostile value and the stray workload are
    in the plan, unchanged."""
    document = json.loads(plan(host, "json")[0])
    changes = {
        c["path"]: c["after"] for a in document["actions"] for c in a["changes"] if c["after"]
    }
    for key, value in HOSTILE.items():
        assert changes[f"env.{key}"] == value
    stray = {"deployment": "::warning file=b.yaml::stray", "service": STRAY, "replica": 1}
    assert {**stray, "endpoint": None} in [a["target"] for a in document["actions"]]
    assert "dock\x00er\n::error::runtime <b>" in document["observed_from"]


def test_plan_text_shows_every_value_visibly_on_its_line(host: Path) -> None:
    out, err = plan(host, "text")
    assert_terminal_safe(out + err)
    assert "env.GREETING ok → x\\n::warning file=a.yaml,line=1::forged" in out
    assert "env.ERASE ok → \\x1b[1A\\x1b[2K" in out
    assert "env.BIDI ok → \\u202eevil\\u2066x\\u2069" in out
    assert "env.MISC ok → a\\rb\\x85c\\u2028d\\x7fe\\u200bf" in out
    assert "env.LEGACY ok → #\\x23[warning]legacy" in out
    assert "env.MARKUP ok → [bold red]fake[/] :warning:" in out  # no markup, no emoji
    assert "snapshot observed.json of a dock\\x00er\\n::error::runtime <b> runtime" in out
    assert "\n\\x3a:warning file=b.yaml::stray\n" in out  # the deployment heading
    assert "  \\x1b[2Kghost</details>@octocat\n" in out


def test_plan_markdown_is_text_in_a_comment(host: Path) -> None:
    out, _ = plan(host, "markdown")
    assert_terminal_safe(out)
    assert "<img" not in out and "<b>" not in out
    assert out.count("</details>") == 1 and out.count("<details>") == 1
    for row in [line for line in out.splitlines() if line.startswith("| ")]:
        assert len(re.findall(r"(?<!\\)\|", row)) == 5, row  # four cells, whatever the values

    html = render(out)
    assert "<img" not in html and "<b>" not in html
    assert html.count("<details>") == 1 and html.count("</details>") == 1
    assert html.index("</details>") > html.index("env.GREETING")  # the details hold all
    text = re.sub(r"<[^>]+>", "", html)
    for shown in (
        "&lt;img src=x onerror=alert(1)&gt;",  # the value, as text
        "&lt;/details&gt;",
        "x\\n::warning file=a.yaml,line=1::forged",
        "\\x1b[1A\\x1b[2K",
        "a|b`c``d",
        "[bold red]fake[/] :warning:",
    ):
        assert shown in text, shown
    assert_no_mention(html)


def test_plan_json_round_trips_with_controls_escaped(host: Path) -> None:
    out, _ = plan(host, "json")
    for raw in ("\x1b", "\r", "\x00"):
        assert raw not in out
    assert "\\u001b[1A\\u001b[2K" in out and "\\r" in out and "\\u0000" in out
    assert not any(line.lstrip().startswith("::") for line in out.splitlines())
    assert json.loads(out)["actions"]  # and it is JSON


def test_plan_json_has_no_raw_c1_or_bidi_controls(host: Path) -> None:
    out, _ = plan(host, "json")
    assert not RAW.search(out), repr(RAW.findall(out))
    assert "\\u202e" in out  # escaped, not dropped


def test_plan_against_a_ref_in_every_format(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q", "-b", "main")
    git(tmp_path, "config", "user.email", "t@example.invalid")
    git(tmp_path, "config", "user.name", "t")
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs/shop.yaml").write_text(BASE)
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "base \x1b[2K ::warning::commit <img src=x>")
    (tmp_path / "specs/shop.yaml").write_text(hostile_spec())
    outputs = {}
    for fmt in ("text", "markdown", "json"):
        run = zlayer("plan", "specs", "--against-ref", "main", "--format", fmt, cwd=tmp_path)
        assert run.returncode == 0, run.stderr
        outputs[fmt] = run.stdout
        if fmt != "json":
            assert_terminal_safe(run.stdout + run.stderr)
    assert "env.GREETING ok → x\\n::warning file=a.yaml,line=1::forged" in outputs["text"]
    assert "<img" not in outputs["markdown"] and outputs["markdown"].count("</details>") == 1
    assert_no_mention(render(outputs["markdown"]))
    changes = {c["path"]: c["after"] for c in json.loads(outputs["json"])["actions"][0]["changes"]}
    assert changes["env.ERASE"] == HOSTILE["ERASE"]


# --- validate ------------------------------------------------------------------------------

# An env key that cannot be passed to a process, with a value no process receives: both
# problems quote the key as it is (in the problem's path and in a message).
BAD_KEY = "G\n::warning file=a.yaml,line=1::forged \x1b[2K <img src=x> @octocat ##[error]x"
BAD = SPEC.replace("{ENV}", f'{{{json.dumps(BAD_KEY)}: "a\\0b"}}')
BAD_FILE = "::warning file=x.yaml,line=2::named, badly.yaml"


def test_validate_github_annotations_are_the_only_commands(tmp_path: Path) -> None:
    (tmp_path / BAD_FILE).write_text(BAD)
    run = zlayer("validate", BAD_FILE, "--format", "github", cwd=tmp_path)
    assert run.returncode == 1
    assert_terminal_safe(run.stdout + run.stderr, real_commands=2)
    lines = run.stdout.splitlines()
    assert len(lines) == 2
    for line in lines:
        assert line.startswith("::error file=%3A%3Awarning file=x.yaml%2Cline=2%3A%3Anamed%2C")
        # what GitHub parses: the properties end at the first "::", the message follows
        properties, message = line.removeprefix("::error ").split("::", 1)
        assert [p.split("=", 1)[0] for p in properties.split(",")] == ["file", "line", "col"]
        assert "G%0A::warning file=a.yaml,line=1::forged \\x1b[2K" in message
        assert "#\\x23[error]" in message
    json_run = zlayer("validate", BAD_FILE, "--format", "json", cwd=tmp_path)
    problems = json.loads(json_run.stdout)["problems"]
    assert problems[0]["file"] == BAD_FILE and BAD_KEY in problems[0]["path"]


def test_validate_text_keeps_each_problem_on_its_line(tmp_path: Path) -> None:
    (tmp_path / BAD_FILE).write_text(BAD)
    run = zlayer("validate", BAD_FILE, cwd=tmp_path)
    assert run.returncode == 1
    assert_terminal_safe(run.stdout + run.stderr)
    lines = run.stdout.splitlines()
    assert len(lines) == 3 and "2 problems in 1 file" in lines[2]
    assert all(
        line.startswith("\\x3a:warning file=x.yaml,line=2::named, badly.yaml:")
        for line in lines[:2]
    )
    # the same problems on stderr when plan refuses the specs
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs/bad.yaml").write_text(BAD)
    run = zlayer("plan", "specs", "--runtime", "fake", cwd=tmp_path)
    assert run.returncode == 1
    assert_terminal_safe(run.stdout + run.stderr)
    assert "G\\n::warning file=a.yaml,line=1::forged \\x1b[2K" in run.stderr


# --- apply progress, status, logs, history, events, job runs -----------------------------


def test_apply_progress_and_summary_escape_events_and_outcomes() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, highlight=False, soft_wrap=True, force_terminal=True)
    action = "replace:shop/\x1b[2K::warning::x"
    EventPrinter(console)(Event(action, "failed", f"{FORGED} [red]ok[/] ##[error]y", 1.0))
    render_report(
        console,
        Report(
            outcomes=(Outcome("::error::z", "failed", "\x1b[1A gone", warnings=("\u202ewarn",)),),
            elapsed=2.0,
        ),
    )
    output = re.sub(r"\x1b\[[0-9;]*m", "", buffer.getvalue())  # rich's own colours
    assert_terminal_safe(output)
    assert "\\x1b[2K::warning::x  x\\n::warning file=a.yaml,line=1::forged [red]ok[/]" in output
    assert "  \\x3a:error::z: failed: \\x1b[1A gone" in output
    assert "\\u202ewarn" in output


def test_status_and_logs_escape_what_the_runtime_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workloads = [
        Workload(deployment="::warning::dep", service="w\x1b[2Keb", replica=r,
                 fingerprint="sha256:f", status="running", health="none")
        for r in (1, 2)
    ]  # fmt: skip
    state = ObservedState(
        runtime="fake",
        workloads=tuple(workloads),
        configs={"sha256:f": {"image": "img\n::error::forged"}},
    )
    driver = FakeDriver(state)
    driver.output[workloads[0].id] = ["plain line"]
    driver.output[workloads[1].id] = ["another"]
    monkeypatch.setattr("reconciler.cli.status.open_runtime", lambda *_args: driver)
    runner = CliRunner()
    args = ["--runtime", "process", "--state-dir", str(tmp_path)]
    result = runner.invoke(cli, ["status", *args])
    assert result.exit_code == 0, result.output
    assert_terminal_safe(result.stdout)
    rows = result.stdout.splitlines()[1:]
    assert (
        rows.pop()
        == "health: the runtime's own (no daemon answers; --probe SPECS runs the checks now)"
    )
    assert len(rows) == 2
    assert all(r.startswith("\\x3a:warning::dep  w\\x1b[2Keb") for r in rows)
    assert all(r.endswith("img\\n::error::forged") for r in rows)
    result = runner.invoke(cli, ["logs", "::warning::dep/w\x1b[2Keb", *args])
    assert result.exit_code == 0, result.output
    assert_terminal_safe(result.stdout)
    assert "w\\x1b[2Keb/1 | plain line" in result.stdout


@pytest.fixture
def journal_dir(tmp_path: Path) -> Path:
    journal = Journal.in_state_dir(tmp_path)
    now = time.time()
    try:
        reconcile = journal.start_reconcile(f"webhook {FORGED}", now)
        journal.finish_reconcile(
            reconcile, at=now, revision="abc", outcome="failed",
            summary="\x1b[1A\x1b[2K [bold]hidden[/] ##[error]z " + "w " * 60 + "::warning::wrap",
        )  # fmt: skip
        journal.event("shop/web/1", "crashed", f"exited {FORGED} \u202erev", now)
        journal.start_run("r1", "shop", "job\x1b[2K", trigger="::error::t", revision=None, at=now)
        journal.finish_run(
            "r1", status="failed", exit_code=3, log_tail="raw job output", at=now,
            note=f"note {FORGED}",
        )  # fmt: skip
    finally:
        journal.close()
    return tmp_path


@pytest.mark.parametrize("command", [["history"], ["events"], ["job", "ls"], ["job", "logs", "r1"]])
def test_journal_records_are_shown_escaped(journal_dir: Path, command: list[str]) -> None:
    run = zlayer(*command, "--state-dir", str(journal_dir))
    assert run.returncode == 0, run.stderr
    assert_terminal_safe(run.stdout + run.stderr)
    everything = run.stdout + run.stderr
    expected = {
        "history": ["webhook x\\n::warning", "\\x1b[1A\\x1b[2K [bold]hidden[/] #\\x23[error]z"],
        "events": ["exited x\\n::warning file=a.yaml,line=1::forged \\u202erev"],
        "job": ["note x\\n::warning file=a.yaml,line=1::forged"],
    }[command[0]]
    for text in expected:
        assert text in everything, (text, everything)


# --- the escaping functions themselves -----------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("a\nb\rc\td", "a\\nb\\rc\\td"),
        ("\x00\x1b\x7f\x85\x9b", "\\x00\\x1b\\x7f\\x85\\x9b"),
        (
            "\u2028\u2029\u202a\u202e\u2066\u2069\u200b\ufeff\xa0",
            "\\u2028\\u2029\\u202a\\u202e\\u2066\\u2069\\u200b\\ufeff\\xa0",
        ),
        ("\U000e0041\udcff", "\\U000e0041\\udcff"),
        ("x ##[warning]y", "x #\\x23[warning]y"),
        ("café → ok [b] ::1 \\n", "café → ok [b] ::1 \\n"),  # printable text is unchanged
    ],
)
def test_visible(raw: str, shown: str) -> None:
    assert visible(raw) == shown
    assert visible(shown) == shown  # idempotent: nothing to escape twice
    assert shown.isprintable()


def test_visible_line_and_workflow_escaping() -> None:
    assert visible_line("  ::warning x::y") == "  \\x3a:warning x::y"
    assert visible_line("fe80::1 ::x") == "fe80::1 ::x"
    assert workflow_data("100% a\r\nb::c") == "100%25 a%0D%0Ab::c"
    assert workflow_property("a:b,c%\n") == "a%3Ab%2Cc%25%0A"


def test_markdown_escaping() -> None:
    assert md_text("<b>&</b> *x* _y_ [l](u) a|b `c` ~z~ \\") == (
        "&lt;b&gt;&amp;&lt;/b&gt; \\*x\\* \\_y\\_ \\[l\\](u) a\\|b \\`c\\` \\~z\\~ \\\\"
    )
    assert md_text("@octocat, @org/team, mail@x.org, #12, o/r#3, GH-4") == (
        "`@octocat`, `@org/team`, mail`@x`.org, `#12`, o/r`#3`, `GH-4`"
    )
    assert md_code("a``b") == "```a``b```"
    assert md_code("`x") == "`` `x ``"
    assert md_code("a|b", table=True) == "`a\\|b`"


def test_an_error_message_quoting_a_hostile_name_is_one_visible_line(host: Path) -> None:
    """ClickException messages quote paths and runtime answers: a snapshot path with an
    escape sequence and a newline is printed escaped, on one line."""
    name = "no\x1b[2Ksuch\n::warning::forged.json"
    run = zlayer("plan", "specs", "--observed", name, "--state-dir", "state", cwd=host)
    assert run.returncode == 1
    assert "\x1b" not in run.stderr
    assert not any(line.startswith("::") for line in run.stderr.splitlines()), run.stderr
    assert "no\\x1b[2Ksuch\\n::warning::forged.json" in run.stderr
