"""Token telemetry: the statistics (export.histogram), the per-worker files merged across processes
(server.telemetry), and a live `vqtok serve` of the default model whose drift score rises under out-of-domain
traffic. Torch-free."""
from __future__ import annotations

import io
import json
import math
import multiprocessing as mp
import re
import shutil
import subprocess

import httpx
import numpy as np
import pytest
from PIL import Image

from _serving import PHOTOS, REPO, LiveServer, png

from vqtok.export.histogram import REFERENCE_FILE, js_divergence, load_reference, summary
from vqtok.server import telemetry

# The documented alert threshold (docs/OPERATIONS.md, deploy/prometheus/vqtok-alerts.yml): JS divergence in bits.
DRIFT_THRESHOLD = 0.25
ALERTS = REPO / "deploy" / "prometheus" / "vqtok-alerts.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "vqtok-dashboard.json"
PROMETHEUS_OWN = {"up"}  # series Prometheus itself records for every scrape target
DEFAULT = REPO / "weights" / "vqtok-f8-k1024"


def test_js_divergence_and_summary():
    p, q = np.array([5, 5, 0, 0]), np.array([0, 0, 3, 1])
    assert js_divergence(p, p * 7) == pytest.approx(0.0, abs=1e-12)  # counts are normalised first
    assert js_divergence(p, q) == pytest.approx(1.0)  # disjoint supports: 1 bit
    a, b = np.array([4, 3, 2, 1]), np.array([1, 1, 1, 7])
    pa, pb = a / a.sum(), b / b.sum()
    m = (pa + pb) / 2
    expected = 0.5 * (pa * np.log2(pa / m)).sum() + 0.5 * (pb * np.log2(pb / m)).sum()
    assert js_divergence(a, b) == pytest.approx(expected) == pytest.approx(js_divergence(b, a))
    assert math.isnan(js_divergence(np.zeros(4), a))
    s = summary(np.array([2, 2, 0, 0]))
    assert s == {"codes": 4, "distinct": 2, "perplexity": pytest.approx(2.0), "dead_fraction": 0.5}
    assert summary(np.zeros(8, np.int64))["perplexity"] == 0.0


def _writer(directory: str, model: str, codes: list[int], now: float) -> None:
    telemetry.record(directory, model, np.array(codes), 8, now=now)


def test_counts_merge_across_processes_and_leave_the_window(tmp_path):
    d, t0 = str(tmp_path), 1_000_000.0
    ctx = mp.get_context("spawn")  # separate processes, as LitServe's workers are
    for codes, now in (([0, 0, 1], t0), ([1, 2, 2, 2], t0 + 1)):
        p = ctx.Process(target=_writer, args=(d, "m-a", codes, now))
        p.start()
        p.join(60)
        assert p.exitcode == 0
    _writer(d, "m-a-b", [7, 7], t0)  # another model whose id extends this one's: never mixed in
    recent, total = telemetry.read_counts(d, "m-a", 8, window=60, now=t0 + 5)
    assert recent.tolist() == [2, 2, 3, 0, 0, 0, 0, 0] == total.tolist()
    later = t0 + 60 + telemetry.SLOT_SECONDS  # both slots are now older than the window; all-time keeps them
    recent, total = telemetry.read_counts(d, "m-a", 8, window=60, now=later)
    assert recent.sum() == 0 and total.sum() == 7
    # one ring later the same row is reused for a new epoch: its old counts must not come back
    _writer(d, "m-a", [5], t0 + telemetry.MAX_WINDOW)
    recent, _ = telemetry.read_counts(d, "m-a", 8, window=telemetry.MAX_WINDOW, now=t0 + telemetry.MAX_WINDOW)
    assert recent.tolist() == [0, 0, 0, 0, 0, 1, 0, 0]


def test_reference_is_tied_to_the_codebook(tmp_path):
    (tmp_path / REFERENCE_FILE).write_text(json.dumps({"codebook_sha256": "abc", "counts": [1, 2, 3]}))
    assert load_reference(tmp_path, "abc").tolist() == [1, 2, 3]
    assert load_reference(tmp_path, "other") is None  # a stale histogram of another vocabulary is ignored
    assert load_reference(tmp_path / "missing") is None


