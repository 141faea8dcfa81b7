#!/usr/bin/env python3
"""Check the Kubernetes manifest and the Airflow chart values under docker/ against the
Kubernetes API schemas, offline (kubernetes-validate ships the schemas; nothing is fetched).

- docker/kubernetes*.yaml: every document, strictly (unknown fields are errors), for the oldest
  Kubernetes with native sidecars (1.29) and the newest the validator knows.
- docker/airflow-values-*.yaml: against the Airflow chart's own values schema
  (docker/airflow-chart/values.schema.json, as `helm install` checks them); then, since the chart
  renders these into pods, each pod-shaped part (the containers, init containers, volumes and
  probes the values hand to the chart) is wrapped into a Pod the way the chart places it and
  validated against the Kubernetes schemas too (Airflow's own container with the component's
  extraVolumeMounts). Volume mounts must name a volume the pod has (the chart adds `dags`).

- A DagsnapBundle configuration (the chart's config, or a container's environment): valid JSON,
  kwargs the bundle takes, its root and token file on volumes Airflow's container mounts.

Usage: docker/validate.py [FILES...]   (default: the files above)
"""

import copy
import glob
import os
import sys

import json

import jsonschema
import kubernetes_validate
import yaml

VERSIONS = ["1.29.0", None]  # None: the validator's newest
HERE = os.path.dirname(os.path.abspath(__file__))
# The chart's own volumes that values may mount.
CHART_SCHEMA = os.path.join(HERE, "airflow-chart", "values.schema.json")
CHART_VOLUMES = [{"name": "dags", "emptyDir": {}}, {"name": "config", "emptyDir": {}}]
COMPONENTS = ["scheduler", "dagProcessor", "workers", "triggerer", "webserver", "apiServer"]


def validate(doc, where):
    problems = []
    for version in VERSIONS:
        version = version or kubernetes_validate.utils.latest_version()
        try:
            kubernetes_validate.validate(copy.deepcopy(doc), version, strict=True)
        except kubernetes_validate.utils.ValidationError as e:
            path = "/".join(str(p) for p in e.path)
            problems.append(f"{where} (Kubernetes {version}): {path}: {e.message}")
        except kubernetes_validate.utils.InvalidSchemaError as e:
            problems.append(f"{where}: no schema ({e})")
    return problems


def mounts_resolve(spec, where):
    names = {v["name"] for v in spec.get("volumes", [])}
    problems = []
    for kind in ("initContainers", "containers"):
        for container in spec.get(kind, []):
            for mount in container.get("volumeMounts", []):
                if mount["name"] not in names:
                    problems.append(f"{where}: {container['name']} mounts '{mount['name']}', which the pod does not have")
    return problems


def pod(name, spec):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def check_manifest(path):
    problems = []
    with open(path) as f:
        for i, doc in enumerate(yaml.safe_load_all(f)):
            if not doc:
                continue
            where = f"{os.path.relpath(path)} document {i + 1} ({doc.get('kind')})"
            problems += validate(doc, where)
            template = doc.get("spec", {}).get("template", {}).get("spec")
            if template:
                problems += mounts_resolve(template, where)
                for container in template.get("containers", []):
                    for env in container.get("env", []):
                        if env.get("name") == "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST":
                            problems += bundle_problems(env["value"], where, container.get("volumeMounts", []))
    return problems


def chart_schema_problems(values, rel):
    with open(CHART_SCHEMA) as f:
        schema = json.load(f)
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{rel} (the chart's values schema): {'/'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message}"
        for e in sorted(validator.iter_errors(values), key=lambda e: list(e.absolute_path))
    ]


BUNDLE_KWARGS = {"root", "link", "lease_seconds", "token_file", "materialize_timeout"}


def bundle_problems(config_list, where, mounts):
    """A dag_bundle_config_list naming DagsnapBundle: valid JSON, kwargs the bundle takes, and
    its root and token file on volumes Airflow's container mounts (when `mounts` is given)."""
    try:
        bundles = json.loads(config_list)
    except ValueError as e:
        return [f"{where}: dag_bundle_config_list is not JSON: {e}"]
    problems = []
    for bundle in bundles:
        if bundle.get("classpath") != "dagsnap_airflow.DagsnapBundle":
            continue
        kwargs = bundle.get("kwargs") or {}
        unknown = set(kwargs) - BUNDLE_KWARGS
        if unknown or "root" not in kwargs:
            problems.append(f"{where}: DagsnapBundle kwargs {sorted(kwargs)}: needs root, takes {sorted(BUNDLE_KWARGS)}")
        for key in ("root", "token_file"):
            path = kwargs.get(key)
            if mounts is not None and path and not any(path.startswith(m["mountPath"]) for m in mounts):
                problems.append(f"{where}: the bundle's {key} {path} is on no volume Airflow's container mounts")
    return problems


def check_values(path):
    with open(path) as f:
        values = yaml.safe_load(f)
    rel = os.path.relpath(path)
    problems = chart_schema_problems(values, rel)
    for component in COMPONENTS:
        part = values.get(component) or {}
        if not any(k in part for k in ("extraInitContainers", "extraContainers", "extraVolumes")):
            continue
        main = {"name": "airflow", "image": "apache/airflow:3.0.6"}
        if part.get("extraVolumeMounts"):
            main["volumeMounts"] = part["extraVolumeMounts"]
        spec = {
            "initContainers": part.get("extraInitContainers", []),
            "containers": [main] + part.get("extraContainers", []),
            "volumes": CHART_VOLUMES + part.get("extraVolumes", []),
        }
        where = f"{rel}: {component}"
        problems += validate(pod(component, spec), where)
        problems += mounts_resolve(spec, where)
    config_list = ((values.get("config") or {}).get("dag_processor") or {}).get("dag_bundle_config_list")
    if config_list:
        for component in COMPONENTS:
            part = values.get(component) or {}
            if "extraVolumeMounts" in part:
                problems += bundle_problems(config_list, f"{rel}: {component}", part["extraVolumeMounts"])
    git_sync = (values.get("dags") or {}).get("gitSync") or {}
    if git_sync:
        container = {"name": "git-sync", "image": "dagsnap"}
        for key in ("env", "livenessProbe", "readinessProbe", "resources"):
            if key in git_sync:
                container[key] = git_sync[key]
        problems += validate(pod("git-sync", {"containers": [container]}), f"{rel}: dags.gitSync")
    if not problems and not any(c in values for c in COMPONENTS) and not git_sync:
        problems.append(f"{rel}: nothing to check (no component or dags.gitSync)")
    return problems


def main():
    files = sys.argv[1:] or sorted(glob.glob(os.path.join(HERE, "kubernetes*.yaml"))) + sorted(
        glob.glob(os.path.join(HERE, "airflow-values-*.yaml"))
    )
    problems = []
    for path in files:
        found = check_values(path) if "values" in os.path.basename(path) else check_manifest(path)
        problems += found
        print(f"{'ok' if not found else 'FAIL'} - {os.path.relpath(path)}")
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
