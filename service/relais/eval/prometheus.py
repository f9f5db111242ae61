"""The server's own Prometheus histograms, read around an eval run, next to the client's figures.

Histograms are cumulative, so we scrape before and after the run and take the
difference: that leaves only this run's streams (on a shared server, other traffic
during the run would be counted too).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

log = logging.getLogger(__name__)

OUTPUT_LAG, FIRST_AUDIO = "relais_output_lag_seconds", "relais_first_audio_latency_seconds"


@dataclass(frozen=True)
class Histogram:
    count: float
    sum: float
    buckets: tuple[tuple[float, float], ...]  # (upper bound, cumulative count), +Inf last

    def minus(self, other: Histogram | None) -> Histogram:
        if other is None:
            return self
        before = dict(other.buckets)
        return Histogram(self.count - other.count, self.sum - other.sum,
                         tuple((le, c - before.get(le, 0.0)) for le, c in self.buckets))

    @property
    def mean(self) -> float | None:
        return self.sum / self.count if self.count > 0 else None

    def quantile(self, q: float) -> float | None:
        """Like PromQL's histogram_quantile: linear within the bucket that holds the q-th observation."""
        if self.count <= 0:
            return None
        rank = q * self.count
        lower_le, lower_count = 0.0, 0.0
        for le, cum in self.buckets:
            if cum >= rank:
                if le == float("inf"):
                    return lower_le
                width = cum - lower_count
                return lower_le + (le - lower_le) * ((rank - lower_count) / width if width > 0 else 0.0)
            lower_le, lower_count = le, cum
        return lower_le


def labelled_mean(before: str | None, after: str | None, name: str, **labels: str) -> float | None:
    """Mean of the observations a labelled histogram (``name`` with exactly ``labels``) got between
    two scrapes, e.g. the decoder's batch size during one concurrency level; None without any."""
    if not after:
        return None
    from prometheus_client.parser import text_string_to_metric_families

    def totals(text: str | None) -> tuple[float, float]:
        found = {"_sum": 0.0, "_count": 0.0}
        for family in text_string_to_metric_families(text or ""):
            if family.name != name:
                continue
            for s in family.samples:
                suffix = s.name[len(name):]
                if suffix in found and s.labels == labels:
                    found[suffix] = s.value
        return found["_sum"], found["_count"]

    (sum_after, count_after), (sum_before, count_before) = totals(after), totals(before)
    count = count_after - count_before
    return (sum_after - sum_before) / count if count > 0 else None


def parse_histograms(text: str | None) -> dict[str, Histogram]:
    if not text:
        return {}
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(text):
        if family.type != "histogram":
            continue
        count = total = 0.0
        buckets = []
        for s in family.samples:
            if s.labels and set(s.labels) - {"le"}:
                continue  # labelled histograms (per stage) are not compared
            if s.name.endswith("_bucket"):
                buckets.append((float(s.labels["le"]), s.value))
            elif s.name.endswith("_count"):
                count = s.value
            elif s.name.endswith("_sum"):
                total = s.value
        out[family.name] = Histogram(count, total, tuple(sorted(buckets)))
    return out


@dataclass(frozen=True)
class MetricComparison:
    name: str  # output_lag | first_audio
    server_count: float
    server_mean_s: float | None
    server_p50_s: float | None
    server_p95_s: float | None
    client_count: int
    client_mean_s: float | None
    client_p50_s: float | None
    client_p95_s: float | None

    @property
    def mean_difference_s(self) -> float | None:
        if self.server_mean_s is None or self.client_mean_s is None:
            return None
        return self.client_mean_s - self.server_mean_s

    def to_dict(self) -> dict:
        return {**asdict(self), "mean_difference_s": self.mean_difference_s}


def compare(before: str | None, after: str | None, *, output_lag_s: list[float] = (),
            first_audio_s: list[float] = ()) -> list[MetricComparison]:
    """The histograms' change over a run next to the client's values for the same events:
    ``output_lag_s`` per final translation text, ``first_audio_s`` (from the speech onset) per stream."""
    from relais.eval.latency import percentile

    if after is None:
        return []
    old, new = parse_histograms(before), parse_histograms(after)
    rows = []
    for key, metric, values in (("output_lag", OUTPUT_LAG, list(output_lag_s)),
                                ("first_audio", FIRST_AUDIO, list(first_audio_s))):
        if metric not in new:
            log.warning("the server exposes no %s histogram", metric)
            continue
        h = new[metric].minus(old.get(metric))
        rows.append(MetricComparison(
            key, h.count, h.mean, h.quantile(0.5), h.quantile(0.95), len(values),
            sum(values) / len(values) if values else None, percentile(values, 50), percentile(values, 95)))
    return rows
