"""``--plot``: throughput and p99 against concurrency (or offered rate) as a PNG (matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._errors import BenchError
from ._report import BenchReport

__all__ = ["plot"]


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise BenchError("--plot needs matplotlib: pip install 'autoai[bench]'") from None
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def plot(report: BenchReport, path: str | Path) -> Path:
    """Write a PNG of ``report``: QPS (client and server side) and RT p50/p99 per step.

    Raises:
        BenchError: matplotlib is not installed, the report has no step, or the file cannot be
            written.
    """
    if not report.steps:
        raise BenchError("--plot: no step finished, nothing to plot")
    plt = _pyplot()
    open_loop = report.steps[0].step.rate is not None
    xs = [
        float(r.step.rate or 0) if open_loop else float(r.step.concurrency or 0)
        for r in report.steps
    ]
    label = "offered rate (requests/s)" if open_loop else "concurrency (calls in flight)"
    client_qps = [r.client.qps for r in report.steps]
    server_qps = [r.server.qps if r.server is not None else float("nan") for r in report.steps]
    p50 = [r.client.latency.p50 * 1e3 if r.client.latency else float("nan") for r in report.steps]
    p99 = [r.client.latency.p99 * 1e3 if r.client.latency else float("nan") for r in report.steps]
    fig, (left, right) = plt.subplots(1, 2, figsize=(8.0, 3.2), dpi=100, constrained_layout=True)
    try:
        left.plot(xs, client_qps, "o-", label="client")
        left.plot(xs, server_qps, "s--", label="server (/metrics)")
        left.set_xlabel(label)
        left.set_ylabel("requests/s")
        left.set_title("throughput")
        right.plot(xs, p99, "o-", color="tab:red", label="p99")
        right.plot(xs, p50, "o--", color="tab:gray", label="p50")
        right.set_xlabel(label)
        right.set_ylabel("ms (client side)")
        right.set_title("latency")
        for ax in (left, right):
            if not open_loop and len(xs) > 1 and min(xs) > 0 and max(xs) / min(xs) >= 8:
                ax.set_xscale("log", base=2)
            ax.set_xticks(xs, [f"{x:g}" for x in xs])
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
        who = "SDK" if report.target == "sdk" else report.address
        fig.suptitle(
            f"autoai bench {report.model} ({who}, batch {report.batch}, {report.encoding})",
            fontsize="medium",
        )
        out = Path(path)
        try:
            fig.savefig(out, format="png")
        except OSError as exc:
            raise BenchError(f"--plot {out}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
    return out
