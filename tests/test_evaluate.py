"""Direct and indirect evaluation: metric values on hand-made sets, the downstream model, plots, and the paper-table benchmark."""
import importlib.util, json, math, subprocess, sys
from collections import Counter
from pathlib import Path

import matplotlib
matplotlib.use('Agg')
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from datacreator_nb.evaluate import (distinct_n, vocabulary_size, label_shares, label_counts, entropy_bits, drift_by_round,
                                     drift_table, mean_pairwise_similarity, diversity_report, length_stats, DownstreamModel, record_text,
                                     downstream_eval, separable_records, relative_gap, accuracy_table, ood_partners,
                                     plot_accuracy, plot_drift, plot_cost, plot_rejections, evaluate_sets, choose_features, FeatureChoice)
from datacreator_nb.task import TASK_TYPES, read_jsonl, data_path
from datacreator_nb.sampling import HashingEmbedder, Similar
from datacreator_nb.evaluate import record_meta, comparison_vectors
from datacreator_nb.embed import default_embedder, MiniLMEmbedder

minilm = pytest.mark.skipif(not isinstance(default_embedder(), MiniLMEmbedder), reason='the embed extra (MiniLM) is not installed')

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT/'benchmarks'/'paper_table.py'


def test_distinct_n_and_vocabulary_count_what_they_say():
    texts = ["a b c a b", "c d"]                 # unigrams 7, different 4; bigrams 5: ab bc ca ab cd -> 4 different
    assert vocabulary_size(texts) == 4
    assert distinct_n(texts, 1) == pytest.approx(4 / 7)
    assert distinct_n(texts, 2) == pytest.approx(4 / 5)
    assert distinct_n(texts, 3) == pytest.approx(3 / 3)  # abc bca cab, no trigram crosses the two texts
    assert distinct_n(["one"], 2) == 0.0


def test_label_balance_of_yes_no_and_of_option_positions():
    yn = [{"options": ["True", "False"], "label": v} for v in [True] * 3 + [False]]
    assert label_shares(yn) == {'True': 0.75, 'False': 0.25}
    assert entropy_bits(label_counts(yn)) == pytest.approx(-(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25)))
    mc = [{"options": [f"x{i}", f"y{i}", f"z{i}"], "label": f"z{i}"} for i in range(4)]
    assert label_shares(mc) == {'option 3': 1.0} and entropy_bits(label_counts(mc)) == 0.0


def test_drift_of_an_identical_copy_is_zero_and_grows_with_distance():
    seed = {"question": "How can you keep cut flowers fresh?", "context": None}
    recs = [dict(seed, round=1), {"question": "How can you keep bread fresh?", "round": 2}, {"question": "Which planet is largest?", "round": 3}]
    d = drift_by_round(recs, seed, HashingEmbedder()).set_index('round')['drift']
    assert d[1] == pytest.approx(0.0, abs=1e-6)
    assert 0 < d[2] < d[3] == pytest.approx(1.0)
    both = drift_table({'a': recs[:1], 'b': recs[2:]}, seed, HashingEmbedder())
    assert both.set_index('strategy')['drift'].to_dict() == pytest.approx({'a': 0.0, 'b': 1.0}, abs=1e-6)


def test_drift_reads_the_round_from_meta_and_plain_records():
    seed = {"question": "How can you keep cut flowers fresh?"}
    recs = [{"question": "How can you keep bread fresh?", "_meta": {"id": "a", "round": 2, "parent": None, "depth": 1, "strategy": "tree", "model": "m"}},
            {"question": "Which planet is largest?", "round": 3}]
    assert drift_by_round(recs, seed, HashingEmbedder())['round'].tolist() == [2, 3]
    assert record_meta(recs[0], 'strategy') == 'tree' and record_meta(recs[1], 'strategy', 'none') == 'none'
    assert record_text(recs[0]) == "How can you keep bread fresh?"


def test_record_text_leaves_out_only_label_options_and_meta():
    "Issue 12: a task's own fields named id, round or model are content; only the answer, the choices and `_meta` are not."
    car = {"model": "Which car model seats seven?", "id": "Q-17", "round": "second", "label": "SUV", "options": ["SUV", "van"],
           "_meta": {"id": "a", "round": 1, "model": "m"}}
    assert record_text(car) == "Which car model seats seven? Q-17 second"
    assert record_text({"review": "Broke after two days.", "label": "negative"}) == "Broke after two days."


