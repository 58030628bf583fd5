import numpy as np
import torch

from s2mts2.eval.knn import knn_scores


def test_knn_scores_match_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    train = torch.randn(50, 8, generator=g)
    labels = (torch.rand(50, 3, generator=g) > 0.5).float()
    labels[3, 1] = float("nan")
    query = torch.randn(7, 8, generator=g)
    got = knn_scores(train, labels, query, k=5, temperature=0.1, chunk=3)

    tn = train.numpy() / np.linalg.norm(train.numpy(), axis=1, keepdims=True)
    y = np.nan_to_num(labels.numpy())
    for i, q in enumerate(query.numpy()):
        sim = tn @ (q / np.linalg.norm(q))
        nn = np.argsort(-sim)[:5]
        w = np.exp(sim[nn] / 0.1)
        expected = (w[:, None] * y[nn]).sum(0) / w.sum()
        np.testing.assert_allclose(got[i].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_knn_separates_clusters_and_caps_k():
    centres = torch.eye(4)[:2] * 5
    train = torch.cat(
        [centres[0] + 0.1 * torch.randn(10, 4), centres[1] + 0.1 * torch.randn(10, 4)]
    )
    labels = torch.cat(
        [torch.tensor([[1.0, 0.0]]).repeat(10, 1), torch.tensor([[0.0, 1.0]]).repeat(10, 1)]
    )
    scores = knn_scores(train, labels, centres, k=100)  # k larger than the training set
    assert scores[0, 0] > 0.9 and scores[1, 1] > 0.9


def test_an_unknown_label_of_a_neighbour_counts_as_negative():
    train = torch.eye(2)
    labels = torch.tensor([[float("nan"), 1.0], [1.0, 0.0]])
    scores = knn_scores(train, labels, torch.tensor([[1.0, 0.0]]), k=1)
    assert scores.tolist() == [[0.0, 1.0]]
