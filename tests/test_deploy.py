"""deploy/systemd and deploy/k8s, checked offline: every Kubernetes manifest against the
API's own schemas (kubernetes-validate, strict), the workloads against ollamesh's actors
and settings, the NATS chart's values against nats.conf, the systemd units by parsing
(and by `systemd-analyze verify` where it exists)."""

from __future__ import annotations

import collections
import configparser
import copy
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from actors.cli.run import config_failed
from actors.runtime.names import ACTORS, DATABASE_ACTORS
from actors.runtime.supervisor import _STOP_SLACK_S
from bus.config import Config, ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
NATS_CONFIGS = ROOT / "deploy" / "nats"
SYSTEMD = ROOT / "deploy" / "systemd"
# The oldest Kubernetes the manifests are for (the gateway's preStop sleep needs 1.30).
KUBERNETES = "1.30"
NAMESPACE = "ollamesh"
# Files in deploy/k8s that are no Kubernetes objects, or are not applied as they are.
NOT_MANIFESTS = {"nats-values.yaml", "kustomization.yaml"}
NOT_APPLIED = NOT_MANIFESTS | {"secret.example.yaml"}
WORKLOAD_KINDS = {"Deployment", "DaemonSet"}
METRICS_PORT = 9464
# The environment variables ollamesh reads (bus/config.py, the CLI).
OLLAMESH_ENV = {
    "NATS_URL", "DATABASE_URL", "OLLAMA_HOSTS", "OLLAMESH_PREFIX", "OLLAMESH_GATEWAY_PORT",
    "OLLAMESH_CONFIG", "NATS_USER", "NATS_PASSWORD", "NATS_CREDS", "NATS_NKEY", "NATS_TOKEN",
}  # fmt: skip


def _manifests() -> list[tuple[str, dict[str, Any]]]:
    """Every Kubernetes object in deploy/k8s, with the file it is in."""
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name not in NOT_MANIFESTS:
            found += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


MANIFESTS = _manifests()
WORKLOADS = [doc for _, doc in MANIFESTS if doc["kind"] in WORKLOAD_KINDS]