def test_one_tokeniser_for_duplicates_and_diversity():
    "Issue 12: evaluation counts words as duplicate detection does (`validate.words`): an apostrophe splits a word."
    import datacreator_nb.evaluate as ev, datacreator_nb.validate as va
    assert ev.words is va.words
    assert vocabulary_size(["Don't panic", "don t"]) == 3          # don, t, panic
    assert distinct_n(["it isn't", "it is"], 1) == pytest.approx(4 / 5)
    assert length_stats([{"question": "Isn't it?"}]).loc['question', 'mean'] == 3


def test_pairwise_similarity_exact_and_sampled():
    tfidf = HashingEmbedder()
    assert mean_pairwise_similarity(["red apples", "red apples", "red apples"], tfidf) == pytest.approx(1.0)
    assert mean_pairwise_similarity(["red apples", "green planets"], tfidf) == 0.0
    texts = ["red apples", "green planets"] * 150         # 44850 pairs: sampled path; copies are half the pairs minus the diagonal
    exact = mean_pairwise_similarity(texts, tfidf, max_pairs=10**6)
    assert exact == pytest.approx(149 / 299, abs=1e-6)
    assert mean_pairwise_similarity(texts, tfidf, max_pairs=4000) == pytest.approx(exact, abs=0.03)


def test_evaluation_measures_with_the_similarity_the_strategies_pick_by():
    "Issue 12: the mean similarity and drift use the strategies' embedder and weighting, so their numbers agree."
    texts = ["How do you keep bread fresh?", "What stops a loaf going stale?", "Which planet has the most moons?"]
    s = Similar()
    assert type(s.cache.embedder) is type(default_embedder())
    picked = s.cache.similarity(texts[:1], texts)[0]
    X = comparison_vectors(texts)
    ours = X[0] @ X.T
    np.testing.assert_allclose(np.asarray(ours.todense() if hasattr(ours, 'todense') else ours).ravel(), picked, atol=1e-5)
    assert mean_pairwise_similarity(texts[:2]) == pytest.approx(float(picked[1]), abs=1e-5)


@minilm
def test_sentence_vectors_see_paraphrase_that_words_miss():
    para, unrelated = ["How do you keep bread fresh?", "What stops a loaf going stale?"], ["How do you keep bread fresh?", "Which planet has the most moons?"]
    assert mean_pairwise_similarity(para) > mean_pairwise_similarity(unrelated) + 0.3
    assert mean_pairwise_similarity(para, HashingEmbedder()) == pytest.approx(mean_pairwise_similarity(unrelated, HashingEmbedder()), abs=0.05)


def test_diversity_report_and_lengths():
    recs = [{"question": "red green blue", "context": "yellow purple", "options": ["True", "False"], "label": True},
            {"question": "red green", "context": None, "options": ["True", "False"], "label": False}]
    rep = diversity_report(recs, seed=recs[0])
    assert (rep.n, rep.vocabulary, rep.label_entropy) == (2, 5, 1.0) and rep.embedder == getattr(default_embedder(), 'name')
    assert 0 < rep.drift < 1
    assert length_stats(recs).loc['question', 'mean'] == 2.5 and length_stats(recs).loc['context', 'n'] == 1
    assert '| vocabulary | 5 |' in rep._repr_markdown_()


@pytest.mark.parametrize('task_type', list(TASK_TYPES))
def test_downstream_model_learns_a_separable_task_and_follows_its_labels(task_type):
    train, test = separable_records(task_type, 200, seed=1), separable_records(task_type, 200, seed=2)
    mc = TASK_TYPES[task_type][1].kind == 'per_example'
    assert DownstreamModel(mc).fit(train).accuracy(test) >= 0.9
    # trained on the opposite answers, it must get the test set wrong: the accuracy comes from the labels
    if mc: flipped = [dict(r, label=next(o for o in r['options'] if o != r['label'])) for r in train]
    else: flipped = [dict(r, label=not r['label']) for r in train]
    assert DownstreamModel(mc).fit(flipped).accuracy(test) <= 0.1


