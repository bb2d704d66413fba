"""A small kustomize: just the features deploy/k8s uses, so the manifests can be rendered and
checked on a machine without `kubectl` or `kustomize`.

Supported: `resources` (files and directories), `namespace`, `labels` (metadata only),
`images`, `patches` (strategic merge, or JSON 6902 with a `target`), and `secretGenerator` /
`configMapGenerator` from `envs` and `literals` with `disableNameSuffixHash`. Anything else
raises `Unsupported`, so the fallback can never quietly render something kustomize would not;
when a real binary is present the tests also check that both give the same objects.
"""

from __future__ import annotations

import base64
import copy
import os
import re
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
KNOWN_FIELDS = {
    "apiVersion",
    "kind",
    "namespace",
    "labels",
    "resources",
    "images",
    "patches",
    "secretGenerator",
    "configMapGenerator",
    "generatorOptions",
}
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "PersistentVolume",
    "StorageClass",
    "CustomResourceDefinition",
    "PriorityClass",
    "IngressClass",
}
# strategic-merge keys of the lists deploy/k8s patches; other lists are replaced whole
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
}
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


class Unsupported(ValueError):
    """The kustomization uses something this renderer does not implement."""


def render(directory: Path) -> list[Obj]:
    """The objects `kustomize build directory` would print (in no particular order)."""
    directory = Path(directory)
    kustomization = _load_kustomization(directory)
    unknown = set(kustomization) - KNOWN_FIELDS
    if unknown:
        raise Unsupported(f"{directory}: {', '.join(sorted(unknown))}")

    objects: list[Obj] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        objects.extend(render(path) if path.is_dir() else load_yaml(path))
    objects.extend(_generated(directory, kustomization))

    for patch in kustomization.get("patches", []):
        _apply_patch(directory, patch, objects)
    if "namespace" in kustomization:
        _set_namespace(objects, kustomization["namespace"])
    for label in kustomization.get("labels", []):
        if label.get("includeSelectors") or label.get("includeTemplates"):
            raise Unsupported("labels with includeSelectors/includeTemplates")
        for obj in objects:
            obj.setdefault("metadata", {}).setdefault("labels", {}).update(label["pairs"])
    for image in kustomization.get("images", []):
        for obj in objects:
            _set_image(obj, image)
    return objects


def load_yaml(path: Path) -> list[Obj]:
    """Every non-empty document of a YAML file."""
    return [doc for doc in yaml.safe_load_all(Path(path).read_text()) if doc]


def _load_kustomization(directory: Path) -> Obj:
    for name in KUSTOMIZATION_FILES:
        if (directory / name).is_file():
            return yaml.safe_load((directory / name).read_text()) or {}
    raise FileNotFoundError(f"no kustomization file in {directory}")


# --- generators ------------------------------------------------------------------------------


def _generated(directory: Path, kustomization: Obj) -> list[Obj]:
    specs = [("Secret", s) for s in kustomization.get("secretGenerator", [])]
    specs += [("ConfigMap", s) for s in kustomization.get("configMapGenerator", [])]
    if specs and not kustomization.get("generatorOptions", {}).get("disableNameSuffixHash"):
        raise Unsupported("generated names with a hash suffix")
    objects = []
    for kind, spec in specs:
        extra = set(spec) - {"name", "envs", "literals", "type"}
        if extra:
            raise Unsupported(f"{kind} generator fields {sorted(extra)}")
        pairs: dict[str, str] = {}
        for env_file in spec.get("envs", []):
            pairs.update(env_file_pairs((directory / env_file).read_text()))
        for literal in spec.get("literals", []):
            key, _, value = literal.partition("=")
            pairs[key] = value
        obj: Obj = {"apiVersion": "v1", "kind": kind, "metadata": {"name": spec["name"]}}
        if kind == "Secret":
            obj["type"] = spec.get("type", "Opaque")
            obj["data"] = {k: kustomize_base64(v.encode()) for k, v in pairs.items()}
        else:
            obj["data"] = pairs
        objects.append(obj)
    return objects


def kustomize_base64(value: bytes) -> str:
    """Base64 as kustomize writes Secret data: in lines of 70 characters, each ended by a
    newline once the text is longer than one line."""
    encoded = base64.b64encode(value).decode()
    if len(encoded) < 70:
        return encoded
    return "".join(encoded[i : i + 70] + "\n" for i in range(0, len(encoded), 70))


def env_file_pairs(text: str) -> dict[str, str]:
    """KEY=value lines as kustomize reads them: leading blanks and `#` lines skipped, the value
    taken verbatim after the first `=`, a bare KEY read from the environment."""
    pairs = {}
    for number, raw in enumerate(text.splitlines()):
        line = raw.lstrip("\ufeff") if number == 0 else raw
        line = line.lstrip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not ENV_NAME.match(key):
            raise ValueError(f"{key!r} is not a valid key name")
        pairs[key] = value if sep else os.environ.get(key, "")
    return pairs


