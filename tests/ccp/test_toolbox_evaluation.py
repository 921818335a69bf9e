"""PCA before evaluation and the AllAtK lists vs sklearn and a brute-force float64 loop."""
import numpy as np
import pytest
from sklearn.decomposition import PCA

from ccp import metrics as ex


def _brute(queries, labels, refs, ref_labels, ks, self_retrieval):
    out = {"map": [], "p": [], "r": [], "map_r": [], "p_r": [], "r_r": []}
    for q in range(len(queries)):
        cand = [j for j in range(len(refs)) if not (self_retrieval and j == q)]
        d = [float(np.sum((queries[q] - refs[j]) ** 2)) for j in cand]
        order = [cand[i] for i in sorted(range(len(cand)), key=lambda i: (d[i], cand[i]))]
        rel = [1.0 if ref_labels[j] == labels[q] else 0.0 for j in order]
        num_pos = int(sum(rel))
        if num_pos == 0:
            continue

        def scores(k):
            hits = sum(rel[:k])
            ap = sum(sum(rel[:i + 1]) / (i + 1) * rel[i] for i in range(min(k, len(rel))))
            return ap / min(num_pos, k), hits / k, float(hits > 0)

        per_k = [scores(k) for k in ks]
        out["map"].append([s[0] for s in per_k])
        out["p"].append([s[1] for s in per_k])
        out["r"].append([s[2] for s in per_k])
        m, p, r = scores(num_pos)
        out["map_r"].append(m)
        out["p_r"].append(p)
        out["r_r"].append(r)
    return {k: np.mean(np.array(v), axis=0) for k, v in out.items()}


@pytest.mark.parametrize("self_retrieval", [True, False])
def test_all_at_k_matches_brute_force(self_retrieval):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    y = rng.integers(0, 6, 40)
    y[0] = 99  # a query without positives is left out
    ks = (1, 2, 4, 8)
    if self_retrieval:
        got = ex.all_at_k(x, y, ks)
        want = _brute(x, y, x, y, ks, True)
    else:
        refs, ref_y = rng.normal(size=(30, 3)), rng.integers(0, 6, 30)
        got = ex.all_at_k(x, y, ks, refs, ref_y)
        want = _brute(x, y, refs, ref_y, ks, False)
    np.testing.assert_allclose(got["map_at_k"], want["map"], rtol=1e-12)
    np.testing.assert_allclose(got["precision_at_k"], want["p"], rtol=1e-12)
    np.testing.assert_allclose(got["recall_at_k"], want["r"], rtol=1e-12)
    np.testing.assert_allclose([got["map_at_r"], got["r_precision"], got["recall_at_r"]],
                               [want["map_r"], want["p_r"], want["r_r"]], rtol=1e-12)


def test_pca_matches_sklearn_and_fits_on_reference():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(50, 6)) @ np.diag([5, 4, 3, 2, 1, 0.5])
    queries = rng.normal(size=(7, 6))
    mean, comps = ex.pca_fit(ref, 3)
    sk = PCA(n_components=3, svd_solver="full").fit(ref)
    np.testing.assert_allclose(mean, sk.mean_, rtol=1e-12)
    # components agree up to sign
    np.testing.assert_allclose(np.abs(comps @ sk.components_.T), np.eye(3), atol=1e-10)
    mine = ex.pca_transform(queries, mean, comps)
    np.testing.assert_allclose(np.abs(mine), np.abs(sk.transform(queries)), atol=1e-10)
    np.testing.assert_allclose(np.abs(ex.pca_project(ref, 3)), np.abs(sk.transform(ref)),
                               atol=1e-10)
    with pytest.raises(ValueError, match="--eval_pca_dim"):
        ex.pca_fit(ref, 7)
    with pytest.raises(ValueError, match="--eval_at_k"):
        ex.all_at_k(ref, np.zeros(50), ks=(0, 1))
