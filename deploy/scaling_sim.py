#!/usr/bin/env python3
"""Scaling model for ocrfleet on Kubernetes with KEDA's Kafka scaler (pure Python, no deps).

Simulates, one second at a time, a backlog of images arriving on a topic of P partitions and a
Deployment of workers scaled by KEDA + the HPA it creates:

* Messages are spread evenly over the partitions (keyless producer). Each running pod owns
  ceil(P/R) or floor(P/R) partitions (balanced assignment) and processes --pod-ips images/s,
  shared over its own partitions that still have lag. A pod with no lag left sits idle: with
  P=12 and R=5, two pods own 3 partitions and set the pace, so 5 pods drain like 4.
* Every membership change pauses consumption for --rebalance-pause seconds.
* An image counts as lag until its offset is committed, --commit-delay s after it was taken
  (linger, download, OCR batch, bulk index). KEDA and the HPA see that lag.
* KEDA (every --polling-interval s): wakes a scaled-to-zero Deployment when lag >
  --activation-lag; scales it back to 0 after --cooldown s at or below that lag (min 0 only).
* HPA (every --hpa-sync s): desired = ceil(lag / lagThreshold), the lag capped at
  lagThreshold * P (KEDA's allowIdleConsumers=false), 10 % tolerance, clamped to
  [max(min,1), max], then rounded up to a divisor of P (KEDA's
  ensureEvenDistributionOfPartitions; --no-even-distribution turns it off); scale-up at most max(+4 pods, +100 %) per sync; scale-down uses the
  highest recommendation of the last --scale-down-window s and removes at most 2 pods a minute
  (the behaviour in k8s/base/scaledobject.yaml).
* A new pod consumes --startup s after it is created (scheduling, image pull, model load and
  warm-up; add node provisioning if the GPU pool scales from zero).

Not modelled: per-chunk commit granularity, per-image cost variation,
broker or Elasticsearch limits. --pod-ips is a parameter: measure it (`ocrfleet bench ocr`, or the
worker's indexed rate at inference busy ratio ~1) and pass it in.

  python3 deploy/scaling_sim.py                      # tables for the defaults
  python3 deploy/scaling_sim.py --pod-ips 140 --startup 120 --lag-threshold 1000
  python3 deploy/scaling_sim.py --self-test
"""
import argparse
import math
import sys

DEFAULT_POD_IPS = 100.0  # PLACEHOLDER: replace with the measured images/s of one GPU pod


