"""Training batches that are the same whether one process or several take them, and that a
resumed run can re-enter at any batch.

Every epoch draws one permutation from ``(seed, epoch)`` (:func:`epoch_seed`) and cuts it into global batches of
``batch_size`` utterances; under DDP each of the W processes takes its contiguous
``batch_size / W`` slice of every global batch. With DDP's gradient averaging, a step then
sees exactly the utterances it sees in a single process (torch's ``DistributedSampler``
instead deals a different permutation and multiplies the batch by W). The order depends on
nothing but ``(seed, epoch)``, so a run resumed after ``b`` batches of an epoch starts at
batch ``b`` (``start=b``) and sees what the killed run would have seen next.

:class:`ClassBalancedBatchSampler` keeps all of this but draws each epoch's utterances with
replacement, each with probability proportional to 1 / (its class's count), so every class
fills the same share of the batches in expectation (the imbalanced-categories option of the
MSP-Podcast challenge systems).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = [
    "GlobalBatchSampler",
    "ClassBalancedBatchSampler",
    "global_batches_per_epoch",
    "epoch_seed",
    "length_buckets",
    "padding_fraction",
]

logger = logging.getLogger(__name__)

BUCKET_POOL = 32  # global batches whose utterances are sorted by length together


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch``'s order: (seed, epoch) mixed, so that seed s and seed s + 1
    do not deal the same orders one epoch apart (as ``seed + epoch`` would).

    Example:
        >>> epoch_seed(0, 1) == epoch_seed(1, 0)
        False
    """
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0] >> 1)


def global_batches_per_epoch(num_items: int, batch_size: int, drop_last: bool = True) -> int:
    """Global batches in one epoch of ``num_items`` utterances.

    Example:
        >>> global_batches_per_epoch(10, 4), global_batches_per_epoch(10, 4, drop_last=False)
        (2, 3)
    """
    return num_items // batch_size if drop_last else -(-num_items // batch_size)


