#!/usr/bin/env python3
"""Tests of render.py and check.py: each rule is shown to catch what it is for.

    python3 -m unittest deploy/kubernetes/test_manifests.py   (scripts/validate-manifests.sh runs it)
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
import tempfile
import textwrap
import unittest
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import check  # noqa: E402
import render  # noqa: E402


def problems_of(docs: list[dict]) -> list[str]:
    checker = check.Checker()
    checker.check_documents("test", docs)
    return checker.problems


def rendered(example: str) -> list[dict]:
    return render.render(HERE / "examples" / example)


def workload(docs: list[dict], kind: str = "Deployment") -> dict:
    return next(d for d in docs if d["kind"] == kind)


def pod(docs: list[dict], kind: str = "Deployment") -> dict:
    return check.pod_spec_of(workload(docs, kind))


def container(docs: list[dict], name: str, kind: str = "Deployment") -> dict:
    spec = pod(docs, kind)
    return next(c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == name)


class RendererTest(unittest.TestCase):
    def write(self, root: Path, files: dict[str, str]) -> None:
        for rel, text in files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text))

    def test_keyed_lists_merge_in_kustomize_order_and_delete(self):
        original = [{"name": "a", "image": "x"}, {"name": "b"}, {"name": "c"}]
        patch = [{"name": "c", "env": [{"name": "E", "value": "1"}]}, {"name": "x"}, {"name": "b", "$patch": "delete"}]
        merged = render.merge_list("containers", original, patch)
        self.assertEqual([c["name"] for c in merged], ["c", "x", "a"])
        self.assertEqual(merged[0]["env"], [{"name": "E", "value": "1"}])

    def test_plain_lists_are_replaced_and_null_deletes(self):
        merged = render.merge({"args": ["a", "b"], "keep": 1, "drop": 2}, {"args": ["c"], "drop": None})
        self.assertEqual(merged, {"args": ["c"], "keep": 1})

    def test_service_ports_merge_by_port(self):
        merged = render.merge_list("ports", [{"name": "http", "port": 8080}], [{"name": "mtls", "port": 15443}, {"port": 8080, "$patch": "delete"}])
        self.assertEqual(merged, [{"name": "mtls", "port": 15443}])

    def test_targets_are_anchored_and_filter_labels(self):
        doc = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x", "labels": {"a": "1"}}}
        self.assertTrue(render.matches({"kind": "Deployment|Job"}, doc, "t"))
        self.assertFalse(render.matches({"kind": "Deploy"}, doc, "t"))
        self.assertTrue(render.matches({"kind": "Deployment", "labelSelector": "a=1"}, doc, "t"))
        self.assertFalse(render.matches({"kind": "Deployment", "labelSelector": "a=2"}, doc, "t"))
        with self.assertRaises(render.RenderError):
            render.matches({"annotationSelector": "x"}, doc, "t")

    def test_unknown_fields_and_outside_files_are_refused(self):
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            self.write(root, {"k/kustomization.yaml": "resources: []\nnamePrefix: x-\n"})
            with self.assertRaisesRegex(render.RenderError, "namePrefix"):
                render.render(root / "k")
            self.write(root, {
                "secret.txt": "s",
                "g/kustomization.yaml": """
                    generatorOptions: {disableNameSuffixHash: true}
                    configMapGenerator: [{name: c, files: [../secret.txt]}]
                """,
            })
            with self.assertRaisesRegex(render.RenderError, "outside"):
                render.render(root / "g")

    def test_components_patch_the_parents_resources(self):
        docs = rendered("all")
        spec = pod(docs)
        self.assertEqual({c["name"] for c in spec["initContainers"]}, {"ambassador", "xml-adapter", "git-sync"})
        self.assertTrue(all(c["restartPolicy"] == "Always" for c in spec["initContainers"]))
        app = container(docs, "app")
        self.assertIn({"name": "git", "mountPath": "/git", "readOnly": True}, app["volumeMounts"])
        service = next(d for d in docs if d["kind"] == "Service")
        self.assertEqual([p["port"] for p in service["spec"]["ports"]], [15443])

    def test_classic_variant_runs_sidecars_as_containers(self):
        spec = pod(rendered("all-classic"))
        self.assertEqual([c["name"] for c in spec["initContainers"]], ["git-sync-once"])
        self.assertEqual({c["name"] for c in spec["containers"]}, {"app", "ambassador", "xml-adapter", "git-sync"})

    def test_rendered_files_are_up_to_date(self):
        for path, text in render.rendered_files().items():
            self.assertTrue(path.is_file(), f"{path} missing: run render.py --write-rendered")
            self.assertEqual(path.read_text(), text, f"{path} is stale: run render.py --write-rendered")

    @unittest.skipUnless(shutil.which("kubectl"), "kubectl is not installed: the renderer is not compared with kustomize")
    def test_same_objects_as_kubectl_kustomize(self):
        for example in sorted((HERE / "examples").iterdir()):
            out = subprocess.run(["kubectl", "kustomize", str(example)], capture_output=True, text=True, check=True).stdout
            theirs = [d for d in yaml.safe_load_all(out) if d]
            mine = render.render(example)
            key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
            self.assertEqual([key(d) for d in mine], [key(d) for d in theirs], example.name)
            self.assertEqual(mine, theirs, example.name)


class CheckerTest(unittest.TestCase):
    def assert_problem(self, docs, fragment):
        problems = problems_of(docs)
        self.assertTrue(any(fragment in p for p in problems), f"expected a problem with {fragment!r}, got {problems}")

    def test_every_example_passes(self):
        for example in sorted((HERE / "examples").iterdir()):
            self.assertEqual(problems_of(render.render(example)), [], example.name)

    def test_security_context_rules(self):
        cases = [
            (lambda c: c["securityContext"].pop("allowPrivilegeEscalation"), "allowPrivilegeEscalation"),
            (lambda c: c["securityContext"].update(readOnlyRootFilesystem=False), "readOnlyRootFilesystem"),
            (lambda c: c["securityContext"]["capabilities"].update(drop=["NET_RAW"]), "drop ALL"),
            (lambda c: c["securityContext"]["capabilities"].update(add=["NET_ADMIN"]), "add none"),
            (lambda c: c["securityContext"].update(runAsUser=0), "runAsUser"),
            (lambda c: c["securityContext"].update(seccompProfile={"type": "Unconfined"}), "RuntimeDefault"),
            (lambda c: c["resources"].pop("limits"), "resources.limits.memory"),
            (lambda c: c.update(image="ghcr.io/sidecars/ambassador:latest"), "version tag"),
        ]
        for mutate, fragment in cases:
            docs = copy.deepcopy(rendered("all"))
            mutate(container(docs, "ambassador"))
            self.assert_problem(docs, fragment)

    def test_pod_level_rules(self):
        docs = rendered("all")
        # The pod's setting counts where a container does not set its own.
        pod(docs)["securityContext"]["runAsNonRoot"] = False
        container(docs, "ambassador")["securityContext"].pop("runAsNonRoot")
        self.assert_problem(docs, "initContainer ambassador: runAsNonRoot")
        docs = rendered("all")
        pod(docs)["hostNetwork"] = True
        self.assert_problem(docs, "hostNetwork")
        docs = rendered("all")
        pod(docs)["automountServiceAccountToken"] = True
        self.assert_problem(docs, "automountServiceAccountToken")

    def test_probe_rules(self):
        docs = rendered("all")
        container(docs, "git-sync").pop("startupProbe")
        self.assert_problem(docs, "startupProbe on /readyz")
        docs = rendered("all-classic")
        container(docs, "xml-adapter")["livenessProbe"]["httpGet"]["path"] = "/metrics"
        self.assert_problem(docs, "livenessProbe on /livez")
        docs = rendered("all-classic")
        container(docs, "git-sync-once")["readinessProbe"] = {"httpGet": {"path": "/readyz", "port": 9903}}
        self.assert_problem(docs, "plain init container")
        docs = rendered("all")
        container(docs, "app").pop("livenessProbe")
        self.assert_problem(docs, "long-running container")

    def test_volume_rules(self):
        docs = rendered("all")
        container(docs, "ambassador")["volumeMounts"][0]["subPath"] = "tls.crt"
        self.assert_problem(docs, "subPath")
        docs = [d for d in rendered("all") if d["kind"] != "ConfigMap" or d["metadata"]["name"] != "xml-adapter-mapping"]
        self.assert_problem(docs, "ConfigMap xml-adapter-mapping")
        docs = rendered("all")
        container(docs, "app")["volumeMounts"].append({"name": "nope", "mountPath": "/x"})
        self.assert_problem(docs, "names no volume")
        docs = rendered("all") + [{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "k"}, "data": {"tls.key": "eA=="}}]
        self.assert_problem(docs, "Secret with data")

    def test_classic_job_must_stop_its_sidecars(self):
        docs = rendered("job-classic")
        self.assertEqual(problems_of(docs), [])
        app = container(docs, "app", kind="Job")
        app["args"] = [a for a in app["args"] if "shutdown" not in a]
        self.assert_problem(docs, "never completes")


class SecretsAgentTest(unittest.TestCase):
    def test_native_sidecar_renders_into_a_read_only_memory_volume(self):
        docs = rendered("secrets-agent")
        agent = container(docs, "secrets-agent")
        self.assertEqual(agent["restartPolicy"], "Always")
        self.assertIn("--output-dir=/secrets", agent["args"])
        app = container(docs, "app")
        self.assertIn({"name": "secrets", "mountPath": "/secrets", "readOnly": True}, app["volumeMounts"])
        volumes = {v["name"]: v for v in pod(docs)["volumes"]}
        self.assertEqual(volumes["secrets"]["emptyDir"]["medium"], "Memory")
        token = volumes["openbao-token"]["projected"]["sources"][0]["serviceAccountToken"]
        self.assertEqual(token["audience"], "openbao")
        self.assertIn("secrets-agent-config", {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"})

    def test_one_time_variant_is_a_plain_init_container(self):
        docs = rendered("secrets-agent-once")
        agent = container(docs, "secrets-agent-once")
        self.assertNotIn("restartPolicy", agent)
        self.assertIn("--one-time", agent["args"])
        self.assertEqual(problems_of(docs), [])
        agent["readinessProbe"] = {"httpGet": {"path": "/readyz", "port": 9905}}
        self.assertTrue(any("plain init container" in p for p in problems_of(docs)))


    def test_the_ambassador_reads_its_certificate_from_the_agent(self):
        docs = rendered("ambassador-secrets-agent")
        names = [c["name"] for c in pod(docs)["initContainers"]]
        # The agent's startupProbe gates the ambassador, which needs the files at start.
        self.assertEqual(names, ["secrets-agent", "ambassador"])
        ambassador = container(docs, "ambassador")
        self.assertIn({"name": "secrets", "mountPath": "/etc/ambassador/tls", "readOnly": True}, ambassador["volumeMounts"])
        self.assertNotIn("ambassador-tls", {v["name"] for v in pod(docs)["volumes"]})
        # The files the agent writes are the ones the ambassador's config names.
        agent_config = yaml.safe_load(next(d for d in docs if d["metadata"]["name"] == "secrets-agent-config")["data"]["secrets-agent.yaml"])
        written = {f["path"] for f in agent_config["files"]}
        routes = yaml.safe_load(next(d for d in docs if d["metadata"]["name"] == "ambassador-config")["data"]["ambassador.yaml"])
        for path in routes["tls"].values():
            self.assertTrue(path.startswith("/etc/ambassador/tls/"), path)
            self.assertIn(path.removeprefix("/etc/ambassador/tls/"), written)
        self.assertEqual(problems_of(docs), [])


class SchemaTest(unittest.TestCase):
    def test_schema_catches_unknown_and_mistyped_fields(self):
        docs = rendered("all")
        self.assertEqual(check.schema_problems("t", docs, "1.33.0"), [])
        bad = copy.deepcopy(docs)
        container(bad, "ambassador")["restartPolicyy"] = "Always"
        self.assertTrue(any("restartPolicyy" in p for p in check.schema_problems("t", bad, "1.33.0")))
        bad = copy.deepcopy(docs)
        container(bad, "ambassador")["ports"][0]["containerPort"] = "15443"
        self.assertTrue(check.schema_problems("t", bad, "1.33.0"))


if __name__ == "__main__":
    unittest.main()


class LogShipperTest(unittest.TestCase):
    def test_native_sidecar_reads_the_apps_log_volume_read_only(self):
        docs = rendered("log-shipper")
        shipper = container(docs, "log-shipper")
        self.assertEqual(shipper["restartPolicy"], "Always")
        self.assertIn({"name": "app-logs", "mountPath": "/var/log/app", "readOnly": True}, shipper["volumeMounts"])
        self.assertIn({"name": "log-shipper-state", "mountPath": "/var/lib/log-shipper"}, shipper["volumeMounts"])
        self.assertIn("--state-dir=/var/lib/log-shipper", shipper["args"])
        # The fields the shipped config enriches each line with come from the Downward API.
        env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in shipper["env"]}
        self.assertEqual(env, {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace", "NODE_NAME": "spec.nodeName"})
        config = yaml.safe_load(next(d for d in docs if d["metadata"]["name"] == "log-shipper-config")["data"]["log-shipper.yaml"])
        self.assertEqual(set(config["pipelines"]["app"]["fields"]["env"].values()), set(env))
        self.assertEqual(config["inputs"]["app"]["include"], ["/var/log/app/*.log*"])
        app = container(docs, "app")
        self.assertIn({"name": "app-logs", "mountPath": "/var/log/app"}, app["volumeMounts"])
        self.assertIn({"name": "DEMO_APP_ACCESS_LOG", "value": "/var/log/app/access.log"}, app["env"])
        self.assertEqual(problems_of(docs), [])