def test_proba_columns_are_true_false_or_the_records_options():
    yn = DownstreamModel(False).fit(separable_records('yesno_close', 200, seed=1))
    assert yn.labels == [True, False]
    p = yn.proba([{"question": "Can you eat a banana?"}, {"question": "Can you eat a hammer?"}])
    assert p.shape == (2, 2) and p.sum(1) == pytest.approx([1, 1]) and p[0, 0] > 0.5 > p[1, 0]
    mc = DownstreamModel(True).fit(separable_records('mcqa_5', 200, seed=1))
    q = mc.proba([{"question": "Which one is food?", "options": ["brick", "apple"]}, {"question": "Which one is food?", "options": ["nail", "rope", "pear"]}])
    assert q.shape == (2, 3) and np.isnan(q[0, 2]) and np.nansum(q, 1) == pytest.approx([1, 1])
    assert np.nanargmax(q[0]) == 1 and np.nanargmax(q[1]) == 2


@pytest.mark.parametrize('mc', [False, True])
def test_sample_weight_decides_which_labels_are_learnt(mc):
    tt = 'mcqa_2' if mc else 'yesno_close'
    train, test = separable_records(tt, 150, seed=1), separable_records(tt, 100, seed=2)
    flip = (lambda r: dict(r, label=next(o for o in r['options'] if o != r['label']))) if mc else (lambda r: dict(r, label=not r['label']))
    both = train + [flip(r) for r in train]
    right, wrong = [1.0] * len(train) + [0.0] * len(train), [0.0] * len(train) + [1.0] * len(train)
    assert DownstreamModel(mc).fit(both, sample_weight=right).accuracy(test) >= 0.9
    assert DownstreamModel(mc).fit(both, sample_weight=wrong).accuracy(test) <= 0.1
    with pytest.raises(ValueError, match='sample_weight has 3 weights for 300 records'): DownstreamModel(mc).fit(train + train, sample_weight=[1, 1, 1])


def test_one_label_only_is_a_clear_error():
    with pytest.raises(ValueError, match='one label only'): DownstreamModel(False).fit([{"question": "q", "label": True}] * 3)
    with pytest.raises(ValueError, match="no training record's label is one of its options"):
        DownstreamModel(True).fit([{"question": "q", "options": ["a", "b"], "label": "c"}] * 3)


@minilm
def test_sentence_vectors_learn_a_shipped_mcqa_set_that_tfidf_cannot():
    "clues_*.jsonl: 5 options, answers never share a word with the clue, test clues unseen in training; chance is 20%."
    train, test = (read_jsonl(data_path('eval', f'clues_{s}.jsonl')) for s in ('train', 'test'))
    assert DownstreamModel(True).fit(train).accuracy(test) >= 0.6
    assert DownstreamModel(True, HashingEmbedder()).fit(train).accuracy(test) <= 0.2


MINUTES = "The board met on a rainy day, and the members read the minutes of the last meeting aloud. " * 18


def _long_passages(n: int, seed: int) -> list[dict]:
    "Open-book yes/no records: the same 320-word passage, then one sentence that decides the answer (past MiniLM's 256 word pieces)."
    rng = np.random.default_rng(seed)
    return [{"question": "Did the motion pass?", "context": MINUTES + f"In the end the motion was {'carried' if p else 'rejected'}.",
             "options": ["True", "False"], "label": bool(p)} for p in rng.random(n) < 0.5]


def test_balanced_is_an_explicit_choice_and_defaults_to_multiple_choice_only():
    "Issue 14.3: class weights were tied to the task kind; now they are a setting (None keeps the old default)."
    weights = lambda mc, b=None: DownstreamModel(mc, HashingEmbedder(), balanced=b).clf.class_weight
    assert (weights(False), weights(True)) == (None, 'balanced')
    assert (weights(False, True), weights(True, False)) == ('balanced', None)


