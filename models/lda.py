r"""Latent Dirichlet allocation (Blei, Ng, Jordan 2003) as a Pyro program on count vectors.

The generative process, with :math:`K` topics over a vocabulary of :math:`V` words and
symmetric Dirichlet priors,

.. math::

    \beta_k &\sim \mathrm{Dirichlet}(\eta \mathbf{1}_V), \qquad k = 1, \dots, K,\\
    \theta_d &\sim \mathrm{Dirichlet}(\alpha \mathbf{1}_K), \qquad d = 1, \dots, D,\\
    z_{dn} \mid \theta_d &\sim \mathrm{Categorical}(\theta_d), \qquad
    w_{dn} \mid z_{dn}, \beta \sim \mathrm{Categorical}(\beta_{z_{dn}}).

Summing :math:`z_{dn}` out gives :math:`p(w_{dn} = w \mid \theta_d, \beta) = \sum_k
\theta_{dk} \beta_{kw} = (\theta_d \beta)_w`, the same for every token of word :math:`w`
in document :math:`d`. The words of a document therefore enter only through its counts
:math:`n_{dw}`:

.. math::

    \log p(w_{d,1:N_d} \mid \theta_d, \beta) = \sum_{w=1}^V n_{dw} \log (\theta_d \beta)_w.

Why counts and a collapsed :math:`z`. (1) The per-token form with ``"z"`` enumerated costs
:math:`O(N_d K)` per document and a separate site per token position; on counts it is
one :math:`(D \times K)(K \times V)` product, :math:`O(DKV)` with no Python loop.
(2) Exchangeable tokens in a *given* order carry no multinomial coefficient, so
:func:`model` adds the expression above with ``pyro.factor`` rather than a
``Multinomial`` (whose :math:`\log (N_d! / \prod_w n_{dw}!)` would shift every Pyro ELBO
by a constant against the closed forms of :mod:`guides.lda`). (3) A guide over
:math:`\theta, \beta` only then optimizes the collapsed bound; see :mod:`guides.lda` for
how it relates to the mean-field ELBO of Blei et al. and Hoffman et al.

Data. :func:`generate_corpus` draws a synthetic corpus whose true topics are known;
:func:`load_docword` reads the UCI bag-of-words ``docword`` format (used for the NYTimes,
PubMed, KOS, NIPS and Enron corpora):

.. code-block:: text

    D            number of documents
    W            vocabulary size
    NNZ          number of (document, word) lines that follow
    docID wordID count      one per line, IDs 1-based, count a positive integer

with an optional vocabulary file of ``W`` lines (one word per line).

References

1. D. M. Blei, A. Y. Ng, M. I. Jordan, *Latent Dirichlet Allocation*, JMLR 3, 2003.
2. M. D. Hoffman, D. M. Blei, C. Wang, J. Paisley, *Stochastic Variational Inference*,
   JMLR 14, 2013 (the LDA section).
3. D. Newman, *Bag of Words data set*, UCI Machine Learning Repository, 2008.
"""

import gzip
import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from scipy.optimize import linear_sum_assignment

from models.checks import as_counts, as_int, as_real

__all__ = [
    "LDAPrior",
    "check_concentration",
    "check_counts",
    "check_num_topics",
    "generate_corpus",
    "load_docword",
    "match_topics",
    "model",
    "save_docword",
]


