"""deploy/k8s, checked offline: each overlay rendered (by `kustomize`/`kubectl kustomize` when
installed, else by tests/support/kustomize_render.py), every object validated against the
Kubernetes 1.30 API schemas, and the properties an operator relies on asserted: probes, GPUs,
references that resolve, network policies that select real pods, settings that exist."""

from __future__ import annotations

import base64
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import kubernetes_validate
import pytest
import yaml
from pydantic import AliasChoices

from bot.settings import Settings
from tests.support import kustomize_render
from tests.support.kustomize_render import Unsupported, env_file_pairs, load_yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
KUBE_VERSION = "1.30.0"
OVERLAYS = ("small", "production")
CLIENTS = {"bot", "worker", "retrain"}

# Checked by hand in weaviate/weaviate-helm (weaviate/values.yaml of the 16.8.x line, and the
# StatefulSet and Service templates): the values keys deploy/k8s/weaviate/ sets, the maps whose
# keys are free-form, the env names it passes to Weaviate, and the labels of the chart's pods.
WEAVIATE_CHART_KEYS = {
    "image.tag",
    "replicas",
    "storage.size",
    "storage.storageClassName",
    "service.type",
    "grpcService.enabled",
    "grpcService.type",
    "authentication.anonymous_access.enabled",
    "authorization.admin_list.enabled",
    "modules.default_vectorizer_module",
    "initContainers.sysctlInitContainer.enabled",
}
WEAVIATE_FREE_FORM = {"env", "envSecrets", "resources", "nodeSelector", "tolerations", "affinity"}
WEAVIATE_ENV = {
    "AUTHENTICATION_APIKEY_ENABLED",
    "AUTHENTICATION_APIKEY_USERS",
    "RAFT_BOOTSTRAP_EXPECT",
    "REPLICATION_MINIMUM_FACTOR",
    "GOMEMLIMIT",
}
WEAVIATE_POD_LABELS = {"app": "weaviate"}
# Referenced (optionally) but made by an operator command, never by kustomize: see tgi.yaml.
MADE_BY_OPERATOR = {("ConfigMap", "deskmate-tgi-adapters")}

Obj = dict[str, Any]
Rendering = dict[str, list[Obj]]


# --- rendering -------------------------------------------------------------------------------


def kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def build(directory: Path) -> list[Obj]:
    command = kustomize_command()
    if command is None:
        return kustomize_render.render(directory)
    out = subprocess.run([*command, str(directory)], capture_output=True, text=True, check=True)
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """deploy/k8s with each overlay's secrets.env made from its example (a real secrets.env
    an operator left in the checkout is never read)."""
    root = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, root, ignore=shutil.ignore_patterns("secrets.env"))
    for overlay in OVERLAYS:
        folder = root / "overlays" / overlay
        shutil.copy(folder / "secrets.env.example", folder / "secrets.env")
    return root


@pytest.fixture(scope="module")
def rendered(tree: Path) -> Rendering:
    return {overlay: build(tree / "overlays" / overlay) for overlay in OVERLAYS}


@pytest.fixture(scope="module")
def standalone(tree: Path) -> Rendering:
    """Manifests an operator applies by hand, next to the production overlay."""
    return {"retrain-job": load_yaml(K8S / "jobs" / "retrain-job.yaml"), "vllm": build(tree / "generator" / "vllm")}


# --- looking things up -----------------------------------------------------------------------


def identity(obj: Obj) -> tuple[str, str, str]:
    meta = obj["metadata"]
    return obj["kind"], meta.get("namespace", ""), meta.get("name", meta.get("generateName", ""))


def find(objects: list[Obj], kind: str, name: str | None = None) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects: list[Obj], kind: str, name: str) -> Obj:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def workloads(objects: list[Obj]) -> list[Obj]:
    return [o for o in objects if o["kind"] in ("Deployment", "StatefulSet", "Job")]


def pod_spec(obj: Obj) -> Obj:
    return obj["spec"]["template"]["spec"]


def pod_labels(obj: Obj) -> dict[str, str]:
    return obj["spec"]["template"]["metadata"]["labels"]


def container(obj: Obj, name: str | None = None) -> Obj:
    containers = pod_spec(obj)["containers"]
    return containers[0] if name is None else next(c for c in containers if c["name"] == name)


def by_component(objects: list[Obj], name: str) -> list[Obj]:
    return [o for o in workloads(objects) if pod_labels(o)["app.kubernetes.io/component"] == name]