@minilm
def test_choose_features_picks_the_sparse_candidate_where_sentence_vectors_cannot_see_the_answer():
    "Issue 14.3 (BioASQ): the answer sits past the 256 word pieces MiniLM reads; the dev split must pick hashed TF-IDF of the whole text."
    train, dev = _long_passages(30, 1), _long_passages(16, 2)
    choice = choose_features(train, dev, multiple_choice=False)
    assert choice.name == 'tf-idf, balanced' and choice.dev['tf-idf, balanced'] == 1.0 > choice.dev['default']
    assert isinstance(choice.settings['embedder'], HashingEmbedder) and choice.settings['balanced'] is True
    assert DownstreamModel(False, **choice.settings).fit(train).accuracy(_long_passages(20, 3)) == 1.0
    assert 'chosen: **tf-idf, balanced**' in choice._repr_markdown_() and '| default |' in choice._repr_markdown_()


def test_choose_features_keeps_the_first_candidate_without_dev_data_or_on_a_tie():
    train, dev = separable_records('yesno_close', 100, seed=1), separable_records('yesno_close', 40, seed=2)
    assert choose_features(train, None, False) == FeatureChoice('default', {}, {})
    assert choose_features(None, dev, False).name == 'default' and choose_features(train, [], False).dev == {}
    same = {'first': {'embedder': HashingEmbedder()}, 'second': {'embedder': HashingEmbedder()}}
    tie = choose_features(train, dev, False, candidates=same)
    assert tie.name == 'first' and tie.dev['first'] == tie.dev['second'] > 0.8
    starved = {'starved': {'embedder': HashingEmbedder(), 'C': 1e-6}, 'fed': {'embedder': HashingEmbedder()}}   # C ~ 0 learns nothing
    picked = choose_features(train, dev, False, candidates=starved)
    assert picked.name == 'fed' and picked.dev['starved'] < picked.dev['fed']
    one_label = [dict(r, label=True) for r in train]
    assert choose_features(one_label, dev, False).name == 'default'   # no candidate can be trained: NaN scores, the first kept


def test_evaluate_sets_trains_every_set_with_the_given_model_settings():
    "The harness trains D_L and every created set with the features chosen for the dataset."
    seen = []
    class Spy(HashingEmbedder):
        def embed(self, texts): seen.append(len(texts)); return super().embed(texts)
    tests = {'home': separable_records('yesno_close', 30, seed=7)}
    res = evaluate_sets({'D_L': separable_records('yesno_close', 50, seed=1), 'tree': separable_records('yesno_close', 40, seed=2)}, tests,
                        'yesno_close', model={'embedder': Spy(), 'balanced': True})
    assert seen == [50, 30, 40, 30] and res['accuracy'].notna().all()   # fit D_L, test it, fit tree, test it: all by the given embedder


def test_downstream_eval_rows_and_missing_training_data():
    tests = {'a': separable_records('mcqa_2', 50, seed=5), 'b': separable_records('mcqa_2', 30, seed=6)}
    res = downstream_eval(separable_records('mcqa_2', 200, seed=4), tests, 'mcqa_2')
    assert res['test'].tolist() == ['a', 'b'] and res['n_test'].tolist() == [50, 30] and (res['accuracy'] >= 0.9).all()
    none = downstream_eval(None, tests, 'mcqa_2')
    assert none['accuracy'].isna().all() and set(none['note']) == {'no training data'}
    # a small created set may hold one answer only: no model, said per row, and the other sets are still evaluated
    all_yes = downstream_eval([{"question": "Is it?", "options": ["True", "False"], "label": True}] * 5, {'t': separable_records('yesno_close', 20)}, 'yesno_close')
    assert all_yes['accuracy'].isna().all() and all_yes['note'][0] == "not trained: the training records have one label only (True or none): a classifier needs two"


def test_evaluate_sets_trains_one_model_per_set_and_marks_the_home_test():
    tests = {'home': separable_records('yesno_close', 60, seed=7), 'other': separable_records('yesno_open', 40, seed=8)}
    good, flipped = separable_records('yesno_close', 200, seed=9), [dict(r, label=not r['label']) for r in separable_records('yesno_close', 200, seed=9)]
    res = evaluate_sets({'D_L': good, 'tree': flipped, 'naive': []}, tests, 'yesno_close')
    assert res['train'].tolist() == ['D_L', 'D_L', 'tree', 'tree', 'naive', 'naive'] and res['kind'].tolist() == ['ID', 'OOD'] * 3
    acc = res.set_index(['train', 'test'])['accuracy']
    assert acc['D_L', 'home'] >= 0.9 and acc['tree', 'home'] <= 0.1 and math.isnan(acc['naive', 'home'])
    assert set(res['dataset']) == {'home'} and res.loc[res['train'] == 'naive', 'note'].tolist() == ['no training data'] * 2
    assert evaluate_sets({'D_L': good}, tests, 'yesno_close', home='other')['kind'].tolist() == ['OOD', 'ID']
    t = accuracy_table(res)
    assert t.loc[('home', 'home'), 'Δ tree'] < -0.8


