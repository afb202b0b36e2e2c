"""Drafters for tests only, whose acceptance is known exactly: they read the target's own greedy output
(from a run without speculation) and propose it right, wrong everywhere, or right except at position j."""

from __future__ import annotations


class ScriptedDrafter:
    """Proposes the reference continuation of each request (its greedy output without speculation), with the
    draft at position `wrong_at` (0-based; every position for "always wrong") changed to another token."""

    method = "scripted"

    def __init__(self, reference: dict[int, list[int]], vocab_size: int, wrong_at: int | None = None,
                 always_wrong: bool = False, block_size: int = 16) -> None:
        self.block_size = block_size
        self.reference = reference  # request id -> its greedy output tokens
        self.vocab_size = vocab_size
        self.wrong_at = wrong_at
        self.always_wrong = always_wrong
        self.offsets: set[tuple[int, int]] = set()  # (block offset of the first draft's slot, drafts)

    def propose(self, drafting) -> None:
        for s in drafting:
            req = s.request
            done = req.num_output_tokens
            drafts = list(self.reference[req.request_id][done:done + s.num_draft_slots])
            for i in range(len(drafts)):
                if self.always_wrong or i == self.wrong_at:
                    drafts[i] = (drafts[i] + 1) % self.vocab_size
            req.spec_token_ids = drafts
            self.offsets.add((req.num_tokens % self.block_size, len(drafts)))

    def expected_accepted(self, num_drafts: int) -> int:
        if self.always_wrong:
            return 0
        if self.wrong_at is None:
            return num_drafts
        return min(self.wrong_at, num_drafts)