class Sim:
    def __init__(self, a, arrival, fixed_replicas=None):
        self.a = a
        self.P = a.partitions
        self.lag = [0.0] * self.P
        self.arrival = arrival  # function t -> images arriving during second t
        self.fixed = fixed_replicas
        self.t = 0
        self.pods = []  # ready_at per pod, oldest first
        self.assigned = {}  # pod index among running -> partitions
        self.running_n = 0
        self.paused_until = 0
        self.replicas = 0
        self.history = []  # (t, replicas, recommendation) for the scale-down window
        self.last_active = -10**9
        self.last_down = -10**9
        self.pod_seconds = 0
        self.arrived = 0.0
        self.done = 0.0
        self.series = []
        self.uncommitted = [0.0] * max(1, a.commit_delay)  # processed per second, not yet committed
        self.first_ready = None
        self.peak = 0
        if fixed_replicas is not None:
            self.set_replicas(fixed_replicas, warm=True)
        elif a.min_replicas > 0:
            self.set_replicas(a.min_replicas, warm=True)

    def total_lag(self):
        return sum(self.lag)

    def visible_lag(self):
        """Lag as Kafka reports it: not yet processed, or processed but not yet committed."""
        return self.total_lag() + (sum(self.uncommitted) if self.a.commit_delay > 0 else 0.0)

    def set_replicas(self, n, warm=False):
        n = max(0, n)
        while len(self.pods) < n:
            self.pods.append(self.t if warm else self.t + self.a.startup)
        if len(self.pods) > n:
            # The ReplicaSet deletes the youngest (not yet ready first) pods.
            self.pods = sorted(self.pods)[:n]
        self.replicas = n
        self.peak = max(self.peak, n)

    def rebalance(self):
        running = sum(1 for r in self.pods if r <= self.t)
        if running != self.running_n:
            self.running_n = running
            self.assigned = {i: list(range(i, self.P, running)) for i in range(running)} if running else {}
            if running and self.t > 0:
                self.paused_until = self.t + self.a.rebalance_pause
            if running and self.first_ready is None:
                self.first_ready = self.t

    def consume(self):
        before = self.done
        self._consume()
        if self.a.commit_delay > 0:
            self.uncommitted[self.t % len(self.uncommitted)] = self.done - before

    def _consume(self):
        if self.t < self.paused_until:
            return
        for parts in self.assigned.values():
            cap = self.a.pod_ips
            active = [p for p in parts if self.lag[p] > 1e-9]
            while cap > 1e-9 and active:
                share = cap / len(active)
                nxt = []
                for p in active:
                    took = min(share, self.lag[p])
                    self.lag[p] -= took
                    cap -= took
                    self.done += took
                    if self.lag[p] > 1e-9:
                        nxt.append(p)
                active = nxt

    def keda_and_hpa(self):
        a, lag = self.a, self.visible_lag()
        if lag > a.activation_lag:
            self.last_active = self.t
        if self.t % a.polling_interval == 0:
            if self.replicas == 0 and lag > a.activation_lag:
                self.set_replicas(max(1, a.min_replicas))
                self.history.clear()
            elif a.min_replicas == 0 and self.replicas > 0 and self.t - self.last_active >= a.cooldown:
                self.set_replicas(0)
                self.history.clear()
                return
        if self.replicas == 0 or self.t % a.hpa_sync != 0:
            return
        metric = min(lag, a.lag_threshold * self.P)
        cur = self.replicas
        lo, hi = max(a.min_replicas, 1), a.max_replicas
        if abs(metric / (a.lag_threshold * cur) - 1) <= 0.1:
            raw = cur
        else:
            raw = math.ceil(metric / a.lag_threshold)
        raw = min(max(raw, lo), hi)
        if a.even_distribution:
            # KEDA's ensureEvenDistributionOfPartitions: the next divisor of P at or above raw.
            raw = min([d for d in range(raw, hi + 1) if self.P % d == 0] or [hi])
        self.history.append((self.t, raw))
        self.history = [(t, r) for t, r in self.history if t > self.t - a.scale_down_window]
        if raw > cur:
            self.set_replicas(min(raw, max(cur + 4, 2 * cur)))
        else:
            rec = max(r for _, r in self.history)
            if rec < cur and self.t - self.last_down >= 60:
                self.set_replicas(max(rec, cur - 2))
                self.last_down = self.t

    def step(self):
        new = self.arrival(self.t)
        if new:
            for p in range(self.P):
                self.lag[p] += new / self.P
            self.arrived += new
        if self.fixed is None:
            self.keda_and_hpa()
        self.rebalance()
        self.consume()
        self.pod_seconds += len(self.pods)
        self.series.append((self.t, self.visible_lag(), self.replicas, self.running_n))
        self.t += 1

    def run(self, total, until_idle=True, limit=6 * 3600):
        drained = None
        while self.t < limit:
            self.step()
            if drained is None and self.arrived >= total - 1e-6 and self.visible_lag() < 0.5:
                drained = self.t
                if not until_idle:
                    break
            if drained is not None and until_idle:
                floor = self.a.min_replicas if self.fixed is None else self.fixed
                if self.replicas <= floor and self.t > drained:
                    break
        return drained


def burst(total):
    return lambda t: total if t == 0 else 0


def spread(total, seconds):
    rate = total / seconds
    return lambda t: rate if t < seconds else 0


def fmt_t(s):
    if s is None:
        return "> limit"
    s = int(round(s))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def table(headers, rows):
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def static_table(a):
    rows = []
    for r in range(1, min(a.max_replicas, a.partitions) + 1):
        s = Sim(a, burst(a.images), fixed_replicas=r)
        d = s.run(a.images, until_idle=False)
        per_pod = math.ceil(a.partitions / r)
        eff = a.images / max(1, d - a.commit_delay) if d else 0  # processing rate, commit delay aside
        rows.append((r, per_pod, f"{eff:.0f}", fmt_t(d), f"{r * d / 3600:.2f}"))
    return table(["replicas (warm)", "max partitions per pod", "effective img/s", "drain time", "pod-hours"], rows)


def autoscaled(a, arrival, total):
    s = Sim(a, arrival)
    d = s.run(total)
    return s, d


def summary_row(label, s, d):
    return (label, fmt_t(s.first_ready), s.peak, fmt_t(d), fmt_t(s.t), f"{s.pod_seconds / 3600:.2f}")


