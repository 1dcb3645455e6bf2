#!/usr/bin/env python3
"""Checks rendered manifests: Kubernetes 1.33 schemas (kubernetes-validate, strict) plus the
project's own rules for pods that carry our sidecars.

    python3 deploy/kubernetes/check.py [--kubernetes-version 1.33.0] FILE.yaml...

Prints one line per problem, naming the file, the object and the container, and exits 1 if
there is any. The rules (docs/deploy.md explains each):

- restricted security: runAsNonRoot, no privilege escalation, not privileged, capabilities
  drop ALL and add none, seccomp RuntimeDefault, read-only root filesystem, no host
  namespaces, no service account token;
- resource requests and limits (cpu and memory) on every container;
- probes: a native sidecar (init container with restartPolicy: Always) has a startupProbe on
  /readyz, a readinessProbe and a livenessProbe; a sidecar run as a regular container has
  readiness on /readyz and liveness on /livez; a long-running app has readiness and liveness;
  a plain init container has none (the API refuses them);
- volumes: every mount names a volume of the pod; Secret and ConfigMap volumes are mounted
  whole (a subPath mount never sees updates, so hot reload would silently stop); every
  ConfigMap is in the rendered set; no Secret with data is rendered (no committed keys);
- images carry an explicit version tag (not :latest);
- a Job whose sidecars are regular containers asks each of them to stop (`--shutdown
  http://127.0.0.1:<admin port>/shutdown`), or it would never complete.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

# Our sidecar images and their admin ports (sidecar-kit's per-sidecar defaults).
SIDECARS = {"ambassador": 9901, "xml-adapter": 9902, "git-sync": 9903, "secrets-agent": 9905}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}


def sidecar_of(container: dict) -> str | None:
    """The sidecar an image is, from its repository's last path component."""
    image = container.get("image", "")
    name = image.rsplit("/", 1)[-1].split("@")[0].split(":")[0]
    return name if name in SIDECARS else None


def pod_spec_of(doc: dict) -> dict | None:
    kind = doc.get("kind")
    if kind == "Pod":
        return doc.get("spec") or {}
    if kind in WORKLOADS:
        return ((doc.get("spec") or {}).get("template") or {}).get("spec") or {}
    if kind == "CronJob":
        job = ((doc.get("spec") or {}).get("jobTemplate") or {}).get("spec") or {}
        return ((job.get("template") or {}).get("spec")) or {}
    return None


def http_path(probe: dict | None) -> str | None:
    if not probe:
        return None
    return (probe.get("httpGet") or {}).get("path")


