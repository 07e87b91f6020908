"""TorchRec-shaped input: jagged takes, KJTs from batches, and the backend-fed EmbeddingBagCollection
(sum and mean pooling on the worker, one gradient per looked-up id, duplicates summed by the backend)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingBagCollectionInterface
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from paramserver.config import PSConfig, TableConfig
from trainer.backends import LocalBackend
from trainer.sparse import BackendEmbeddingBagCollection, EmbeddingBagConfig, PoolingType, take_jagged


def _cfg(name, dim, features, pooling=PoolingType.SUM):
    return EmbeddingBagConfig(num_embeddings=100, embedding_dim=dim, name=name, feature_names=features, pooling=pooling)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(-5, 5), max_size=4), max_size=12), st.data())
def test_take_jagged_equals_the_python_definition(bags, data):
    lengths = np.array([len(b) for b in bags], np.int64)
    values = np.array([v for b in bags for v in b], np.int64)
    rows = np.array(data.draw(st.lists(st.integers(0, max(len(bags) - 1, 0)), max_size=10 if bags else 0)), np.int64)
    v, ln = take_jagged(values, lengths, rows)
    assert ln.tolist() == [len(bags[r]) for r in rows]
    assert v.tolist() == [x for r in rows for x in bags[r]]
    if bags:
        lo, hi = sorted(data.draw(st.tuples(st.integers(0, len(bags)), st.integers(0, len(bags)))))
        v, ln = take_jagged(values, lengths, slice(lo, hi))
        assert v.tolist() == [x for b in bags[lo:hi] for x in b] and ln.tolist() == lengths[lo:hi].tolist()


def test_pooling_matches_torchrecs_own_embedding_bag_collection():
    """Same rows, same KJT: sum and mean pooling (empty bags included) equal TorchRec's EBC exactly."""
    tables = [_cfg("user", 4, ["user"]), _cfg("genre", 8, ["genre", "genre2"], PoolingType.MEAN)]
    ref = EmbeddingBagCollection(tables=tables)
    ours = BackendEmbeddingBagCollection(tables)
    assert isinstance(ours, EmbeddingBagCollectionInterface)
    kjt = KeyedJaggedTensor(
        keys=["user", "genre", "genre2"],
        values=torch.tensor([3, 7, 3, 1, 2, 2, 9, 5, 5, 5, 0, 1]),
        lengths=torch.tensor([1, 1, 1, 2, 0, 3, 1, 2, 1]),
    )
    ids = ours.table_ids(kjt)
    assert ids["user"].tolist() == [3, 7, 3] and ids["genre"].tolist() == [1, 2, 2, 9, 5, 5, 5, 0, 1]
    weights = {"user": ref.embedding_bags["user"].weight, "genre": ref.embedding_bags["genre"].weight}
    ours.stage(ids, {t: weights[t].detach()[torch.from_numpy(ids[t])].numpy() for t in ids}, requires_grad=False)
    got, want = ours(kjt).to_dict(), ref(kjt).to_dict()
    assert list(got) == ["user", "genre", "genre2"]
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-6, atol=1e-6)
    assert torch.equal(got["genre"][1], torch.zeros(8))  # an empty bag pools to zeros


def test_gradients_flow_back_per_id_and_the_backend_sums_duplicates():
    """mean pooling over [5, 5, 6]: d(sum of pooled)/d(row) is 1/3 per occurrence; id 5 gets 2/3 in one update."""
    ebc = BackendEmbeddingBagCollection([_cfg("genre", 4, ["genre"], PoolingType.MEAN)])
    backend = LocalBackend(PSConfig(tables=(TableConfig("genre", 4),), optimizer="sgd", learning_rate=1.0))
    kjt = KeyedJaggedTensor(keys=["genre"], values=torch.tensor([5, 5, 6]), lengths=torch.tensor([3]))
    ids = ebc.table_ids(kjt)
    before = backend.wait(backend.pull_many(ids, step=0))
    ebc.stage(ids, before, requires_grad=True)
    ebc(kjt).values().sum().backward()
    grads = ebc.take_grads()
    np.testing.assert_allclose(grads["genre"][1], np.full((3, 4), 1 / 3, np.float32))
    backend.wait(backend.push_many(grads, step=0))
    after = backend.wait(backend.pull_many({"genre": np.array([5, 6])}, step=1))["genre"]
    np.testing.assert_allclose(before["genre"][0] - after[0], np.full(4, 2 / 3), rtol=1e-6)  # SGD, lr 1
    np.testing.assert_allclose(before["genre"][2] - after[1], np.full(4, 1 / 3), rtol=1e-6)


def test_forward_without_staged_rows_says_what_to_do():
    ebc = BackendEmbeddingBagCollection([_cfg("user", 4, ["user"])])
    kjt = KeyedJaggedTensor(keys=["user"], values=torch.tensor([1]), lengths=torch.tensor([1]))
    with pytest.raises(RuntimeError, match="stage"):
        ebc(kjt)
    with pytest.raises(ValueError, match="do not fit"):
        ebc.stage({"user": np.array([1])}, {"user": np.zeros((2, 4), np.float32)}, requires_grad=False)
