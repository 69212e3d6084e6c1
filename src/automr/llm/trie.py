"""A prefix tree over token sequences (catalog titles + EOS) for constrained decoding.

The trie is a set of flat arrays, one entry per node or per edge, built with array operations
depth by depth over the sorted sequences (each depth over the sequences that reach it); no
prefix is ever stored as its own tuple, nor a sequence padded to the longest, so time and memory
are linear in the total number of tokens (a catalog of 10^5 titles of 8-30 tokens has
about 2 * 10^6 nodes). ``benchmarks/trie.py`` measures it beside the per-prefix tuples it
replaced.
"""

from bisect import bisect_left
from collections.abc import Sequence
from itertools import chain

import attrs
import numpy as np
import torch
from jaxtyping import Bool, Float, Int, jaxtyped
from torch import Tensor

from automr.checks import beartype

NEG_INF = float("-inf")


@attrs.frozen
class _TrieTensors:
    """A trie's arrays on one device. Nodes are numbered breadth first (by depth, then by
    prefix), so edges sorted by (parent node, token) lead to nodes ``1, 2, ...`` in order:
    edge ``e`` ends in node ``e + 1``."""

    child_start: Int[Tensor, " nodes_plus_one"]  # node n's edges: child_start[n:n + 2]
    edge_token: Int[Tensor, " edges"]
    edge_key: Int[Tensor, " edges"]  # parent * width + token, increasing
    passing: Int[Tensor, " nodes"]  # stored sequences through each node
    through: Int[Tensor, " nodes"]  # one of them
    depth: Int[Tensor, " nodes"]
    tokens: Int[Tensor, " tokens"]  # every stored sequence's tokens, one after another
    offsets: Int[Tensor, " sequences"]  # where each sequence's start in ``tokens``
    lengths: Int[Tensor, " sequences"]


@attrs.frozen
class _Built:
    tensors: _TrieTensors
    ends: np.ndarray  # the node each stored sequence ends at
    width: int
    longest: int


