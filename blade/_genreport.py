"""The report of a generation bundle's optimize run as text tables (``report.txt``): the
encoder's passes with their tensor gates, the decoder's with the generation gates, and the
decision. Pure: the report dict in, text out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["render_generation_report"]


def _gate_line(tier: str, gate: Mapping[str, Any]) -> str:
    return (
        f"  {tier:8} logits cosine >= {gate['logits_cosine_min']:.6g}, max abs <= "
        f"{gate['logits_max_abs_max']:.3%} of the largest logit; greedy: >= "
        f"{gate['agree_share_min']:.0%} of clips agree on their first {gate['agree_tokens']} "
        f"tokens, mean agreed prefix >= {gate['mean_prefix_min']:.0%}"
    )


def _latency(entry: Mapping[str, Any], key: str, batches: Sequence[str],
             base: Mapping[str, float]) -> str:  # fmt: skip
    lat = entry.get(key) or {}
    return " ".join(
        f"{lat[b]['after']:7.2f} ({base[b] / lat[b]['after']:4.2f}x)" if b in lat else f"{'-':>15}"
        for b in batches
    )


def _generation_cells(entry: Mapping[str, Any]) -> str:
    gen = entry.get("generation")
    if not gen:
        return f"{'-':>9} {'-':>9} {'-':>8} {'-':>6} {'-':>6}"
    tf = gen["teacher_forced"]
    agree = gen["agreement"]
    return (
        f"{tf[0]['cosine_min']:9.6f} {tf[-1]['cosine_min']:9.6f} {tf[-1]['rel_max_abs']:8.3%} "
        f"{agree['share']:6.0%} {agree['mean_prefix']:6.0%}"
    )


def render_generation_report(report: Mapping[str, Any]) -> str:
    """``report.txt`` of a generation bundle (``report["kind"] == "generation"``)."""
    ev = report["evaluation"]
    lines = [
        f"generation bundle {report['model']}  ({report['model_sha256'][:12]})",
        f"device {report['device']}  hardware {report['hardware_key']}",
        f"tensorrt: {report['tensorrt']}",
        f"test data: {report['test_data']}",
        f"reference: {ev['reference']}",
        f"evaluation: teacher-forced logits over the first {ev['target_lengths']} predictions of "
        f"each clip; greedy answers of up to {ev['max_new_tokens']} tokens",
        "generation gates:",
        *(_gate_line(tier, gate) for tier, gate in report["gates"].items()),
        "",
    ]
    enc = report["encoder"]
    batches = [str(b) for b in enc["batch_sizes"]]
    base = enc["baseline"]["latency_ms"]
    head = f"{'encoder pass':44} {'tier':8} {'verdict':9} {'cosine':>8} {'rel L2':>8} " + " ".join(
        f"{'b' + b + ' ms':>15}" for b in batches
    )
    lines += [head, "-" * len(head)]
    lines.append(f"{'plain (baseline)':44} {'-':8} {'-':9} {'':>8} {'':>8} "
                 + " ".join(f"{base[b]:15.2f}" for b in batches))  # fmt: skip
    for entry in report["passes"]:
        if entry.get("stage") != "encoder":
            continue
        metrics = entry.get("metrics") or {}
        cos = min((m["cosine"] for m in metrics.values()), default=None)
        rel = max((m["rel_l2"] for m in metrics.values()), default=None)
        key = "encoder_latency_ms"
        lines.append(
            f"{entry['name'][:44]:44} {entry.get('tier', '-'):8} {entry['verdict']:9} "
            f"{'-' if cos is None else f'{cos:.5f}':>8} {'-' if rel is None else f'{rel:.1e}':>8} "
            + _latency(entry, key, batches, base)
        )
        if entry["verdict"] != "passed":
            lines.append(f"{'':4}why: {entry['reason']}")
    lines.append(f"encoder chosen: {enc['chosen']} ({enc['reason']})")
    lines.append("")
    batches = [str(b) for b in report["batch_sizes"]]
    base = report["baseline"]["latency_ms"]
    lengths = ev["target_lengths"]
    head = (
        f"{'decoder pass':44} {'tier':8} {'verdict':9} {f'cos@{lengths[0]}':>9} "
        f"{f'cos@{lengths[-1]}':>9} {'max abs':>8} {'agree':>6} {'prefix':>6} "
        + " ".join(f"{'b' + b + ' ms':>15}" for b in batches)
    )
    lines += [f"decoder step at a cache of {report['cache_length']} entries", head, "-" * len(head)]
    lines.append(
        f"{'plain (baseline)':44} {'-':8} {'-':9} {_generation_cells(report['baseline'])} "
        + " ".join(f"{base[b]:15.2f}" for b in batches)
    )
    for entry in report["passes"]:
        if entry.get("stage") != "decoder":
            continue
        lines.append(
            f"{entry['name'][:44]:44} {entry.get('tier', '-'):8} {entry['verdict']:9} "
            f"{_generation_cells(entry)} " + _latency(entry, "latency_ms", batches, base)
        )
        if entry["verdict"] != "passed":
            lines.append(f"{'':4}why: {entry['reason']}")
    lines.append(
        f"chosen: {report['chosen']} ({report['reason']}); tier {report['tier']}; decoder step "
        f"speedup {report['speedup']:.2f}x at the median batch"
    )
    return "\n".join(lines)
