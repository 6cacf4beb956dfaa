"""Tests of evaluation.metrics against a brute-force reference and hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from xmr.evaluation.metrics import (
    MISS_RANK,
    hard_negative_accuracy,
    image_to_text_ranks,
    image_to_text_ranks_from_lists,
    image_to_text_recall,
    image_to_text_recall_from_lists,
    recall_at_ks,
    rerank_ceiling,
    retrieval_recall,
    stable_top_k,
    text_to_image_ranks,
    text_to_image_ranks_from_lists,
    text_to_image_recall,
    text_to_image_recall_from_lists,
)

KS = (1, 2, 3, 5, 10)

# ---------------------------------------------------------------------------------------------
# Brute-force reference: explicit loops and Python's stable sort.
# ---------------------------------------------------------------------------------------------


def ref_order(row) -> list[int]:
    """Item indices best first; sorted() is stable, so equal scores keep ascending index order."""
    return sorted(range(len(row)), key=lambda j: -float(row[j]))


def ref_t2i_ranks(scores_t2i, t2i) -> list[int]:
    return [ref_order(scores_t2i[q]).index(int(t2i[q])) for q in range(len(t2i))]


def ref_i2t_ranks(scores_i2t, t2i) -> list[int]:
    ranks = []
    for i in range(len(scores_i2t)):
        order = ref_order(scores_i2t[i])
        ranks.append(next(p for p, t in enumerate(order) if int(t2i[t]) == i))
    return ranks


def ref_recall(ranks, ks) -> dict[str, float]:
    out = {}
    for k in ks:
        hits = 0
        for r in ranks:
            if r < k:
                hits += 1
        out[f"R@{k}"] = 100.0 * hits / len(ranks)
    return out


def random_case(seed: int, ties: bool):
    """Random scores, 1..8 captions per image (so some > 5), captions shuffled across images."""
    rng = np.random.default_rng(seed)
    n_images = int(rng.integers(1, 25))
    counts = rng.integers(1, 9, size=n_images)
    t2i = rng.permutation(np.repeat(np.arange(n_images), counts))
    n_texts = t2i.size
    if ties:  # integer-valued scores in a small range: many exact ties
        scores = rng.integers(0, 4, size=(n_texts, n_images)).astype(np.float32)
    else:
        scores = rng.standard_normal((n_texts, n_images))
    return scores, t2i


# ---------------------------------------------------------------------------------------------
# Dense scores vs. reference
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ties", [True, False])
@pytest.mark.parametrize("seed", range(12))
def test_dense_matches_reference(seed, ties):
    scores, t2i = random_case(seed, ties)
    exp_t2i = ref_t2i_ranks(scores, t2i)
    exp_i2t = ref_i2t_ranks(scores.T, t2i)
    for chunk_size in (None, 1, 3):
        got_t2i = text_to_image_ranks(scores, t2i, chunk_size=chunk_size)
        got_i2t = image_to_text_ranks(scores.T, t2i, chunk_size=chunk_size)
        assert got_t2i.tolist() == exp_t2i
        assert got_i2t.tolist() == exp_i2t
    assert text_to_image_recall(scores, t2i, KS) == pytest.approx(ref_recall(exp_t2i, KS))
    assert image_to_text_recall(scores.T, t2i, KS) == pytest.approx(ref_recall(exp_i2t, KS))


def test_integer_scores_and_asymmetric_i2t_matrix():
    rng = np.random.default_rng(99)
    t2i = rng.permutation(np.repeat(np.arange(10), rng.integers(1, 7, size=10)))
    s_t2i = rng.integers(-2, 3, size=(t2i.size, 10))  # int dtype, lots of ties
    s_i2t = rng.integers(-2, 3, size=(10, t2i.size))  # unrelated to s_t2i.T
    both = retrieval_recall(s_t2i, t2i, KS, scores_i2t=s_i2t)
    assert both["text_to_image"] == pytest.approx(ref_recall(ref_t2i_ranks(s_t2i, t2i), KS))
    assert both["image_to_text"] == pytest.approx(ref_recall(ref_i2t_ranks(s_i2t, t2i), KS))
    sym = retrieval_recall(s_t2i, t2i, KS)  # default: transpose of scores_t2i
    assert sym["image_to_text"] == pytest.approx(ref_recall(ref_i2t_ranks(s_t2i.T, t2i), KS))


def test_hand_built_case():
    # 3 images, 5 captions: captions 0,1 -> image 0; caption 2 -> image 1; captions 3,4 -> image 2.
    t2i = np.array([0, 0, 1, 2, 2])
    scores_t2i = np.array(
        [
            #  img0  img1  img2
            [0.90, 0.10, 0.20],  # c0 (img0): 0.9 is the top              -> rank 0
            [0.30, 0.50, 0.30],  # c1 (img0): img1 higher; img2 ties but
            #                      has a higher index, so not ahead       -> rank 1
            [0.40, 0.50, 0.10],  # c2 (img1): 0.5 is the top              -> rank 0
            [0.75, 0.80, 0.70],  # c3 (img2): img0, img1 higher           -> rank 2
            [0.60, 0.60, 0.60],  # c4 (img2): img0, img1 tie, lower index -> rank 2
        ]
    )
    # text->image ranks [0, 1, 0, 2, 2]: R@1 = 2/5, R@2 = 3/5, R@3 = R@4 = 5/5.
    assert text_to_image_ranks(scores_t2i, t2i).tolist() == [0, 1, 0, 2, 2]
    assert text_to_image_recall(scores_t2i, t2i, (1, 2, 3, 4)) == pytest.approx(
        {"R@1": 40.0, "R@2": 60.0, "R@3": 100.0, "R@4": 100.0}
    )
    # image->text on the transpose (rows = images, columns = texts c0..c4):
    #   img0: [0.90 0.30 0.40 0.75 0.60], captions {c0, c1}: c0 = 0.9 is the top   -> rank 0
    #   img1: [0.10 0.50 0.50 0.80 0.60], caption {c2} = 0.5: c3, c4 higher, c1 ties
    #         with a lower index                                                  -> rank 3
    #   img2: [0.20 0.30 0.10 0.70 0.60], captions {c3, c4}: c3 = 0.7 is the top  -> rank 0
    # ranks [0, 3, 0]: R@1 = R@2 = R@3 = 2/3, R@4 = 3/3.
    assert image_to_text_ranks(scores_t2i.T, t2i).tolist() == [0, 3, 0]
    assert image_to_text_recall(scores_t2i.T, t2i, (1, 2, 3, 4)) == pytest.approx(
        {"R@1": 200 / 3, "R@2": 200 / 3, "R@3": 200 / 3, "R@4": 100.0}
    )
    # Default ks are (1, 5, 10).
    assert list(text_to_image_recall(scores_t2i, t2i)) == ["R@1", "R@5", "R@10"]


def test_recall_is_percent_of_queries():
    assert recall_at_ks(np.array([0, 4, 9, MISS_RANK]), (1, 5, 10)) == {
        "R@1": 25.0,
        "R@5": 50.0,
        "R@10": 75.0,
    }


def test_bad_inputs_raise():
    t2i = np.array([0, 0, 2])  # image 1 has no caption
    with pytest.raises(ValueError, match="no caption"):
        image_to_text_ranks(np.zeros((3, 3)), t2i)
    with pytest.raises(ValueError, match="shape"):
        text_to_image_ranks(np.zeros((4, 3)), t2i)
    with pytest.raises(ValueError, match="only 2 images"):
        text_to_image_ranks(np.zeros((3, 2)), t2i)
    nan = np.zeros((3, 3))
    nan[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        text_to_image_ranks(nan, t2i)
    with pytest.raises(ValueError, match="ks"):
        recall_at_ks(np.array([0]), (0,))


# ---------------------------------------------------------------------------------------------
# Ranked candidate lists
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
def test_lists_match_dense_at_full_k_and_never_exceed_it(seed):
    scores, t2i = random_case(seed, ties=True)
    n_texts, n_images = scores.shape
    dense_t2i = text_to_image_ranks(scores, t2i)
    dense_i2t = image_to_text_ranks(scores.T, t2i)

    # K = n: the stable top-n list is the full ordering, so the ranks are identical.
    full_t2i = stable_top_k(scores, n_images, chunk_size=2)
    full_i2t = stable_top_k(scores.T, n_texts)
    assert np.array_equal(text_to_image_ranks_from_lists(full_t2i, t2i), dense_t2i)
    assert np.array_equal(image_to_text_ranks_from_lists(full_i2t, t2i), dense_i2t)

    # K < n: the same ranks where they are < K, a miss otherwise; recall never higher.
    for k_cut in (1, 2, 4):
        for lists, ranks_fn, recall_fn, dense in (
            (scores, text_to_image_ranks_from_lists, text_to_image_recall_from_lists, dense_t2i),
            (scores.T, image_to_text_ranks_from_lists, image_to_text_recall_from_lists, dense_i2t),
        ):
            top = stable_top_k(lists, k_cut)
            got = ranks_fn(top, t2i)
            assert np.array_equal(got, np.where(dense < k_cut, dense, MISS_RANK))
            cut, full = recall_fn(top, t2i, KS), recall_at_ks(dense, KS)
            for key in full:
                assert cut[key] <= full[key]


@pytest.mark.parametrize("seed", range(5))
def test_reranking_never_beats_stage1_at_candidate_k(seed):
    scores, t2i = random_case(seed + 100, ties=False)
    rng = np.random.default_rng(seed)
    candidate_k = 3
    stage1_ranks = text_to_image_ranks(scores, t2i)
    ceiling = rerank_ceiling(stage1_ranks, candidate_k)
    assert ceiling == recall_at_ks(stage1_ranks, (candidate_k,))[f"R@{candidate_k}"]
    top = stable_top_k(scores, candidate_k)
    for _ in range(5):  # an arbitrary "re-ranker": shuffle each candidate list
        reranked = rng.permuted(top, axis=1)
        stage2 = text_to_image_recall_from_lists(reranked, t2i, KS)
        for k, value in zip(KS, stage2.values(), strict=True):
            assert value <= ceiling
            if k >= min(candidate_k, scores.shape[1]):
                assert value == pytest.approx(ceiling)


def test_ragged_lists_with_padding():
    t2i = np.array([0, 1, 1, 2])  # image 1 has captions 1 and 2
    # Per caption, returned images; -1 entries are padding and are not counted as positions.
    ranked_images = [np.array([2, -1, 0]), np.array([1]), np.array([], dtype=int), [0, 2]]
    # c0: image 0 after one real entry -> 1; c1: first -> 0; c2: nothing -> miss; c3: -> 1.
    assert text_to_image_ranks_from_lists(ranked_images, t2i).tolist() == [1, 0, MISS_RANK, 1]
    assert text_to_image_recall_from_lists(ranked_images, t2i, (1, 2)) == {
        "R@1": 25.0,
        "R@2": 75.0,
    }
    # Per image, returned texts as a padded 2-D array.
    ranked_texts = np.array([[3, 0, -1], [0, 3, 2], [-1, -1, -1]])
    # img0: text 0 at position 1; img1: text 2 at position 2; img2: nothing returned -> miss.
    assert image_to_text_ranks_from_lists(ranked_texts, t2i).tolist() == [1, 2, MISS_RANK]
    assert image_to_text_recall_from_lists(ranked_texts, t2i, (1, 3)) == pytest.approx(
        {"R@1": 0.0, "R@3": 200 / 3}
    )


def test_bad_lists_raise():
    t2i = np.array([0, 1])
    with pytest.raises(ValueError, match="twice"):
        text_to_image_ranks_from_lists(np.array([[0, 1, 0], [1, 0, -1]]), t2i)
    with pytest.raises(ValueError, match="-1"):
        text_to_image_ranks_from_lists(np.array([[0, -2], [1, 0]]), t2i)
    with pytest.raises(ValueError, match="lists"):
        text_to_image_ranks_from_lists(np.array([[0, 1]]), t2i)
    with pytest.raises(ValueError, match="only 2"):
        image_to_text_ranks_from_lists(np.array([[0, 5], [1, 0]]), t2i)


# ---------------------------------------------------------------------------------------------
# Hard negatives
# ---------------------------------------------------------------------------------------------


def test_hard_negative_accuracy():
    pos = np.array([0.5, 0.2, 0.3, 0.9])
    neg = np.array([0.4, 0.2, 0.6, 0.1])
    # pair 0: 0.5 > 0.4 yes; pair 1: tie -> no; pair 2: 0.3 < 0.6 no; pair 3: yes -> 2/4.
    assert hard_negative_accuracy(pos, neg) == 50.0
    assert hard_negative_accuracy([1], [0]) == 100.0
    with pytest.raises(ValueError):
        hard_negative_accuracy([1, 2], [1])
