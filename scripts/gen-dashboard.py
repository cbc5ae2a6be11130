#!/usr/bin/env python3
"""Writes deploy/grafana/inventory.json (the Grafana dashboard) from the panel list below.

Edit here and run `python3 scripts/gen-dashboard.py`; tests/api/alerts.rs checks that every
metric the dashboard names exists in GET /metrics.
"""
import json
import os

DS = {"type": "prometheus", "uid": "${datasource}"}


def sel(extra=""):
    inner = 'job="$job", instance=~"$instance"'
    return "{" + inner + (", " + extra if extra else "") + "}"


I = sel()
UPDOWN = [{"type": "value", "options": {"0": {"text": "DOWN", "color": "red"},
                                        "1": {"text": "UP", "color": "green"}}}]


def ts(title, exprs, unit="short", desc=""):
    return {"type": "timeseries", "title": title, "description": desc, "datasource": DS,
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom"},
                        "tooltip": {"mode": "multi"}},
            "targets": [{"refId": chr(65 + i), "expr": e, "legendFormat": l, "datasource": DS}
                        for i, (e, l) in enumerate(exprs)]}


def stat(title, expr, mappings=None, desc=""):
    return {"type": "stat", "title": title, "description": desc, "datasource": DS,
            "fieldConfig": {"defaults": {"unit": "short", "mappings": mappings or []},
                            "overrides": []},
            "options": {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "background"},
            "targets": [{"refId": "A", "expr": expr, "legendFormat": "{{instance}}",
                         "datasource": DS}]}


def row(title):
    return {"type": "row", "title": title, "collapsed": False, "panels": []}


def ratio(part, whole, window="5m"):
    return (f"sum(rate({part}[{window}])) / clamp_min(sum(rate({whole}[{window}])), 1e-9)")


def p(q, metric):
    return (f"histogram_quantile({q}, sum by (le, LABEL) "
            f"(rate({metric}_bucket{I}[5m])))")


