"""Every file in deploy/ is parsed and checked against the code it deploys.

The compose services and the CloudNativePG clusters must match the shards of the cluster
YAML they mount; every Secret, ConfigMap, volume and environment variable they reference
must exist; every shardflow command line must be one the CLI accepts; ports, probes,
grace periods and blob directories must agree with the CLI flags and the cluster YAML.
No Docker engine or Kubernetes cluster is needed. ``docker compose config`` also runs
when the Docker CLI has its compose plugin (it needs no engine).
"""

from __future__ import annotations

import argparse
import functools
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from psycopg.conninfo import conninfo_to_dict

from shardflow.cli.main import build_parser
from shardflow.cli.migrate import PASSWORD_VARIABLE
from shardflow.cli.worker import import_app
from shardflow.config import BlobStoreKind, ClusterConfig, load

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
SYSTEMD = DEPLOY / "systemd"
README = (DEPLOY / "README.md").read_text(encoding="utf-8")
tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11+")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))

# Variables the code reads that are not options of a command.
EXTRA_VARIABLES = {PASSWORD_VARIABLE}
# Keys of the Secrets CloudNativePG creates for a Cluster (pkg/specs/secrets.go, and the
# CA secret of its certificates).
CNPG_APP_KEYS = {
    "username",
    "user",
    "password",
    "dbname",
    "host",
    "port",
    "pgpass",
    "uri",
    "jdbc-uri",
    "fqdn-uri",
    "fqdn-jdbc-uri",
}
CNPG_CA_KEYS = {"ca.crt"}
# Secrets an operator creates by hand, each documented in deploy/README.md.
OPERATOR_SECRETS = {"shardflow-worker-credentials": {"username", "password"}}
# Manifests in deploy/kubernetes that are templates, applied on demand, not by kustomize.
K8S_TEMPLATES = {"rebalance-job.yaml"}
TEST_PASSWORDS = {"SHARDFLOW_DB_PASSWORD": "db-pw-1", "SHARDFLOW_WORKER_PASSWORD": "worker-pw-2"}


# -- shared helpers ---------------------------------------------------------------------------


def option_variables() -> set[str]:
    """Every SHARDFLOW_* variable an option of some command reads."""
    found: set[str] = set()

    def walk(parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    walk(sub)
            elif action.help and "[env: " in action.help:
                found.add(action.help.split("[env: ", 1)[1].rstrip("]"))

    walk(build_parser())
    return found


KNOWN_VARIABLES = option_variables() | EXTRA_VARIABLES


def parse_command(argv: list[str]) -> argparse.Namespace:
    """``argv`` as the shardflow CLI parses it; fails the test if the CLI refuses it."""
    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse's way of refusing
        pytest.fail(f"the CLI refuses {shlex.join(argv)!r} (exit {exc.code})")


def check_worker_command(argv: list[str]) -> argparse.Namespace:
    args = parse_command(argv)
    assert args.command == "worker", argv
    assert args.app, f"{argv}: a worker needs --app"
    import_app(args.app)  # importable, and a shardflow.App
    assert args.metrics_port, f"{argv}: probes and scraping need --metrics-port"
    return args


def check_shardflow_variables(env: Mapping[str, object], where: str) -> None:
    unknown = {k for k in env if k.startswith("SHARDFLOW_")} - KNOWN_VARIABLES
    assert not unknown, f"{where}: no command reads {sorted(unknown)}"


def load_cluster(path: Path, env: Mapping[str, str]) -> ClusterConfig:
    return load(path, env=dict(env))


def dsn_parts(dsn: str) -> dict[str, str]:
    return {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None}


def deploy_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.is_file())


# -- every file is checked --------------------------------------------------------------------

