#!/usr/bin/env python3
"""Checks the deployment files offline, and against the code (run by .ci/run after the tests).

1. Every Kustomize overlay renders (`kubectl kustomize`) and validates against the Kubernetes
   schemas (`kubernetes-validate --strict`); the KEDA example is not validated (its CRD schema is
   not shipped with the validator), only parsed.
2. deploy/compose.yaml validates against the Compose specification's schema (deploy/schema/).
3. The manifests against the code, what drifts in real projects:
   - every role `scalelab serve` knows has a Deployment and a Compose service (but the Casitas
     preset's units/finances/legal, which the deployments do not run);
   - every container runs `scalelab serve <its role>` with flags `serve` accepts;
   - every container port and Service port is the role's port in the topology the pods mount;
   - every probe path answers (200 or 503, never 404) on a real instance of its role, started by
     `scalelab up --free-ports`;
   - the topologies the pods mount pass `scalelab config --check`.

Usage: deploy/check.py [path to the scalelab binary]   (default: target/debug/scalelab)
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request

import jsonschema
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target/debug/scalelab"))
PRESET_ROLES = {"units", "finances", "legal"}
problems = []


def problem(text):
    problems.append(text)
    print("  PROBLEM:", text)


def run(*args, env=None, check=True):
    out = subprocess.run(args, capture_output=True, text=True, env=env)
    if check and out.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return out


def serve_roles_and_flags():
    """The roles and flags `scalelab serve --help` lists."""
    text = run(BIN, "serve", "--help").stdout
    roles = set(re.findall(r"^\s+- (\w+):", text, re.M))
    if not roles:
        raise SystemExit(f"no roles found in scalelab serve --help:\n{text}")
    flags = set(re.findall(r"(--[a-z-]+)", text))
    return roles, flags


print("1. Kustomize overlays render and validate")
rendered = {}
for overlay in sorted(os.listdir(os.path.join(ROOT, "deploy/k8s/overlays"))):
    path = os.path.join(ROOT, "deploy/k8s/overlays", overlay)
    text = run("kubectl", "kustomize", path).stdout
    docs = [d for d in yaml.safe_load_all(text) if d]
    rendered[overlay] = docs
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(text)
    out = run("kubernetes-validate", "--strict", "--quiet", f.name, check=False)
    os.unlink(f.name)
    if out.returncode != 0:
        problem(f"overlay {overlay} does not validate:\n{out.stdout}{out.stderr}")
    print(f"  {overlay}: {len(docs)} objects, {'valid' if out.returncode == 0 else 'INVALID'}")
keda = list(yaml.safe_load_all(open(os.path.join(ROOT, "deploy/k8s/keda/worker-scaledobject.yaml"))))
print(f"  keda example: {len(keda)} objects parsed (not schema-checked: CRDs)")

print("2. Compose file validates against the Compose specification")
schema = json.load(open(os.path.join(ROOT, "deploy/schema/compose-spec.json")))
compose = yaml.safe_load(open(os.path.join(ROOT, "deploy/compose.yaml")))
try:
    jsonschema.validate(compose, schema)
    print(f"  valid: {len(compose['services'])} services")
except jsonschema.ValidationError as e:
    problem(f"deploy/compose.yaml: {e.message} at {list(e.path)}")

print("3. The manifests against the code")
roles, flags = serve_roles_and_flags()
deployed = roles - PRESET_ROLES
topologies = {
    "k8s": tomllib.load(open(os.path.join(ROOT, "deploy/k8s/base/topology.toml"), "rb")),
    "compose": tomllib.load(open(os.path.join(ROOT, "deploy/compose.toml"), "rb")),
}
env = dict(os.environ, SCALELAB_REDIS_URL="redis://:x@redis:6379")
for name, path in [("k8s", "deploy/k8s/base/topology.toml"), ("compose", "deploy/compose.toml")]:
    out = run(BIN, "config", "--check", os.path.join(ROOT, path), env=env, check=False)
    if out.returncode != 0:
        problem(f"{path} does not pass config --check:\n{out.stderr}")
    else:
        print(f"  {path}: {out.stdout.strip()}")

probes = {}
for overlay, docs in rendered.items():
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    missing = deployed - set(deployments)
    if missing:
        problem(f"{overlay}: no Deployment for {sorted(missing)}")
    for role, d in deployments.items():
        c = d["spec"]["template"]["spec"]["containers"][0]
        args = c.get("args", [])
        if args[:2] != ["serve", role]:
            problem(f"{overlay}: {role} runs {args[:2]}, not serve {role}")
        for a in args:
            if a.startswith("--") and a not in flags:
                problem(f"{overlay}: {role} passes {a}, which serve does not take")
        port = c["ports"][0]["containerPort"]
        want = topologies["k8s"]["instances"].get(role, [None])[0]
        if port != want:
            problem(f"{overlay}: {role} listens on {port}, the topology says {want}")
        svc = services.get(role)
        if svc is None or svc["spec"]["ports"][0]["port"] != port:
            problem(f"{overlay}: the Service of {role} does not expose {port}")
        for kind in ("readinessProbe", "livenessProbe"):
            probes.setdefault(role, set()).add(c[kind]["httpGet"]["path"])
for role in deployed:
    svc = compose["services"].get(role)
    if svc is None:
        problem(f"compose: no service for {role}")
        continue
    entry = " ".join(svc.get("entrypoint", []))
    if f"scalelab serve {role} " not in entry:
        problem(f"compose: {role} does not run scalelab serve {role}: {entry}")
    test = " ".join(svc["healthcheck"]["test"])
    port = topologies["compose"]["instances"][role][0]
    if f":{port}/" not in test:
        problem(f"compose: {role}'s healthcheck does not probe its port {port}: {test}")

# Every probe path on a real instance of its role.
with tempfile.TemporaryDirectory() as data:
    up = subprocess.Popen(
        [BIN, "up", "--free-ports", "--data-dir", data],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, SCALELAB_ADMIN_PASSWORD="deploy-check-password"),
    )
    try:
        instances = None
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                instances = json.load(open(os.path.join(data, "instances.json")))
                break
            except (OSError, ValueError):
                time.sleep(0.2)
        if instances is None:
            raise SystemExit("scalelab up did not start")
        for role, paths in sorted(probes.items()):
            url = next(i["url"] for i in instances if i["role"] == role)
            for path in sorted(paths):
                try:
                    status = urllib.request.urlopen(url + path, timeout=5).status
                except urllib.error.HTTPError as e:
                    status = e.code
                ok = status in (200, 503)
                print(f"  {role} {path}: {status}")
                if not ok:
                    problem(f"{role}'s probe {path} answers {status}")
    finally:
        up.terminate()
        up.wait(timeout=60)

if problems:
    print(f"{len(problems)} problem(s)")
    sys.exit(1)
print("deploy: every manifest renders, validates and matches the code")