def test_shipped_default_has_a_reference_histogram():
    ref = json.loads((DEFAULT / REFERENCE_FILE).read_text())
    meta = json.loads((DEFAULT / "config.json").read_text())
    assert ref["codebook_size"] == len(ref["counts"]) == meta["codebook_size"]
    assert ref["split"] == "val" and ref["n_images"] > 0
    assert sum(ref["counts"]) == ref["codes"] == ref["n_images"] * (256 // 8) ** 2
    assert REFERENCE_FILE in (DEFAULT / "README.md").read_text()  # covered by the model card


def _ood_images() -> list[bytes]:
    rng = np.random.default_rng(0)
    flat = [np.full((256, 256, 3), rng.integers(0, 256, 3), np.uint8) for _ in range(64)]
    noise = [rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for _ in range(16)]
    return [png(a) for a in flat + noise]


def _scrape(c: httpx.Client) -> dict[str, float]:
    out = {}
    for line in c.get("/metrics").text.splitlines():
        if line.startswith("vqtok_token") and 'model="vqtok-f8-k1024"' in line:
            name, value = line.rsplit(" ", 1)
            out[name.split("{")[0]] = float(value)
    return out


@pytest.fixture(scope="module")
def default_server(tmp_path_factory):
    log = tmp_path_factory.mktemp("telemetry") / "serve.log"
    args = ["--model", "vqtok-f8-k1024", "--workers", "2", "--threads", "1", "--telemetry-window", "3600"]
    with LiveServer(args, log=log) as srv:
        yield srv


def test_drift_rises_under_out_of_domain_traffic(default_server):
    sent = np.zeros(1024, np.int64)
    with httpx.Client(base_url=default_server.url, timeout=600) as c:
        before = _scrape(c)
        assert before["vqtok_token_window_codes"] == 0 and math.isnan(before["vqtok_token_drift_js"])
        assert before["vqtok_token_reference_codes"] > 0
        for photo in PHOTOS:  # in-domain: real photos
            r = c.post("/v1/encode", files={"image": (photo.name, photo.read_bytes(), "image/jpeg")})
            assert r.status_code == 200, r.text
            sent += np.bincount(np.ravel(r.json()["codes"]), minlength=1024)
        r = c.post("/v1/reconstruct", files={"image": ("c.jpg", PHOTOS[0].read_bytes(), "image/jpeg")})
        assert r.status_code == 200  # reconstruct's codes count too (another worker process)
        enc = c.post("/v1/encode", files={"image": ("c.jpg", PHOTOS[0].read_bytes(), "image/jpeg")}).json()
        sent += 2 * np.bincount(np.ravel(enc["codes"]), minlength=1024)  # the reconstruct and this encode
        usage = c.get("/v1/models/vqtok-f8-k1024/usage").json()
        assert usage["counts"] == sent.tolist()  # merged across the encode and reconstruct workers, exactly
        m_in = _scrape(c)
        n_in = (len(PHOTOS) + 2) * 1024
        assert m_in["vqtok_tokens_encoded_total"] == m_in["vqtok_token_window_codes"] == n_in
        assert m_in["vqtok_token_window_distinct_codes"] == int((sent > 0).sum())
        assert m_in["vqtok_token_window_dead_fraction"] == pytest.approx(1 - (sent > 0).sum() / 1024)
        assert m_in["vqtok_token_drift_js"] < DRIFT_THRESHOLD, m_in

        ood = _ood_images()
        for i, data in enumerate(ood):  # out of domain: flat colours, then noise
            r = c.post("/v1/encode", files={"image": (f"ood{i}.png", data, "image/png")})
            assert r.status_code == 200, r.text
            sent += np.bincount(np.ravel(r.json()["codes"]), minlength=1024)
        m_out = _scrape(c)
        usage = c.get("/v1/models/vqtok-f8-k1024/usage").json()
    assert usage["counts"] == sent.tolist() and usage["window"]["codes"] == int(sent.sum())
    assert m_out["vqtok_tokens_encoded_total"] == m_out["vqtok_token_window_codes"] == n_in + len(ood) * 1024
    assert m_out["vqtok_token_drift_js"] > DRIFT_THRESHOLD > m_in["vqtok_token_drift_js"], (m_in, m_out)
    assert m_out["vqtok_token_window_perplexity"] < m_in["vqtok_token_window_perplexity"]  # mass on few codes
    assert m_out["vqtok_token_window_distinct_codes"] >= m_in["vqtok_token_window_distinct_codes"]
    assert usage["window"]["drift_js"] == pytest.approx(m_out["vqtok_token_drift_js"])


def test_usage_of_an_unknown_model_is_a_404(default_server):
    r = httpx.get(default_server.url + "/v1/models/nope/usage", timeout=60)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def _referenced(expr: str) -> set[str]:
    """Metric names in a PromQL expression (string literals removed; functions and labels do not start vqtok_)."""
    names = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", re.sub(r'"[^"]*"', '""', expr)))
    return {n for n in names if n.startswith("vqtok_") or n in PROMETHEUS_OWN}


def test_alert_rules_and_dashboard_reference_only_served_metrics(default_server):
    yaml = pytest.importorskip("yaml")
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    assert rules and all({"alert", "expr", "labels", "annotations"} <= set(r) for r in rules)
    drift = next(r for r in rules if r["alert"] == "VqtokTokenDrift")
    assert f"vqtok_token_drift_js > {DRIFT_THRESHOLD}" in drift["expr"]  # the threshold the drift test checks
    dash = json.loads(DASHBOARD.read_text())
    exprs = [r["expr"] for r in rules]
    exprs += [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dash["templating"]["list"]]
    assert len(exprs) > len(rules) + 8
    with httpx.Client(base_url=default_server.url, timeout=600) as c:  # every labelled series has a sample
        assert c.post("/v1/encode", files={"image": ("a.jpg", PHOTOS[0].read_bytes())}).status_code == 200
        assert c.post("/v1/decode", json={"codes": [[1, 2], [3, 4]]}).status_code == 200
        exposed = {line.split("{")[0].split(" ")[0] for line in c.get("/metrics").text.splitlines()
                   if line and not line.startswith("#")}
    missing = {(n, e) for e in exprs for n in _referenced(e) if n not in exposed and n not in PROMETHEUS_OWN}
    assert not missing, f"alert rules / dashboard name metrics /metrics does not have: {sorted(missing)}"
    assert {n for e in exprs for n in _referenced(e)} >= {"vqtok_token_drift_js", "vqtok_token_window_dead_fraction",
                                                         "vqtok_requests_total", "vqtok_tokens_encoded_total"}


def test_alert_rules_and_dashboard_queries_parse_with_promtool(tmp_path):
    """PromQL syntax, checked by Prometheus's own parser where promtool is installed (Debian: prometheus)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is absent (apt-get install prometheus); the metric-name check above still runs")
    yaml = pytest.importorskip("yaml")
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    # Grafana's variables, replaced by what Grafana would send, so that Prometheus's parser can read the queries
    exprs = [e.replace("$__rate_interval", "5m").replace("$model", ".*") for e in exprs]
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"vqtok:panel_{i}", "expr": e}
                                                         for i, e in enumerate(exprs)]}]}
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump(rules))
    for path in (ALERTS, tmp_path / "dashboard.yml"):
        out = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
