"""The one iptables rule per deployment that lets its replicas reach each other where
bridged traffic passes the host's firewall (``br_netfilter``; see :mod:`.netns`).

Nothing else in the firewall is touched: :func:`forward_rule` inserts or deletes the
rule accepting traffic in and out of the deployment's bridge, commented
``zlayer:<deployment>``; :func:`bridge_filtering` says whether it is needed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from reconciler.drivers.process.names import ALIAS_PREFIX, bridge_name
from reconciler.errors import PermanentDriverError

BRIDGE_NF_CALL_IPTABLES = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
"""1 when br_netfilter hands bridged IPv4 frames to iptables (per network namespace)."""


def forward_rule(deployment: str, *, add: bool) -> None:
    """Insert (once) or delete (every copy of) the FORWARD rule that lets the
    deployment's replicas reach each other where bridged traffic passes iptables."""
    iptables = shutil.which("iptables")
    if iptables is None:
        if add:
            raise PermanentDriverError(
                f"cannot let the replicas of {deployment} reach each other: bridged traffic "
                "passes iptables (br_netfilter) but there is no iptables command to accept it"
            )
        return
    name = bridge_name(deployment)
    rule = ["FORWARD", "-i", name, "-o", name, "-m", "comment"]
    rule += ["--comment", ALIAS_PREFIX + deployment, "-j", "ACCEPT"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [iptables, "-w", "10", *args], capture_output=True, text=True, timeout=30, check=False
        )

    if add:
        if run("-C", *rule).returncode == 0:
            return
        done = run("-I", *rule)
        if done.returncode != 0:
            raise PermanentDriverError(
                f"cannot add the iptables rule for bridge {name}: {done.stderr.strip()}"
            )
        return
    for _ in range(100):  # every copy, should a crash have left more than one
        if run("-C", *rule).returncode != 0 or run("-D", *rule).returncode != 0:
            return


def forward_rules() -> list[str]:
    """The FORWARD rules zlayer added (``iptables -S`` lines), for checks and tests."""
    iptables = shutil.which("iptables")
    if iptables is None:
        return []
    listed = subprocess.run(
        [iptables, "-w", "10", "-S", "FORWARD"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return [
        line
        for line in listed.stdout.splitlines()
        if f'"{ALIAS_PREFIX}' in line or f" {ALIAS_PREFIX}" in line
    ]


def bridge_filtering() -> str | None:
    """A warning when the host's firewall sees traffic *between* replicas, else None.

    With the ``br_netfilter`` module loaded and ``net.bridge.bridge-nf-call-iptables=1``
    (Docker does both, and sets the FORWARD policy to DROP), frames bridged from one
    replica to another pass iptables' FORWARD chain; unless a rule there accepts
    traffic in and out of ``zl-*`` bridges, replicas of a deployment cannot reach each
    other (the host still reaches them: that is INPUT/OUTPUT, not FORWARD). The flag
    cannot be lifted per bridge (the kernel ORs it with the bridge's own
    ``nf_call_iptables``), so this only detects the situation.
    """
    try:
        value = BRIDGE_NF_CALL_IPTABLES.read_text(encoding="ascii").strip()
    except OSError:
        return None  # br_netfilter not loaded: bridged frames bypass iptables
    if value == "0":
        return None
    return (
        "br_netfilter hands bridged traffic to iptables (net.bridge.bridge-nf-call-iptables=1): "
        "replicas reach each other only if the FORWARD chain accepts traffic on zl-* bridges"
    )