# --- transformers ----------------------------------------------------------------------------


def _set_namespace(objects: list[Obj], namespace: str) -> None:
    for obj in objects:
        if obj["kind"] == "Namespace":
            obj["metadata"]["name"] = namespace  # kustomize renames the Namespace it is given
        elif obj["kind"] not in CLUSTER_SCOPED:
            obj["metadata"]["namespace"] = namespace


def _pod_spec(obj: Obj) -> Obj | None:
    spec = obj.get("spec", {})
    if obj["kind"] == "Pod":
        return spec
    if obj["kind"] == "CronJob":
        return spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec")
    return spec.get("template", {}).get("spec")


def _set_image(obj: Obj, image: Obj) -> None:
    if "digest" in image:
        raise Unsupported("images with a digest")
    pod = _pod_spec(obj)
    for container in (pod or {}).get("containers", []) + (pod or {}).get("initContainers", []):
        current = container.get("image", "")
        name, tag = current, None
        if ":" in current.rsplit("/", 1)[-1]:
            name, tag = current.rsplit(":", 1)
        if name != image["name"]:
            continue
        tag = image.get("newTag", tag)
        container["image"] = image.get("newName", name) + (f":{tag}" if tag else "")


def _apply_patch(directory: Path, patch: Obj, objects: list[Obj]) -> None:
    extra = set(patch) - {"path", "patch", "target"}
    if extra:
        raise Unsupported(f"patch options {sorted(extra)}")
    text = (directory / patch["path"]).read_text() if "path" in patch else patch["patch"]
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    if len(docs) == 1 and isinstance(docs[0], list):  # JSON 6902
        if "target" not in patch:
            raise Unsupported("a JSON 6902 patch needs a target")
        for obj in _targets(objects, patch["target"]):
            for op in docs[0]:
                _json6902(obj, op)
        return
    for doc in docs:
        target = patch.get("target") or {
            "kind": doc["kind"],
            "name": doc["metadata"]["name"],
            **({"namespace": doc["metadata"]["namespace"]} if "namespace" in doc["metadata"] else {}),
        }
        matched = _targets(objects, target)
        if not matched:
            raise ValueError(f"patch {patch.get('path', '')} matches nothing: {target}")
        for obj in matched:
            body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind")}
            body["metadata"] = {k: v for k, v in doc["metadata"].items() if k not in ("name", "namespace")}
            merged = strategic_merge(obj, body)
            obj.clear()
            obj.update(merged)


def _targets(objects: list[Obj], target: Obj) -> list[Obj]:
    extra = set(target) - {"kind", "name", "namespace"}
    if extra:
        raise Unsupported(f"patch target fields {sorted(extra)}")

    def field(obj: Obj, key: str) -> Any:
        return obj["kind"] if key == "kind" else obj["metadata"].get(key)

    return [o for o in objects if all(field(o, k) == v for k, v in target.items())]


def strategic_merge(original: Any, patch: Any, field: str = "") -> Any:
    """Kubernetes' strategic merge for the shapes used here: maps merge (null deletes a key),
    lists with a known merge key merge item by item, other lists and scalars are replaced."""
    if isinstance(patch, dict) and isinstance(original, dict):
        if any(k.startswith("$") for k in patch):
            raise Unsupported(f"strategic-merge directives in {field or 'the patch'}")
        merged = copy.deepcopy(original)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = strategic_merge(merged[key], value, key)
            else:
                merged[key] = copy.deepcopy(value)
        return merged
    if isinstance(patch, list) and isinstance(original, list) and field in MERGE_KEYS:
        # kustomize lists the patch's items first (merged with their originals), then the
        # original items the patch does not name
        key = MERGE_KEYS[field]
        named = {item.get(key) for item in patch}
        merged = []
        for item in patch:
            base = next((o for o in original if o.get(key) == item.get(key)), None)
            merged.append(copy.deepcopy(item) if base is None else strategic_merge(base, item, field))
        return merged + [copy.deepcopy(o) for o in original if o.get(key) not in named]
    return copy.deepcopy(patch)


def _json6902(obj: Obj, op: Obj) -> None:
    *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
    node: Any = obj
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        index = len(node) if last == "-" else int(last)
        if op["op"] == "add":
            node.insert(index, copy.deepcopy(op["value"]))
        elif op["op"] == "replace":
            node[index] = copy.deepcopy(op["value"])
        elif op["op"] == "remove":
            del node[index]
        else:
            raise Unsupported(f"JSON 6902 op {op['op']}")
    elif op["op"] in ("add", "replace"):
        if op["op"] == "replace" and last not in node:
            raise ValueError(f"JSON 6902 replace of a missing path {op['path']}")
        node[last] = copy.deepcopy(op["value"])
    elif op["op"] == "remove":
        del node[last]
    else:
        raise Unsupported(f"JSON 6902 op {op['op']}")