def _common_prefixes(flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """How many leading tokens each sequence (``flat[starts[i]:][:lengths[i]]``) shares with
    the one before it (0 for the first), compared token by token: O(tokens)."""
    count = len(starts)
    common = np.zeros(count, dtype=np.int64)
    if count < 2:
        return common
    shared = np.minimum(lengths[1:], lengths[:-1])  # how far row i and row i - 1 can agree
    rows = np.flatnonzero(shared)
    if not len(rows):
        return common
    span = shared[rows]
    first = np.concatenate([[0], span.cumsum()[:-1]])  # each compared row's first position
    position = np.arange(int(span.sum())) - np.repeat(first, span)  # 0.. within its row
    here = np.repeat(starts[rows + 1], span) + position
    before = np.repeat(starts[rows], span) + position
    # the first position where the two differ, else the whole shared span
    differ = np.where(flat[here] != flat[before], position, np.repeat(span, span))
    common[rows + 1] = np.minimum.reduceat(differ, first)
    return common


def _build(sequences: Sequence[Sequence[int]]) -> _Built:
    """The trie's arrays. Sorted, the sequences sharing a prefix are consecutive, and a row
    starts a new node at depth ``d`` exactly where it differs from the row before within its
    first ``d + 1`` tokens; the node a row is at is then the latest one started at that depth
    in the rows up to it (a running maximum, as node numbers grow with the rows). Each depth
    touches only the rows that reach it, so time and memory follow the tokens, not the number
    of sequences times the longest."""
    count = len(sequences)
    lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=count)
    longest = int(lengths.max(initial=0))
    flat = np.fromiter(chain.from_iterable(sequences), dtype=np.int64, count=int(lengths.sum()))
    if len(flat) and int(flat.min()) < 0:
        raise ValueError("TokenTrie: token ids must be >= 0")
    offsets = np.zeros(count, dtype=np.int64)
    offsets[1:] = lengths.cumsum()[:-1]
    listed = sequences if all(type(s) is list for s in sequences) else [
        list(s) for s in sequences]  # lists compare by their items, a prefix first
    order = np.array(sorted(range(count), key=listed.__getitem__), dtype=np.int64)
    del listed
    row_starts, row_lengths = offsets[order], lengths[order]
    common = _common_prefixes(flat, row_starts, row_lengths)
    twice = np.flatnonzero((common[1:] == row_lengths[1:]) & (row_lengths[1:] == row_lengths[:-1]))
    if len(twice):
        row = twice[0] + 1
        key = tuple(int(t) for t in flat[row_starts[row] : row_starts[row] + row_lengths[row]])
        raise ValueError(f"TokenTrie: sequence {key} stored twice")
    ends = np.zeros(count, dtype=np.int64)  # by sorted row; the empty sequence ends at the root
    at = np.zeros(count, dtype=np.int64)  # the node each row is at, one depth after another
    parents, tokens = [], []
    passing, through = [np.array([count])], [order[:1] if count else np.zeros(1, np.int64)]
    following = 1
    active = np.arange(count)  # the sorted rows that reach the depth
    for depth in range(longest):
        active = active[row_lengths[active] > depth]
        starts = common[active] <= depth
        new = int(starts.sum())
        started = np.zeros(len(active), dtype=np.int64)
        started[starts] = np.arange(following, following + new)
        beginning = active[starts]
        parents.append(at[beginning])
        tokens.append(flat[row_starts[beginning] + depth])
        reached = np.maximum.accumulate(started)
        at[active] = reached
        passing.append(np.bincount(reached - following, minlength=new))
        through.append(order[beginning])
        finishing = row_lengths[active] == depth + 1
        ends[active[finishing]] = reached[finishing]
        following += new
    nodes = following
    parent = np.concatenate(parents) if parents else np.zeros(0, dtype=np.int64)
    token = np.concatenate(tokens) if tokens else np.zeros(0, dtype=np.int64)
    width = int(token.max(initial=0)) + 1
    node_depth = np.repeat(np.arange(longest + 1), [1, *map(len, parents)])
    counts = np.bincount(parent, minlength=nodes + 1)  # the dead node (= nodes): none
    unsorted_ends = np.empty_like(ends)
    unsorted_ends[order] = ends
    zero = np.zeros(1, dtype=np.int64)
    tensors = _TrieTensors(*map(torch.from_numpy, (
        np.concatenate([zero, counts.cumsum()]), token, parent * width + token,
        np.concatenate([*passing, zero]), np.concatenate([*through, zero]).astype(np.int64),
        np.concatenate([node_depth, zero]), flat, offsets, lengths)))
    return _Built(tensors, unsorted_ends, width, longest)


