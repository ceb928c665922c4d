"""What deploy/ ships, proved without a container runtime: the compose file against the
Compose specification's JSON schema, the Kubernetes manifests against Kubernetes's own
schemas (strict: an unknown field is an error), the Helm values against the keys their
charts document, the Dockerfile's shape, and the numbers that must agree across files
(grace periods above the node's shutdown_timeout, the metrics port, every MOONWIRE_*
variable a real configuration key). The NATS configuration files are proved by running
them: tests/conftest.py (nats_cluster) and tests/test_nats_permissions.py start
nats-server from those very files."""

from __future__ import annotations

import importlib.resources
import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from moonwire.node import load_config, load_project
from moonwire.node.project._config import config_keys, env_name
from support import AUTH_CONF, CLUSTER_CONF, TLS_CONF, run_cli

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
METRICS_PORT = 9464
KUBERNETES = "1.33.0"
"""The Kubernetes version whose schemas the manifests must satisfy (kubernetes-validate
bundles one set per release)."""

PENDING_KEYS: set[str] = set()
"""Configuration keys the deploy files set ahead of the branch that adds them (none now:
``metrics.listen`` has come); unknown MOONWIRE_* variables are ignored until then."""


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def manifests() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((K8S / "moonwire.yaml").read_text()) if doc]


def kind(name: str) -> dict[str, Any]:
    return next(doc for doc in manifests() if doc["kind"] == name)


def shutdown_timeout(env: dict[str, str]) -> float:
    """The shutdown_timeout, in seconds, of a node of the fleet example with ``env``
    (the default unless the variables set it)."""
    return load_config(ROOT / "examples" / "fleet", environ=env).config.shutdown_timeout


def assert_config_variables(env: dict[str, str], where: str) -> None:
    known = {env_name(key) for key in [*config_keys(), *PENDING_KEYS]}
    unknown = sorted(name for name in env if name.startswith("MOONWIRE_") and name not in known)
    assert unknown == [], f"{where}: not configuration keys: {unknown}"


# ------------------------------------------------------------------------ compose


def test_compose_file_follows_the_compose_specification() -> None:
    # compose-spec's own schema, as check-jsonschema vendors it (its `vendor.compose-spec`).
    text = importlib.resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    schema = json.loads(text.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose())]
    assert errors == []