class Checker:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}")

    def check_documents(self, origin: str, docs: list[dict]) -> None:
        configmaps = {d["metadata"]["name"] for d in docs if d.get("kind") == "ConfigMap"}
        for doc in docs:
            kind = doc.get("kind")
            name = (doc.get("metadata") or {}).get("name")
            where = f"{origin}: {kind} {name}"
            if kind == "Secret" and (doc.get("data") or doc.get("stringData")):
                self.fail(where, "a Secret with data is committed; create it in the cluster (cert-manager, kubectl create secret)")
            spec = pod_spec_of(doc)
            if spec is not None:
                self.check_pod(where, kind, spec, configmaps)

    def check_pod(self, where: str, kind: str, spec: dict, configmaps: set[str]) -> None:
        pod_sc = spec.get("securityContext") or {}
        for field in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(field):
                self.fail(where, f"{field} must not be set")
        if spec.get("automountServiceAccountToken") is not False:
            self.fail(where, "automountServiceAccountToken must be false (the sidecars never call the API)")
        volumes = {v.get("name"): v for v in spec.get("volumes") or []}
        is_job = kind in ("Job", "CronJob")
        app_args: list[str] = []
        classic_sidecars: list[str] = []
        init = spec.get("initContainers") or []
        containers = spec.get("containers") or []
        for c in init:
            self.check_container(f"{where} initContainer {c.get('name')}", c, pod_sc, volumes, configmaps)
            sidecar = sidecar_of(c)
            cwhere = f"{where} initContainer {c.get('name')}"
            if c.get("restartPolicy") == "Always":
                if http_path(c.get("startupProbe")) != "/readyz":
                    self.fail(cwhere, "a native sidecar needs a startupProbe on /readyz (so the app starts only once it is ready)")
                if not c.get("readinessProbe") or not c.get("livenessProbe"):
                    self.fail(cwhere, "a native sidecar needs a readinessProbe and a livenessProbe")
            else:
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    if c.get(probe):
                        self.fail(cwhere, f"a plain init container cannot have a {probe}")
        for c in containers:
            cwhere = f"{where} container {c.get('name')}"
            self.check_container(cwhere, c, pod_sc, volumes, configmaps)
            if c.get("restartPolicy"):
                self.fail(cwhere, "restartPolicy belongs on init containers (native sidecars) only")
            sidecar = sidecar_of(c)
            if sidecar:
                classic_sidecars.append(sidecar)
                if http_path(c.get("readinessProbe")) != "/readyz":
                    self.fail(cwhere, "a sidecar needs a readinessProbe on /readyz")
                if http_path(c.get("livenessProbe")) != "/livez":
                    self.fail(cwhere, "a sidecar needs a livenessProbe on /livez")
            else:
                app_args.extend(str(a) for a in (c.get("command") or []) + (c.get("args") or []))
                if not is_job and (not c.get("readinessProbe") or not c.get("livenessProbe")):
                    self.fail(cwhere, "a long-running container needs a readinessProbe and a livenessProbe")
        if is_job:
            for sidecar in classic_sidecars:
                url = f"http://127.0.0.1:{SIDECARS[sidecar]}/shutdown"
                said = any(a == url or a.endswith("=" + url) for a in app_args)
                if not said:
                    self.fail(where, f"the {sidecar} sidecar is a regular container of a Job: the app must POST {url} when done (e.g. demo-app job --shutdown {url}), or the Job never completes")

    def check_container(self, where: str, c: dict, pod_sc: dict, volumes: dict, configmaps: set[str]) -> None:
        sc = c.get("securityContext") or {}

        def effective(field):
            return sc.get(field, pod_sc.get(field))

        if effective("runAsNonRoot") is not True:
            self.fail(where, "runAsNonRoot must be true")
        if effective("runAsUser") == 0:
            self.fail(where, "runAsUser must not be 0")
        if sc.get("allowPrivilegeEscalation") is not False:
            self.fail(where, "allowPrivilegeEscalation must be false")
        if sc.get("privileged"):
            self.fail(where, "privileged must not be set")
        if sc.get("readOnlyRootFilesystem") is not True:
            self.fail(where, "readOnlyRootFilesystem must be true")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            self.fail(where, "capabilities must drop ALL")
        if caps.get("add"):
            self.fail(where, f"capabilities must add none (adds {caps['add']})")
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp != "RuntimeDefault":
            self.fail(where, f"seccompProfile must be RuntimeDefault (is {seccomp})")
        resources = c.get("resources") or {}
        for section in ("requests", "limits"):
            for res in ("cpu", "memory"):
                if res not in (resources.get(section) or {}):
                    self.fail(where, f"resources.{section}.{res} is missing")
        image = c.get("image", "")
        last = image.rsplit("/", 1)[-1]
        if "@" not in last and (":" not in last or last.endswith(":latest")):
            self.fail(where, f"image {image!r} needs an explicit version tag")
        for m in c.get("volumeMounts") or []:
            vol = volumes.get(m.get("name"))
            if vol is None:
                self.fail(where, f"volumeMount {m.get('name')} names no volume of the pod")
                continue
            if ("secret" in vol or "configMap" in vol) and m.get("subPath"):
                self.fail(where, f"volumeMount {m.get('name')} uses subPath: updates to the Secret/ConfigMap would never reach it (no hot reload)")
            cm = (vol.get("configMap") or {}).get("name")
            if cm and cm not in configmaps and not (vol.get("configMap") or {}).get("optional"):
                self.fail(where, f"ConfigMap {cm} is mounted but not part of the manifests")


def schema_problems(origin: str, docs: list[dict], version: str) -> list[str]:
    try:
        import kubernetes_validate
    except ImportError:
        return [f"{origin}: the Python package kubernetes-validate is missing (pip install kubernetes-validate)"]
    out = []
    for doc in docs:
        where = f"{origin}: {doc.get('kind')} {(doc.get('metadata') or {}).get('name')}"
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = "/".join(str(p) for p in e.path)
            out.append(f"{where}: schema {version}: {path}: {e.message}")
        except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as e:
            out.append(f"{where}: schema {version}: {e}")
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubernetes-version", default="1.33.0")
    parser.add_argument("--no-schema", action="store_true", help="only the project's own rules")
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    problems = []
    for path in args.files:
        try:
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        except (OSError, yaml.YAMLError) as e:
            problems.append(f"{path}: {e}")
            continue
        if not args.no_schema:
            problems.extend(schema_problems(str(path), docs, args.kubernetes_version))
        checker = Checker()
        checker.check_documents(str(path), docs)
        problems.extend(checker.problems)
    for p in problems:
        print(p)
    if not problems:
        print(f"ok: {len(args.files)} file(s), Kubernetes {args.kubernetes_version} schemas and the project's rules")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
