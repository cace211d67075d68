"""Direct and indirect evaluation: metric values on hand-made sets, the downstream model, plots, and the paper-table benchmark."""
import importlib.util, json, math, subprocess, sys
from collections import Counter
from pathlib import Path

import matplotlib
matplotlib.use('Agg')
import pandas as pd
import pytest
from matplotlib.figure import Figure

from datacreator_nb.evaluate import (distinct_n, vocabulary_size, label_shares, label_counts, entropy_bits, drift_by_round,
                                     drift_table, mean_pairwise_similarity, diversity_report, length_stats, DownstreamModel,
                                     downstream_eval, separable_records, relative_gap, accuracy_table, ood_partners,
                                     plot_accuracy, plot_drift, plot_cost, plot_rejections)
from datacreator_nb.task import TASK_TYPES

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
    d = drift_by_round(recs, seed).set_index('round')['drift']
    assert d[1] == pytest.approx(0.0, abs=1e-12)
    assert 0 < d[2] < d[3] == pytest.approx(1.0)
    both = drift_table({'a': recs[:1], 'b': recs[2:]}, seed)
    assert both.set_index('strategy')['drift'].to_dict() == pytest.approx({'a': 0.0, 'b': 1.0})


def test_pairwise_similarity_exact_and_sampled():
    assert mean_pairwise_similarity(["red apples", "red apples", "red apples"]) == pytest.approx(1.0)
    assert mean_pairwise_similarity(["red apples", "green planets"]) == 0.0
    texts = ["red apples", "green planets"] * 150         # 44850 pairs: sampled path; copies are half the pairs minus the diagonal
    exact = mean_pairwise_similarity(texts, max_pairs=10**6)
    assert exact == pytest.approx(149 / 299, abs=1e-9)
    assert mean_pairwise_similarity(texts, max_pairs=4000) == pytest.approx(exact, abs=0.03)


def test_diversity_report_and_lengths():
    recs = [{"question": "red green blue", "context": "yellow purple", "options": ["True", "False"], "label": True},
            {"question": "red green", "context": None, "options": ["True", "False"], "label": False}]
    rep = diversity_report(recs, seed=recs[0])
    assert (rep.n, rep.vocabulary, rep.label_entropy) == (2, 5, 1.0)
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


def test_downstream_eval_rows_and_missing_training_data():
    tests = {'a': separable_records('mcqa_2', 50, seed=5), 'b': separable_records('mcqa_2', 30, seed=6)}
    res = downstream_eval(separable_records('mcqa_2', 200, seed=4), tests, 'mcqa_2')
    assert res['test'].tolist() == ['a', 'b'] and res['n_test'].tolist() == [50, 30] and (res['accuracy'] >= 0.9).all()
    none = downstream_eval(None, tests, 'mcqa_2')
    assert none['accuracy'].isna().all() and set(none['note']) == {'no training data'}


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


def _run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, BENCH, *map(str, args)], capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_paper_table_evaluates_created_files(tmp_path):
    data, created = _dataset_tree(tmp_path/'data'), tmp_path/'created'
    for k, (d, s) in enumerate([(d, s) for d in ('piqa', 'winogrande') for s in ('naive', 'tree')]):
            recs = [dict(r, round=i // 5 + 1, strategy=s) for i, r in enumerate(separable_records('mcqa_2', 50, seed=100 + k))]
            (created/'mcqa_2').mkdir(parents=True, exist_ok=True)
            (created/'mcqa_2'/f'{d}_{s}.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in recs))
    p = _run('--data', data, '--created', created, '--strategies', 'naive,tree', '--out', tmp_path/'out', '--quick')
    assert p.returncode == 0, p.stderr
    last = json.loads(p.stdout.strip().splitlines()[-1])
    assert last == {"datasets": 2, "strategies": 2, "rows": 2 * 3 * 2}   # 2 datasets x (D_L + 2 strategies) x (ID + OOD)
    assert 'no train split in the data' in p.stdout                       # piqa has no train split: said, not crashed
    id_row = next(l for l in p.stdout.splitlines() if l.startswith('mcqa_2/winogrande'))
    assert id_row.split()[2:5] == ['100.0', '100.0', '100.0']             # D_L, naive, tree on separable data
    assert (tmp_path/'out'/'accuracy.png').exists()


@pytest.mark.skipif(not (importlib.util.find_spec('datacreator_nb.create') and importlib.util.find_spec('datacreator_nb.generate')),
                    reason='datacreator_nb.create / generate not written yet')
def test_paper_table_quick_creates_through_the_simulated_server(tmp_path):
    data = _dataset_tree(tmp_path/'data')
    p = _run('--data', data, '--out', tmp_path/'out', '--quick', '--n', 10, '--local')
    assert p.returncode == 0, p.stderr
    assert 'SIMULATED' in p.stdout
    assert json.loads(p.stdout.strip().splitlines()[-1]) == {"datasets": 2, "strategies": 5, "rows": 2 * 6 * 2}
    created = sorted(f.name for f in (tmp_path/'out'/'created'/'mcqa_2').glob('*.jsonl'))
    assert len(created) == 10
    recs = [json.loads(l) for l in (tmp_path/'out'/'created'/'mcqa_2'/'piqa_tree.jsonl').read_text().splitlines()]
    assert len(recs) >= 10 and all(r['label'] in r['options'] for r in recs)