def test_compose_runs_the_shipped_nats_config_and_the_fleet() -> None:
    services = compose()["services"]
    nats = {name: svc for name, svc in services.items() if name.startswith("nats-")}
    assert sorted(nats) == ["nats-1", "nats-2", "nats-3"]
    for name, svc in nats.items():
        mounted = {v.split(":")[0]: v.split(":")[1] for v in svc["volumes"] if v.startswith("./")}
        assert (DEPLOY / "nats-cluster.conf").samefile(DEPLOY / next(iter(mounted)))  # the very file the tests start
        assert svc["command"][:2] == ["-c", mounted["./nats-cluster.conf"]] and "-js" in svc["command"]
        env = svc["environment"]
        others = {f"nats://{other}:{env['MW_NATS_CLUSTER_PORT']}" for other in nats if other != name}
        assert env["MW_NATS_NAME"] == name and set(json.loads(env["MW_NATS_ROUTES"])) == others
    assert set(re.findall(r"\$(MW_NATS_[A-Z_]+)", CLUSTER_CONF.read_text())) <= set(nats["nats-1"]["environment"])

    nodes = {name: svc for name, svc in services.items() if name.startswith("moonwire-")}
    assert len(nodes) == 3
    for name, svc in nodes.items():
        env = svc["environment"]
        assert_config_variables(env, f"compose {name}")
        assert env["MOONWIRE_NODE"] == name
        assert sorted(env["MOONWIRE_NATS_URL"].split(",")) == [f"nats://{n}:4222" for n in sorted(nats)]
        assert env["MOONWIRE_METRICS_LISTEN"] == f"0.0.0.0:{METRICS_PORT}"
        assert env["TEMPORAL_ADDRESS"] == "temporal:7233"
        assert svc["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
        grace = re.fullmatch(r"(\d+)s", svc["stop_grace_period"])
        assert grace and int(grace.group(1)) > shutdown_timeout(env)
    assert {"postgresql", "temporal", "temporal-ui", "prometheus"} <= set(services)

    # Prometheus scrapes exactly the nodes, where they serve their metrics.
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in services["prometheus"]["volumes"]
    scrape = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["scrape_configs"]
    job = next(job for job in scrape if job["job_name"] == "moonwire")
    assert job["metrics_path"] == "/metrics"
    assert sorted(job["static_configs"][0]["targets"]) == [f"{n}:{METRICS_PORT}" for n in sorted(nodes)]


# ------------------------------------------------------------------------ Dockerfile


def instructions(path: Path) -> Iterator[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    logical = ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        logical += line.rstrip("\\").strip() + " " if line.rstrip().endswith("\\") else line.strip()
        if not line.rstrip().endswith("\\"):
            if logical:
                word, _, rest = logical.partition(" ")
                yield word.upper(), rest.strip()
            logical = ""


def test_dockerfile_is_slim_non_root_with_moonwire_as_entrypoint_and_a_health_check() -> None:
    steps = list(instructions(DEPLOY / "Dockerfile"))
    last = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    final = steps[last:]
    args = {arg.split("=")[0]: arg.split("=", 1)[1] for word, arg in steps if word == "ARG" and "=" in arg}
    base = final[0][1].replace("${PYTHON}", args["PYTHON"])
    assert re.fullmatch(r"python:3\.\d+-slim", base), base
    users = [arg for word, arg in final if word == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0"), users
    assert any(word == "RUN" and "useradd" in arg and users[-1] in arg for word, arg in final)
    assert json.loads(dict(final)["ENTRYPOINT"]) == ["moonwire"]
    assert json.loads(dict(final)["CMD"])[0] == "run"
    health = dict(final)["HEALTHCHECK"]
    assert f"http://127.0.0.1:{METRICS_PORT}/healthz" in health and "CMD" in health
    assert dict(final)["EXPOSE"] == str(METRICS_PORT)

    # What it copies exists, and the project it bakes in loads (with the variable the
    # deployments set).
    for word, arg in steps:
        if word == "COPY" and "--from" not in arg:
            *sources, _ = shlex.split(arg.replace("${PROJECT}", args["PROJECT"]))
            assert all((ROOT / source).exists() for source in sources), arg
    env = dict(pair.split("=", 1) for pair in shlex.split(dict(final)["ENV"]))
    assert_config_variables(env, "Dockerfile")
    assert env["MOONWIRE_METRICS_LISTEN"] == f"0.0.0.0:{METRICS_PORT}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TEMPORAL_ADDRESS", "temporal:7233")
        project = load_project(ROOT / args["PROJECT"])
    assert "fleet:greet" in project.entries


# ------------------------------------------------------------------------ Kubernetes


def test_kubernetes_manifests_follow_their_schemas() -> None:
    docs = manifests()
    assert sorted(doc["kind"] for doc in docs) == ["PodDisruptionBudget", "Service", "StatefulSet"]
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)  # raises, naming the field


def test_the_kubernetes_schemas_catch_a_misspelt_field() -> None:
    statefulset = kind("StatefulSet")
    statefulset["spec"]["template"]["spec"]["terminationGracePeriod"] = 45
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(statefulset, KUBERNETES, strict=True)


def test_statefulset_names_nodes_after_pods_and_outlasts_their_shutdown() -> None:
    statefulset, service, budget = kind("StatefulSet"), kind("Service"), kind("PodDisruptionBudget")
    pod = statefulset["spec"]["template"]
    container = pod["spec"]["containers"][0]
    env = {var["name"]: var.get("value") for var in container["env"]}
    assert_config_variables(env, "StatefulSet")
    node = next(var for var in container["env"] if var["name"] == "MOONWIRE_NODE")
    assert node["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert pod["spec"]["terminationGracePeriodSeconds"] > shutdown_timeout({k: v for k, v in env.items() if v})
    assert env["MOONWIRE_METRICS_LISTEN"] == f"0.0.0.0:{METRICS_PORT}"
    assert env["MOONWIRE_NATS_URL"] == "nats://nats:4222"           # the NATS chart's Service, release "nats"
    assert env["TEMPORAL_ADDRESS"] == "temporal-frontend:7233"       # the Temporal chart's, release "temporal"

    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"metrics": METRICS_PORT}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}, probe
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(METRICS_PORT)
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["resources"]["requests"] and container["resources"]["limits"]

    labels = pod["metadata"]["labels"]
    assert statefulset["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["clusterIP"] == "None" and service["metadata"]["name"] == statefulset["spec"]["serviceName"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert budget["spec"]["maxUnavailable"] == 1 < statefulset["spec"]["replicas"]


# Keys each chart documents in its values.yaml, for the parts these files set. A key
# under a free-form map (the chart merges or patches it as given) is not checked further.
NATS_CHART = {  # nats-io/k8s helm/charts/nats (1.x): values.yaml, files/config/*.yaml
    "documented": {"config.cluster.enabled", "config.cluster.replicas", "config.jetstream.enabled",
                   "config.jetstream.fileStore.pvc.size", "natsBox.enabled", "promExporter.enabled"},
    "free": {"config.merge", "container.env", "container.patch", "podTemplate.patch"},
}
TEMPORAL_CHART = {  # temporalio/helm-charts charts/temporal: values.yaml
    "documented": {"server.replicaCount", "server.config.namespaces.create", "server.config.namespaces.namespace",
                   "schema.createDatabase.enabled", "schema.setup.enabled", "schema.update.enabled", "web.enabled",
                   "cassandra.enabled", "mysql.enabled", "elasticsearch.enabled", "prometheus.enabled",
                   "grafana.enabled"}
                  | {f"server.config.persistence.{store}.{key}" for store in ("default", "visibility")
                     for key in ("driver", "sql.driver", "sql.host", "sql.port", "sql.database", "sql.user",
                                 "sql.existingSecret")},
    "free": set(),
}


def leaves(value: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            yield from leaves(item, f"{prefix}{key}.")
    else:
        yield prefix.rstrip(".")


@pytest.mark.parametrize(("values", "chart"), [("nats-values.yaml", NATS_CHART),
                                                ("temporal-values.yaml", TEMPORAL_CHART)])
def test_helm_values_set_only_keys_their_chart_documents(values: str, chart: dict[str, set[str]]) -> None:
    data = yaml.safe_load((K8S / values).read_text())
    undocumented = [path for path in leaves(data)
                    if path not in chart["documented"] and not any(path.startswith(f + ".") or path == f
                                                                   for f in chart["free"])]
    assert undocumented == []


def test_the_nats_chart_includes_the_shipped_auth_files() -> None:
    values = yaml.safe_load((K8S / "nats-values.yaml").read_text())
    include = values["config"]["merge"]["moonwire$include"]
    mount = values["container"]["patch"][0]["value"]["mountPath"]
    # The chart's configuration is /etc/nats-config/nats.conf; includes are relative to it.
    assert (Path("/etc/nats-config") / include).resolve() == Path(mount) / AUTH_CONF.name
    env = values["container"]["env"]
    assert set(re.findall(r"\$(MW_NATS_[A-Z_]+)", AUTH_CONF.read_text())) == set(env)


# ------------------------------------------------------------------------ NATS files


def test_every_nats_file_deploy_ships_is_one_a_test_starts() -> None:
    started = {CLUSTER_CONF, AUTH_CONF, TLS_CONF}
    included = {conf.parent / name for conf in started
                for name in re.findall(r"^include\s+(\S+)", conf.read_text(), re.MULTILINE)}
    assert sorted(DEPLOY.rglob("*.conf")) == sorted(started | included)


# ------------------------------------------------------------------------ the fleet


async def test_the_fleet_example_runs_on_the_nats_cluster(tmp_path: Path, nats_cluster, temporal_server,
                                                         spawn_node) -> None:
    """What the compose file and the StatefulSet run: nodes of examples/fleet on the
    three-server cluster of deploy/nats-cluster.conf and a Temporal server."""
    urls = ",".join(server.address for server in nats_cluster)
    env = {"TEMPORAL_ADDRESS": temporal_server.address}
    nodes = [await spawn_node(ROOT / "examples" / "fleet", name, nats_url=urls, env=env,
                              args=("--state-dir", str(tmp_path / name)))
             for name in ("fleet-1", "fleet-2")]
    cli = ("--nats", urls, "--project", str(ROOT / "examples" / "fleet"))
    code, out, err = await run_cli("call", "fleet:greet", "Ada", *cli, env=env)
    assert (code, json.loads(out)) == (0, "hello, Ada"), err
    code, out, err = await run_cli("spawn", "fleet:greeting", "Bo", "--host", "fleet:worker", *cli, env=env)
    assert code == 0, err
    code, shown, err = await run_cli("workflow", "show", out.strip(), "--json", *cli, env=env)
    assert code == 0 and json.loads(shown)["result"] == {"greeting": "hello, Bo"}, (shown, err)
    # One clock in the cluster, reachable by its name from outside.
    code, _, err = await run_cli("send", "clock", "ping", '"hi"', *cli, env=env)
    assert code == 0, err
    holders = [node for node in nodes if "clock started" in node.output]
    assert len(holders) == 1
    await holders[0].wait_for_line(r"\[fleet:clock\] ping .*'payload': 'hi'")
