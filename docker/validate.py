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

- docker/kubernetes-monitoring.yaml and deploy/monitoring/prometheusrule.yaml: the Prometheus
  operator's kinds (PodMonitor, ServiceMonitor, PrometheusRule), whose schemas are not among
  Kubernetes' own and are not fetched: only the fields of the operator's API they may use, their
  metadata as Kubernetes metadata, and what they point at: a monitor's selector must select a
  pod (or Service) of these manifests that has the named port; the rule's groups must be those
  of deploy/monitoring/rules.yaml.

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


OPERATOR = "monitoring.coreos.com/v1"
# The fields of the operator's API (monitoring.coreos.com/v1) these manifests may use.
MONITOR_FIELDS = {
    "PodMonitor": ("podMetricsEndpoints", {"selector", "podMetricsEndpoints", "namespaceSelector", "jobLabel", "podTargetLabels"}),
    "ServiceMonitor": ("endpoints", {"selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels", "podTargetLabels"}),
}
ENDPOINT_FIELDS = {"port", "path", "interval", "scrapeTimeout", "scheme", "relabelings", "metricRelabelings", "honorLabels"}
RELABEL_FIELDS = {"sourceLabels", "targetLabel", "regex", "replacement", "action", "separator"}
RULES = os.path.join(HERE, "..", "deploy", "monitoring", "rules.yaml")


def all_documents():
    docs = []
    for path in sorted(glob.glob(os.path.join(HERE, "kubernetes*.yaml"))):
        with open(path) as f:
            docs += [d for d in yaml.safe_load_all(f) if d]
    return docs


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def metadata_problems(doc, where):
    """The metadata of a custom resource, checked as a ConfigMap's (the same ObjectMeta)."""
    holder = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc.get("metadata", {})}
    return validate(holder, f"{where}: metadata")


def check_operator_kind(doc, where):
    kind = doc.get("kind")
    problems = metadata_problems(doc, where)
    if doc.get("apiVersion") != OPERATOR:
        problems.append(f"{where}: apiVersion {doc.get('apiVersion')}, not {OPERATOR}")
    unknown = set(doc) - {"apiVersion", "kind", "metadata", "spec"}
    if unknown:
        problems.append(f"{where}: unknown top-level fields {sorted(unknown)}")
    spec = doc.get("spec") or {}
    if kind == "PrometheusRule":
        with open(RULES) as f:
            if spec.get("groups") != yaml.safe_load(f).get("groups"):
                problems.append(f"{where}: its groups differ from deploy/monitoring/rules.yaml; copy them over")
        return problems
    if kind not in MONITOR_FIELDS:
        return problems + [f"{where}: {kind} is not a kind this check knows"]
    list_field, fields = MONITOR_FIELDS[kind]
    if set(spec) - fields:
        problems.append(f"{where}: unknown spec fields {sorted(set(spec) - fields)}")
    docs = all_documents()
    if kind == "PodMonitor":
        targets = [
            (d["metadata"]["name"], t["metadata"].get("labels") or {}, [p.get("name") for c in t["spec"].get("initContainers", []) + t["spec"].get("containers", []) for p in c.get("ports", [])])
            for d in docs
            for t in [d.get("spec", {}).get("template")]
            if t
        ]
    else:
        targets = [
            (d["metadata"]["name"], d["metadata"].get("labels") or {}, [p.get("name") for p in d["spec"].get("ports", [])])
            for d in docs
            if d.get("kind") == "Service"
        ]
    chosen = [t for t in targets if selects(spec.get("selector") or {}, t[1])]
    if not chosen:
        problems.append(f"{where}: its selector {spec.get('selector')} selects nothing in docker/kubernetes*.yaml")
    for endpoint in spec.get(list_field) or []:
        if set(endpoint) - ENDPOINT_FIELDS:
            problems.append(f"{where}: unknown endpoint fields {sorted(set(endpoint) - ENDPOINT_FIELDS)}")
        for relabel in endpoint.get("relabelings", []) + endpoint.get("metricRelabelings", []):
            if set(relabel) - RELABEL_FIELDS:
                problems.append(f"{where}: unknown relabeling fields {sorted(set(relabel) - RELABEL_FIELDS)}")
        if endpoint.get("path", "/metrics") != "/metrics":
            problems.append(f"{where}: dagsnap serves its metrics at /metrics, not {endpoint.get('path')}")
        for name, _, ports in chosen:
            if endpoint.get("port") not in ports:
                problems.append(f"{where}: {name} has no port named {endpoint.get('port')} (it has {ports})")
    return problems


def check_manifest(path):
    problems = []
    with open(path) as f:
        for i, doc in enumerate(yaml.safe_load_all(f)):
            if not doc:
                continue
            where = f"{os.path.relpath(path)} document {i + 1} ({doc.get('kind')})"
            if str(doc.get("apiVersion", "")).startswith("monitoring.coreos.com/"):
                problems += check_operator_kind(doc, where)
                continue
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


BUNDLE_KWARGS = {"root", "link", "subdir", "lease_seconds", "token_file", "materialize_timeout"}


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
    ) + [os.path.join(HERE, "..", "deploy", "monitoring", "prometheusrule.yaml")]
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