def _id(doc: dict[str, Any]) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def _object(kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for _, d in MANIFESTS if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return container


def _actor(workload: dict[str, Any]) -> str:
    """The actor a workload runs, from its `ollamesh up --actors X` command."""
    container = _container(workload)
    command = container.get("command", []) + container.get("args", [])
    assert command[:3] == ["ollamesh", "up", "--actors"], command
    assert len(command) == 4, command
    return command[3]


def _workload(actor: str) -> dict[str, Any]:
    (found,) = [w for w in WORKLOADS if _actor(w) == actor]
    return found


def _config() -> Config:
    """The ConfigMap's ollamesh.toml, loaded as a pod loads it (no environment)."""
    return _load_toml(_object("ConfigMap", "ollamesh-config")["data"]["ollamesh.toml"], {})


def _load_toml(toml: str, env: dict[str, str]) -> Config:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ollamesh.toml"
        path.write_text(toml)
        return load_config(path, env=env)


def _stop_bound(config: Config) -> float:
    """The longest an ollamesh process takes to stop after SIGTERM before it ends anyway."""
    return config.executor.shutdown_grace_s + _STOP_SLACK_S


@pytest.mark.parametrize(("name", "doc"), MANIFESTS, ids=[f"{n}:{_id(d)}" for n, d in MANIFESTS])
def test_manifest_is_valid_kubernetes(name: str, doc: dict[str, Any]) -> None:
    """Every object validates against the API's schema, unknown fields refused."""
    kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    assert doc["metadata"].get("namespace", NAMESPACE) == NAMESPACE
    if doc["kind"] != "Namespace":
        assert doc["metadata"]["namespace"] == NAMESPACE


def test_a_misspelt_field_is_refused() -> None:
    """Strict validation catches a typo that the API server would silently drop."""
    bad = copy.deepcopy(_workload("gateway"))
    container = _container(bad)
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(bad, KUBERNETES, strict=True)


def test_kustomization_applies_every_manifest() -> None:
    """`kubectl apply -k deploy/k8s` applies every manifest but the example Secret."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - NOT_APPLIED
    assert sorted(kustomization["resources"]) == sorted(files)
    assert (K8S / "secret.example.yaml").exists()


def test_every_actor_has_exactly_one_workload() -> None:
    """Each actor is one Deployment or DaemonSet, and each workload is one known actor."""
    counts = collections.Counter(_actor(w) for w in WORKLOADS)
    assert set(counts) <= set(ACTORS), set(counts) - set(ACTORS)
    assert counts == collections.Counter(ACTORS)


@pytest.mark.parametrize("workload", WORKLOADS, ids=_id)
def test_workload_pod(workload: dict[str, Any]) -> None:
    """Each pod: stops within its grace, non-root, read-only, no capabilities, metrics."""
    pod = workload["spec"]["template"]["spec"]
    container = _container(workload)
    labels = workload["spec"]["template"]["metadata"]["labels"]
    assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items()
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    assert pod["terminationGracePeriodSeconds"] > _stop_bound(_config()) + pre_stop
    # Service links would put OLLAMESH_GATEWAY_PORT=tcp://... into the environment.
    assert pod["enableServiceLinks"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert {"name": "metrics", "containerPort": METRICS_PORT} in container["ports"]
    assert _config().metrics.port == METRICS_PORT
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    assert container["image"].startswith("ghcr.io/ollamesh/ollamesh:")


@pytest.mark.parametrize("workload", WORKLOADS, ids=_id)
def test_workload_environment(workload: dict[str, Any]) -> None:
    """Every pod reads ollamesh-env and the config file; only store actors the Secret."""
    container = _container(workload)
    refs = container["envFrom"]
    assert {"configMapRef": {"name": "ollamesh-env"}} in refs
    has_secret = {"secretRef": {"name": "ollamesh-database"}} in refs
    assert has_secret == (_actor(workload) in DATABASE_ACTORS)
    env = _object("ConfigMap", "ollamesh-env")["data"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == "ollamesh-config"
    assert env["OLLAMESH_CONFIG"] == f"{mounts['config']}/ollamesh.toml"
    assert set(env) <= OLLAMESH_ENV


def test_the_secret_example_is_a_placeholder() -> None:
    """The example Secret carries DATABASE_URL with a marked placeholder password."""
    secret = _object("Secret", "ollamesh-database")
    url = secret["stringData"]["DATABASE_URL"]
    assert url.startswith("postgresql://") and "PLACEHOLDER" in url
    assert "EXAMPLE ONLY" in (K8S / "secret.example.yaml").read_text()


def _auth_passwords() -> dict[str, str]:
    """deploy/nats/auth.conf's users and the environment variable of each one's password."""
    found = re.findall(
        r"^\s*\{ user: (\w+),\s*password: \$(\w+)",
        (NATS_CONFIGS / "auth.conf").read_text(),
        re.MULTILINE,
    )
    assert len(found) == 4, found
    return dict(found)


def test_the_nats_secret_example_has_every_user_s_password() -> None:
    """The example Secret ollamesh-nats has a placeholder for each password auth.conf reads."""
    data = _object("Secret", "ollamesh-nats")["stringData"]
    assert set(data) == set(_auth_passwords().values())
    assert all("PLACEHOLDER" in value for value in data.values())


@pytest.mark.parametrize("workload", WORKLOADS, ids=_id)
def test_workload_nats_user(workload: dict[str, Any]) -> None:
    """Each pod is NATS user `actor` (the gateway's: `gateway`), its password from the
    Secret's key for that user, and the environment it gets loads as those credentials."""
    user = "gateway" if _actor(workload) == "gateway" else "actor"
    env = {e["name"]: e for e in _container(workload)["env"]}
    assert env["NATS_USER"]["value"] == user
    ref = env["NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "ollamesh-nats", "key": _auth_passwords()[user]}
    auth = load_config(env={"NATS_USER": user, "NATS_PASSWORD": "x"}).nats.auth
    assert (auth.user, auth.password) == (user, "x")


@pytest.mark.parametrize(("actor", "replicas"), [("router", 2), ("gateway", 2)])
def test_router_and_gateway_outlast_a_drain(actor: str, replicas: int) -> None:
    """Router and gateway run two replicas, and a drain leaves at least one of each."""
    workload = _workload(actor)
    assert workload["spec"]["replicas"] == replicas
    pdb = _object("PodDisruptionBudget", workload["metadata"]["name"])
    assert pdb["spec"]["minAvailable"] == 1
    labels = workload["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_gateway_service_and_probes() -> None:
    """The Service reaches the gateway's port, and both probes ask GET / on it."""
    gateway = _workload("gateway")
    container = _container(gateway)
    config = _config()
    assert config.gateway.host == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == config.gateway.port == 11435
    service = _object("Service", "ollamesh-gateway")
    (port,) = service["spec"]["ports"]
    assert port["port"] == 11435 and port["targetPort"] == "http"
    labels = gateway["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/", "port": "http"}
    # Without keys the gateway listens on 0.0.0.0 (so the kubelet reaches it) only when open.
    assert config.gateway.allow_open is True


def test_executor_serves_the_ollama_of_its_gpu_node() -> None:
    """The executor is a DaemonSet on GPU nodes, pointed at its node's Ollama."""
    executor = _workload("executor")
    assert executor["kind"] == "DaemonSet"
    pod = executor["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    env = _container(executor)["env"]
    names = [e["name"] for e in env]
    # $(NODE_IP) expands only if NODE_IP comes first.
    assert names.index("NODE_IP") < names.index("OLLAMA_HOSTS")
    node_ip = env[names.index("NODE_IP")]["valueFrom"]["fieldRef"]["fieldPath"]
    assert node_ip == "status.hostIP"
    hosts = env[names.index("OLLAMA_HOSTS")]["value"]
    assert hosts == "http://$(NODE_IP):11434"
    config = load_config(env={"OLLAMA_HOSTS": hosts.replace("$(NODE_IP)", "10.0.0.7")})
    assert config.ollama_hosts == ["http://10.0.0.7:11434"]


def test_config_map_is_a_cluster_config() -> None:
    """The ConfigMap's TOML loads and keeps every stream on three NATS nodes."""
    assert _config().nats.replicas == 3


def test_nats_url_names_every_node_of_the_chart() -> None:
    """ollamesh-env's NATS_URL names one URL per node of the NATS release."""
    values = yaml.safe_load((K8S / "nats-values.yaml").read_text())
    url = _object("ConfigMap", "ollamesh-env")["data"]["NATS_URL"]
    nodes = url.split(",")
    assert nodes == [
        f"nats://nats-{i}.nats-headless:4222"
        for i in range(values["config"]["cluster"]["replicas"])
    ]
    toml = _object("ConfigMap", "ollamesh-config")["data"]["ollamesh.toml"]
    assert _load_toml(toml, {"NATS_URL": url}).nats.url == url


def _nats_conf(name: str) -> str:
    """A setting's value in nats.conf, the single-node config."""
    match = re.search(rf"^{name}:\s*(\S+)", (ROOT / "nats.conf").read_text(), re.MULTILINE)
    assert match, name
    return match.group(1)


def test_nats_values() -> None:
    """The chart's values: three clustered nodes, JetStream on a volume, nats.conf's limits."""
    config = yaml.safe_load((K8S / "nats-values.yaml").read_text())["config"]
    assert config["cluster"]["enabled"] is True
    assert config["cluster"]["replicas"] == 3
    jetstream = config["jetstream"]
    assert jetstream["enabled"] is True
    assert jetstream["fileStore"]["enabled"] is True
    assert jetstream["fileStore"]["pvc"]["enabled"] is True
    assert jetstream["fileStore"]["pvc"]["size"]
    # The host registry, rate limits and health view are memory buckets.
    assert jetstream["memoryStore"]["enabled"] is True
    # A GPU site's leaf node reaches the hub's JetStream by its domain, as cluster.conf's.
    assert config["leafnodes"]["enabled"] is True
    domain = re.search(r"^\s*domain: (\w+)$", (NATS_CONFIGS / "cluster.conf").read_text(), re.M)
    assert domain and jetstream["merge"]["domain"] == domain.group(1) == "hub"
    assert "$JS.hub.API.>" in (NATS_CONFIGS / "leaf.conf").read_text()
    for name in ("max_payload", "max_pending"):
        assert config["merge"][name] == f"<< {_nats_conf(name)} >>"
    for name in ("write_deadline", "ping_interval"):
        assert f'"{config["merge"][name]}"' == _nats_conf(name)


def test_nats_values_take_the_users_from_auth_conf() -> None:
    """The chart's nats.conf includes auth.conf (its install puts auth.conf and roles.conf
    in the chart's ConfigMap), and each server reads every password from the Secret."""
    text = (K8S / "nats-values.yaml").read_text()
    values = yaml.safe_load(text)
    assert values["config"]["merge"]["00$include"] == "auth.conf"
    for name in ("auth.conf", "roles.conf"):
        assert f"configMap.merge.data.{name.replace('.', chr(92) + '.')}=deploy/nats/{name}" in text
    env = values["container"]["env"]
    for variable in _auth_passwords().values():
        ref = env[variable]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "ollamesh-nats", "key": variable}


def _unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys keep their case
    parser.read_string(path.read_text())
    return parser


def test_systemd_template_unit() -> None:
    """The template runs its instance's actors, drains, is hardened, and stops on exit 2."""
    unit = _unit(SYSTEMD / "ollamesh@.service")
    service = unit["Service"]
    assert service["ExecStart"] == "/opt/ollamesh/bin/ollamesh up --actors %I"
    assert service["EnvironmentFile"] == "/etc/ollamesh/ollamesh.env"
    assert service["User"] == "ollamesh"
    assert service["KillSignal"] == "SIGTERM"
    assert int(service["TimeoutStopSec"]) > _stop_bound(load_config(env={}))
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == str(config_failed(ConfigError("")))
    for key, value in {
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
        "PrivateTmp": "yes", "CapabilityBoundingSet": "",
    }.items():  # fmt: skip
        assert service[key] == value, key
    # The data directory of an embedded server, if one is started: writable despite strict.
    assert service["StateDirectory"] == "ollamesh"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_executor_drop_in() -> None:
    """The executor's drop-in orders it after Ollama and serves the local Ollama only."""
    unit = _unit(SYSTEMD / "ollamesh@executor.service.d" / "ollama.conf")
    assert unit["Unit"]["After"] == "ollama.service"
    assert unit["Unit"]["Wants"] == "ollama.service"
    assert unit["Service"]["Environment"] == "OLLAMA_HOSTS=http://127.0.0.1:11434"


def test_systemd_gateway_drop_in() -> None:
    """The gateway's drop-in reads gateway.env after ollamesh.env: NATS user `gateway`."""
    unit = _unit(SYSTEMD / "ollamesh@gateway.service.d" / "nats-user.conf")
    assert unit["Service"]["EnvironmentFile"] == "/etc/ollamesh/gateway.env"
    set_, commented = _env_file("gateway.env")
    assert set_.keys() == {"NATS_USER", "NATS_PASSWORD"} and not commented
    assert set_["NATS_USER"] == "gateway" and set_["NATS_PASSWORD"] == "CHANGE-ME"
    assert "gateway" in _auth_passwords()


def _env_file(name: str = "ollamesh.env") -> tuple[dict[str, str], set[str]]:
    """An env file's variables that are set, and the names of those commented out."""
    set_, commented = {}, set()
    for line in (SYSTEMD / name).read_text().splitlines():
        if match := re.fullmatch(r"(#?)([A-Z_]+)=(.*)", line):
            if match.group(1):
                commented.add(match.group(2))
            else:
                set_[match.group(2)] = match.group(3)
    return set_, commented


def test_systemd_env_file() -> None:
    """The env file names only what ollamesh reads, every one of it, and what it sets loads."""
    set_, commented = _env_file()
    assert set(set_) | commented == OLLAMESH_ENV
    config = load_config(env={k: v for k, v in set_.items() if k != "OLLAMESH_CONFIG"})
    assert config.nats.url == set_["NATS_URL"]
    assert config.nats.auth.user == "actor" and "actor" in _auth_passwords()
    assert set_["DATABASE_URL"].startswith("postgresql://")
    assert len(set_["NATS_URL"].split(",")) == 3


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
@pytest.mark.parametrize("instance", ["router", "executor", "gateway", r"router\x2ccache"])
def test_systemd_analyze_verify(tmp_path: Path, instance: str) -> None:
    """systemd itself reads the unit (and the executor's drop-in) without a complaint."""
    unit = (SYSTEMD / "ollamesh@.service").read_text()
    # verify insists that the command exists; what runs it is not the point here.
    unit = unit.replace("ExecStart=/opt/ollamesh/bin/ollamesh ", f"ExecStart={sys.executable} ")
    (tmp_path / "ollamesh@.service").write_text(unit)
    for drop_ins in SYSTEMD.glob("ollamesh@*.service.d"):
        shutil.copytree(drop_ins, tmp_path / drop_ins.name)
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(tmp_path / f"ollamesh@{instance}.service")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # An unknown key is only a warning (exit 0): any output at all fails.
    assert (done.returncode, done.stderr, done.stdout) == (0, "", "")