# Each file of deploy/ and which check below covers it.
CHECKED: dict[str, str] = {
    "Dockerfile": "dockerfile",
    "Dockerfile.dockerignore": "dockerfile",
    "compose.yaml": "compose",
    "cluster.compose.yaml": "compose",
    "README.md": "readme",
    "kubernetes/kustomization.yaml": "kustomization",
    "kubernetes/cluster.yaml": "cloudnativepg",
    "kubernetes/namespace.yaml": "kustomization",
    "kubernetes/serviceaccount.yaml": "pods",
    "kubernetes/postgres-shard0.yaml": "cloudnativepg",
    "kubernetes/postgres-shard1.yaml": "cloudnativepg",
    "kubernetes/postgres-shard2.yaml": "cloudnativepg",
    "kubernetes/worker-deployment.yaml": "worker deployment",
    "kubernetes/worker-pdb.yaml": "pods",
    "kubernetes/migrate-job.yaml": "jobs",
    "kubernetes/rebalance-job.yaml": "jobs",
    "systemd/shardflow-worker@.service": "systemd",
    "systemd/shardflow-migrate.service": "systemd",
    "systemd/cluster.yaml": "systemd",
    "systemd/worker.env.example": "systemd",
    "systemd/migrate.env.example": "systemd",
}


def test_every_file_in_deploy_is_checked() -> None:
    present = {p.relative_to(DEPLOY).as_posix() for p in deploy_files()}
    assert present == set(CHECKED), (
        "deploy/ changed: give new files a check here, drop checks of removed ones;"
        f" unchecked {sorted(present - set(CHECKED))}, missing {sorted(set(CHECKED) - present)}"
    )
    for path in deploy_files():
        if path.suffix in (".yaml", ".yml"):
            assert list(yaml.safe_load_all(path.read_text(encoding="utf-8"))), path


# -- Dockerfile -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str

    def exec_form(self) -> list[str]:
        value = yaml.safe_load(self.args)
        assert isinstance(value, list), f"{self.keyword} must use the exec form: {self.args}"
        return [str(v) for v in value]


def dockerfile(path: Path) -> list[Instruction]:
    lines: list[str] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        stripped = raw.strip()
        if not stripped or (stripped.startswith("#") and not pending):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    out = []
    for line in lines:
        keyword, _, args = line.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip()))
    return out


def test_dockerfile_builds_the_package_and_runs_a_worker_the_cli_accepts() -> None:
    instructions = dockerfile(DEPLOY / "Dockerfile")
    by_kind: dict[str, list[Instruction]] = {}
    for ins in instructions:
        by_kind.setdefault(ins.keyword, []).append(ins)

    # The Python of the image is one the package supports and is type-checked for.
    version_arg = next(i.args for i in by_kind["ARG"] if i.args.startswith("PYTHON_VERSION="))
    python = version_arg.split("=", 1)[1]
    assert python == PYPROJECT["tool"]["mypy"]["python_version"]
    assert all(i.args.startswith("python:${PYTHON_VERSION}") for i in by_kind["FROM"])

    # What it copies exists, and the ignore file lets it into the build context.
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for ins in by_kind["COPY"]:
        if ins.args.startswith("--from"):
            continue
        *sources, _target = ins.args.split()
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
            assert source in allowed, f"COPY {source}: excluded by Dockerfile.dockerignore"

    # The extras it installs are extras of the package.
    extras = {i.args.split("=", 1)[1] for i in by_kind["ARG"] if i.args.startswith("EXTRAS=")}
    for value in extras:
        for extra in filter(None, value.split(",")):
            assert extra in PYPROJECT["project"]["optional-dependencies"], extra

    # It runs the package's console script, as a worker the CLI accepts, unprivileged.
    (entrypoint,) = by_kind["ENTRYPOINT"]
    assert entrypoint.exec_form() == list(PYPROJECT["project"]["scripts"])
    (cmd,) = by_kind["CMD"]
    args = check_worker_command(cmd.exec_form())
    assert args.app == "shardflow.demo.app:app"
    exposed = {int(p) for ins in by_kind["EXPOSE"] for p in ins.args.split()}
    assert args.metrics_port in exposed
    (user,) = by_kind["USER"]
    assert user.args.split(":")[0] not in ("0", "root")
    assert any(i.args == "SIGTERM" for i in by_kind["STOPSIGNAL"])
    env = " ".join(i.args for i in by_kind["ENV"])
    assert "SHARDFLOW_CONFIG=/etc/shardflow/cluster.yaml" in env
    # The directory of a filesystem blob store exists in the image, owned by its user.
    run = " ".join(i.args for i in by_kind["RUN"])
    compose_cluster = load_cluster(DEPLOY / "cluster.compose.yaml", fake_compose_env())
    store = compose_cluster.payloads.blob_store
    assert store is not None and store.path is not None
    assert store.path in run and f"chown 10001:0 /app {store.path}" in run