LAYOUT = [
    [row("Health")],
    [stat("Readiness", f"min by (instance) (inventory_readiness{I})",
          [{"type": "value", "options": {"0": {"text": "DOWN", "color": "red"},
                                         "1": {"text": "DEGRADED", "color": "orange"},
                                         "2": {"text": "UP", "color": "green"}}}],
          "2 UP, 1 DEGRADED (DB down: reservations still served), 0 DOWN (Redis down)"),
     stat("Redis", "min by (instance) (inventory_store_up" + sel('store="redis"') + ")", UPDOWN),
     stat("Database", "min by (instance) (inventory_store_up" + sel('store="database"') + ")",
          UPDOWN),
     stat("Supervisor leader", f"inventory_supervisor_leader{I}",
          desc="1 on the instance that runs expiry, reconciliation and the sweep")],
    [row("Reservations")],
    [ts("Reserve requests by outcome",
        [(f"sum by (outcome) (rate(inventory_reservations_total{I}[1m]))", "{{outcome}}")],
        "reqps"),
     ts("Reserve failure ratio",
        [(ratio("inventory_reservations_total" + sel('outcome=~"error|overloaded"'),
                f"inventory_reservations_total{I}"), "errors"),
         (ratio("inventory_reservations_total" + sel('outcome="insufficient"'),
                f"inventory_reservations_total{I}"), "insufficient stock")],
        "percentunit")],
    [ts("Confirm and release by outcome",
        [(f"sum by (op, outcome) (rate(inventory_reservation_transitions_total{I}[1m]))",
          "{{op}} {{outcome}}")], "reqps"),
     ts("Holds expired",
        [(f"sum by (outcome) (rate(inventory_holds_expired_total{I}[1m]))", "{{outcome}}")],
        "ops")],
    [ts("Expiry backlog", [(f"max(inventory_expiry_due_holds{I})", "due holds")]),
     ts("Oldest due hold", [(f"max(inventory_expiry_oldest_due_age_seconds{I})", "age")], "s")],
    [row("Latency")],
    [ts("HTTP latency by route",
        [(p(0.5, "inventory_http_request_duration_seconds").replace("LABEL", "route"),
          "p50 {{route}}"),
         (p(0.99, "inventory_http_request_duration_seconds").replace("LABEL", "route"),
          "p99 {{route}}")], "s"),
     ts("HTTP requests by status",
        [(f"sum by (status) (rate(inventory_http_requests_total{I}[1m]))", "{{status}}")],
        "reqps")],
    [ts("Redis calls (p99)",
        [(p(0.99, "inventory_redis_call_duration_seconds").replace("LABEL", "op"), "{{op}}")],
        "s"),
     ts("Orders per reserve script call",
        [(f"sum(rate(inventory_reserve_batch_orders_sum{I}[5m])) / "
          f"clamp_min(sum(rate(inventory_reserve_batch_orders_count{I}[5m])), 1e-9)",
          "mean batch")])],
    [row("Journal and DB")],
    [ts("Journal entries not yet in the DB",
        [(f"max by (instance) (inventory_journal_lag_entries{I})", "{{instance}}")]),
     ts("Oldest journal entry not in the DB",
        [(f"max by (instance) (inventory_journal_oldest_age_seconds{I})", "{{instance}}")], "s")],
    [ts("Journal entries persisted",
        [(f"sum by (outcome) (rate(inventory_journal_entries_persisted_total{I}[1m]))",
          "{{outcome}}")], "ops"),
     ts("DB write failures",
        [(f"sum by (kind) (rate(inventory_journal_write_failures_total{I}[1m]))", "{{kind}}")],
        "ops")],
    [row("Reconciliation")],
    [ts("Differences found",
        [(f"sum by (kind) (increase(inventory_reconcile_differences_total{I}[15m]))",
          "{{kind}}")]),
     ts("Repairs and run time",
        [(f"sum by (kind) (increase(inventory_reconcile_repairs_total{I}[15m]))",
          "repaired {{kind}}"),
         (f"max(inventory_reconcile_last_duration_seconds{I})", "last run (s)")])],
    [row("Kafka")],
    [ts("Messages consumed and produced",
        [(f"sum by (tag, outcome) (rate(inventory_kafka_messages_consumed_total{I}[1m]))",
          "in {{tag}} {{outcome}}"),
         (f"sum by (tag, outcome) (rate(inventory_kafka_messages_produced_total{I}[1m]))",
          "out {{tag}} {{outcome}}")], "ops"),
     ts("Consumer lag and dead letters",
        [(f"max by (instance) (inventory_kafka_consumer_lag_messages{I})", "lag {{instance}}"),
         (f"sum by (tag) (increase(inventory_kafka_dead_letter_total{I}[10m]))",
          "dead letters {{tag}}")])],
    [row("Stock read cache")],
    [ts("Hit ratio",
        [(ratio("inventory_stock_cache_lookups_total" + sel('result="hit"'),
                f"inventory_stock_cache_lookups_total{I}"), "hit ratio")], "percentunit"),
     ts("Entries and evictions",
        [(f"max(inventory_stock_cache_entries{I})", "entries"),
         (f"sum(rate(inventory_stock_cache_evictions_total{I}[5m]))", "evictions/s")])],
]


def main():
    panels, y, pid = [], 0, 1
    for r in LAYOUT:
        if r[0]["type"] == "row":
            r[0].update(gridPos={"h": 1, "w": 24, "x": 0, "y": y}, id=pid)
            panels.append(r[0])
            pid, y = pid + 1, y + 1
            continue
        w, h = 24 // len(r), (4 if r[0]["type"] == "stat" else 8)
        for i, panel in enumerate(r):
            panel.update(gridPos={"h": h, "w": w, "x": i * w, "y": y}, id=pid)
            panels.append(panel)
            pid += 1
        y += h
    dash = {
        "title": "Inventory reservation service", "uid": "inventory-reservations",
        "schemaVersion": 38, "version": 1, "tags": ["inventory"],
        "time": {"from": "now-1h", "to": "now"}, "refresh": "30s", "timezone": "",
        "description": "Built on GET /metrics (scrape job 'inventory'); alerts are in "
                       "deploy/prometheus/alerts.yml.",
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus",
             "label": "Data source"},
            {"name": "job", "type": "custom", "query": "inventory", "label": "Job",
             "current": {"text": "inventory", "value": "inventory"}},
            {"name": "instance", "type": "query", "datasource": DS, "label": "Instance",
             "query": 'label_values(inventory_readiness{job="$job"}, instance)',
             "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2},
        ]},
        "annotations": {"list": []},
        "panels": panels,
    }
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "deploy", "grafana", "inventory.json"), "w") as f:
        json.dump(dash, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