def series_table(s, every):
    rows = [(fmt_t(t), f"{lag:.0f}", rep, run) for t, lag, rep, run in s.series if t % every == 0]
    return table(["t", "lag", "replicas (desired)", "pods consuming"], rows)


def report(a):
    out = []
    out.append(f"Parameters: pod throughput {a.pod_ips:g} img/s per pod"
               f"{' (PLACEHOLDER, pass --pod-ips)' if a.pod_ips == DEFAULT_POD_IPS else ''}, "
               f"{a.partitions} partitions, lagThreshold {a.lag_threshold}, activationLagThreshold "
               f"{a.activation_lag}, even distribution {'on' if a.even_distribution else 'off'}, "
               f"replicas {a.min_replicas}..{a.max_replicas}, pollingInterval "
               f"{a.polling_interval}s, HPA sync {a.hpa_sync}s, pod start-up {a.startup}s, cooldown "
               f"{a.cooldown}s, scale-down window {a.scale_down_window}s, rebalance pause "
               f"{a.rebalance_pause}s, commit delay {a.commit_delay}s, job {a.images} images.")
    out.append("")
    out.append(f"### Warm replicas vs drain time ({a.images} images at once, no autoscaling)")
    out.append("")
    out.append(static_table(a))
    out.append("")
    out.append("### Autoscaled (KEDA + HPA), from the idle state")
    out.append("")
    rows = []
    sb, db = autoscaled(a, burst(a.images), a.images)
    rows.append(summary_row(f"{a.images} at once", sb, db))
    sh, dh = autoscaled(a, spread(a.images, a.spread_seconds), a.images)
    rows.append(summary_row(f"{a.images} over {fmt_t(a.spread_seconds)}", sh, dh))
    out.append(table(["arrival", "first pod consuming", "peak replicas", "drained at", "back to min at",
                      "pod-hours"], rows))
    out.append("")
    out.append(f"### lagThreshold vs burst drain time ({a.images} at once)")
    out.append("")
    rows = []
    for th in sorted({500, 1000, 2000, 5000, 10000, 20000, a.lag_threshold}):
        b = argparse.Namespace(**vars(a))
        b.lag_threshold = th
        s, d = autoscaled(b, burst(a.images), a.images)
        rows.append((th, s.peak, fmt_t(d), f"{s.pod_seconds / 3600:.2f}"))
    out.append(table(["lagThreshold", "peak replicas", "drained at", "pod-hours"], rows))
    out.append("")
    out.append(f"### Pod start-up time and knobs vs burst ({a.images} at once)")
    out.append("")
    rows = []
    variants = [("as above", {})]
    variants += [(f"start-up {s}s", {"startup": s}) for s in (30, 180, 300) if s != a.startup]
    variants += [("cooldown 60s, scale-down window 60s", {"cooldown": 60, "scale_down_window": 60}),
                 ("minReplicaCount 1", {"min_replicas": max(1, a.min_replicas)}),
                 ("maxReplicaCount 6", {"max_replicas": min(6, a.max_replicas)})]
    for label, change in variants:
        b = argparse.Namespace(**{**vars(a), **change})
        s, d = autoscaled(b, burst(a.images), a.images)
        rows.append((label, fmt_t(s.first_ready), s.peak, fmt_t(d), fmt_t(s.t), f"{s.pod_seconds / 3600:.2f}"))
    out.append(table(["variant", "first pod consuming", "peak replicas", "drained at", "back to min at",
                      "pod-hours"], rows))
    out.append("")
    out.append(f"### Time series: {a.images} at once (every {a.series_step}s)")
    out.append("")
    out.append(series_table(sb, a.series_step))
    out.append("")
    step = max(a.series_step, 300)
    out.append(f"### Time series: {a.images} over {fmt_t(a.spread_seconds)} (every {step}s)")
    out.append("")
    out.append(series_table(sh, step))
    return "\n".join(out)


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--pod-ips", type=float, default=DEFAULT_POD_IPS,
                   help="images per second one pod processes (PLACEHOLDER default: measure it)")
    p.add_argument("--partitions", type=int, default=12)
    p.add_argument("--lag-threshold", type=int, default=2000, help="KEDA lagThreshold (target lag per replica)")
    p.add_argument("--activation-lag", type=int, default=0, help="KEDA activationLagThreshold")
    p.add_argument("--even-distribution", action=argparse.BooleanOptionalAction, default=True,
                   help="KEDA ensureEvenDistributionOfPartitions: replica counts are divisors of P")
    p.add_argument("--min-replicas", type=int, default=0)
    p.add_argument("--max-replicas", type=int, default=12)
    p.add_argument("--polling-interval", type=int, default=15, help="KEDA pollingInterval (s)")
    p.add_argument("--hpa-sync", type=int, default=15, help="HPA controller sync period (s)")
    p.add_argument("--startup", type=int, default=90, help="pod creation to consuming (s)")
    p.add_argument("--cooldown", type=int, default=300, help="KEDA cooldownPeriod (s)")
    p.add_argument("--scale-down-window", type=int, default=300, help="HPA scaleDown stabilizationWindowSeconds")
    p.add_argument("--rebalance-pause", type=int, default=5, help="consumption pause per group change (s)")
    p.add_argument("--commit-delay", type=int, default=5, help="taking an image to committing its offset (s)")
    p.add_argument("--images", type=int, default=100_000, help="images in the daily job")
    p.add_argument("--spread-seconds", type=int, default=3600, help="arrival window of the spread scenario (s)")
    p.add_argument("--series-step", type=int, default=30, help="rows of the burst time series every N s")
    p.add_argument("--self-test", action="store_true", help="check the model against hand-computed cases")
    a = p.parse_args(argv)
    if a.max_replicas > a.partitions:
        p.error("--max-replicas above --partitions: the extra consumers would have no partition")
    if a.min_replicas > a.max_replicas or a.pod_ips <= 0 or a.lag_threshold <= 0:
        p.error("need 0 <= min <= max, pod-ips > 0, lag-threshold > 0")
    return a


