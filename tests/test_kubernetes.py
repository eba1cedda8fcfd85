"""deploy/kubernetes.yaml: the example must load, and its drain timings must add up."""

from __future__ import annotations

from pathlib import Path

import yaml

from gateway import cli, config

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = {d["kind"]: d for d in yaml.safe_load_all((ROOT / "deploy" / "kubernetes.yaml").open())}


def test_the_configuration_and_command_line_are_valid(tmp_path):
    toml = tmp_path / "gateway.toml"
    toml.write_text(DOCUMENTS["ConfigMap"]["data"]["gateway.toml"])
    loaded = config.load(toml, environ={})
    container = DOCUMENTS["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    pod_ip = "10.1.2.3"  # what Kubernetes puts in $(POD_IP)
    env = {
        e["name"]: e["value"].replace("$(POD_IP)", pod_ip) for e in container["env"] if "value" in e
    }
    assert config.load(toml, environ=env).workers == int(env["ACS_GATEWAY_WORKERS"])
    assert config.load(toml, environ=env).replica_url == f"http://{pod_ip}:8080"
    args = cli._parser().parse_args(container["args"])
    assert args.command == "serve" and args.config.endswith("gateway.toml")
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert args.config.startswith(mount["mountPath"])
    assert loaded.shutdown_grace > 0


def test_termination_grace_covers_the_drain_delay_and_the_drain(tmp_path):
    toml = tmp_path / "gateway.toml"
    toml.write_text(DOCUMENTS["ConfigMap"]["data"]["gateway.toml"])
    loaded = config.load(toml, environ={})
    pod = DOCUMENTS["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert loaded.drain_delay > 0  # the sign comes down before the door closes
    pre_stop = 0.0  # a preStop sleep would only add to the wait
    if "lifecycle" in container:
        command = container["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep"
        pre_stop = float(command[1])
    # the grace period counts from the start of preStop; SIGTERM comes after it
    budget = pre_stop + loaded.drain_delay + loaded.shutdown_grace
    assert pod["terminationGracePeriodSeconds"] > budget


def test_probes_and_service_point_at_the_right_ports():
    container = DOCUMENTS["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "health"}
    assert set(ports) == {"media", "health"}
    assert ports["media"] == config.Config().port

    toml = DOCUMENTS["ConfigMap"]["data"]["gateway.toml"]
    assert f"health_port = {ports['health']}" in toml  # what the probes reach is served
    service = DOCUMENTS["Service"]["spec"]
    assert [p["targetPort"] for p in service["ports"]] == ["media"]
    assert service["selector"] == DOCUMENTS["Deployment"]["spec"]["selector"]["matchLabels"]
    rolling = DOCUMENTS["Deployment"]["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxUnavailable"] == 0  # a rollout never lowers the capacity for calls
