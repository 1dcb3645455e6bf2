#!/usr/bin/env python3
"""Offline renderer for this directory's Kustomize layout, for machines without kustomize.

    python3 deploy/kubernetes/render.py deploy/kubernetes/examples/all > all.yaml
    python3 deploy/kubernetes/render.py --write-rendered     # refresh deploy/kubernetes/rendered/
    python3 deploy/kubernetes/render.py --check-rendered     # fail if rendered/ is out of date

`kubectl kustomize DIR` (or `kustomize build DIR`) gives the same objects; scripts/
validate-manifests.sh compares the two whenever kubectl is installed. Only the subset of
Kustomize that this directory uses is implemented (resources, components, strategic-merge
patches with targets, configMapGenerator without name hashes); anything else is refused with
a message naming the file, never silently ignored.
"""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
ALLOWED_FIELDS = {
    "apiVersion", "kind", "resources", "components", "patches",
    "configMapGenerator", "generatorOptions",
}

# Lists merged by a key (the strategic-merge-patch keys of the fields this layout uses).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "env": "name",
    "envFrom": None,
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
    "ports": None,  # containerPort for containers, port for Services: decided per list
}

# Kustomize's "legacy" output order, so that the rendered files read like kustomize's.
ORDER_FIRST = [
    "Namespace", "ResourceQuota", "StorageClass", "CustomResourceDefinition",
    "ServiceAccount", "PodSecurityPolicy", "Role", "ClusterRole", "RoleBinding",
    "ClusterRoleBinding", "ConfigMap", "Secret", "Endpoints", "Service", "LimitRange",
    "PriorityClass", "PersistentVolume", "PersistentVolumeClaim", "Deployment",
    "StatefulSet", "CronJob", "PodDisruptionBudget",
]
ORDER_LAST = ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"]


class RenderError(Exception):
    """A layout this renderer cannot (or must not) render, named by file."""


def load_yaml_docs(path: Path) -> list[dict]:
    try:
        with path.open() as f:
            return [d for d in yaml.safe_load_all(f) if d is not None]
    except (OSError, yaml.YAMLError) as e:
        raise RenderError(f"{path}: {e}") from e


def kustomization_file(directory: Path) -> Path:
    for name in KUSTOMIZATION_FILES:
        if (directory / name).is_file():
            return directory / name
    raise RenderError(f"{directory}: no kustomization.yaml")


def list_merge_key(field: str, items: list) -> str | None:
    if field not in MERGE_KEYS:
        return None
    if field == "ports":
        dicts = [i for i in items if isinstance(i, dict)]
        if dicts and all("containerPort" in i for i in dicts):
            return "containerPort"
        return "port"
    return MERGE_KEYS[field]


def merge_list(field: str, original: list, patch: list) -> list:
    """Strategic merge of a keyed list, in kustomize's (kyaml's) order: the patch's items in
    the patch's order, then the original's remaining items in their order."""
    key = list_merge_key(field, original + patch)
    if key is None:
        return copy.deepcopy(patch)
    by_key = {item.get(key): item for item in original if isinstance(item, dict)}
    result, used = [], set()
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise RenderError(f"patch item in `{field}` lacks its merge key `{key}`: {item}")
        k = item[key]
        used.add(k)
        if item.get("$patch") == "delete":
            continue
        if k in by_key:
            result.append(merge(by_key[k], item))
        else:
            result.append(strip_directives(item))
    result.extend(copy.deepcopy(i) for i in original if not (isinstance(i, dict) and i.get(key) in used))
    return result


def strip_directives(value):
    if isinstance(value, dict):
        return {k: strip_directives(v) for k, v in value.items() if k != "$patch"}
    if isinstance(value, list):
        return [strip_directives(v) for v in value]
    return value