def length_buckets(
    order: Sequence[int], lengths: Sequence[int], batch_size: int, drop_last: bool, generator: torch.Generator
) -> list[list[int]]:
    """Global batches of similar lengths: ``order`` (an epoch's permutation) is cut into pools
    of :data:`BUCKET_POOL` batches, each pool sorted by length and cut into batches, and the
    batches shuffled by ``generator``. The same utterances as plain batches are dropped
    (the permutation's last ``len % batch_size`` with ``drop_last``).

    Example:
        >>> lengths = [1, 2, 5, 4, 9]
        >>> batches = length_buckets([3, 0, 2, 1, 4], lengths, 2, True, torch.Generator().manual_seed(0))
        >>> sorted(batches)  # 4, the last of the permutation, is dropped; 0, 1 and 3, 2 are alike
        [[0, 1], [3, 2]]
    """
    usable = len(order) - (len(order) % batch_size if drop_last else 0)
    order = list(order[:usable])
    span = batch_size * BUCKET_POOL
    batches = []
    for start in range(0, len(order), span):
        pool = sorted(order[start : start + span], key=lambda i: (lengths[i], i))
        batches += [pool[i : i + batch_size] for i in range(0, len(pool), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def padding_fraction(batches: Sequence[Sequence[int]], lengths: Sequence[int]) -> float:
    """The share of a padded batch's frames that are padding, over ``batches``.

    Example:
        >>> round(padding_fraction([[0, 1]], [1, 3]), 3)  # 1 + 3 real of 2 * 3
        0.333
    """
    padded = sum(len(batch) * max(lengths[i] for i in batch) for batch in batches if batch)
    return 1 - sum(lengths[i] for batch in batches for i in batch) / padded if padded else 0.0


class GlobalBatchSampler(Sampler[list[int]]):
    """Batch sampler yielding this process's share of each global batch.

    Args:
        num_items: dataset size.
        batch_size: global batch size (all processes together); must be divisible by
            ``world_size``.
        seed: base seed of the permutation.
        epoch: the epoch, mixed into the seed so every epoch is shuffled differently.
        rank, world_size: this process and the number of processes.
        drop_last: drop the last incomplete global batch (a one-utterance batch breaks
            BatchNorm's training statistics).
        start: global batches of the epoch to skip (where a resumed run re-enters it).
        lengths: each utterance's length: when given, batches hold utterances of similar
            lengths (:func:`length_buckets`; less padding, another batch composition than
            s3prl's, so not the SUPERB protocol).

    Example:
        >>> one = list(GlobalBatchSampler(10, 4, seed=0))
        >>> [len(batch) for batch in one]
        [4, 4]
        >>> halves = [list(GlobalBatchSampler(10, 4, seed=0, rank=r, world_size=2)) for r in (0, 1)]
        >>> [a + b for a, b in zip(*halves)] == one  # two processes see the same global batches
        True
        >>> list(GlobalBatchSampler(10, 4, seed=0, start=1)) == one[1:]  # resumed after one batch
        True
        >>> lengths = [1, 9, 2, 8, 3, 7, 4, 6, 5, 5]
        >>> sorted(sorted(lengths[i] for i in b) for b in GlobalBatchSampler(10, 4, seed=0, lengths=lengths))
        [[1, 2, 3, 5], [5, 6, 8, 9]]
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        *,
        seed: int = 0,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
        start: int = 0,
        lengths: Sequence[int] | None = None,
    ) -> None:
        if batch_size % world_size:
            raise ValueError(f"train batch size {batch_size} is not divisible by the {world_size} processes")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside [0, {world_size})")
        if global_batches_per_epoch(num_items, batch_size, drop_last) < 1:
            raise ValueError(
                f"the training split has {num_items} utterance(s), fewer than one batch of {batch_size}: "
                "lower train_batch_size"
            )
        self.num_items, self.batch_size, self.drop_last = num_items, batch_size, drop_last
        self.seed, self.epoch, self.rank, self.world_size, self.start = seed, epoch, rank, world_size, start
        if lengths is not None and len(lengths) != num_items:
            raise ValueError(f"{len(lengths)} lengths for {num_items} utterances")
        self.lengths = lengths

    def _order(self, generator: torch.Generator) -> list[int]:
        """The epoch's ``num_items`` utterance indices, in the order they are batched."""
        return torch.randperm(self.num_items, generator=generator).tolist()

    def _global_batches(self, bucketed: bool = True) -> list[list[int]]:
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        order = self._order(generator)
        if self.lengths is not None and bucketed:
            return length_buckets(order, self.lengths, self.batch_size, self.drop_last, generator)[self.start :]
        batches = [order[i : i + self.batch_size] for i in range(0, self.num_items, self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        return batches[self.start :]

    def __iter__(self) -> Iterator[list[int]]:
        share = self.batch_size // self.world_size
        batches = self._global_batches()
        if self.lengths is not None and self.start == 0 and self.rank == 0:
            plain = self._global_batches(bucketed=False)
            logger.info(
                "[%s] - epoch %d: length-bucketed batches, padding %.1f%% of the batched samples "
                "(random batches: %.1f%%)",
                type(self).__name__,
                self.epoch,
                100 * padding_fraction(batches, self.lengths),
                100 * padding_fraction(plain, self.lengths),
            )
        for batch in batches:
            part = batch[self.rank * share : (self.rank + 1) * share]
            if part:
                yield part

    def __len__(self) -> int:
        return len(self._global_batches())


class ClassBalancedBatchSampler(GlobalBatchSampler):
    """:class:`GlobalBatchSampler` over a class-balanced draw: each epoch's ``len(labels)``
    utterances are drawn with replacement from ``(seed, epoch)``, utterance ``i`` with
    probability ``1 / (C * n_{labels[i]})`` (``C`` classes present, ``n_c`` utterances of class
    ``c``), so each class is drawn ``1 / C`` of the time; rare utterances recur within an epoch,
    frequent ones are left out of it. Same epoch length, process split, resumption and length
    buckets as :class:`GlobalBatchSampler`.

    Args:
        labels: the class id of every utterance (>= 0).
        batch_size, seed, epoch, rank, world_size, drop_last, start, lengths: as
            :class:`GlobalBatchSampler`.

    Example:
        >>> labels = [0] * 90 + [1] * 10
        >>> drawn = [labels[i] for batch in ClassBalancedBatchSampler(labels, 10, seed=0) for i in batch]
        >>> len(drawn), 35 < sum(drawn) < 65  # about half class 1, against 10 in the source
        (100, True)
        >>> one = list(ClassBalancedBatchSampler(labels, 10, seed=0, epoch=3))
        >>> list(ClassBalancedBatchSampler(labels, 10, seed=0, epoch=3, start=4)) == one[4:]
        True
    """

    def __init__(
        self,
        labels: Sequence[int],
        batch_size: int,
        *,
        seed: int = 0,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
        start: int = 0,
        lengths: Sequence[int] | None = None,
    ) -> None:
        classes = np.asarray(labels, dtype=np.int64)
        if classes.size and classes.min() < 0:
            raise ValueError(
                f"a class-balanced sampler needs a category for every training utterance; "
                f"{int((classes < 0).sum())} of {classes.size} have none"
            )
        super().__init__(
            len(classes),
            batch_size,
            seed=seed,
            epoch=epoch,
            rank=rank,
            world_size=world_size,
            drop_last=drop_last,
            start=start,
            lengths=lengths,
        )
        counts = np.bincount(classes)
        # float64: a million-utterance corpus's weights stay exact enough to sum to 1.
        self.weights = torch.from_numpy(1.0 / counts[classes])

    def _order(self, generator: torch.Generator) -> list[int]:
        return torch.multinomial(self.weights, self.num_items, replacement=True, generator=generator).tolist()