def effective_env(obj: Obj, objects: list[Obj], name: str | None = None) -> dict[str, Any]:
    """What the container sees: envFrom ConfigMaps first, then its own env (which wins)."""
    c = container(obj, name)
    env: dict[str, Any] = {}
    for source in c.get("envFrom", []):
        if "configMapRef" in source:
            env.update(one(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
    for item in c.get("env", []):
        env[item["name"]] = item.get("value", item.get("valueFrom"))
    return env


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions) against pod labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        value, op = labels.get(expr["key"]), expr["operator"]
        if (
            op == "In"
            and value not in expr["values"]
            or op == "NotIn"
            and value in expr["values"]
            or op == "Exists"
            and value is None
            or op == "DoesNotExist"
            and value is not None
        ):
            return False
    return True


# --- the renderers agree, the objects are valid ----------------------------------------------


@pytest.mark.parametrize("path", ["overlays/small", "overlays/production", "generator/vllm"])
def test_python_renderer_matches_kustomize(tree: Path, path: str) -> None:
    if kustomize_command() is None:
        pytest.skip("no kustomize or kubectl on PATH: the Python renderer is the only one here")
    ours = {identity(o): o for o in kustomize_render.render(tree / path)}
    theirs = {identity(o): o for o in build(tree / path)}
    assert sorted(ours) == sorted(theirs)
    for key, obj in theirs.items():
        assert ours[key] == obj, f"{key} differs"


def test_python_renderer_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("commonLabels: {a: b}\nresources: []\n")
    with pytest.raises(Unsupported):
        kustomize_render.render(tmp_path)


def schema_errors(objects: list[Obj]) -> list[str]:
    errors = []
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{identity(obj)} {'.'.join(map(str, exc.path))}: {exc.message}")
    return errors


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_objects_match_the_api_schemas(rendered: Rendering, overlay: str) -> None:
    assert len(rendered[overlay]) > 10
    assert schema_errors(rendered[overlay]) == []


def test_standalone_manifests_match_the_api_schemas(standalone: Rendering) -> None:
    assert schema_errors(standalone["retrain-job"] + standalone["vllm"]) == []
    # The CloudNativePG example is a custom resource: no schema to check, only its kind.
    example = load_yaml(K8S / "examples" / "cloudnative-pg-cluster.yaml")
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(example[0], KUBE_VERSION, strict=True)
    assert [(o["apiVersion"], o["kind"]) for o in example] == [("postgresql.cnpg.io/v1", "Cluster")]


# --- the bot ---------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_bot_serves_on_8000_with_the_right_probes(rendered: Rendering, overlay: str) -> None:
    bot = one(rendered[overlay], "Deployment", "deskmate")
    c = container(bot, "deskmate")
    assert c["command"][:2] == ["deskmate", "serve"]
    assert c["command"][c["command"].index("--host") + 1] == "0.0.0.0"
    assert {"name": "http", "containerPort": 8000} in c["ports"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # liveness must not depend on the stores: /healthz only says the process is up
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "no time to load models"
    assert "replicas" not in bot["spec"], "the HorizontalPodAutoscaler owns the replica count"
    annotations = bot["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "8000"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_bot_runs_locked_down_with_scratch_space_and_the_shared_registry(rendered: Rendering, overlay: str) -> None:
    objects = rendered[overlay]
    bot = one(objects, "Deployment", "deskmate")
    c = container(bot, "deskmate")
    assert pod_spec(bot)["securityContext"]["runAsUser"] == 10001
    assert pod_spec(bot)["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    volumes = {v["name"]: v for v in pod_spec(bot)["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in c["volumeMounts"]}
    env = effective_env(bot, objects, "deskmate")
    assert "emptyDir" in mounts["/tmp"] and "emptyDir" in mounts[env["DESKMATE_DATA_DIR"]]
    for path, setting in (("/shared/adapters", "DESKMATE_ADAPTERS_DIR"), ("/shared/jobs", "DESKMATE_JOBS_DIR")):
        assert env[setting] == path
        claim_name = mounts[path]["persistentVolumeClaim"]["claimName"]
        claim = one(objects, "PersistentVolumeClaim", claim_name)
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_ledger_spool_outlives_a_pod_on_a_shared_volume(
    rendered: Rendering, standalone: Rendering, overlay: str
) -> None:
    """Writes waiting for PostgreSQL survive a pod restart (an emptyDir lost them), and every
    pod that may write the ledger spools onto the same ReadWriteMany volume, where a live
    replica replays what a gone one left."""
    objects = rendered[overlay]
    extra = standalone["retrain-job"] if overlay == "production" else []
    spool_dir = one(objects, "ConfigMap", "deskmate-config")["data"]["DESKMATE_LEDGER_SPOOL_DIR"]
    deskmate_pods = [w for w in workloads(objects + extra) if pod_labels(w)["app.kubernetes.io/component"] in CLIENTS]
    assert {pod_labels(w)["app.kubernetes.io/component"] for w in deskmate_pods} >= {"bot"}
    for workload in deskmate_pods:
        c = container(workload)
        assert effective_env(workload, objects)["DESKMATE_LEDGER_SPOOL_DIR"] == spool_dir
        volumes = {v["name"]: v for v in pod_spec(workload)["volumes"]}
        [mount] = [m for m in c["volumeMounts"] if m["mountPath"] == spool_dir]
        assert not mount.get("readOnly"), identity(workload)
        claim = one(objects, "PersistentVolumeClaim", volumes[mount["name"]]["persistentVolumeClaim"]["claimName"])
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"], identity(workload)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_workload_requests_cpu_and_memory_and_caps_memory(
    rendered: Rendering, standalone: Rendering, overlay: str
) -> None:
    objects = workloads(rendered[overlay] + standalone["retrain-job"] + standalone["vllm"])
    assert len(objects) >= 3
    for obj in objects:
        for c in pod_spec(obj)["containers"]:
            resources, where = c.get("resources", {}), f"{identity(obj)} {c['name']}"
            assert {"cpu", "memory"} <= set(resources.get("requests", {})), where
            assert "memory" in resources.get("limits", {}), where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_image_is_pinned_and_no_placeholder_is_left(rendered: Rendering, overlay: str) -> None:
    images = [c["image"] for o in workloads(rendered[overlay]) for c in pod_spec(o)["containers"]]
    assert images
    for image in images:
        name, _, tag = image.rpartition(":")
        assert "/" in name and tag and tag != "latest", image


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscaler_and_disruption_budget_cover_the_bot(rendered: Rendering, overlay: str) -> None:
    objects = rendered[overlay]
    hpa = one(objects, "HorizontalPodAutoscaler", "deskmate")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert target == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "deskmate"}
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    pdb = one(objects, "PodDisruptionBudget", "deskmate")["spec"]
    assert selects(pdb["selector"], pod_labels(one(objects, "Deployment", "deskmate")))
    assert len({"minAvailable", "maxUnavailable"} & set(pdb)) == 1, "the API takes one of the two"
    # a node drain must stay possible at the autoscaler's minimum
    assert "maxUnavailable" in pdb or pdb["minAvailable"] < hpa["spec"]["minReplicas"]


def test_production_runs_more_bots_than_small(rendered: Rendering) -> None:
    small = one(rendered["small"], "HorizontalPodAutoscaler", "deskmate")["spec"]
    production = one(rendered["production"], "HorizontalPodAutoscaler", "deskmate")["spec"]
    assert (small["minReplicas"], small["maxReplicas"]) == (1, 3)
    assert production["minReplicas"] >= 3 and production["maxReplicas"] >= 20
    pdb = one(rendered["production"], "PodDisruptionBudget", "deskmate")["spec"]
    assert pdb["minAvailable"] == 2


# --- generator, worker, retraining -----------------------------------------------------------


def test_small_answers_with_the_local_model_and_trains_in_the_bot(rendered: Rendering) -> None:
    objects = rendered["small"]
    env = effective_env(one(objects, "Deployment", "deskmate"), objects)
    assert env["DESKMATE_GENERATOR_URL"] == "local"
    assert env["DESKMATE_JOB_QUEUE"] == "inprocess"
    assert by_component(objects, "generator") == [] and by_component(objects, "worker") == []


def test_production_tgi_has_a_gpu_and_reads_adapters_from_the_configmap(rendered: Rendering) -> None:
    objects = rendered["production"]
    tgi = one(objects, "Deployment", "deskmate-tgi")
    c = container(tgi, "tgi")
    assert c["image"].startswith("ghcr.io/huggingface/text-generation-inference:")
    assert {"name": "http", "containerPort": 80} in c["ports"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod_spec(tgi)["nodeSelector"] and pod_spec(tgi)["tolerations"]
    assert tgi["spec"]["replicas"] == 2
    env = {e["name"]: e for e in c["env"]}
    assert env["MODEL_ID"]["value"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    ref = env["LORA_ADAPTERS"]["valueFrom"]["configMapKeyRef"]
    # optional: TGI starts on the base model before the first `deskmate adapters lora-env`
    assert ref == {"name": "deskmate-tgi-adapters", "key": "LORA_ADAPTERS", "optional": True}
    # an empty list (empty registry) would keep TGI from starting
    assert "unset LORA_ADAPTERS" in " ".join(c["command"])
    volumes = {v["name"]: v for v in pod_spec(tgi)["volumes"]}
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == "/shared/adapters")
    assert mount["readOnly"] is True
    assert volumes[mount["name"]]["persistentVolumeClaim"]["claimName"] == "deskmate-adapters"
    # the bot reaches it by the Service name its config gives, on a port the Service has
    bot_env = effective_env(one(objects, "Deployment", "deskmate"), objects)
    url = urlparse(bot_env["DESKMATE_GENERATOR_URL"])
    service = one(objects, "Service", url.hostname)
    assert url.port in [p["port"] for p in service["spec"]["ports"]]
    assert selects({"matchLabels": service["spec"]["selector"]}, pod_labels(tgi))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_worker_runs_exactly_when_the_bot_queues_jobs_in_redis(rendered: Rendering, overlay: str) -> None:
    objects = rendered[overlay]
    queue = effective_env(one(objects, "Deployment", "deskmate"), objects)["DESKMATE_JOB_QUEUE"]
    workers = by_component(objects, "worker")
    assert (queue == "redis") == bool(workers)
    for worker in workers:
        assert container(worker)["command"] == ["deskmate", "worker"]
        assert effective_env(worker, objects)["DESKMATE_JOB_QUEUE"] == "redis"


def test_production_worker_trains_on_a_gpu_node(rendered: Rendering) -> None:
    worker = one(rendered["production"], "Deployment", "deskmate-worker")
    assert container(worker)["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod_spec(worker)["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    gpu_taint = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    assert gpu_taint in pod_spec(worker)["tolerations"]


def test_retrain_job_is_a_one_shot_gpu_run_kept_out_of_every_kustomization(
    standalone: Rendering, rendered: Rendering
) -> None:
    (job,) = standalone["retrain-job"]
    assert "generateName" in job["metadata"] and "name" not in job["metadata"]
    spec = job["spec"]
    assert spec["backoffLimit"] == 0
    assert spec["ttlSecondsAfterFinished"] > 0 and spec["activeDeadlineSeconds"] > 0
    assert pod_spec(job)["restartPolicy"] == "Never" and pod_spec(job)["tolerations"]
    c = container(job)
    assert c["command"] == ["deskmate", "retrain", "--actor", "k8s-job"]
    assert effective_env(job, rendered["production"])["DESKMATE_JOB_QUEUE"] == "inprocess"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    # the documented command swaps in the worker's image, which the overlay pins
    worker_source = one(load_yaml(K8S / "worker" / "worker.yaml"), "Deployment", "deskmate-worker")
    assert c["image"] == container(worker_source)["image"]
    worker = one(rendered["production"], "Deployment", "deskmate-worker")
    assert container(worker)["image"] != c["image"]
    for kustomization in K8S.rglob("kustomization.yaml"):
        resources = yaml.safe_load(kustomization.read_text()).get("resources", [])
        assert not any("jobs" in r for r in resources), kustomization
    assert all(o["kind"] != "Job" for objects in rendered.values() for o in objects)


def test_vllm_alternative_loads_adapters_at_run_time_behind_the_same_service(
    standalone: Rendering, rendered: Rendering
) -> None:
    objects = standalone["vllm"]
    vllm = one(objects, "Deployment", "deskmate-vllm")
    c = container(vllm, "vllm")
    assert c["image"].startswith("vllm/vllm-openai:")
    assert "--enable-lora" in " ".join(c["command"] + c["args"])
    assert {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"} in c["env"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    production = rendered["production"]
    service = one(objects, "Service", "deskmate-generator")
    assert service["spec"] == one(production, "Service", "deskmate-generator")["spec"]
    assert pod_labels(vllm) == pod_labels(one(production, "Deployment", "deskmate-tgi"))


# --- references, network, settings -----------------------------------------------------------


def references(obj: Obj) -> Iterator[tuple[str, str, str | None, bool]]:
    """(kind, name, key, optional) of every ConfigMap, Secret and claim a pod template names."""
    pod = pod_spec(obj)
    for c in pod["containers"] + pod.get("initContainers", []):
        for source in c.get("envFrom", []):
            for field, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                if field in source:
                    yield kind, source[field]["name"], None, source[field].get("optional", False)
        for item in c.get("env", []):
            for field, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
                ref = item.get("valueFrom", {}).get(field)
                if ref:
                    yield kind, ref["name"], ref["key"], ref.get("optional", False)
    for volume in pod.get("volumes", []):
        if "configMap" in volume:
            ref = volume["configMap"]
            yield "ConfigMap", ref["name"], None, ref.get("optional", False)
        if "secret" in volume:
            ref = volume["secret"]
            yield "Secret", ref["secretName"], None, ref.get("optional", False)
        if "persistentVolumeClaim" in volume:
            yield "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"], None, False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_reference_resolves_in_the_rendering(rendered: Rendering, standalone: Rendering, overlay: str) -> None:
    objects = rendered[overlay]
    extra = standalone["retrain-job"] + standalone["vllm"] if overlay == "production" else []
    checked = 0
    for workload in workloads(objects + extra):
        for kind, name, key, optional in references(workload):
            checked += 1
            found, what = find(objects, kind, name), f"{identity(workload)} needs {kind} {name}"
            if not found:
                assert optional and (kind, name) in MADE_BY_OPERATOR, what
            elif key is not None and not optional:
                assert key in found[0].get("data", {}), f"{what} key {key}"
    assert checked > 10


def namespace_pods(objects: list[Obj], standalone: Rendering) -> list[dict[str, str]]:
    """Labels of every pod that can run in the namespace: the rendering's, a retraining Job's,
    and the Weaviate chart's."""
    return [*map(pod_labels, workloads(objects + standalone["retrain-job"])), WEAVIATE_POD_LABELS]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_select_real_pods_and_only_clients_reach_the_backends(
    rendered: Rendering, standalone: Rendering, overlay: str
) -> None:
    objects = rendered[overlay]
    pods = namespace_pods(objects, standalone)
    policies = {p["metadata"]["name"]: p["spec"] for p in find(objects, "NetworkPolicy")}
    deny_all = {"podSelector": {}, "policyTypes": ["Ingress"]}
    assert policies["deskmate-default-deny-ingress"] == deny_all
    for name, spec in policies.items():
        assert any(selects(spec["podSelector"], p) for p in pods), f"{name} selects no pod"
        for rule in spec.get("ingress", []) + spec.get("egress", []):
            for peer in rule.get("from", []) + rule.get("to", []):
                assert any(selects(peer["podSelector"], p) for p in pods), f"{name} names no pod"

    def admitted(policy: str) -> set[str]:
        """Components (or the chart's app) of the pods a policy lets in."""
        return {
            p.get("app.kubernetes.io/component", p.get("app"))
            for p in pods
            for rule in policies[policy]["ingress"]
            for peer in rule.get("from", [{"podSelector": {}}])
            if selects(peer["podSelector"], p)
        }

    weaviate_clients = admitted("deskmate-weaviate-ingress")
    assert "bot" in weaviate_clients and weaviate_clients <= CLIENTS | {"weaviate"}
    generators = by_component(objects, "generator")
    if generators:
        generator_clients = admitted("deskmate-generator-ingress")
        assert "bot" in generator_clients and generator_clients <= CLIENTS
    bot = pod_labels(one(objects, "Deployment", "deskmate"))
    egress = [s for s in policies.values() if "Egress" in s["policyTypes"] and selects(s["podSelector"], bot)]
    ports = {p["port"] for s in egress for rule in s["egress"] for p in rule.get("ports", [])}
    assert {53, 443, 5432, 6379} <= ports
    reachable = [peer["podSelector"] for s in egress for rule in s["egress"] for peer in rule.get("to", [])]
    for labels in [WEAVIATE_POD_LABELS, *map(pod_labels, generators)]:
        assert any(selects(selector, labels) for selector in reachable), labels


def setting_env_names() -> set[str]:
    names = set()
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names |= {str(choice).upper() for choice in alias.choices}
        else:
            names.add(f"DESKMATE_{field_name.upper()}")
    return names


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_deskmate_variable_is_a_real_setting(rendered: Rendering, standalone: Rendering, overlay: str) -> None:
    objects = rendered[overlay]
    names = set(one(objects, "ConfigMap", "deskmate-config")["data"])
    for workload in workloads(objects + standalone["retrain-job"]):
        for c in pod_spec(workload)["containers"]:
            names |= {e["name"] for e in c.get("env", [])}
    names |= set(env_file_pairs((K8S / "overlays" / overlay / "secrets.env.example").read_text()))
    ours = {n for n in names if n.startswith(("DESKMATE_", "SLACK_"))}
    assert len(ours) > 10
    assert ours - setting_env_names() == set()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_store_urls_name_services_of_the_rendering(rendered: Rendering, overlay: str) -> None:
    objects = rendered[overlay]
    secret = {k: base64.b64decode(v).decode() for k, v in one(objects, "Secret", "deskmate-secrets")["data"].items()}
    config = one(objects, "ConfigMap", "deskmate-config")["data"]
    for url in (secret["DESKMATE_LEDGER_URL"], secret["DESKMATE_CACHE_URL"], config["DESKMATE_STORE_URL"]):
        parsed = urlparse(url)
        service = one(objects, "Service", parsed.hostname)
        if service["spec"].get("type") != "ExternalName":
            assert parsed.port in [p["port"] for p in service["spec"]["ports"]], url
    weaviate = one(objects, "Service", "deskmate-weaviate")
    assert weaviate["spec"]["selector"] == WEAVIATE_POD_LABELS
    ports = {p["port"] for p in weaviate["spec"]["ports"]}
    assert ports == {8080, 50051}, "Deskmate dials gRPC on the HTTP host"


def test_filled_in_secrets_stay_out_of_git() -> None:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    for overlay in OVERLAYS:
        path = K8S / "overlays" / overlay / "secrets.env"
        ignored = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=REPO, check=False)
        assert ignored.returncode == 0, f"{path} would be committed"


# --- Weaviate through its Helm chart ---------------------------------------------------------


def leaf_paths(values: Obj, prefix: str = "") -> Iterator[str]:
    for key, value in values.items():
        path = f"{prefix}{key}"
        if path.split(".")[0] in WEAVIATE_FREE_FORM or not isinstance(value, dict):
            yield path
        else:
            yield from leaf_paths(value, f"{path}.")


def merged_values(*names: str) -> Obj:
    """Helm's -f layering: later files' maps merge into earlier ones."""

    def merge(a: Obj, b: Obj) -> Obj:
        out = dict(a)
        for key, value in b.items():
            both_maps = isinstance(value, dict) and isinstance(a.get(key), dict)
            out[key] = merge(a[key], value) if both_maps else value
        return out

    result: Obj = {}
    for name in names:
        result = merge(result, yaml.safe_load((K8S / "weaviate" / name).read_text()))
    return result


@pytest.mark.parametrize("name", ["values.yaml", "values-small.yaml"])
def test_weaviate_values_use_only_keys_the_chart_has(name: str) -> None:
    values = yaml.safe_load((K8S / "weaviate" / name).read_text())
    for path in leaf_paths(values):
        known = path in WEAVIATE_CHART_KEYS or path.split(".")[0] in WEAVIATE_FREE_FORM
        assert known, f"{name}: {path} is not a key of the chart"
    assert set(values.get("env", {})) <= WEAVIATE_ENV


@pytest.mark.parametrize(
    ("files", "overlay"), [(("values.yaml",), "production"), (("values.yaml", "values-small.yaml"), "small")]
)
def test_weaviate_values_fit_deskmate(rendered: Rendering, files: tuple[str, ...], overlay: str) -> None:
    values = merged_values(*files)
    env = values["env"]
    # the chart refuses more Raft voters than replicas; a replication factor above the node
    # count could never be met
    assert 1 <= int(env["RAFT_BOOTSTRAP_EXPECT"]) <= values["replicas"]
    assert 1 <= int(env["REPLICATION_MINIMUM_FACTOR"]) <= values["replicas"]
    assert (overlay == "production") == (values["replicas"] >= 3)
    assert values["authentication"]["anonymous_access"]["enabled"] is False
    assert env["AUTHENTICATION_APIKEY_ENABLED"] == "true"
    assert values["modules"]["default_vectorizer_module"] == "none"
    assert values["grpcService"]["enabled"] is True
    assert values["service"]["type"] == "ClusterIP"
    for variable, secret_name in values["envSecrets"].items():
        # the chart reads key <variable> from the Secret named here
        assert variable in one(rendered[overlay], "Secret", secret_name)["data"]