def merge(original, patch):
    """Strategic merge patch of `patch` onto `original` (maps recurse, null deletes)."""
    if not isinstance(original, dict) or not isinstance(patch, dict):
        return copy.deepcopy(strip_directives(patch))
    if patch.get("$patch") == "replace":
        return strip_directives(patch)
    result = copy.deepcopy(original)
    for k, v in patch.items():
        if k == "$patch":
            continue
        if v is None:
            result.pop(k, None)
        elif isinstance(v, list) and isinstance(result.get(k), list):
            result[k] = merge_list(k, result[k], v)
        elif isinstance(v, dict) and isinstance(result.get(k), dict):
            result[k] = merge(result[k], v)
        else:
            result[k] = strip_directives(copy.deepcopy(v))
    return result


def matches(target: dict, doc: dict, origin: str) -> bool:
    unknown = set(target) - {"group", "version", "kind", "name", "labelSelector"}
    if unknown:
        raise RenderError(f"{origin}: unsupported target fields {sorted(unknown)}")
    api = doc.get("apiVersion", "")
    group, _, version = api.rpartition("/")
    checks = [
        ("group", group), ("version", version),
        ("kind", doc.get("kind", "")), ("name", doc.get("metadata", {}).get("name", "")),
    ]
    for field, actual in checks:
        # Kustomize anchors target patterns: `Deployment|Job` matches exactly one of them.
        if field in target and not re.fullmatch(f"(?:{target[field]})", actual):
            return False
    if "labelSelector" in target:
        labels = doc.get("metadata", {}).get("labels", {}) or {}
        for term in str(target["labelSelector"]).split(","):
            k, sep, v = term.partition("=")
            if not sep or "!" in k:
                raise RenderError(f"{origin}: only `key=value` label selectors are supported")
            if labels.get(k.strip()) != v.strip():
                return False
    return True


def apply_patches(docs: list[dict], patches: list, directory: Path, origin: str) -> list[dict]:
    for i, p in enumerate(patches):
        where = f"{origin} patches[{i}]"
        if set(p) - {"path", "patch", "target"}:
            raise RenderError(f"{where}: unsupported fields {sorted(set(p) - {'path', 'patch', 'target'})}")
        if "path" in p:
            bodies = load_yaml_docs(directory / p["path"])
        elif "patch" in p:
            bodies = [d for d in yaml.safe_load_all(p["patch"]) if d is not None]
        else:
            raise RenderError(f"{where}: needs `path` or `patch`")
        if len(bodies) != 1 or not isinstance(bodies[0], dict):
            raise RenderError(f"{where}: one strategic-merge patch document expected")
        body = bodies[0]
        if isinstance(body.get("op"), str) or isinstance(bodies[0], list):
            raise RenderError(f"{where}: JSON 6902 patches are not supported")
        target = p.get("target") or {
            "kind": re.escape(body.get("kind", "")),
            "name": re.escape(body.get("metadata", {}).get("name", "")),
        }
        # A target that matches nothing is not an error (as in kustomize): a Job has no Service.
        for j, doc in enumerate(docs):
            if matches(target, doc, where):
                # With a target, the patch's own kind and name are placeholders (as in kustomize).
                patch = {k: v for k, v in body.items() if k not in ("apiVersion", "kind")}
                patch["metadata"] = {k: v for k, v in (body.get("metadata") or {}).items() if k != "name"}
                if not patch["metadata"]:
                    del patch["metadata"]
                docs[j] = merge(doc, patch)
    return docs


def generate_configmaps(spec: dict, directory: Path, origin: str) -> list[dict]:
    options = spec.get("generatorOptions") or {}
    generators = spec.get("configMapGenerator") or []
    if generators and not options.get("disableNameSuffixHash"):
        raise RenderError(f"{origin}: configMapGenerator needs generatorOptions.disableNameSuffixHash: true here")
    if set(options) - {"disableNameSuffixHash"}:
        raise RenderError(f"{origin}: unsupported generatorOptions {sorted(set(options) - {'disableNameSuffixHash'})}")
    out = []
    for g in generators:
        if set(g) - {"name", "files"}:
            raise RenderError(f"{origin}: configMapGenerator supports name and files only")
        data = {}
        for entry in g.get("files", []):
            key, sep, rel = entry.partition("=")
            if not sep:
                key, rel = Path(entry).name, entry
            path = (directory / rel).resolve()
            if directory.resolve() not in path.parents:
                raise RenderError(f"{origin}: {entry} is outside the kustomization's directory")
            data[key] = path.read_text()
        out.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": g["name"]}, "data": data})
    return out


