"""Offline checks of the deployment files: schemas, security posture, and CLI consistency.

The Kubernetes manifests are validated against the official OpenAPI-derived JSON schemas
that the ``kubernetes-validate`` wheel ships (strict: unknown fields are errors); the
compose file against the Compose Specification schema vendored in ``check-jsonschema``.
Neither needs a cluster, a Docker engine or the network.
"""

from __future__ import annotations

import ipaddress
import json
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import jsonschema
import kubernetes_validate
import pytest
import yaml

from vitalcast.cli import main

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S = DEPLOY / "k8s"
K8S_VERSION = "1.33.0"  # oldest minor GKE's and EKS's regular channels still run
IMAGE_UID = 10001  # the Dockerfile's VITALCAST_UID

# vitalcast commands the manifests run whose branch is not merged yet. Remove an entry
# when its command lands: the test fails while a listed command exists, so this list
# cannot silently go stale, and any other unknown command fails at once.
PENDING_COMMANDS: dict[tuple[str, ...], str] = {}


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _k8s_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def _k8s_docs() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{p.name}:{d['kind']}/{d['metadata']['name']}", d)
        for p in _k8s_files()
        for d in _documents(p)
    ]


def _pod_specs() -> list[tuple[str, dict[str, Any]]]:
    specs = []
    for name, doc in _k8s_docs():
        spec = doc.get("spec", {})
        if doc["kind"] == "CronJob":
            specs.append((name, spec["jobTemplate"]["spec"]["template"]["spec"]))
        elif doc["kind"] in ("Deployment", "Job"):
            specs.append((name, spec["template"]["spec"]))
    return specs


@pytest.mark.parametrize("path", _k8s_files(), ids=lambda p: p.name)
def test_kubernetes_manifest_matches_the_api_schema(path: Path) -> None:
    for doc in _documents(path):
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.name} {doc.get('kind')}: {exc.message} at {list(exc.path)}")


