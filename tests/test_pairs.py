"""Rankings, thumbs and imported pairs -> training pairs."""

from conftest import seed_rankings, write_jsonl
from rlhfkit.feedback.pairs import build_pairs, ranking_pairs
from rlhfkit.feedback.store import get_project
from rlhfkit.feedback.transfer import import_file


def pairs_of(store, project, **kwargs):
    with store.session() as session:
        return build_pairs(session, get_project(session, project), **kwargs)


def test_ranking_pairs_are_all_n_choose_2_with_ties_skipped():
    pairs, ties = ranking_pairs("abcd", {"a": 2, "b": 1, "c": 2, "d": 4})
    # C(4,2) = 6 pairs, a-c tied: 5 pairs, the better-ranked item first.
    assert pairs == [("b", "a"), ("a", "d"), ("b", "c"), ("b", "d"), ("c", "d")]
    assert ties == 1


def test_seed_example_gives_the_seeds_final_table(store, tmp_path):
    import_file(store, "hot", write_jsonl(tmp_path / "seed.jsonl", seed_rankings()))
    result = pairs_of(store, "hot")
    assert result.excluded == ["H3"]
    assert [(p["chosen"][:12], p["rejected"][:12]) for p in result.pairs] == [
        ("You can cool", "There is not"),
        ("There is not", "It is not to"),
        ("You can cool", "It is not to"),
    ]
    assert all(p["labelers"] == ["H1", "H2"] for p in result.pairs)


def test_keeping_every_labeler_lets_the_poor_one_in(store, tmp_path):
    import_file(store, "hot", write_jsonl(tmp_path / "seed.jsonl", seed_rankings()))
    result = pairs_of(store, "hot", min_tau=None)
    # Borda over all three: air 4, nothing 3, not-too-hot 2: the same order, now from 3 labelers.
    assert len(result.pairs) == 3 and result.excluded == []
    assert result.pairs[0]["labelers"] == ["H1", "H2", "H3"]


def test_per_labeler_pairs(store, tmp_path):
    import_file(store, "hot", write_jsonl(tmp_path / "seed.jsonl", seed_rankings()))
    result = pairs_of(store, "hot", per_labeler=True)
    assert sorted({p["labeler"] for p in result.pairs}) == ["H1", "H2"]  # H3 flagged
    assert len(result.pairs) == 6
    everyone = pairs_of(store, "hot", per_labeler=True, min_tau=None)
    h3 = [(p["chosen"][:6], p["rejected"][:6]) for p in everyone.pairs if p["labeler"] == "H3"]
    assert h3 == [("There ", "You ca"), ("It is ", "There "), ("It is ", "You ca")]


def test_thumbs_up_beats_every_thumbs_down_by_majority(store, tmp_path):
    def thumb(completion, label, labeler):
        return {"prompt": "q", "completion": completion, "label": label, "labeler": labeler}

    records = [
        thumb("good", "up", "a"),
        thumb("good", "up", "b"),
        thumb("fine", "up", "a"),
        thumb("fine", "down", "b"),  # split vote: no label
        thumb("bad", "down", "a"),
        thumb("worse", "down", "b"),
        thumb("worse", "up", "c"),
        thumb("worse", "down", "a"),
    ]
    import_file(store, "t", write_jsonl(tmp_path / "t.jsonl", records))
    result = pairs_of(store, "t")
    assert [(p["chosen"], p["rejected"], p["source"]) for p in result.pairs] == [
        ("good", "bad", "thumbs"),
        ("good", "worse", "thumbs"),
    ]


def test_imported_pairs_pass_through_and_majority_settles_contradictions(store, tmp_path):
    records = [
        {"prompt": "q", "chosen": "x", "rejected": "y", "labeler": "a"},
        {"prompt": "q", "chosen": "x", "rejected": "y", "labeler": "b"},
        {"prompt": "q", "chosen": "y", "rejected": "x", "labeler": "c"},
        {"prompt": "q", "chosen": "u", "rejected": "v", "labeler": "a"},
        {"prompt": "q", "chosen": "v", "rejected": "u", "labeler": "b"},
    ]  # a tie: dropped
    import_file(store, "p", write_jsonl(tmp_path / "p.jsonl", records))
    result = pairs_of(store, "p")
    assert [(p["chosen"], p["rejected"], p["labelers"]) for p in result.pairs] == [
        ("x", "y", ["a", "b"])
    ]