def build(directory: Path, accumulated: list[dict] | None = None, expect_component: bool = False) -> list[dict]:
    """Renders a Kustomization; a Component is applied to `accumulated` (its parent's set)."""
    kfile = kustomization_file(directory)
    spec = load_yaml_docs(kfile)
    if len(spec) != 1:
        raise RenderError(f"{kfile}: one document expected")
    spec = spec[0]
    unknown = set(spec) - ALLOWED_FIELDS
    if unknown:
        raise RenderError(f"{kfile}: unsupported fields {sorted(unknown)}")
    kind = spec.get("kind", "Kustomization")
    if expect_component != (kind == "Component"):
        raise RenderError(f"{kfile}: kind {kind} where a {'Component' if expect_component else 'Kustomization'} was expected")
    docs = accumulated if accumulated is not None else []
    for res in spec.get("resources") or []:
        path = directory / res
        if path.is_dir():
            docs.extend(build(path))
        else:
            docs.extend(load_yaml_docs(path))
    for comp in spec.get("components") or []:
        docs = build(directory / comp, docs, expect_component=True)
    docs.extend(generate_configmaps(spec, directory, str(kfile)))
    docs = apply_patches(docs, spec.get("patches") or [], directory, str(kfile))
    seen = set()
    for d in docs:
        ident = (d.get("kind"), d.get("metadata", {}).get("name"))
        if ident in seen:
            raise RenderError(f"{kfile}: {ident[0]} {ident[1]} is defined twice")
        seen.add(ident)
    return docs


def order_key(doc: dict):
    kind = doc.get("kind", "")
    if kind in ORDER_FIRST:
        rank = ORDER_FIRST.index(kind)
    elif kind in ORDER_LAST:
        rank = len(ORDER_FIRST) + 1 + ORDER_LAST.index(kind)
    else:
        rank = len(ORDER_FIRST)
    return (rank, kind, doc.get("metadata", {}).get("name", ""))


def render(directory: Path) -> list[dict]:
    return sorted(build(directory), key=order_key)


class _Dumper(yaml.SafeDumper):
    """Writes multi-line strings (ConfigMap files) as literal blocks, so they stay readable."""


def _str(dumper: yaml.SafeDumper, value: str):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump(docs: list[dict]) -> str:
    return yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100)


def rendered_files() -> dict[Path, str]:
    header = "# Generated by deploy/kubernetes/render.py from examples/{name}; do not edit.\n"
    out = {}
    for example in sorted((HERE / "examples").iterdir()):
        if example.is_dir():
            out[HERE / "rendered" / f"{example.name}.yaml"] = header.format(name=example.name) + dump(render(example))
    return out


def main(argv: list[str]) -> int:
    try:
        if argv == ["--write-rendered"]:
            (HERE / "rendered").mkdir(exist_ok=True)
            for path, text in rendered_files().items():
                path.write_text(text)
                print(f"wrote {path.relative_to(HERE.parent.parent)}")
            return 0
        if argv == ["--check-rendered"]:
            stale = [p for p, text in rendered_files().items() if not p.is_file() or p.read_text() != text]
            for p in stale:
                print(f"out of date: {p} (run python3 deploy/kubernetes/render.py --write-rendered)", file=sys.stderr)
            return 1 if stale else 0
        if len(argv) != 1 or argv[0].startswith("-"):
            print(__doc__, file=sys.stderr)
            return 64
        sys.stdout.write(dump(render(Path(argv[0]))))
        return 0
    except RenderError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