def test_relative_gap_and_accuracy_table():
    assert relative_gap(0.6, 0.8) == pytest.approx(-0.25)
    assert relative_gap(0.55, 0.5) == pytest.approx(0.1)
    assert math.isnan(relative_gap(0.5, float('nan'))) and math.isnan(relative_gap(0.5, 0.0))
    long = pd.DataFrame([('x', 'x', 'D_L', 0.5), ('x', 'x', 'tree', 0.6), ('x', 'y', 'D_L', 0.4), ('x', 'y', 'tree', 0.3)],
                        columns=['dataset', 'test', 'train', 'accuracy'])
    t = accuracy_table(long)
    assert t['Δ tree'].tolist() == pytest.approx([0.2, -0.25])
    assert ood_partners('mcqa_5', 'csqa') == ['riddle_sense'] and ood_partners('yesno_close', 'boolq') == ['strategyqa', 'creak']


def test_plots_return_figures_that_save(tmp_path):
    figs = {'acc': plot_accuracy(pd.DataFrame({'test': ['p', 'p', 'w', 'w'], 'kind': ['ID', 'ID', 'OOD', 'OOD'],
                                               'train': ['D_L', 'tree'] * 2, 'accuracy': [0.6, 0.5, float('nan'), 0.4]})),
            'drift': plot_drift(pd.DataFrame({'strategy': ['tree'] * 2 + ['random'] * 2, 'round': [1, 2] * 2, 'drift': [0.3, 0.35, 0.3, 0.8]})),
            'cost': plot_cost(pd.DataFrame({'dataset': ['a', 'a'], 'strategy': ['tree', 'naive'], 'usd': [0.4, 0.3]})),
            'rej': plot_rejections(Counter(duplicate=3, schema=1))}
    assert all(isinstance(f, Figure) for f in figs.values())
    assert len(figs['acc'].axes) == 2 and len(figs['drift'].axes[0].lines) == 2 and len(figs['rej'].axes[0].patches) == 2
    for name, f in figs.items():
        f.savefig(tmp_path/f'{name}.png')
        assert (tmp_path/f'{name}.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def _dataset_tree(root: Path, train_for=('winogrande',)) -> Path:
    "A tiny `<task_type>/<dataset>/{train,test}.jsonl` tree of separable data (mcqa_2: piqa without train, winogrande)."
    for k, d in enumerate(('piqa', 'winogrande')):
        ddir = root/'mcqa_2'/d
        ddir.mkdir(parents=True)
        splits = {'test': 40, 'dev': 10} | ({'train': 60} if d in train_for else {})
        for j, (split, n) in enumerate(splits.items()):
            (ddir/f'{split}.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in separable_records('mcqa_2', n, seed=10 * k + j)))
    return root


PAPER = {"id_accuracy": {"n_train": {"mcqa_2/piqa": 14113, "mcqa_2/winogrande": 160},
                         "D_L": {"mcqa_2/piqa": 81.0, "mcqa_2/winogrande": 51.4}, "tree": {"mcqa_2/piqa": 68.4, "mcqa_2/winogrande": 52.8}},
         "ood_accuracy": {"test_column_as_printed": {"mcqa_2/piqa": "PIQA", "mcqa_2/winogrande": "WinoGrande"},
                          "D_L": {"mcqa_2/piqa": 44.0, "mcqa_2/winogrande": 44.6}, "tree": {"mcqa_2/piqa": 50.3, "mcqa_2/winogrande": 49.6}},
         "cost_usd": {"tree": {"mcqa_2/piqa": 3.97, "mcqa_2/winogrande": 0.02}}}


def _paper(root: Path) -> Path:
    "A small stand-in for the paper's results.json (tests never read ../shared)."
    (root/'paper.json').write_text(json.dumps(PAPER))
    return root/'paper.json'


def _run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, BENCH, *map(str, args)], capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_paper_table_evaluates_created_files(tmp_path):
    data, created = _dataset_tree(tmp_path/'data'), tmp_path/'created'
    for k, (d, s) in enumerate([(d, s) for d in ('piqa', 'winogrande') for s in ('naive', 'tree')]):
            recs = [dict(r, _meta={'round': i // 5 + 1, 'strategy': s}) for i, r in enumerate(separable_records('mcqa_2', 50, seed=100 + k))]
            (created/'mcqa_2').mkdir(parents=True, exist_ok=True)
            (created/'mcqa_2'/f'{d}_{s}.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in recs))
    p = _run('--data', data, '--created', created, '--strategies', 'naive,tree', '--out', tmp_path/'out', '--quick', '--paper', _paper(tmp_path))
    assert p.returncode == 0, p.stderr
    last = json.loads(p.stdout.strip().splitlines()[-1])
    # paper cells beside a measured one: winogrande D_L and tree, piqa tree (piqa has no D_L here; the paper has no naive)
    assert last == {"datasets": 2, "strategies": 2, "paper_cells": 3, "dl": {"mcqa_2/piqa": None, "mcqa_2/winogrande": 1.0},
                    "chance": {"mcqa_2/piqa": 0.5, "mcqa_2/winogrande": 0.5},
                    "features": {"mcqa_2/piqa": "default", "mcqa_2/winogrande": "default"}}   # piqa: no D_L; winogrande: a tie on dev
    assert 'no train split in the data' in p.stdout                       # piqa has no train split: said, not crashed
    id_row = next(l for l in p.stdout.splitlines() if l.startswith('mcqa_2/winogrande'))
    assert id_row.split()[2:5] == ['100.0', '100.0', '100.0']             # D_L, naive, tree on separable data
    assert id_row.split()[-3:] == ['51.4', '', '52.8'] or id_row.split()[-2:] == ['51.4', '52.8']   # the paper's D_L and tree beside ours
    paired = p.stdout.split('as the paper pairs it')[1].split('\n\n')[0]
    assert 'mcqa_2/piqa' in paired and '(trained on winogrande)' in paired and '44.0' in paired
    assert 'mcqa_2/winogrande' in p.stdout.split('D_L check')[1] and (tmp_path/'out'/'accuracy.png').exists()
    assert (tmp_path/'out'/'vs_paper.png').read_bytes()[:4] == b'\x89PNG'           # ours beside the paper's, per dataset
    saved = pd.read_csv(tmp_path/'out'/'results.csv')
    assert saved.query("dataset == 'mcqa_2/winogrande' and kind == 'ID' and train == 'tree'")['paper'].tolist() == [pytest.approx(0.528)]


@pytest.mark.skipif(not (importlib.util.find_spec('datacreator_nb.create') and importlib.util.find_spec('datacreator_nb.generate')),
                    reason='datacreator_nb.create / generate not written yet')
def test_paper_table_quick_creates_through_the_simulated_server(tmp_path):
    data = _dataset_tree(tmp_path/'data')
    p = _run('--data', data, '--out', tmp_path/'out', '--quick', '--n', 10, '--local', '--paper', tmp_path/'absent.json')
    assert p.returncode == 0, p.stderr
    assert 'SIMULATED' in p.stdout and 'No paper columns' in p.stdout
    last = json.loads(p.stdout.strip().splitlines()[-1])
    assert (last['datasets'], last['strategies'], last['paper_cells']) == (2, 5, 0)
    created = sorted(f.name for f in (tmp_path/'out'/'created'/'mcqa_2').glob('*_*.jsonl') if f.name.count('.') == 1)   # not the runs' side files
    assert len(created) == 10
    recs = [json.loads(l) for l in (tmp_path/'out'/'created'/'mcqa_2'/'piqa_tree.jsonl').read_text().splitlines()]
    assert len(recs) >= 10 and all(r['label'] in r['options'] for r in recs)


def _created_sets(stdout: str) -> dict:
    "{strategy: (records, usd, tokens)} from the harness's 'Created sets' table."
    block = stdout.split('Created sets\n')[1].split('\n\n')[0].splitlines()[1:]
    return {p[1]: (int(p[2]), float(p[3]), float(p[4])) for p in (line.split() for line in block)}


def test_paper_table_profile_scale_paper_price_and_resume(tmp_path):
    "Issue 14: --profile paper and --scale reach the runs, replies are priced at the paper's $2 per 1M tokens, --resume reads finished sets back."
    out = tmp_path/'out'
    args = ('--data', _dataset_tree(tmp_path/'data'), '--out', out, '--quick', '--local', '--paper', _paper(tmp_path), '--datasets', 'winogrande',
            '--strategies', 'naive,tree', '--profile', 'paper', '--scale', 0.05, '--no-plots')
    first = _run(*args)
    assert first.returncode == 0, first.stderr
    assert "0.05 x the paper's D_G size" in first.stdout and 'winogrande 8' in first.stdout and 'profile: paper' in first.stdout
    state = json.loads((out/'created'/'mcqa_2'/'winogrande_naive.jsonl.state.json').read_text())
    assert (state['settings']['profile'], state['settings']['top_p'], state['settings']['parallel']) == ('paper', 0.0, 1)
    sets = _created_sets(first.stdout)
    assert {s: r for s, (r, _, _) in sets.items()} == {'naive': 8, 'tree': 8}
    assert all(usd == pytest.approx(tokens * 2 / 1e6, rel=0.01) and tokens > 0 for _, usd, tokens in sets.values())
    again = _run(*args, '--resume')
    assert again.returncode == 0, again.stderr
    assert 'read back mcqa_2/winogrande naive' in again.stderr and 'read back mcqa_2/winogrande tree' in again.stderr
    assert _created_sets(again.stdout) == sets and again.stdout.splitlines()[-1] == first.stdout.splitlines()[-1]
    fresh = _run(*args)
    assert fresh.returncode == 0 and 'created mcqa_2/winogrande naive' in fresh.stderr and 'read back' not in fresh.stderr


@minilm
def test_paper_table_trains_d_l_and_created_sets_with_the_features_chosen_on_dev(tmp_path):
    "Issue 14.3: per dataset, the dev split picks the features; D_L and every created set are trained with them."
    spec = importlib.util.spec_from_file_location('paper_table', BENCH)
    bench = importlib.util.module_from_spec(spec); spec.loader.exec_module(bench)
    ddir = tmp_path/'yesno_open'/'bioasq'
    ddir.mkdir(parents=True)
    for k, (split, n) in enumerate({'train': 30, 'dev': 16, 'test': 20}.items()):
        (ddir/f'{split}.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in _long_passages(n, k + 1)))
    args = bench.parse(['--data', str(tmp_path), '--strategies', 'tree'])
    tests = bench.read_tests(args, [('yesno_open', 'bioasq')])
    runs = {('yesno_open', 'bioasq', 'tree'): {'records': _long_passages(24, 9)}}
    results, choices = bench.evaluate_all(args, [('yesno_open', 'bioasq')], runs, tests, {})
    assert choices['yesno_open/bioasq'].name == 'tf-idf, balanced'
    assert results.set_index('train')['accuracy'].to_dict() == {'D_L': 1.0, 'tree': 1.0}   # MiniLM alone sees one text: chance at best


def test_paper_table_resume_reads_back_a_set_that_gave_up(tmp_path):
    "--resume must not try again a set whose last `stall_rounds` rounds accepted nothing (create resets the stall on resume)."
    spec = importlib.util.spec_from_file_location('paper_table', BENCH)
    bench = importlib.util.module_from_spec(spec); spec.loader.exec_module(bench)
    dest = tmp_path/'piqa_naive.jsonl'
    assert bench.gave_up(dest, 2) is None                                   # never run
    log = tmp_path/'piqa_naive.jsonl.rounds.jsonl'
    log.write_text(''.join(json.dumps({'round': i, 'accepted': a}) + '\n' for i, a in enumerate([3, 0, 0])))
    assert bench.gave_up(dest, 2) == 3 and bench.gave_up(dest, 3) is None   # the last two accepted nothing; the last three did not all
    log.write_text(''.join(json.dumps({'round': i, 'accepted': a}) + '\n' for i, a in enumerate([0, 4])))
    assert bench.gave_up(dest, 1) is None
