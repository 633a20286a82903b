"""Per-example answer log-likelihoods: the one quantity training, objectives and metrics share.

For an example with answer tokens a_1..a_T (EOS included) after prompt x:

    log pi(a | x) = sum_t log p(a_t | x, a_<t)          (sequence log-likelihood)
    p_norm(a | x) = exp(log pi(a | x) / T)               (TOFU's length-normalised probability)

Exact match is teacher-forced: every answer token is the argmax at its position. That is the same
as "greedy decoding reproduces the answer and then stops", because greedy decoding follows the
argmax and would emit exactly those tokens.

Shared tokens (:func:`shared_prefix_scores`): attention is causal, so the keys, values and
logits of a position do not depend on anything after it. Every answer scored under one question
(answer, paraphrase, perturbed answers, options) therefore reuses one run of its prompt: the
prompt's key/value cache is copied across the answers' batch. Answers that begin alike (a
paraphrase and the perturbed answers of one template often do) also share their common tokens:
one question's answers form a radix tree, each node run once on its parent's cache. The numbers
are those of running each prompt + answer whole (up to float rounding), as in prefix-sharing
inference (Juravsky et al. 2024, Hydragen, arXiv 2402.05099; Zheng et al. 2024, SGLang's
RadixAttention, arXiv 2312.07104).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from unlearn.data.format import IGNORE, Example
from unlearn.errors import require


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of the next-token labels and the mask of scored positions.

    ``logits`` [B, L, V] and ``labels`` [B, L] aligned as the model's input; position t predicts
    label t+1. Returns ``(logp [B, L-1], mask [B, L-1])`` in float32.
    """
    logits = logits[:, :-1].float()
    target = labels[:, 1:]
    mask = target != IGNORE
    logp = torch.log_softmax(logits, dim=-1)
    picked = logp.gather(-1, target.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return picked * mask, mask


def sequence_logprob(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(log pi(a|x) [B], answer length T [B])`` for a collated batch."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    logp, mask = token_logprobs(out.logits, batch["labels"])
    return logp.sum(-1), mask.sum(-1)


@dataclass
class AnswerStats:
    """Per-example numbers (float32 tensors on CPU), one entry per example."""

    logprob: torch.Tensor   # log pi(a|x)
    length: torch.Tensor    # number of answer tokens T
    exact: torch.Tensor     # 1.0 where every answer token is the argmax
    token_logp: list | None = None     # per example (when asked): log p of each scored token
    token_moments: list | None = None  # per example (when asked): (mu, var) at each scored token

    @property
    def p_norm(self) -> torch.Tensor:
        return torch.exp(self.logprob / self.length.clamp_min(1))

    @property
    def mean_nll(self) -> torch.Tensor:
        return -self.logprob / self.length.clamp_min(1)


PADDING_SIDES = ("right", "left")


def prefix_cut(example: Example) -> int:
    """Where an example splits into a shareable prefix and the tail that must be run per example:
    one before its first scored position f (the first t >= 1 whose label is not ignored), so the
    tail's first token is the one whose logits predict label f; ``len - 1`` when nothing is
    scored (the tail is then one unscored token). For :func:`~unlearn.data.format.encode_qa`
    examples the prefix is the prompt without its last token, the same for every answer of a
    question."""
    labels = example.labels
    first = next((t for t in range(1, len(labels)) if labels[t] != IGNORE), len(labels))
    return max(first - 1, 0)


def _pad(rows: Sequence[Sequence[int]], value: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values [n, width], mask [n, width])`` of ragged rows padded on ``side``."""
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        cols = slice(width - len(r), width) if side == "left" else slice(0, len(r))
        out[i, cols] = torch.tensor(list(r), dtype=torch.long)
        mask[i, cols] = 1
    return out, mask


def _question_batches(prefixes: Sequence[tuple[int, ...]], tails: Sequence[int], batch_size: int
                      ) -> list[list[tuple[int, ...]]]:
    """Distinct prefixes, longest first, in batches of at most ``batch_size``; an empty prefix
    (plain text: nothing to share) never shares a batch with a non-empty one."""
    longest: dict[tuple[int, ...], int] = {}
    for p, n in zip(prefixes, tails):
        longest[p] = max(longest.get(p, 0), n)
    keys = sorted(longest, key=lambda p: (-len(p), -longest[p]))
    out: list[list[tuple[int, ...]]] = []
    for p in keys:
        if out and len(out[-1]) < batch_size and (len(p) > 0) == (len(out[-1][0]) > 0):
            out[-1].append(p)
        else:
            out.append([p])
    return out


@dataclass
class _Node:
    """A maximal run of tail tokens that a set of examples share (a radix-tree edge).

    ``tokens`` start at tail offset ``start``; ``parent`` is a node index, or -1 for the
    question's prefix (row ``question`` of the prefix cache); ``ends`` are the examples whose tail
    ends with this node. ``inner``: (log p, hit) of each token after the first, predicted from
    the one before; ``to_child``: the same for each child's first token, predicted from this
    node's last token; ``moments``: (mu, var) of the log-probabilities at each position."""

    tokens: list[int]
    parent: int
    question: int
    start: int
    level: int
    children: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    inner: tuple | None = None
    to_child: dict = field(default_factory=dict)
    moments: tuple | None = None


MIN_SHARED = 4      # a shared run shorter than this is copied into its branches (less padding, fewer levels)
SAME_WIDTH = 0.7    # a chunk of nodes holds only nodes at least this fraction as long as its longest


def _radix(tails: dict[int, list[int]], question: int, nodes: list[_Node]) -> None:
    """Append the radix tree of one question's tails (example -> tail tokens) to ``nodes``.

    A run of fewer than :data:`MIN_SHARED` tokens shared by several branches (and ending no
    example) is not a node of its own: each branch carries it. Running a short run once saves
    less than the padding and the extra level it costs."""
    todo = [(list(tails), 0, 0, -1, 1)]        # members, where they part, where their node starts, parent, level
    while todo:
        members, start, begin, parent, level = todo.pop()
        groups: dict[int, list[int]] = {}
        for e in members:
            if len(tails[e]) > start:
                groups.setdefault(tails[e][start], []).append(e)
        for group in groups.values():
            end = start + 1
            while all(len(tails[e]) > end for e in group) and len({tails[e][end] for e in group}) == 1:
                end += 1
            ends = [e for e in group if len(tails[e]) == end]
            rest = [e for e in group if len(tails[e]) > end]
            if rest and not ends and end - begin < MIN_SHARED:
                todo.append((rest, end, begin, parent, level))     # too short to share: the branches carry it
                continue
            nodes.append(_Node(tails[group[0]][begin:end], parent, question, begin, level, ends=ends))
            index = len(nodes) - 1
            if parent >= 0:
                nodes[parent].children.append(index)
            if rest:
                todo.append((rest, end, end, index, level + 1))


def _chunks(todo: list[int], nodes: list[_Node], batch_size: int) -> list[list[int]]:
    """Nodes (longest first) in chunks of at most ``batch_size``, each holding nodes at least
    :data:`SAME_WIDTH` as long as its first, so little of a chunk is padding."""
    out: list[list[int]] = []
    for n in todo:
        if out and len(out[-1]) < batch_size and len(nodes[n].tokens) >= SAME_WIDTH * len(nodes[out[-1][0]].tokens):
            out[-1].append(n)
        else:
            out.append([n])
    return out


def _gather(sources: Sequence[tuple], picks: Sequence[tuple[int, int]], side: str, config):
    """A ``DynamicCache`` and its mask [n, W] holding, per pick ``(source, row)``, the real (unmasked)
    key/value columns of that row of ``sources[source] = (cache, mask)``, padded on ``side``.
    Cached keys carry their rotary positions, so moving columns changes nothing attention sees."""
    from transformers import DynamicCache

    cols = [sources[s][1][r].nonzero().flatten() for s, r in picks]
    width = max((len(c) for c in cols), default=0)
    mask = torch.zeros(len(picks), width, dtype=torch.long)
    layers = []
    for layer in range(len(sources[picks[0][0]][0].layers)):
        first = sources[picks[0][0]][0].layers[layer].keys
        keys = first.new_zeros((len(picks), first.shape[1], width, first.shape[3]))
        values = torch.zeros_like(keys)
        for i, ((s, r), c) in enumerate(zip(picks, cols)):
            at = slice(width - len(c), width) if side == "left" else slice(0, len(c))
            src = sources[s][0].layers[layer]
            keys[i, :, at] = src.keys[r][:, c]
            values[i, :, at] = src.values[r][:, c]
            mask[i, at] = 1
        layers.append((keys, values))
    return DynamicCache(layers, config=config), mask


def _transitions(node: _Node, logits: torch.Tensor, nodes: list[_Node], moments: bool) -> None:
    """Fill ``node.inner``, ``node.to_child`` (and ``node.moments``) from its logits [n, V]."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    best = logp.argmax(-1)
    nxt = torch.tensor(node.tokens[1:], dtype=torch.long, device=logp.device)
    inner = logp[:-1].gather(-1, nxt.unsqueeze(-1)).squeeze(-1)
    node.inner = (inner.cpu(), (best[:-1] == nxt).cpu())
    for c in node.children:
        token = nodes[c].tokens[0]
        node.to_child[c] = (float(logp[-1, token]), bool(best[-1] == token))
    if moments:
        p = logp.exp()
        mu = (p * logp).sum(-1)
        node.moments = (mu.cpu(), ((p * logp.square()).sum(-1) - mu.square()).cpu())


def _flush(pending: list, split, nodes: list[_Node], wants: list[bool]) -> None:
    """Run the output layer on the pending nodes' hidden states in one block, then fill their
    transitions (:func:`_transitions`); empties ``pending``."""
    if not pending:
        return
    logits = split[1](torch.cat([h for _, h in pending]))
    at = 0
    for n, h in pending:
        _transitions(nodes[n], logits[at:at + len(h)], nodes, wants[n])
        at += len(h)
    pending.clear()


@dataclass
class TailScores:
    """Per example: log p of each tail token after the first (float32 [T-1]), whether it was the
    argmax, and (when asked) the Min-K%++ moments (mu, var) of the distribution it was drawn from."""

    logp: torch.Tensor
    hit: torch.Tensor
    mu: torch.Tensor | None = None
    var: torch.Tensor | None = None


def _path_scores(nodes: list[_Node], leaf: int, moments: bool) -> TailScores:
    path = []
    while leaf >= 0:
        path.append(leaf)
        leaf = nodes[leaf].parent
    path.reverse()
    logp, hit, mu, var = [], [], [], []
    for k, n in enumerate(path):
        node = nodes[n]
        logp.append(node.inner[0])
        hit.append(node.inner[1])
        if moments:
            mu.append(node.moments[0][:-1])
            var.append(node.moments[1][:-1])
        if k + 1 < len(path):
            lp, h = node.to_child[path[k + 1]]
            logp.append(torch.tensor([lp]))
            hit.append(torch.tensor([h]))
            if moments:
                mu.append(node.moments[0][-1:])
                var.append(node.moments[1][-1:])
    cat = lambda xs: torch.cat(xs) if xs else torch.zeros(0)  # noqa: E731
    return TailScores(cat(logp), cat(hit).bool(), cat(mu) if moments else None, cat(var) if moments else None)


HEAD_BLOCK = 512    # answer positions per output-layer call (a large matrix product is efficient; memory N x V)
LOGIT_CHANGES = ("final_logit_softcapping", "logit_scale", "logits_scaling")  # config fields that alter logits


def _split_head(model):
    """``(decoder, output layer)`` when the model's logits are just the output layer applied to the
    decoder's last hidden states (then the output layer can run on the real answer positions only,
    in large blocks), else None (the model's own forward is used)."""
    config = getattr(model, "config", None)
    if any(getattr(config, name, None) not in (None, 1, 1.0) for name in LOGIT_CHANGES):
        return None
    get_decoder, get_head = getattr(model, "get_decoder", None), getattr(model, "get_output_embeddings", None)
    decoder = get_decoder() if callable(get_decoder) else None
    head = get_head() if callable(get_head) else None
    return (decoder, head) if isinstance(decoder, torch.nn.Module) and isinstance(head, torch.nn.Module) else None


@torch.no_grad()
def shared_prefix_scores(model, examples: Sequence[Example], pad_id: int, batch_size: int = 64,
                         padding_side: str = "right", moments: Sequence[bool] | None = None):
    """Score every example with each shared token run once; yield ``(example, cut, TailScores)``.

    Two levels of sharing, both exact because attention is causal (a position's keys, values and
    logits depend only on the tokens up to it):

    1. the prefix (:func:`prefix_cut`: the prompt without its last token) of up to ``batch_size``
       questions runs once, padded on ``padding_side``, keeping its keys/values;
    2. the tails (the rest: the prompt's last token and the answer) of the examples of those
       questions form a radix tree per question: answers that begin alike (a paraphrase and the
       perturbed answers of one template often do) share their common tokens. The tree runs level
       by level, in chunks of at most ``batch_size`` nodes; each node continues its parent's
       cached keys/values (:func:`_gather`: only the parent's real columns) with position ids
       continuing the parent's length, so padding anywhere changes nothing.

    Each node's logits give log p of its next tokens (inside the node, and each child's first
    token); an example's scores are those along its path. Where the logits are the output layer on
    the last hidden states (:func:`_split_head`), the output layer runs only on real answer
    positions, :data:`HEAD_BLOCK` at a time, not on padding or prompt positions. ``moments[i]`` asks for example i's
    Min-K%++ moments. Memory: one question batch's prefix cache plus two levels of node caches."""
    require(padding_side in PADDING_SIDES,
            f"padding_side must be one of {', '.join(PADDING_SIDES)}, got {padding_side!r}")
    device = next(model.parameters()).device
    config = getattr(model, "config", None)
    split = _split_head(model)
    moments = [False] * len(examples) if moments is None else list(moments)
    cuts = [prefix_cut(e) for e in examples]
    prefixes = [tuple(e.input_ids[:c]) for e, c in zip(examples, cuts)]
    tails = [len(e.input_ids) - c for e, c in zip(examples, cuts)]
    members: dict[tuple[int, ...], list[int]] = {}
    for i, p in enumerate(prefixes):
        members.setdefault(p, []).append(i)
    for batch in _question_batches(prefixes, tails, batch_size):
        lengths = torch.tensor([len(p) for p in batch])
        sources: list[tuple] = []
        if lengths.max() > 0:
            ids, prefix_mask = _pad(batch, pad_id, padding_side)
            positions = (prefix_mask.cumsum(-1) - 1).clamp_min(0)
            inputs = dict(input_ids=ids.to(device), attention_mask=prefix_mask.to(device),
                          position_ids=positions.to(device), use_cache=True)
            cache = split[0](**inputs).cache if split else model(**inputs, logits_to_keep=1).cache
            sources = [(cache, prefix_mask)]
        nodes: list[_Node] = []
        for q, p in enumerate(batch):
            _radix({i: examples[i].input_ids[cuts[i]:] for i in members[p]}, q, nodes)
        wants = _wanted(nodes, moments)
        place: dict[int, tuple[int, int]] = {}          # node -> (source, row) of its cached path
        pending: list[tuple[int, torch.Tensor]] = []    # (node, hidden states) awaiting the output layer
        level = 1
        while True:
            todo = sorted((n for n, node in enumerate(nodes) if node.level == level),
                          key=lambda n: -len(nodes[n].tokens))
            if not todo:
                break
            new_sources: list[tuple] = []
            for chunk in _chunks(todo, nodes, batch_size):
                picks = [place[nodes[n].parent] if nodes[n].parent >= 0 else (0, nodes[n].question) for n in chunk]
                past, past_mask = (_gather(sources, picks, padding_side, config) if sources
                                   else (None, torch.zeros(len(chunk), 0, dtype=torch.long)))
                ids, seg_mask = _pad([nodes[n].tokens for n in chunk], pad_id, padding_side)
                done = past_mask.sum(-1, keepdim=True)
                positions = done + (seg_mask.cumsum(-1) - 1).clamp_min(0)
                mask = torch.cat([past_mask, seg_mask], dim=1)
                inputs = dict(input_ids=ids.to(device), attention_mask=mask.to(device),
                              position_ids=positions.to(device), cache=past, use_cache=True)
                out = split[0](**inputs) if split else model(**inputs)
                for row, n in enumerate(chunk):
                    real = seg_mask[row].nonzero().flatten().to(device)
                    if split:   # hidden states now, the output layer later in large blocks
                        pending.append((n, out.last_hidden_state[row, real]))
                    else:
                        _transitions(nodes[n], out.logits[row, real], nodes, wants[n])
                    place[n] = (len(new_sources), row)
                new_sources.append((out.cache, mask))
                if sum(len(h) for _, h in pending) >= HEAD_BLOCK:
                    _flush(pending, split, nodes, wants)
            sources = new_sources
            level += 1
        _flush(pending, split, nodes, wants)
        for n, node in enumerate(nodes):
            for e in node.ends:
                yield e, cuts[e], _path_scores(nodes, n, moments[e])


def _wanted(nodes: list[_Node], moments: Sequence[bool]) -> list[bool]:
    """Per node: whether an example whose path runs through it asked for token scores (one pass,
    children first: :func:`_radix` appends a child after its parent)."""
    wants = [any(moments[e] for e in node.ends) for node in nodes]
    for n in range(len(nodes) - 1, -1, -1):
        if wants[n] and nodes[n].parent >= 0:
            wants[nodes[n].parent] = True
    return wants


@torch.no_grad()
def answer_stats(model, examples: Sequence[Example], pad_id: int, batch_size: int = 64,
                 padding_side: str = "right", tokens: Sequence[bool] | None = None) -> AnswerStats:
    """Score every example's answer under ``model`` (eval mode, no gradients), each shared token
    once (:func:`shared_prefix_scores`). ``tokens[i]`` asks for example i's per-token scores:
    ``AnswerStats.token_logp[i]`` (log p of each scored token, EOS included) and
    ``AnswerStats.token_moments[i]`` ((mu, var) of the distributions they were drawn from)."""
    was_training = model.training
    model.eval()
    logprob, length, exact = (torch.zeros(len(examples)) for _ in range(3))
    token_logp: list = [None] * len(examples)
    token_moments: list = [None] * len(examples)
    try:
        for e, cut, scores in shared_prefix_scores(model, examples, pad_id, batch_size, padding_side, tokens):
            scored = torch.tensor([x != IGNORE for x in examples[e].labels[cut + 1:]], dtype=torch.bool)
            logprob[e] = scores.logp[scored].sum()
            length[e] = scored.sum()
            exact[e] = float(scores.hit[scored].all())
            if scores.mu is not None:
                token_logp[e] = scores.logp[scored].float()
                token_moments[e] = (scores.mu[scored].float(), scores.var[scored].float())
    finally:
        model.train(was_training)
    return AnswerStats(logprob, length, exact, token_logp, token_moments)
