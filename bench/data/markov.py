"""``dataset=markov``: a synthetic language with an exactly known entropy rate.

A random order-k Markov chain over a small alphabet of bytes (by default 16 letters 'a'..'p'):
for each of the A^k contexts, the next-symbol distribution is drawn from a symmetric
Dirichlet(``concentration``) (smaller = more predictable). Its entropy rate

    H = sum_c pi(c) H(P(. | c))        (pi: the stationary distribution over contexts)

is the loss of the best possible model, so a target loss just above the floor is reachable at
every batch size: the language counterpart of MNIST-1D.

Every sequence (train and test) is an independent stretch of T + 1 symbols of the stationary
chain (its first k symbols drawn from pi), packed as x = z[:-1], y = z[1:]. At position t a model
sees z_0..z_t; the first k - 1 targets have fewer than k symbols of context, so the Bayes floor
of the mean loss over a sequence is

    floor(T) = (H_k - H_1 + (T - k + 1) H) / T        (H_n: entropy of stationary n-grams),

slightly above H. :meth:`MarkovChain.optimal_loss` gives the Bayes-optimal loss on actual data.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.data.base import ArrayDataset
from bench.data.text import BYTE_VOCAB, unigram_entropy

STREAM_CHAIN, STREAM_TRAIN, STREAM_TEST = 0, 1, 2


def _entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
    """Entropy in nats along ``axis`` (0 log 0 = 0)."""
    logs = np.log(np.where(p > 0, p, 1.0))
    return -(p * logs).sum(axis=axis)


@dataclass(frozen=True)
class MarkovChain:
    """Order-k chain: ``transition[c, x]`` = P(next = x | context index c), where the context
    z_{t-k+1..t} has index sum_i z_{t-k+1+i} A^(k-1-i) (oldest symbol most significant)."""

    order: int
    transition: np.ndarray      # float64 [A**order, A]
    first_symbol: int = ord("a")

    @classmethod
    def random(cls, seed: int, alphabet_size: int = 16, order: int = 2,
               concentration: float = 0.5, first_symbol: int = ord("a")) -> "MarkovChain":
        if order < 1:
            raise ValueError(f"order must be >= 1, got {order}")
        if alphabet_size < 2 or first_symbol < 0 or first_symbol + alphabet_size > BYTE_VOCAB:
            raise ValueError(f"alphabet of {alphabet_size} symbols from byte {first_symbol} "
                             f"must fit in the 256 byte values and have >= 2 symbols")
        if not concentration > 0:
            raise ValueError(f"concentration must be > 0, got {concentration}")
        rng = np.random.default_rng([seed, STREAM_CHAIN])
        p = rng.dirichlet(np.full(alphabet_size, concentration), size=alphabet_size ** order)
        return cls(order, p, first_symbol)

    @property
    def alphabet_size(self) -> int:
        return self.transition.shape[1]

    @property
    def num_contexts(self) -> int:
        return self.transition.shape[0]

    def _next_context(self) -> np.ndarray:
        """[C, A]: the context index after emitting x in context c."""
        a = self.alphabet_size
        return (np.arange(self.num_contexts)[:, None] * a + np.arange(a)[None, :]) % self.num_contexts

    def stationary(self, tol: float = 1e-15, max_iter: int = 100_000) -> np.ndarray:
        """The stationary distribution over contexts (power iteration, float64)."""
        nxt = self._next_context().ravel()
        pi = np.full(self.num_contexts, 1.0 / self.num_contexts)
        for _ in range(max_iter):
            new = np.bincount(nxt, weights=(pi[:, None] * self.transition).ravel(),
                              minlength=self.num_contexts)
            if np.abs(new - pi).sum() < tol:
                return new
            pi = new
        raise ValueError(f"the chain did not mix in {max_iter} steps (concentration too small?)")

    def ngram_probs(self, n: int) -> np.ndarray:
        """Stationary probabilities of n consecutive symbols, n <= order: array [A] * n."""
        if not 1 <= n <= self.order:
            raise ValueError(f"n must be in [1, {self.order}], got {n}")
        joint = self.stationary().reshape((self.alphabet_size,) * self.order)
        return joint.sum(axis=tuple(range(self.order - n)))

    def entropy_rate(self) -> float:
        """H = sum_c pi(c) H(P(. | c)), nats per symbol."""
        return float(self.stationary() @ _entropy(self.transition))

    def block_entropy(self, n: int) -> float:
        return float(_entropy(self.ngram_probs(n).ravel()))

    def loss_floor(self, context: int) -> float:
        """Bayes-optimal mean loss (nats/token) over the T targets of a packed sequence."""
        if context < self.order - 1:
            raise ValueError(f"context {context} is shorter than order - 1 = {self.order - 1}")
        k = self.order
        return (self.block_entropy(k) - self.block_entropy(1)
                + (context - k + 1) * self.entropy_rate()) / context

    def sample(self, num_sequences: int, length: int, rng: np.random.Generator) -> np.ndarray:
        """uint8 [num_sequences, length] stretches of the stationary chain (byte values)."""
        if length < self.order:
            raise ValueError(f"length {length} is shorter than the order {self.order}")
        a, k = self.alphabet_size, self.order
        ctx = rng.choice(self.num_contexts, size=num_sequences, p=self.stationary())
        out = np.empty((num_sequences, length), np.int64)
        for i in range(k):                                  # digits of the first context
            out[:, i] = (ctx // a ** (k - 1 - i)) % a
        cumulative = np.cumsum(self.transition, axis=1)
        cumulative[:, -1] = 1.0                              # guard against rounding below u
        for t in range(k, length):
            u = rng.random(num_sequences)
            symbol = (u[:, None] >= cumulative[ctx]).sum(axis=1)
            out[:, t] = symbol
            ctx = (ctx * a + symbol) % self.num_contexts
        return (out + self.first_symbol).astype(np.uint8)

    def optimal_loss(self, x: np.ndarray, y: np.ndarray) -> float:
        """Mean Bayes-optimal loss -log P(y_t | x_0..x_t) over all targets of packed data."""
        a, k = self.alphabet_size, self.order
        z = np.concatenate([x[:, :1], y], axis=1).astype(np.int64) - self.first_symbol
        nll = np.zeros(y.shape, np.float64)
        for t in range(y.shape[1]):                          # target z_{t+1}
            if t + 1 >= k:
                ctx = sum(z[:, t + 1 - k + i] * a ** (k - 1 - i) for i in range(k))
                nll[:, t] = -np.log(self.transition[ctx, z[:, t + 1]])
            else:                                            # context shorter than k
                joint = self.ngram_probs(t + 2)[tuple(z[:, j] for j in range(t + 2))]
                prefix = self.ngram_probs(t + 1)[tuple(z[:, j] for j in range(t + 1))]
                nll[:, t] = -np.log(joint / prefix)
        return float(nll.mean())


def load_markov(context: int = 128, num_train: int = 8192, num_test: int = 1024, seed: int = 0,
                alphabet_size: int = 16, order: int = 2, concentration: float = 0.5
                ) -> tuple[ArrayDataset, dict[str, Any]]:
    """(packed dataset, provenance with the exact entropy rate and loss floor)."""
    chain = MarkovChain.random(seed, alphabet_size, order, concentration)
    train = chain.sample(num_train, context + 1, np.random.default_rng([seed, STREAM_TRAIN]))
    test = chain.sample(num_test, context + 1, np.random.default_rng([seed, STREAM_TEST]))

    def xy(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return z[:, :-1].astype(np.int32), z[:, 1:].astype(np.int32)

    (x_train, y_train), (x_test, y_test) = xy(train), xy(test)
    dataset = ArrayDataset("markov", x_train, y_train, x_test, y_test, num_classes=BYTE_VOCAB)
    rate = chain.entropy_rate()
    floor = chain.loss_floor(context)
    digest = hashlib.sha256(train.tobytes())
    digest.update(test.tobytes())
    provenance = {
        "source": f"random order-{order} Markov chain over {alphabet_size} byte symbols "
                  f"(Dirichlet({concentration}) transitions, seed {seed})",
        "tokenizer": "bytes, vocabulary 256",
        "seed": seed, "alphabet_size": alphabet_size, "order": order,
        "concentration": concentration, "context": context,
        "entropy_rate_nats": rate, "entropy_rate_bits": rate / math.log(2.0),
        "loss_floor_nats": floor, "loss_floor_bits": floor / math.log(2.0),
        "stationary_unigram_entropy_nats": chain.block_entropy(1),
        "train_unigram_entropy_nats": unigram_entropy(y_train, BYTE_VOCAB),
        "sha256": digest.hexdigest(), "num_tokens": int(train.size + test.size),
        "train_sequences": num_train, "test_sequences": num_test,
    }
    return dataset, provenance