class TokenTrie:
    """Prefix tree over token sequences (e.g. every catalog title's tokens + EOS).

    ``allowed(prefix)`` lists the tokens that extend ``prefix`` towards a stored sequence;
    ``value(sequence)`` gives what was stored for a complete sequence (e.g. an item index).
    For batched search, prefixes are also numbered nodes (``root`` is the empty prefix):
    :meth:`mask`, :meth:`advance` and :meth:`completions` work on a tensor of nodes at
    once; :attr:`dead` is a node with no continuation. Token ids must be >= 0.
    """

    root = 0

    def __init__(self, sequences: Sequence[Sequence[int]], values: Sequence[int]) -> None:
        if len(sequences) != len(values):
            raise ValueError("TokenTrie: one value per sequence")
        built = _build(sequences)
        self._cpu = built.tensors
        self._width = built.width
        self._longest = built.longest
        self.dead = len(self._cpu.passing) - 1
        self._values = list(values)
        # which stored sequence ends at each node (-1: none), for value()
        self._ending = np.full(self.dead, -1, dtype=np.int64)
        self._ending[built.ends] = np.arange(len(sequences))
        # the arrays as memoryviews: indexing them gives plain ints, fast for one walk
        self._starts = memoryview(self._cpu.child_start.numpy())
        self._tokens = memoryview(self._cpu.edge_token.numpy())
        self._on: dict[torch.device, _TrieTensors] = {torch.device("cpu"): self._cpu}

    def _node(self, prefix: Sequence[int]) -> int | None:
        """The node of ``prefix``, or None if no stored sequence starts with it."""
        node = self.root
        for token in prefix:
            start, stop = self._starts[node], self._starts[node + 1]
            edge = bisect_left(self._tokens, token, start, stop)
            if edge == stop or self._tokens[edge] != token:
                return None
            node = edge + 1
        return node

    def allowed(self, prefix: Sequence[int]) -> list[int]:
        node = self._node(prefix)
        if node is None:
            return []
        return self._tokens[self._starts[node] : self._starts[node + 1]].tolist()

    def value(self, sequence: Sequence[int]) -> int | None:
        node = self._node(sequence)
        if node is None or self._ending[node] < 0:
            return None
        return self._values[int(self._ending[node])]

    def __len__(self) -> int:
        return len(self._values)

    def _tensors(self, device: torch.device) -> _TrieTensors:
        if device not in self._on:
            self._on[device] = _TrieTensors(*(getattr(self._cpu, f.name).to(device)
                                              for f in attrs.fields(_TrieTensors)))
        return self._on[device]

    @jaxtyped(typechecker=beartype)
    def children(self, nodes: Int[Tensor, " rows"]
                 ) -> tuple[Int[Tensor, " edges"], Int[Tensor, " edges"]]:
        """Every (row, token) that continues a row's node towards a stored sequence, by row
        and then token."""
        t = self._tensors(nodes.device)
        start = t.child_start[nodes]
        counts = t.child_start[nodes + 1] - start
        total = int(counts.sum())
        rows = torch.arange(len(nodes), device=nodes.device).repeat_interleave(
            counts, output_size=total)
        edges = torch.arange(total, device=nodes.device) + (start - counts.cumsum(0) + counts)[rows]
        return rows, t.edge_token[edges]

    @jaxtyped(typechecker=beartype)
    def mask(self, nodes: Int[Tensor, " rows"], vocab: int) -> Float[Tensor, "rows vocab"]:
        """0 where a token continues a node's prefix towards a stored sequence, -inf elsewhere."""
        rows, tokens = self.children(nodes)
        mask = torch.full((len(nodes), vocab), NEG_INF, device=nodes.device)
        mask[rows, tokens] = 0.0
        return mask

    @jaxtyped(typechecker=beartype)
    def completions(self, nodes: Int[Tensor, " rows"]) -> tuple[
            Bool[Tensor, " rows"], Int[Tensor, "rows longest"], Int[Tensor, " rows"]]:
        """Whether one stored sequence alone passes through each node (so the rest of it is
        the only way on), that rest (padded with -1) and its length."""
        t = self._tensors(nodes.device)
        if len(t.lengths) == 0:  # nothing stored: no node leads anywhere
            return (torch.zeros_like(nodes, dtype=torch.bool), nodes.new_full((len(nodes), 0), -1),
                    torch.zeros_like(nodes))
        unique = t.passing[nodes] == 1
        sequence, depth = t.through[nodes], t.depth[nodes]
        lengths = torch.where(unique, t.lengths[sequence] - depth, 0)
        offsets = torch.arange(self._longest, device=nodes.device)
        rest = t.tokens[((t.offsets[sequence] + depth)[:, None] + offsets).clamp(
            max=max(len(t.tokens) - 1, 0))]
        return unique, torch.where(offsets < lengths[:, None], rest, -1), lengths

    @jaxtyped(typechecker=beartype)
    def advance(self, nodes: Int[Tensor, " rows"], tokens: Int[Tensor, " rows"]
                ) -> Int[Tensor, " rows"]:
        """Each node's child by its token (:attr:`dead` where the trie has no such edge)."""
        t = self._tensors(nodes.device)
        if len(t.edge_key) == 0:
            return torch.full_like(nodes, self.dead)
        key = nodes * self._width + tokens
        where = torch.searchsorted(t.edge_key, key).clamp(max=len(t.edge_key) - 1)
        found = (t.edge_key[where] == key) & (tokens < self._width) & (tokens >= 0)
        return torch.where(found, where + 1, self.dead)
