"""Choosing the next tokens from a decoder step's logits: greedy, and beam search of width up to 4.
Pure numpy; the scheduler owns the rows and caches, this module only says which beams survive and
with which tokens.

Beam search, exactly (the test's reference implementation follows the same rules with no cache):
scores are sums of log-probabilities (float64, no length penalty). Each step, every live beam's
candidates are its score plus the log-softmax of its logits; the ``2 * width`` best candidates
(ties: lower beam, then lower token id) are taken in order: one ending in end-of-sequence becomes
a finished hypothesis while fewer than ``width`` are finished; the others become the next live
beams until there are ``width``. The search stops when ``width`` hypotheses are finished and the
best of them scores at least the best live beam (later tokens only lower a score), or when the
live beams reach ``max_new_tokens`` (they then count as finished, reason ``length``). The answer
is the best-scoring finished hypothesis.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["BeamSearch", "BeamStep", "Hypothesis", "log_softmax"]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64."""
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    x -= np.log(np.exp(x).sum(axis=-1, keepdims=True))
    return x


@dataclass(frozen=True, slots=True)
class Hypothesis:
    tokens: tuple[int, ...]
    score: float
    reason: str  # "eos" or "length"


@dataclass(frozen=True, slots=True)
class BeamStep:
    """The next live beams: ``parents[i]`` is the live beam that beam ``i`` extends with
    ``tokens[i]`` (caches are reordered by ``parents``)."""

    parents: np.ndarray
    tokens: np.ndarray


@dataclass(slots=True)
class BeamSearch:
    """One request's beam search state."""

    width: int
    eos: int
    max_new_tokens: int
    live: list[tuple[int, ...]] = field(default_factory=lambda: [()])
    scores: np.ndarray = field(default_factory=lambda: np.zeros(1))
    finished: list[Hypothesis] = field(default_factory=list)
    done: bool = False

    def step(self, logits: np.ndarray) -> BeamStep | None:
        """Advance by one token given the logits ``[len(live), vocab]`` of the live beams.

        Returns the next live beams, or None when the search is over (``best()`` answers)."""
        if self.done:
            raise RuntimeError("step() after the beam search finished")
        width = self.width
        candidates = (self.scores[:, None] + log_softmax(logits)).ravel()
        vocab = logits.shape[-1]
        take = min(2 * width, candidates.size)
        # best first; ties broken by flat index (lower beam, then lower token id)
        top = np.argpartition(-candidates, take - 1)[:take] if take < candidates.size else None
        pool = np.arange(candidates.size) if top is None else top
        order = pool[np.lexsort((pool, -candidates[pool]))]
        parents: list[int] = []
        tokens: list[int] = []
        scores: list[float] = []
        for flat in order.tolist():
            beam, token = divmod(flat, vocab)
            score = float(candidates[flat])
            if token == self.eos:
                if len(self.finished) < width:
                    self.finished.append(Hypothesis(self.live[beam], score, "eos"))
                continue
            if len(parents) < width:
                parents.append(beam)
                tokens.append(token)
                scores.append(score)
        self.live = [self.live[p] + (t,) for p, t in zip(parents, tokens, strict=True)]
        self.scores = np.asarray(scores, dtype=np.float64)
        if len(self.live[0]) >= self.max_new_tokens:
            self.finished.extend(
                Hypothesis(tokens_, float(s), "length")
                for tokens_, s in zip(self.live, self.scores.tolist(), strict=True)
            )
            self.done = True
            return None
        if len(self.finished) >= width and max(h.score for h in self.finished) >= scores[0]:
            self.done = True
            return None
        return BeamStep(np.asarray(parents, dtype=np.int64), np.asarray(tokens, dtype=np.int64))

    def best(self) -> Hypothesis:
        """The answer: the best finished hypothesis (first finished on a tie)."""
        if not self.finished:
            # stopped early (deadline): the best live beam so far
            return Hypothesis(self.live[int(np.argmax(self.scores))], float(self.scores.max()), "")
        return max(self.finished, key=lambda h: h.score)
