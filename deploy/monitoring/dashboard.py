"""The Grafana dashboard for dagsnap, as code: `python3 deploy/monitoring/dashboard.py >
deploy/monitoring/dashboard.json` (a story checks the two agree, that every query parses, and
that it names only metrics dagsnap exports). Plain Python, no dependency: each panel is one
call, in reading order."""

import json
sel = 'job=~"$job", pod=~"$pod"'
panels = []
y = 0
pid = 0
def row(title):
    global y, pid
    pid += 1
    panels.append({"type": "row", "title": title, "id": pid, "collapsed": False,
                   "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
    y += 1
x = 0
def panel(kind, title, targets, w=8, h=7, unit=None, desc="", extra=None):
    global x, y, pid
    if x + w > 24:
        x = 0; y += h
    pid += 1
    p = {"type": kind, "title": title, "id": pid, "description": desc,
         "datasource": {"type": "prometheus", "uid": "${datasource}"},
         "gridPos": {"h": h, "w": w, "x": x, "y": y},
         "targets": [{"refId": chr(65 + i), "expr": e, "legendFormat": l,
                      "datasource": {"type": "prometheus", "uid": "${datasource}"}}
                     for i, (e, l) in enumerate(targets)],
         "fieldConfig": {"defaults": {}, "overrides": []}, "options": {}}
    if unit:
        p["fieldConfig"]["defaults"]["unit"] = unit
    if extra:
        p.update(extra)
    panels.append(p)
    x += w
def newrow(title):
    global x, y
    if x:
        y += 7
    x = 0
    row(title)

row("What readers see")
panel("stat", "Live commit", [(f'max by (commit) (dagsnap_live_commit_info{{{sel}}})', "{{commit}}")], w=6, h=4,
      desc="The commit (or set of sources) the link points at; several values: publishers disagree for a moment, or a pod stands back.",
      extra={"options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "/^commit$/", "values": False}, "textMode": "name"}})
panel("stat", "Age of the live commit", [(f'time() - max(dagsnap_live_commit_timestamp_seconds{{{sel}}})', "")], w=4, h=4, unit="s",
      desc="Since the live commit (the newest source's, for several sources) was committed: old DAGs, or a quiet repository.")
panel("stat", "Since the last successful sync", [(f'time() - max(dagsnap_last_success_timestamp_seconds{{{sel}}})', "")], w=4, h=4, unit="s",
      desc="Age of the newest confirmation that the link shows what the remote has (DagsnapDagsStale pages when it grows).")
panel("stat", "Failures in a row (worst pod)", [(f'max(dagsnap_consecutive_failures{{{sel}}})', "")], w=2, h=4)
panel("stat", "Not ready", [(f'count(dagsnap_ready{{{sel}}} == 0) or vector(0)', "")], w=2, h=4,
      desc="Pods whose /readyz fails.")
panel("stat", "Lock fault", [(f'max(dagsnap_lock_fault{{{sel}}})', "")], w=2, h=4,
      desc="1: locks on the volume do not reach another publisher; the link is frozen (DagsnapLocksBroken).")
panel("stat", "Pinned", [(f'max(dagsnap_pinned{{{sel}}})', "")], w=2, h=4)
panel("stat", "Standing back", [(f'max(dagsnap_standing_back{{{sel}}})', "")], w=2, h=4)
newrow("Syncs")
panel("timeseries", "Syncs by result", [(f'sum by (result) (rate(dagsnap_syncs_total{{{sel}}}[$__rate_interval]))', "{{result}}")], unit="ops")
panel("timeseries", "Phase duration (p90)", [(f'histogram_quantile(0.9, sum by (phase, le) (rate(dagsnap_cycle_phase_seconds_bucket{{{sel}}}[$__rate_interval])))', "{{phase}}")], unit="s")
panel("timeseries", "Lock wait (p90) and faults", [
    (f'histogram_quantile(0.9, sum by (le) (rate(dagsnap_lock_wait_seconds_bucket{{{sel}}}[$__rate_interval])))', "lock wait p90"),
    (f'max(dagsnap_lock_fault{{{sel}}})', "lock fault")], unit="s")
panel("timeseries", "Fetches (git-sync's count)", [(f'sum(rate(git_fetch_count_total{{{sel}}}[$__rate_interval]))', "fetches")], unit="ops")
panel("timeseries", "Sources: failures in a row", [(f'max by (source) (dagsnap_source_consecutive_failures{{{sel}}})', "{{source}}")],
      desc="With several sources (--source): a failing source holds every source back.")
panel("timeseries", "Versions asked for by readers", [(f'sum by (result) (rate(dagsnap_versions_total{{{sel}}}[$__rate_interval]))', "{{result}}")], unit="ops")
newrow("Builds and the volume")
panel("timeseries", "Last build", [
    (f'max(dagsnap_last_build_files{{{sel}}})', "files"),
    (f'max(dagsnap_last_build_reused_files{{{sel}}})', "shared with the previous snapshot")])
panel("timeseries", "Last build size", [(f'max(dagsnap_last_build_bytes{{{sel}}})', "bytes")], unit="bytes")
panel("timeseries", "Retention and free space", [
    (f'max(dagsnap_retained_snapshots{{{sel}}})', "snapshots kept"),
    (f'max(dagsnap_retention_keep{{{sel}}})', "--keep"),
    (f'min(dagsnap_root_available_bytes{{{sel}}} / dagsnap_root_size_bytes{{{sel}}}) * 100', "% of the volume free")])
newrow("Gate, signatures, hooks")
panel("timeseries", "Check verdicts", [(f'sum by (result) (increase(dagsnap_check_total{{{sel}}}[$__rate_interval]))', "{{result}}")])
panel("timeseries", "Signature refusals", [(f'sum by (reason) (increase(dagsnap_signature_refusals_total{{{sel}}}[$__rate_interval]))', "{{reason}}")])
panel("timeseries", "Hook runs", [(f'sum by (hook, result) (increase(dagsnap_hook_runs_total{{{sel}}}[$__rate_interval]))', "{{hook}} {{result}}")])
newrow("Per publisher")
panel("table", "Publishers", [
    (f'max by (pod) (time() - dagsnap_last_success_timestamp_seconds{{{sel}}})', "since success"),
    (f'max by (pod) (dagsnap_consecutive_failures{{{sel}}})', "failures"),
    (f'max by (pod) (dagsnap_ready{{{sel}}})', "ready"),
    (f'max by (pod) (dagsnap_period_seconds{{{sel}}})', "period")], w=24, h=8,
      desc="One row per pod with a dagsnap sidecar (the `pod` label from the PodMonitor's relabeling).",
      extra={"transformations": [{"id": "merge", "options": {}}]})
for p in panels[-1]["targets"]:
    p["format"] = "table"; p["instant"] = True

dash = {
    "title": "dagsnap",
    "uid": "dagsnap",
    "description": "DAG snapshots published by dagsnap: what readers see, syncs, builds, the gate, per publisher. docs/operations.md, \"Monitoring\".",
    "tags": ["dagsnap", "airflow"],
    "timezone": "browser",
    "schemaVersion": 39,
    "version": 1,
    "refresh": "30s",
    "time": {"from": "now-6h", "to": "now"},
    "editable": True,
    "templating": {"list": [
        {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source"},
        {"name": "job", "type": "query", "label": "Job", "datasource": {"type": "prometheus", "uid": "${datasource}"},
         "query": {"query": "label_values(dagsnap_syncs_total, job)", "refId": "job"}, "definition": "label_values(dagsnap_syncs_total, job)",
         "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2, "current": {"text": "All", "value": "$__all"}},
        {"name": "pod", "type": "query", "label": "Pod", "datasource": {"type": "prometheus", "uid": "${datasource}"},
         "query": {"query": "label_values(dagsnap_syncs_total{job=~\"$job\"}, pod)", "refId": "pod"}, "definition": "label_values(dagsnap_syncs_total{job=~\"$job\"}, pod)",
         "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2, "current": {"text": "All", "value": "$__all"}},
    ]},
    "annotations": {"list": []},
    "panels": panels,
}
print(json.dumps(dash, indent=2))