def self_test():
    a = parse(["--pod-ips", "100"])
    # Warm, fixed replicas: drain = images * ceil(P/R) / P / pod_ips + commit delay (+1 s steps).
    for r, want in ((12, 100_000 / 12 / 100), (6, 100_000 * 2 / 12 / 100), (5, 100_000 * 3 / 12 / 100),
                    (1, 100_000 / 100)):
        d = Sim(a, burst(100_000), fixed_replicas=r).run(100_000, until_idle=False)
        assert abs(d - want - a.commit_delay) <= 2, (r, d, want)
    s, d = autoscaled(a, burst(100_000), 100_000)
    assert d is not None and s.peak == 12 and s.replicas == 0, (d, s.peak, s.replicas)
    assert all(rep <= 12 for _, _, rep, _ in s.series)
    # Cold start: nothing is consumed before the first pod's start-up has passed.
    assert s.first_ready >= a.startup, s.first_ready
    s, d = autoscaled(a, spread(100_000, 3600), 100_000)
    assert d is not None and d < 3600 + 600, d
    # Arrivals of 27.8 img/s need one 100 img/s pod: once the backlog of the cold start is
    # worked off, the lag stays at a few seconds of arrivals.
    assert s.peak <= 2 and max(lag for t, lag, _, _ in s.series if t > 600) < 200, s.peak
    b = parse(["--pod-ips", "100", "--min-replicas", "1"])
    s, d = autoscaled(b, burst(100_000), 100_000)
    assert s.replicas == 1 and s.first_ready == 0
    # Even distribution: no replica count that is not a divisor of 12 is ever asked for.
    s, d = autoscaled(a, spread(100_000, 900), 100_000)
    assert all(12 % rep == 0 for _, _, rep, _ in s.series if rep), s.series
    c = parse(["--pod-ips", "100", "--no-even-distribution"])
    s, d = autoscaled(c, spread(100_000, 900), 100_000)
    assert any(12 % rep for _, _, rep, _ in s.series if rep), "without it, 5, 7... occur"
    # A trickle of 50 messages at zero: woken with activation 0, stranded with 100.
    s, d = autoscaled(a, burst(50), 50)
    assert d is not None and d < a.polling_interval + a.startup + 60, d
    t = parse(["--pod-ips", "100", "--activation-lag", "100"])
    s = Sim(t, burst(50))
    assert s.run(50, limit=3600) is None and s.peak == 0
    print("scaling_sim self-test: 4 static drains, burst, spread, even-distribution and trickle scenarios OK")


def main(argv):
    a = parse(argv)
    if a.self_test:
        self_test()
        return
    print(report(a))


if __name__ == "__main__":
    main(sys.argv[1:])
