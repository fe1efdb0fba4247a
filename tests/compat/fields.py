"""Every field of the ZLayer v1 model, with a spec fragment that sets it.

A row is a dotted field path (list items without an index) and the YAML of the
one key it sets: under a service ``web`` for ``services.…`` rows (its later lines
as they are, so a row can add a second service), at the top of the file
otherwise. A row covers its field and every field below it that has no row of its
own. ``tests/compat/test_field_verdicts.py`` runs each row through ``validate
--runtime docker|process`` and holds the result against the verdicts in
``field-verdicts.yaml``; ``docs/fields.md`` is generated from both.
"""

from __future__ import annotations

ROWS: dict[str, str] = {
    # --- the file -------------------------------------------------------------------------
    "version": "",
    "deployment": "",
    "services": "",
    "externals": "externals: {db: {backends: ['10.0.0.5:5432']}}",
    "tunnels": "tunnels: {t1: {from: a, to: b, local_port: 1, remote_port: 2}}",
    "api": "api: {enabled: true, bind: '127.0.0.1:3669'}",
    # --- a service ------------------------------------------------------------------------
    "services.deployment": "deployment: fields",
    "services.rtype": "rtype: job",
    "services.schedule": "rtype: cron\n    schedule: '0 * * * * *'",
    "services.image.name": "",
    "services.image.pull_policy": "image: {name: 'busybox:1', pull_policy: always}",
    "services.image.source_policy": "image: {name: 'busybox:1', source_policy: local_first}",
    "services.command": "command: {entrypoint: [sleep], args: ['60']}",
    "services.command.workdir": "command: {entrypoint: [sleep, '60'], workdir: /tmp}",
    "services.env": "env: {A: b}",
    "services.resources.cpu": "resources: {cpu: 0.5}",
    "services.resources.memory": "resources: {memory: 64Mi}",
    "services.resources.pids_limit": "resources: {pids_limit: 64}",
    "services.resources.cpuset": "resources: {cpuset: '0'}",
    "services.resources.cpu_shares": "resources: {cpu_shares: 512}",
    "services.resources.memory_swap": "resources: {memory: 64Mi, memory_swap: 128Mi}",
    "services.resources.memory_reservation": "resources: {memory_reservation: 32Mi}",
    "services.resources.memory_swappiness": "resources: {memory_swappiness: 10}",
    "services.resources.oom_score_adj": "resources: {oom_score_adj: 100}",
    "services.resources.oom_kill_disable": "resources: {oom_kill_disable: true}",
    "services.resources.blkio_weight": "resources: {blkio_weight: 500}",
    "services.resources.gpu": "resources: {gpu: {count: 1}}",
    "services.resources.gpu.model": "resources: {gpu: {count: 1, model: A100}}",
    "services.resources.gpu.mode": "resources: {gpu: {count: 1, mode: shared}}",
    "services.resources.gpu.scheduling": "resources: {gpu: {count: 1, scheduling: gang}}",
    "services.resources.gpu.distributed": (
        "resources: {gpu: {count: 1, distributed: {backend: nccl}}}"
    ),
    "services.resources.gpu.sharing": "resources: {gpu: {count: 1, sharing: mps}}",
    "services.resources.gpu.mps_pipe_dir": "resources: {gpu: {count: 1, mps_pipe_dir: /tmp/p}}",
    "services.resources.gpu.mps_log_dir": "resources: {gpu: {count: 1, mps_log_dir: /tmp/l}}",
    "services.resources.gpu.time_slice_index": (
        "resources: {gpu: {count: 1, time_slice_index: 0}}"
    ),
    "services.resources.gpu.time_slicing_config_path": (
        "resources: {gpu: {count: 1, time_slicing_config_path: /etc/ts}}"
    ),
    "services.network": "network: {join: {mode: open}}",
    "services.endpoints": "endpoints: [{name: http, protocol: http, port: 8080}]",
    "services.endpoints.path": (
        "endpoints: [{name: http, protocol: http, port: 8080, expose: public, path: /api}]"
    ),
    "services.endpoints.host": (
        "endpoints: [{name: http, protocol: http, port: 8080, expose: public, host: a.test}]"
    ),
    "services.endpoints.stream": (
        "endpoints: [{name: t, protocol: tcp, port: 9000, stream: {proxy_protocol: true}}]"
    ),
    "services.endpoints.target_role": (
        "endpoints: [{name: http, protocol: http, port: 8080, target_role: leader}]"
    ),
    "services.endpoints.tunnel": (
        "endpoints: [{name: http, protocol: http, port: 8080, tunnel: {enabled: true}}]"
    ),
    "services.scale": "scale: {mode: fixed, replicas: 2}",
    "services.scale.max": "scale: {mode: adaptive, min: 1, max: 3}",
    "services.scale.targets": "scale: {mode: adaptive, min: 1, max: 3, targets: {cpu: 70}}",
    "services.replica_groups": "replica_groups: [{role: leader, count: 1}]",
    "services.depends": (
        "depends: [{service: db, condition: started, timeout: 30s, on_timeout: warn}]\n"
        "  db:\n    image: {name: 'busybox:1'}\n    command: {entrypoint: [sleep, '60']}"
    ),
    "services.health": "health: {check: {type: command, command: 'true'}}",
    "services.init": (
        "init: {steps: [{id: w, uses: init.wait_tcp, with: {host: 127.0.0.1, port: 1}}]}"
    ),
    "services.init.steps.uses": (
        "init: {steps: [{id: s, uses: init.s3_pull, with: {bucket: b, key: k, path: /p}}]}"
    ),
    "services.errors": "errors: {on_panic: {action: shutdown}}",
    "services.lifecycle": "lifecycle: {delete_on_exit: true}",
    "services.isolation": "isolation: hyperv",
    "services.devices": "devices: [{path: /dev/null}]",
    "services.storage": "storage: [{type: tmpfs, target: /scratch}]",
    "services.storage.source": "storage: [{type: bind, source: /srv, target: /data}]",
    "services.storage.name": "storage: [{type: named, name: data, target: /data}]",
    "services.storage.tier": "storage: [{type: named, name: data, target: /data, tier: cached}]",
    "services.storage.bucket": "storage: [{type: s3, bucket: b, target: /data}]",
    "services.port_mappings": "port_mappings: [{container_port: 80}]",
    "services.capabilities": "capabilities: [NET_ADMIN]",
    "services.cap_drop": "cap_drop: [ALL]",
    "services.privileged": "privileged: true",
    "services.node_mode": "node_mode: dedicated",
    "services.node_selector": "node_selector: {labels: {zone: a}}",
    "services.affinity": "affinity: pack",
    "services.platform": "platform: {os: linux, arch: amd64}",
    "services.service_type": "service_type: wasm_http",
    "services.wasm": "service_type: wasm_http\n    wasm: {min_instances: 1}",
    "services.logs": "logs: {max_size_bytes: 1048576}",
    "services.logs.destination": "logs: {destination: disk}",
    "services.logs.retention_secs": "logs: {retention_secs: 3600}",
    "services.host_network": "host_network: true",
    "services.hostname": "hostname: box",
    "services.dns": "dns: ['127.0.0.53']",
    "services.extra_hosts": "extra_hosts: ['db:10.0.0.5']",
    "services.restart_policy": "restart_policy: {kind: always}",
    "services.labels": "labels: {team: web}",
    "services.user": "user: '1000'",
    "services.stop_signal": "stop_signal: SIGINT",
    "services.stop_grace_period": "stop_grace_period: 5s",
    "services.sysctls": "sysctls: {net.core.somaxconn: '1024'}",
    "services.ulimits": "ulimits: {nofile: {soft: 1024, hard: 2048}}",
    "services.security_opt": "security_opt: ['no-new-privileges']",
    "services.pid_mode": "pid_mode: host",
    "services.ipc_mode": "ipc_mode: private",
    "services.network_mode": "network_mode: none",
    "services.extra_groups": "extra_groups: ['100']",
    "services.read_only_root_fs": "read_only_root_fs: true",
    "services.init_container": "init_container: true",
    "services.tty": "tty: true",
    "services.stdin_open": "stdin_open: true",
    "services.userns_mode": "userns_mode: host",
    "services.cgroup_parent": "cgroup_parent: /zlayer-test",
    "services.expose": "expose: [8080]",
    "services.overlay": "overlay: {mode: dedicated}",
    "services.localhost_reachability": "localhost_reachability: never",
}
"""Field path → the YAML that sets it ("" for a field every spec has)."""