# -- compose ----------------------------------------------------------------------------------

_COMPOSE_VARIABLE = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)


def compose_interpolate(value: Any, env: Mapping[str, str], used: set[str]) -> Any:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}`` and ``$$``."""
    if isinstance(value, dict):
        return {k: compose_interpolate(v, env, used) for k, v in value.items()}
    if isinstance(value, list):
        return [compose_interpolate(v, env, used) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match["name"] or match["bare"]
        used.add(name)
        found, op = env.get(name), match["op"]
        if op in (":?", "?") and not found:
            raise AssertionError(f"compose needs {name}: {match['arg']}")
        if op in (":-", "-") and not found:
            return str(match["arg"])
        return found or ""

    return _COMPOSE_VARIABLE.sub(substitute, value)


def fake_compose_env() -> dict[str, str]:
    """The environment the compose file's shardflow services give the cluster YAML."""
    services = compose_services()
    env = services["worker-1"].get("environment", {})
    return {k: str(v) for k, v in env.items()}


def compose_services(env: Mapping[str, str] = TEST_PASSWORDS) -> dict[str, dict[str, Any]]:
    document = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
    used: set[str] = set()
    services = compose_interpolate(document["services"], env, used)
    assert isinstance(services, dict)
    return services


def compose_list(value: Any) -> list[str]:
    """A compose command: a list, or a string split like a shell would."""
    return [str(v) for v in value] if isinstance(value, list) else shlex.split(str(value))