def test_schema_check_rejects_a_broken_manifest() -> None:
    """The validator really checks: a misspelt field and a wrong type both fail."""
    doc = _documents(K8S / "deployment-web.yaml")[0]
    doc["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    doc = _documents(K8S / "hpa.yaml")[0]
    doc["spec"]["minReplicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in _k8s_files()}


def test_required_kinds_are_present() -> None:
    kinds = {doc["kind"] for _, doc in _k8s_docs()}
    required = {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap", "CronJob"}
    assert required | {"NetworkPolicy", "Job"} <= kinds
    names = {doc["metadata"]["name"] for _, doc in _k8s_docs() if doc["kind"] == "CronJob"}
    assert names == {
        "vitalcast-monitor",
        "vitalcast-retrain",
        "vitalcast-audit-anchor",
        "vitalcast-audit-verify",
    }


@pytest.mark.parametrize(("name", "pod"), _pod_specs(), ids=[n for n, _ in _pod_specs()])
def test_every_pod_runs_non_root_read_only_without_privileges(
    name: str, pod: dict[str, Any]
) -> None:
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == IMAGE_UID
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    for container in pod["containers"]:
        ctx = container["securityContext"]
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["readOnlyRootFilesystem"] is True
        assert ctx["capabilities"]["drop"] == ["ALL"]
        assert {"requests", "limits"} <= set(container["resources"])
        refs = [next(iter(src.values()))["name"] for src in container["envFrom"]]
        assert refs == ["vitalcast-config", "vitalcast-secrets"]
        assert "env" not in container or all("value" not in e for e in container["env"]), (
            "settings come from the ConfigMap; secrets only by reference"
        )


def test_web_probes_use_health_endpoints() -> None:
    web = _documents(K8S / "deployment-web.yaml")[0]
    container = web["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_no_secret_values_in_git() -> None:
    kinds = {doc["kind"] for _, doc in _k8s_docs()}
    assert "Secret" not in kinds
    config = _documents(K8S / "configmap.yaml")[0]["data"]
    for secret in (
        "VITALCAST_SECRET_KEY",
        "VITALCAST_FIELD_KEY",
        "VITALCAST_HMAC_KEY",
        "VITALCAST_AUDIT_KEY",
    ):
        assert secret not in config
    assert "VITALCAST_DATABASE_URL" not in config  # it carries the password


def test_network_policy_denies_by_default() -> None:
    docs = _documents(K8S / "networkpolicy.yaml")
    deny = next(d for d in docs if d["metadata"]["name"] == "default-deny")
    assert deny["spec"]["podSelector"] == {}
    assert set(deny["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny["spec"]
    assert "egress" not in deny["spec"]


def _vitalcast_rules(direction: str, component: str) -> list[dict[str, Any]]:
    """The ingress or egress rules of every NetworkPolicy selecting a vitalcast pod of
    ``component`` (web, worker, or a job's pod, which has none)."""
    labels = {"app.kubernetes.io/name": "vitalcast", "app.kubernetes.io/component": component}
    rules: list[dict[str, Any]] = []
    for doc in _documents(K8S / "networkpolicy.yaml"):
        wanted = doc["spec"]["podSelector"].get("matchLabels", {})
        if all(labels.get(k) == v for k, v in wanted.items()):
            rules += doc["spec"].get(direction, [])
    return rules


def _peer_allows(peer: dict[str, Any], address: str) -> bool:
    block = peer.get("ipBlock")
    if block is None:
        return False
    ip = ipaddress.ip_address(address)
    excluded = any(ip in ipaddress.ip_network(e) for e in block.get("except", []))
    return ip in ipaddress.ip_network(block["cidr"]) and not excluded


def _egress_allows(component: str, address: str, port: int) -> bool:
    return any(
        any(p["port"] == port for p in rule["ports"])
        and any(_peer_allows(peer, address) for peer in rule["to"])
        for rule in _vitalcast_rules("egress", component)
    )


def test_network_policy_lets_vitalcast_reach_what_its_settings_name() -> None:
    """The ConfigMap named an in-cluster Redis service no manifest creates, and no egress
    rule reached it; HTTPS out (alert webhook, OIDC issuer, CDS JWKS and FHIR servers) was
    denied; Prometheus and the monitor job could not reach the web pods' /metrics."""
    config = _documents(K8S / "configmap.yaml")[0]["data"]
    redis = urlsplit(config["VITALCAST_REDIS_URL"])
    assert redis.hostname is not None
    # NetworkPolicies match addresses, not names: a managed Redis is named by its IP.
    assert redis.hostname.replace(".", "").isdigit(), "VITALCAST_REDIS_URL must name an IP"
    for component in ("web", "worker", "monitor"):
        assert _egress_allows(component, redis.hostname, redis.port or 6379), component
        assert _egress_allows(component, "203.0.113.7", 443), component  # the internet
        assert not _egress_allows(component, "169.254.169.254", 443), component  # metadata
        assert not _egress_allows(component, "203.0.113.7", 80), component
    web_sources = [peer for rule in _vitalcast_rules("ingress", "web") for peer in rule["from"]]
    assert {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gmp-system"}}
    } in web_sources
    assert {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "vitalcast"}}} in web_sources


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def _compose_schema() -> dict[str, Any]:
    text = (
        resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    ).read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


def test_compose_file_matches_the_compose_specification() -> None:
    schema = _compose_schema()
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(_compose()), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)
    broken = _compose()
    broken["services"]["web"]["healthcheck"]["retires"] = 3  # misspelt key
    assert list(validator.iter_errors(broken)), "the schema check must reject a bad file"


def test_compose_services_have_healthchecks_and_named_volumes() -> None:
    compose = _compose()
    services = compose["services"]
    assert {"web", "worker", "monitor", "migrate", "postgres", "mosquitto", "redis"} <= set(
        services
    )
    for name in ("web", "postgres", "mosquitto", "redis"):
        assert "test" in services[name]["healthcheck"], name
    assert services["web"]["depends_on"]["migrate"]["condition"] == (
        "service_completed_successfully"
    )
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    named = set(compose["volumes"])
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            assert source.startswith("./") or source in named, volume
    assert services["postgres"]["volumes"][0].startswith("pgdata:")
    assert compose["networks"]["backend"]["internal"] is True
    assert services["postgres"]["networks"] == ["backend"]


def _commands_run() -> set[tuple[str, ...]]:
    """Every vitalcast command line the compose file and the manifests run."""
    found: set[tuple[str, ...]] = set()
    for _, pod in _pod_specs():
        found.update(tuple(c["args"]) for c in pod["containers"])
    for service in _compose()["services"].values():
        if "build" not in service:  # not the vitalcast image
            continue
        if service.get("entrypoint") is None:
            found.add(tuple(service["command"]))
            continue
        for part in service["command"]:  # a shell loop: "... vitalcast monitor run ..."
            for chunk in part.split("vitalcast ")[1:]:
                found.add(tuple(chunk.split("||")[0].split()))
    return found


def _resolve(args: tuple[str, ...]) -> bool:
    """Whether ``args`` names a command of the real CLI (options are not checked)."""
    command: click.Command = main
    for word in args:
        if word.startswith("-") or not isinstance(command, click.Group):
            break
        sub = command.commands.get(word)
        if sub is None:
            return False
        command = sub
    return True


def _pending(args: tuple[str, ...]) -> tuple[str, ...] | None:
    return next((p for p in PENDING_COMMANDS if args[: len(p)] == p), None)


def test_every_command_the_deployments_run_exists() -> None:
    commands = _commands_run()
    assert {("serve",), ("db", "upgrade")} <= commands
    missing = {args for args in commands if not _resolve(args)}
    unknown = {args for args in missing if _pending(args) is None}
    assert not unknown, f"deployment files run commands the CLI does not have: {unknown}"
    landed = set(PENDING_COMMANDS) - {_pending(args) for args in missing}
    assert not landed, f"remove from PENDING_COMMANDS, these exist now: {landed}"


def _configmap_env() -> dict[str, str]:
    doc = _documents(K8S / "configmap.yaml")[0]
    return {k: str(v) for k, v in doc["data"].items()}


def _writable(path: str, container: dict[str, Any]) -> bool:
    """Whether ``path`` lies in a volume mounted read-write (the root filesystem is not)."""
    return any(
        (path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/"))
        and not m.get("readOnly", False)
        for m in container.get("volumeMounts", [])
    )


@pytest.mark.parametrize(("name", "pod"), _pod_specs(), ids=[n for n, _ in _pod_specs()])
def test_serve_writes_its_metrics_directory_into_a_writable_volume(
    name: str, pod: dict[str, Any]
) -> None:
    """`vitalcast serve` empties and recreates the Prometheus multiprocess directory at
    start (default: `metrics/` in VITALCAST_DATA_DIR). On a read-only root filesystem it
    must point into a writable volume, or every web pod crashes at start."""
    env = _configmap_env()
    for container in pod["containers"]:
        if container.get("args", [])[:1] != ["serve"]:
            continue
        data_dir = env.get("VITALCAST_DATA_DIR", "/var/lib/vitalcast")
        metrics_dir = env.get("VITALCAST_METRICS_DIR", f"{data_dir}/metrics")
        assert _writable(metrics_dir, container), (
            f"{name}: {metrics_dir} is on the read-only root filesystem"
        )


DOCS = DEPLOY.parent / "docs"


def test_every_secret_the_cloud_run_commands_read_is_created_in_the_guide() -> None:
    """`--set-secrets=VAR=NAME:latest` fails when no step made the secret NAME: the
    maintenance plan's monitor job read `vitalcast-db-url` (the guide creates
    `vitalcast-database-url`) and the worker `vitalcast-mqtt-url`, which nothing made."""
    import re

    text = "\n".join(p.read_text() for p in sorted(DOCS.glob("*.md")))
    created = set(re.findall(r"^new_secret ([a-z0-9-]+)", text, flags=re.M))
    assert "vitalcast-database-url" in created
    used = {
        pair.split("=", 1)[1].split(":", 1)[0]
        for flag in re.findall(r"--set-secrets=(\S+)", text)
        for pair in flag.split(",")
    }
    assert used, "no --set-secrets found"
    assert used <= created, f"secrets read but never created: {sorted(used - created)}"


def test_every_documented_monitor_job_mounts_the_model_registry() -> None:
    """`monitor run` verifies the champion's files and reads its sidecar: without the
    registry it raises a false critical no_champion alert every run and skips drift."""
    import re

    for path in sorted(DOCS.glob("*.md")):
        commands = re.split(r"\n(?=\S)", path.read_text().replace("\\\n", " "))
        for command in commands:
            if "gcloud run jobs create" in command and "--args=monitor,run" in command:
                assert "mount-path=/var/lib/vitalcast/registry" in command, path.name


def test_scheduled_retraining_is_governed_retrain_never_train() -> None:
    """`vitalcast train` makes a task's first model champion unreviewed, and registers
    later ones with no alias (neither shadow-scored nor judged by the gate);
    `vitalcast retrain` registers a challenger under the change-control gate. The
    schedules say "promotion stays a human step", so they must run `retrain`."""
    import re

    retrain = _documents(K8S / "cronjob-retrain.yaml")[0]
    container = retrain["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:1] == ["retrain"]
    guide = (DOCS / "deployment-guide.md").read_text()
    job = re.search(r"gcloud run jobs create vitalcast-retrain \S+ --args=(\S+)", guide)
    assert job is not None
    assert job.group(1).split(",")[0] == "retrain"
    assert '["train","--task"' not in guide


def test_kubernetes_examples_in_the_docs_run_real_commands() -> None:
    """The image's ENTRYPOINT is `vitalcast`, so a container's args are the command:
    the maintenance plan's CronJobs ran `args: ["vitalcast", "monitor", "run"]`, i.e.
    `vitalcast vitalcast monitor run` ("No such command 'vitalcast'")."""
    import re

    for path in sorted(DOCS.glob("*.md")):
        for block in re.findall(r"```yaml\n(.*?)```", path.read_text(), flags=re.S):
            for doc in yaml.safe_load_all(block):
                if not isinstance(doc, dict) or doc.get("kind") not in {"CronJob", "Job"}:
                    continue
                spec = doc["spec"].get("jobTemplate", doc)["spec"]["template"]["spec"]
                for container in spec["containers"]:
                    args = tuple(container.get("args", ()))
                    assert _resolve(args), f"{path.name}: {args} is not a vitalcast command"