def check_concentration(name: str, value) -> float:
    """A symmetric Dirichlet concentration (``alpha`` or ``eta``) as a positive finite float.

    :raises ValueError: naming ``name`` and the value.
    """
    value = as_real(name, value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be positive and finite, got {value}")
    return value


@dataclass(frozen=True)
class LDAPrior:
    r"""The symmetric Dirichlet concentrations: :math:`\alpha` of :math:`\theta_d`,
    :math:`\eta` of :math:`\beta_k` (each positive and finite, :func:`check_concentration`)."""

    alpha: float
    eta: float

    def __post_init__(self):
        for name in ("alpha", "eta"):
            object.__setattr__(self, name, check_concentration(name, getattr(self, name)))


def check_num_topics(num_topics) -> int:
    """:raises ValueError: unless ``num_topics`` is an integer >= 1."""
    return as_int("num_topics", num_topics)


def check_counts(counts) -> torch.Tensor:
    """Validate a document-term count matrix.

    :param counts: (D, V) array-like of non-negative integers, D, V >= 1.
    :returns: the counts as a floating tensor: a floating tensor keeps its dtype, anything
        else becomes the default dtype.
    :raises ValueError: if ``counts`` is not numeric, not 2-D, empty, or has an entry that
        is negative, not finite or not an integer (the message names the first one).
    """
    dtype = counts.dtype if isinstance(counts, torch.Tensor) and counts.is_floating_point() else None
    counts = as_counts("counts", counts).to(dtype or torch.get_default_dtype())
    if counts.dim() != 2:
        raise ValueError(f"counts must be 2-D (documents x vocabulary), got shape {tuple(counts.shape)}")
    if counts.numel() == 0:
        raise ValueError(f"counts is empty, got shape {tuple(counts.shape)}")
    return counts


def _positive_int(name, value):
    return as_int(name, value)


def generate_corpus(
    num_docs: int, vocab_size: int, num_topics: int, doc_length: int, alpha: float, eta: float, seed: int = 0
) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""Draw a corpus from the LDA generative process (with a local NumPy generator, so
    global random states are left alone).

    Topics :math:`\beta_k \sim \mathrm{Dirichlet}(\eta)`, proportions
    :math:`\theta_d \sim \mathrm{Dirichlet}(\alpha)`, then ``doc_length`` tokens per
    document; the counts are drawn as :math:`n_d \sim \mathrm{Multinomial}(N_d,
    \theta_d \beta)`, which is the distribution of the counts of the token process with
    :math:`z` summed out.

    :param int num_docs: D >= 1.
    :param int vocab_size: V >= 1.
    :param int num_topics: K >= 1.
    :param int doc_length: tokens per document, >= 1.
    :param float alpha: document-topic concentration, > 0.
    :param float eta: topic-word concentration, > 0.
    :param int seed: seed of the local generator.
    :returns: ``(counts, topics)``: (D, V) int64 counts and the true (K, V) float64 topics.
    :raises ValueError: naming the offending argument.
    """
    num_docs, vocab_size, doc_length = (
        _positive_int(name, value)
        for name, value in (("num_docs", num_docs), ("vocab_size", vocab_size), ("doc_length", doc_length))
    )
    num_topics = check_num_topics(num_topics)
    alpha, eta = check_concentration("alpha", alpha), check_concentration("eta", eta)
    rng = np.random.default_rng(int(seed))
    topics = rng.dirichlet(np.full(vocab_size, eta), size=num_topics)
    proportions = rng.dirichlet(np.full(num_topics, alpha), size=num_docs)
    word_probs = proportions @ topics
    word_probs /= word_probs.sum(-1, keepdims=True)
    counts = rng.multinomial(doc_length, word_probs)
    return torch.as_tensor(counts, dtype=torch.int64), torch.as_tensor(topics, dtype=torch.float64)


def _check_topics(name, topics):
    topics = torch.as_tensor(topics, dtype=torch.float64)
    if topics.dim() != 2 or topics.numel() == 0:
        raise ValueError(f"{name} must be a non-empty (K, V) matrix, got shape {tuple(topics.shape)}")
    if not bool((torch.isfinite(topics) & (topics >= 0)).all()) or not bool((topics.sum(-1) > 0).all()):
        raise ValueError(f"{name} must be finite and non-negative with no all-zero row")
    return topics / topics.sum(-1, keepdim=True)


def match_topics(true_topics, topics) -> Tuple[np.ndarray, np.ndarray]:
    r"""Match estimated topics to true ones by the Hungarian algorithm on the Hellinger
    distance :math:`H(p, q) = \sqrt{1 - \sum_w \sqrt{p_w q_w}} \in [0, 1]`.

    :param true_topics: (K, V) true topic-word distributions.
    :param topics: (K, V) estimates (rows are normalized, so :math:`\lambda_k` itself
        may be passed for :math:`E_q[\beta_k]`).
    :returns: ``(order, distances)``: ``topics[order[k]]`` is matched to
        ``true_topics[k]``, at Hellinger distance ``distances[k]``.
    :raises ValueError: for shapes that differ or rows that are not distributions.
    """
    true_topics, topics = _check_topics("true_topics", true_topics), _check_topics("topics", topics)
    if true_topics.shape != topics.shape:
        raise ValueError(f"true_topics has shape {tuple(true_topics.shape)} but topics has {tuple(topics.shape)}")
    affinity = true_topics.sqrt() @ topics.sqrt().T
    hellinger = (1 - affinity).clamp_min(0).sqrt().numpy()
    rows, order = linear_sum_assignment(hellinger)
    return order, hellinger[rows, order]


def model(counts, num_topics: int, alpha: float, eta: float, subsample_size: Optional[int] = None):
    r"""The Pyro program: ``"beta"`` (K, V) in plate ``"topics"``, ``"theta"`` (D, K) in
    plate ``"documents"`` (both dim -1) and the collapsed word likelihood
    :math:`\sum_w n_{dw} \log(\theta_d\beta)_w` as the factor ``"words"`` per document.

    Runs under ``Trace_ELBO`` (``max_plate_nesting=1``, vectorized particles included: the
    particle dim sits left of the plates and ``theta @ beta`` broadcasts over it).

    :param counts: (D, V) document-term counts (see :func:`check_counts`).
    :param int num_topics: K.
    :param float alpha: symmetric concentration of :math:`\theta_d`.
    :param float eta: symmetric concentration of :math:`\beta_k`.
    :param int subsample_size: documents per step; the ``"documents"`` plate then draws a
        minibatch and scales its terms by D / B (the guide's draw is replayed).
    """
    counts = check_counts(counts)
    num_topics = check_num_topics(num_topics)
    alpha, eta = check_concentration("alpha", alpha), check_concentration("eta", eta)
    num_docs, vocab_size = counts.shape
    dtype = counts.dtype
    with pyro.plate("topics", num_topics, dim=-1):
        beta = pyro.sample("beta", dist.Dirichlet(torch.full((vocab_size,), eta, dtype=dtype)))
    with pyro.plate("documents", num_docs, subsample_size=subsample_size, dim=-1) as index:
        theta = pyro.sample("theta", dist.Dirichlet(torch.full((num_topics,), alpha, dtype=dtype)))
        word_probs = theta @ beta  # (..., B, V): p(w | theta_d, beta) with z summed out
        log_likelihood = (counts[index] * word_probs.clamp_min(torch.finfo(dtype).tiny).log()).sum(-1)
        pyro.factor("words", log_likelihood)


# ---------------------------------------------------------------- UCI docword files


def _open_text(path):
    return gzip.open(path, "rt") if str(path).endswith(".gz") else open(path)


def _read_vocabulary(vocab_path, vocab_size) -> List[str]:
    with _open_text(vocab_path) as f:
        words = [line.strip() for line in f if line.strip()]
    if len(words) != vocab_size:
        raise ValueError(
            f"vocabulary mismatch: {vocab_path} has {len(words)} words but the docword header says W = {vocab_size}"
        )
    return words


def _parse_int(text, what, path, line_number):
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{path}, line {line_number}: {what} {text!r} is not a number") from None
    if not (math.isfinite(value) and value == int(value)):
        raise ValueError(f"{path}, line {line_number}: {what} {text!r} is not an integer")
    return int(value)


def load_docword(path, vocab_path=None) -> Tuple[torch.Tensor, Optional[List[str]]]:
    """Read a UCI bag-of-words ``docword`` file (format in the module docstring; ``.gz``
    is decompressed) into a dense (D, W) count matrix.

    :param path: the docword file.
    :param vocab_path: optional vocabulary file, one word per line, which must have
        exactly W words.
    :returns: ``(counts, vocabulary)``: int64 (D, W) counts and the list of words (or
        ``None`` without ``vocab_path``).
    :raises ValueError: on a malformed header, a vocabulary file whose length is not W, a
        word ID outside 1..W or document ID outside 1..D (vocabulary/corpus mismatch), a
        count that is negative, zero or not an integer, a repeated (document, word) pair,
        or a number of lines other than NNZ; each message names the file and line.
    """
    with _open_text(path) as f:
        lines = [line.split() for line in f]
    lines = [(i + 1, fields) for i, fields in enumerate(lines) if fields]
    if len(lines) < 3 or any(len(fields) != 1 for _, fields in lines[:3]):
        raise ValueError(f"{path}: expected a header of three lines D, W, NNZ")
    num_docs, vocab_size, num_entries = (_parse_int(f[0], name, path, i) for (i, f), name in zip(lines[:3], "DWN"))
    if num_docs < 1 or vocab_size < 1 or num_entries < 0:
        raise ValueError(f"{path}: header D = {num_docs}, W = {vocab_size}, NNZ = {num_entries} is not valid")
    vocabulary = None if vocab_path is None else _read_vocabulary(vocab_path, vocab_size)
    counts = np.zeros((num_docs, vocab_size), dtype=np.int64)
    for line_number, fields in lines[3:]:
        if len(fields) != 3:
            raise ValueError(f"{path}, line {line_number}: expected 'docID wordID count', got {' '.join(fields)!r}")
        doc, word, count = (
            _parse_int(text, what, path, line_number) for text, what in zip(fields, ("docID", "wordID", "count"))
        )
        if not 1 <= word <= vocab_size:
            raise ValueError(
                f"{path}, line {line_number}: vocabulary mismatch: wordID {word} is outside 1..{vocab_size}"
            )
        if not 1 <= doc <= num_docs:
            raise ValueError(f"{path}, line {line_number}: docID {doc} is outside 1..{num_docs}")
        if count <= 0:
            raise ValueError(f"{path}, line {line_number}: count must be a positive integer, got {count}")
        if counts[doc - 1, word - 1]:
            raise ValueError(f"{path}, line {line_number}: (docID {doc}, wordID {word}) is listed twice")
        counts[doc - 1, word - 1] = count
    if len(lines) - 3 != num_entries:
        raise ValueError(f"{path}: header says NNZ = {num_entries} but the file has {len(lines) - 3} entries")
    return torch.as_tensor(counts), vocabulary


def save_docword(path, counts, vocabulary=None, vocab_path=None) -> None:
    """Write ``counts`` in the UCI ``docword`` format (and ``vocabulary`` to
    ``vocab_path``), the inverse of :func:`load_docword`.

    :raises ValueError: for bad counts, or a vocabulary whose length is not V.
    """
    counts = check_counts(counts).to(torch.int64)
    if (vocabulary is None) != (vocab_path is None):
        raise ValueError("give both vocabulary and vocab_path, or neither")
    if vocabulary is not None and len(vocabulary) != counts.shape[1]:
        raise ValueError(f"vocabulary has {len(vocabulary)} words but counts has {counts.shape[1]} columns")
    docs, words = counts.nonzero(as_tuple=True)
    with open(path, "w") as f:
        f.write(f"{counts.shape[0]}\n{counts.shape[1]}\n{len(docs)}\n")
        for d, w in zip(docs.tolist(), words.tolist()):
            f.write(f"{d + 1} {w + 1} {int(counts[d, w])}\n")
    if vocabulary is not None:
        with open(vocab_path, "w") as f:
            f.write("".join(f"{word}\n" for word in vocabulary))