def test_compose_services_match_the_shards_they_mount() -> None:
    document = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
    used: set[str] = set()
    services = compose_interpolate(document["services"], TEST_PASSWORDS, used)
    # Every variable the file needs is documented, and none is left unset.
    assert used == set(TEST_PASSWORDS)
    for name in used:
        assert name in README, f"deploy/README.md does not mention {name}"
    with pytest.raises(AssertionError, match="SHARDFLOW_DB_PASSWORD"):
        compose_interpolate(document["services"], {}, set())

    postgres = {
        n: s for n, s in services.items() if str(s.get("image", "")).startswith("postgres:")
    }
    ours = {n: s for n, s in services.items() if "build" in s}
    assert set(postgres) == {"pg0", "pg1", "pg2"}
    assert set(ours) == {"migrate", "worker-1", "worker-2"}
    assert not set(services) - set(postgres) - set(ours)
    for name, service in ours.items():
        assert service["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}, name
    for name, service in postgres.items():
        assert "healthcheck" in service, f"{name}: migrate waits for it to be healthy"

    declared_volumes = set(document.get("volumes") or {})
    migrate_args = parse_command(compose_list(ours["migrate"]["command"]))
    assert migrate_args.command == "migrate"
    worker_role = migrate_args.create_worker_role
    assert worker_role

    for name, service in ours.items():
        env = {k: str(v) for k, v in service["environment"].items()}
        check_shardflow_variables(env, f"compose service {name}")
        # The cluster YAML is the mounted deploy/cluster.compose.yaml.
        mounts = dict(str(m).split(":")[:2] for m in service["volumes"])
        config_path = env["SHARDFLOW_CONFIG"]
        assert mounts.get("./cluster.compose.yaml") == config_path, name
        for source in mounts:
            if not source.startswith("."):
                assert source in declared_volumes, f"{name}: volume {source} is not declared"
        config = load_cluster(DEPLOY / "cluster.compose.yaml", env)
        assert config.payloads.blob_store is not None
        assert config.payloads.blob_store.kind is BlobStoreKind.FILESYSTEM
        assert config.payloads.blob_store.path in mounts.values(), f"{name}: no blob volume"

        # One shard per PostgreSQL service, and every PostgreSQL service is a shard.
        hosts: dict[str, str] = {}
        for shard in config.shards:
            parts = urlsplit(shard.dsn)
            assert parts.password is None, f"{name}: passwords go in PGPASSWORD, not DSNs"
            assert parts.hostname in postgres, f"{name}: {shard.name} -> {parts.hostname}"
            pg_env = postgres[parts.hostname]["environment"]
            assert parts.path.lstrip("/") == pg_env["POSTGRES_DB"]
            assert parts.port == 5432
            assert parts.hostname is not None
            hosts[shard.name] = parts.hostname
            if name == "migrate":
                assert parts.username == pg_env["POSTGRES_USER"]
                assert env["PGPASSWORD"] == pg_env["POSTGRES_PASSWORD"]
            else:
                assert parts.username == worker_role
                assert env["PGPASSWORD"] == ours["migrate"]["environment"][PASSWORD_VARIABLE]
        assert sorted(hosts.values()) == sorted(postgres), f"{name}: {hosts}"

        args = parse_command(compose_list(service["command"]))
        if name == "migrate":
            assert set(service["depends_on"]) == set(postgres)
            assert all(d["condition"] == "service_healthy" for d in service["depends_on"].values())
            continue
        check_worker_command(compose_list(service["command"]))
        assert service["depends_on"] == {"migrate": {"condition": "service_completed_successfully"}}
        probe = " ".join(service["healthcheck"]["test"])
        assert f"127.0.0.1:{args.metrics_port}/readyz" in probe
        assert any(p.endswith(f":{args.metrics_port}") for p in service["ports"])
        grace = service["stop_grace_period"]
        assert grace.endswith("s") and float(grace[:-1]) > config.worker.lease_seconds
        assert service["stop_signal"] == "SIGTERM"


def test_docker_compose_config_accepts_the_file() -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker CLI on this machine")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip("the docker CLI has no compose plugin (`docker compose version` failed)")
    result = subprocess.run(
        [docker, "compose", "-f", str(DEPLOY / "compose.yaml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin:/usr/local/bin", **TEST_PASSWORDS},
    )
    assert result.returncode == 0, result.stderr


# -- Kubernetes -------------------------------------------------------------------------------


def kustomization() -> dict[str, Any]:
    document = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def manifests(*names: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for name in names:
        out.extend(d for d in yaml.safe_load_all((K8S / name).read_text(encoding="utf-8")) if d)
    return out


def applied() -> list[dict[str, Any]]:
    return manifests(*kustomization()["resources"])


def of_kind(documents: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {
        d["metadata"].get("name") or d["metadata"]["generateName"]: d
        for d in documents
        if d["kind"] == kind
    }


def cnpg_clusters() -> dict[str, dict[str, Any]]:
    clusters = of_kind(applied(), "Cluster")
    assert all(c["apiVersion"] == "postgresql.cnpg.io/v1" for c in clusters.values())
    return clusters


def k8s_config_path() -> Path:
    (generator,) = kustomization()["configMapGenerator"]
    (file,) = generator["files"]
    return K8S / str(file)


def test_kustomization_lists_every_manifest() -> None:
    document = kustomization()
    listed = set(document["resources"])
    generated = {f for g in document["configMapGenerator"] for f in g["files"]}
    present = {p.name for p in K8S.iterdir() if p.suffix == ".yaml"}
    assert present == listed | generated | K8S_TEMPLATES | {"kustomization.yaml"}
    assert not listed & K8S_TEMPLATES
    namespaces = of_kind(applied(), "Namespace")
    assert set(namespaces) == {document["namespace"]}
    assert document["generatorOptions"]["disableNameSuffixHash"] is True
    for template in K8S_TEMPLATES:
        for doc in manifests(template):
            assert doc["metadata"]["namespace"] == document["namespace"], template


def pod_specs(documents: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in documents:
        if doc["kind"] in ("Deployment", "Job"):
            name = doc["metadata"].get("name") or doc["metadata"]["generateName"]
            yield f"{doc['kind']}/{name}", doc["spec"]["template"]["spec"]


@dataclass
class SecretView:
    keys: set[str]
    values: dict[str, str]


def known_secrets() -> dict[str, SecretView]:
    """The Secrets pods may reference, with stand-in values: CloudNativePG's own (for each
    Cluster applied) and the ones an operator creates as deploy/README.md says."""
    namespace = kustomization()["namespace"]
    out: dict[str, SecretView] = {}
    for name, cluster in cnpg_clusters().items():
        initdb = cluster["spec"]["bootstrap"]["initdb"]
        db, owner, host = initdb["database"], initdb["owner"], f"{name}-rw"
        uri = f"postgresql://{owner}:pw-{name}@{host}.{namespace}:5432/{db}"
        values = {"username": owner, "user": owner, "password": f"pw-{name}", "dbname": db}
        values |= {"host": host, "port": "5432", "uri": uri}
        out[f"{name}-app"] = SecretView(CNPG_APP_KEYS, values)
        out[f"{name}-ca"] = SecretView(CNPG_CA_KEYS, {"ca.crt": "-----BEGIN CERTIFICATE-----"})
    for name, keys in OPERATOR_SECRETS.items():
        assert f"kubectl -n {namespace} create secret generic {name}" in README, name
        out[name] = SecretView(keys, {"username": "shardflow_worker", "password": "worker-pw"})
    return out


_K8S_REFERENCE = re.compile(r"\$\$|\$\((?P<name>[A-Za-z_][A-Za-z0-9_]*)\)")


def container_env(container: dict[str, Any], secrets: dict[str, SecretView]) -> dict[str, str]:
    """The container's environment as the kubelet builds it: secrets resolved, ``$(VAR)``
    expanded from variables defined earlier in the list (checked, not guessed)."""
    env: dict[str, str] = {}
    for item in container.get("env", []):
        name = item["name"]
        if "value" in item:

            def expand(match: re.Match[str], defined: dict[str, str] = env, var: str = name) -> str:
                if match.group(0) == "$$":
                    return "$"
                ref = match["name"]
                assert ref in defined, f"{var} uses $({ref}) before it is defined"
                return defined[ref]

            env[name] = _K8S_REFERENCE.sub(expand, str(item["value"]))
            continue
        source = item["valueFrom"]
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            assert ref["name"] in secrets, f"{name}: no Secret {ref['name']}"
            assert ref["key"] in secrets[ref["name"]].keys, (
                f"{name}: {ref['name']} has no {ref['key']}"
            )
            env[name] = secrets[ref["name"]].values.get(ref["key"], f"<{ref['key']}>")
        elif "fieldRef" in source:
            env[name] = f"<{source['fieldRef']['fieldPath']}>"
        else:
            pytest.fail(f"{name}: unexpected valueFrom {source}")
    return env


def mounted_files(spec: dict[str, Any], container: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Path in the container -> (kind:name of the volume's source, key) for each file."""
    configmaps = {g["name"]: g["files"] for g in kustomization()["configMapGenerator"]}
    secrets = known_secrets()
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    files: dict[str, tuple[str, str]] = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes.get(mount["name"])
        assert volume is not None, f"no volume {mount['name']}"
        if "configMap" in volume:
            name = volume["configMap"]["name"]
            assert name in configmaps, f"no ConfigMap {name}"
            for key in configmaps[name]:
                files[f"{mount['mountPath']}/{key}"] = (f"configmap:{name}", key)
        elif "secret" in volume:
            name = volume["secret"]["secretName"]
            assert name in secrets, f"no Secret {name}"
            for item in volume["secret"]["items"]:
                assert item["key"] in secrets[name].keys, f"Secret {name} has no {item['key']}"
                files[f"{mount['mountPath']}/{item['path']}"] = (f"secret:{name}", item["key"])
        else:
            assert "emptyDir" in volume, volume
    return files


def test_pods_reference_only_what_exists() -> None:
    documents = applied() + manifests(*K8S_TEMPLATES)
    accounts = of_kind(applied(), "ServiceAccount")
    secrets = known_secrets()
    images = {i["name"] for i in kustomization()["images"]}
    for where, spec in pod_specs(documents):
        assert spec["serviceAccountName"] in accounts, where
        assert spec["automountServiceAccountToken"] is False, where
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        for container in spec["containers"]:
            assert container["image"] in images, f"{where}: kustomize does not set its image"
            env = container_env(container, secrets)
            check_shardflow_variables(env, where)
            files = mounted_files(spec, container)
            assert files[env["SHARDFLOW_CONFIG"]] == ("configmap:shardflow-cluster", "cluster.yaml")
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["resources"]["requests"] and container["resources"]["limits"]
    deployments = of_kind(applied(), "Deployment")
    for pdb in of_kind(applied(), "PodDisruptionBudget").values():
        selector = pdb["spec"]["selector"]["matchLabels"]
        assert any(
            d["spec"]["selector"]["matchLabels"] == selector for d in deployments.values()
        ), "the PodDisruptionBudget selects no Deployment"


def shard_clusters(
    spec: dict[str, Any], container: dict[str, Any]
) -> tuple[ClusterConfig, dict[str, str]]:
    """The cluster YAML as this container reads it, and each shard's CloudNativePG Cluster
    (by the host of its DSN), checking TLS against that Cluster's own CA."""
    env = container_env(container, known_secrets())
    config = load_cluster(k8s_config_path(), env)
    files = mounted_files(spec, container)
    clusters = cnpg_clusters()
    owners: dict[str, str] = {}
    for shard in config.shards:
        parts = dsn_parts(shard.dsn)
        host = parts["host"]
        matches = [name for name in clusters if host.split(".")[0] == f"{name}-rw"]
        assert len(matches) == 1, f"{shard.name}: host {host} is no Cluster's -rw service"
        owner = matches[0]
        owners[shard.name] = owner
        assert parts["dbname"] == clusters[owner]["spec"]["bootstrap"]["initdb"]["database"]
        assert parts["sslmode"] == "verify-full", f"{shard.name}: verify the server certificate"
        assert files.get(parts["sslrootcert"]) == (f"secret:{owner}-ca", "ca.crt"), shard.name
    return config, owners


def test_cloudnativepg_clusters_match_the_shards() -> None:
    clusters = cnpg_clusters()
    deployment = of_kind(applied(), "Deployment")["shardflow-worker"]
    spec = deployment["spec"]["template"]["spec"]
    config, owners = shard_clusters(spec, spec["containers"][0])
    # One Cluster per shard, each with replicas of its own for failover.
    assert sorted(owners.values()) == sorted(clusters)
    assert len(set(owners.values())) == len(config.shards)
    for name, cluster in clusters.items():
        assert cluster["spec"]["instances"] >= 2, f"{name}: no replica to fail over to"
        assert cluster["spec"]["storage"]["size"]
        shard = next(s for s, owner in owners.items() if owner == name)
        assert cluster["metadata"]["labels"]["shardflow.io/shard"] == shard


def test_worker_deployment_probes_resources_and_shutdown() -> None:
    deployment = of_kind(applied(), "Deployment")["shardflow-worker"]
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    args = check_worker_command([str(a) for a in container["args"]])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == args.metrics_port
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(args.metrics_port)
    for probe, path in (
        ("livenessProbe", "/healthz"),
        ("startupProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ):
        http = container[probe]["httpGet"]
        assert (http["path"], http["port"]) == (path, "metrics"), probe
    resources = container["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"]
    assert resources["limits"]["memory"]
    config, _ = shard_clusters(spec, container)
    assert spec["terminationGracePeriodSeconds"] > config.worker.lease_seconds
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    # Workers log in as the role the migrate Job grants, never as the database owner.
    env = container_env(container, known_secrets())
    assert all(dsn_parts(s.dsn)["user"] == "shardflow_worker" for s in config.shards), (
        "workers must use the worker role"
    )
    assert "password" not in " ".join(s.dsn for s in config.shards)
    assert env["PGPASSWORD"] == known_secrets()["shardflow-worker-credentials"].values["password"]


def test_jobs_run_commands_the_cli_accepts() -> None:
    jobs = {**of_kind(applied(), "Job"), **of_kind(manifests(*K8S_TEMPLATES), "Job")}
    assert set(jobs) == {"shardflow-migrate", "shardflow-rebalance-"}
    roles = {
        role["name"]: role
        for cluster in cnpg_clusters().values()
        for role in cluster["spec"]["managed"]["roles"]
    }
    for name, job in jobs.items():
        spec = job["spec"]["template"]["spec"]
        assert spec["restartPolicy"] == "Never"
        (container,) = spec["containers"]
        args = parse_command([str(a) for a in container["args"]])
        config, owners = shard_clusters(spec, container)
        # Jobs that change the schema or the slot tables connect as each database's owner.
        for shard in config.shards:
            owner = cnpg_clusters()[owners[shard.name]]["spec"]["bootstrap"]["initdb"]["owner"]
            assert dsn_parts(shard.dsn)["user"] == owner, f"{name}: {shard.name}"
        if name == "shardflow-migrate":
            assert args.command == "migrate"
            # The role it grants is the role every Cluster manages for the workers.
            assert args.create_worker_role in roles
            role = roles[args.create_worker_role]
            assert role["login"] is True
            assert role["passwordSecret"]["name"] in OPERATOR_SECRETS
        else:
            assert (args.command, args.rebalance_command, args.yes) == ("rebalance", "apply", True)
            assert job["metadata"]["generateName"] == name


# -- systemd -----------------------------------------------------------------------------------


def systemd_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"{path.name}: {line} outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not key=value: {line}"
        current.append((key.strip(), value.strip()))
    return sections


def env_file(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out


def _variable(env: dict[str, str], match: re.Match[str]) -> str:
    return env[match[1]]


def unit_env(service: list[tuple[str, str]], specifiers: dict[str, str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for key, value in service:
        if key == "EnvironmentFile":
            example = SYSTEMD / (Path(value.lstrip("-")).name + ".example")
            assert example.exists(), f"EnvironmentFile {value}: ship {example.name}"
            env |= env_file(example)
    for key, value in service:
        if key == "Environment":
            name, _, text = value.partition("=")
            env[name] = expand_specifiers(text, specifiers)
    return env


def expand_specifiers(text: str, specifiers: dict[str, str]) -> str:
    return re.sub(r"%([a-zA-Z%])", lambda m: specifiers.get(m[1], m[0]), text)


def test_systemd_units_run_commands_the_cli_accepts() -> None:
    config_dir = "/etc/shardflow/"
    specifiers = {"i": "9464", "H": "host1", "%": "%"}
    units = {p.name: systemd_unit(p) for p in SYSTEMD.glob("*.service")}
    assert set(units) == {"shardflow-worker@.service", "shardflow-migrate.service"}
    for name, unit in units.items():
        service = dict(unit["Service"])
        env = unit_env(unit["Service"], specifiers)
        check_shardflow_variables(env, name)
        assert env["SHARDFLOW_CONFIG"].startswith(config_dir)
        config = load_cluster(SYSTEMD / Path(env["SHARDFLOW_CONFIG"]).name, env)
        for shard in config.shards:
            parts = dsn_parts(shard.dsn)
            assert "password" not in parts, f"{name}: passwords go in PGPASSWORD"
            assert parts["sslmode"] == "verify-full"
        assert service["User"] != "root" and service["NoNewPrivileges"] == "yes"

        exec_start = expand_specifiers(service["ExecStart"], specifiers)
        exec_start = re.sub(r"\$\{(\w+)\}", functools.partial(_variable, env), exec_start)
        program, *argv = shlex.split(exec_start)
        assert Path(program).name == next(iter(PYPROJECT["project"]["scripts"]))
        args = parse_command(argv)
        if name == "shardflow-worker@.service":
            args = check_worker_command(argv)
            assert args.metrics_port == int(specifiers["i"])
            assert float(service["TimeoutStopSec"]) > config.worker.lease_seconds
            assert service["KillSignal"] == "SIGTERM"
            store = config.payloads.blob_store
            assert store is not None and store.path is not None
            assert store.path.startswith(service["ReadWritePaths"])
            assert unit["Install"] == [("WantedBy", "multi-user.target")]
            assert all(dsn_parts(s.dsn)["user"] == "shardflow_worker" for s in config.shards)
        else:
            assert args.command == "migrate" and args.create_worker_role == "shardflow_worker"
            assert service["Type"] == "oneshot"
            assert PASSWORD_VARIABLE in env
            assert all(dsn_parts(s.dsn)["user"] == "shardflow" for s in config.shards)


# -- README -------------------------------------------------------------------------------------


def test_readme_covers_operations_and_names_every_secret() -> None:
    for heading in (
        "## Bring-up",
        "## Add a shard",
        "## Drain a shard",
        "## Upgrade",
        "## Backup and restore",
        "## Your own app",
    ):
        assert heading in README, heading
    assert "point-in-time" in README.lower()
    # Relative links point at files that exist.
    for target in re.findall(r"\]\((?!https?://)([^)#]+)", README):
        assert (DEPLOY / target).resolve().exists(), f"deploy/README.md links to {target}"
    # Every shardflow command line in a shell block is one the CLI accepts.
    blocks = re.findall(r"```sh\n(.*?)```", README, re.DOTALL)
    commands = [
        line.strip() for block in blocks for line in block.splitlines()
        if line.strip().startswith("shardflow ")
    ]  # fmt: skip
    assert len(commands) >= 4
    for line in commands:
        parse_command(shlex.split(line.split(" #", 1)[0])[1:])
