"""wgnn-serve's /metrics read by the Prometheus client library's own parser
(pip install prometheus_client): every family typed and documented.

    python3 tests/oip/metrics_check.py METRICS.txt
"""
import sys

from prometheus_client.parser import text_string_to_metric_families

families = list(text_string_to_metric_families(open(sys.argv[1]).read()))
untyped = [f.name for f in families if f.type in ("unknown", "untyped")]
assert not untyped, f"untyped series: {untyped}"
undocumented = [f.name for f in families if not f.documentation]
assert not undocumented, f"series without HELP: {undocumented}"
assert any(f.name == "wgnn_requests" for f in families), [f.name for f in families]
samples = sum(len(f.samples) for f in families)
print(f"/metrics: {len(families)} families, {samples} samples, every one typed and documented")
