"""Label-noise detection on human data: flip 25% of the labels of the paper's train splits, ask each detector
which records are flipped, and train the downstream model on clean, noisy, filtered and re-weighted data.

Detectors: confident learning (cleanlab) on out-of-fold probabilities of the downstream model, with sentence
embeddings and with TF-IDF (hashed words) as its features; the LLM judge's label check; self-consistency
(k label-blind answers). The judge-based detectors run on a small sample of each train split (LLM calls are
slow on the embedded model) through the embedded SmolLM2-135M model by default, or any OpenAI-compatible
endpoint (--judge-base-url, --judge-model, key in $OPENAI_API_KEY).

    .venv/bin/python benchmarks/label_noise.py                       # the embedded model as judge
    .venv/bin/python benchmarks/label_noise.py --no-judge            # cleanlab only
Prints one table per measure and, as its last line, a JSON object
{"datasets", "detectors", "best_auc", "filtered_gain"} (filtered_gain: mean accuracy of the cleanlab-filtered
training set minus the noisy one, in points).
"""
import argparse, asyncio, json, os, random, sys, time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from datacreator_nb.create import run_on_worker
from datacreator_nb.curate import ajudge, aself_consistency, confident_learning, curation, sample_weights
from datacreator_nb.embed import HashingEmbedder
from datacreator_nb.evaluate import DownstreamModel
from datacreator_nb.generate import Generator
from datacreator_nb.task import from_benchmark, load_split

DATASETS = ('yesno_close/creak', 'yesno_close/strategyqa', 'yesno_open/bioasq', 'yesno_open/pubmedqa', 'mcqa_2/winogrande',
            'mcqa_5/csqa', 'mcqa_5/riddle_sense')


def flip(task, records, share, seed):
    "The records with `share` of their labels changed (yes/no negated, another option otherwise), and the flipped indices."
    rng = random.Random(seed)
    flipped = set(rng.sample(range(len(records)), round(share * len(records))))
    def other(r): return (not r['label']) if task.label_space.boolean else rng.choice([o for o in r['options'] if o != r['label']])
    return [{**r, 'label': other(r)} if i in flipped else r for i, r in enumerate(records)], flipped


def scores(name, flagged, suspicion, flipped, n):
    "Precision, recall and ROC AUC of a detector's flags and suspicion scores against the flipped records."
    truth = np.array([i in flipped for i in range(n)])
    flagged = np.asarray(flagged, bool)
    auc = roc_auc_score(truth, suspicion) if 0 < truth.sum() < n else float('nan')
    return {'detector': name, 'items': n, 'flipped': int(truth.sum()), 'flagged': int(flagged.sum()),
            'precision': float((flagged & truth).sum() / flagged.sum()) if flagged.any() else float('nan'),
            'recall': float((flagged & truth).sum() / truth.sum()) if truth.any() else float('nan'), 'auc': float(auc)}


def cleanlab_detector(task, noisy, flipped, embedder, name, seed):
    "Confident learning on the whole noisy split: the scores row and the annotated records."
    out = confident_learning(task, noisy, seed=seed, embedder=embedder)
    flagged = ['cleanlab_issue' in curation(r).get('flags', []) for r in out]
    return scores(name, flagged, [1 - curation(r).get('cleanlab_quality', 1.0) for r in out], flipped, len(noisy)), out


def judge_sample(noisy, flipped, n_items, share, seed):
    "Indices of `n_items` records with `share` of them flipped (its own random stream, not the flips')."
    rng, bad = random.Random(f'judge sample {seed}'), round(share * n_items)
    return sorted(rng.sample(sorted(flipped), bad) + rng.sample([i for i in range(len(noisy)) if i not in flipped], n_items - bad))


def judge_detectors(task, noisy, flipped, judge, n_items, k, seed, share):
    "The judge's label check and self-consistency on a sample of the noisy split: two scores rows."
    idx = judge_sample(noisy, flipped, min(n_items, len(noisy)), share, seed)
    sample, sub = [noisy[i] for i in idx], {j for j, i in enumerate(idx) if i in flipped}
    async def go():
        try: return await ajudge(task, sample, judge), await aself_consistency(task, sample, judge, k, policy='drop', seed=seed)
        finally: await judge.aclose()   # its HTTP client belongs to this event loop
    judged, voted = run_on_worker(go())
    jc = [curation(r) for r in judged]
    sus = [(0.5 if c.get('label_correct') is None else float(not c['label_correct'])) + (5 - c.get('score', 3)) / 10 for c in jc]
    rows = [scores('judge label check', ['judge_label_wrong' in c['flags'] for c in jc], sus, sub, len(sample)),
            scores(f'self-consistency k={k}', ['label_disagrees' in curation(r)['flags'] for r in voted],
                   [1 - (curation(r).get('confidence') if curation(r).get('confidence') is not None else 0.5) for r in voted], sub, len(sample))]
    unread = sum(bool({'judge_unreadable', 'judge_failed'} & set(c['notes'])) for c in jc)
    novote = sum(sum(v is None for v in curation(r).get('votes', [None] * k)) for r in voted)
    rows[0]['unusable'], rows[1]['unusable'] = unread / len(sample), novote / (k * len(sample))
    return rows


def downstream(task, clean, noisy, annotated, test, seed):
    "Test accuracy of the downstream model trained on clean, noisy, cleanlab-filtered and cleanlab-weighted data."
    mc = task.label_space.kind == 'per_example'
    kept = [r for r, a in zip(noisy, annotated) if 'cleanlab_issue' not in curation(a).get('flags', [])]
    acc = lambda recs, w=None: DownstreamModel(mc, seed=seed).fit(recs, sample_weight=w).accuracy(test)
    return {'clean': acc(clean), 'noisy': acc(noisy), 'filtered': acc(kept), 'reweighted': acc(noisy, sample_weights(annotated)),
            'kept': len(kept)}


@contextmanager
def judge_endpoint(args):
    "The judge Generator: the given endpoint, or the embedded model started for the block; None with --no-judge."
    if args.no_judge: yield None; return
    opts = dict(temperature=0.7, concurrency=args.concurrency, max_tokens=120, timeout=120)
    if args.judge_base_url:
        yield Generator(model=args.judge_model, base_url=args.judge_base_url, api_key=os.environ.get('OPENAI_API_KEY') or 'not-needed', **opts)
        return
    from datacreator_nb.local_model import serve_model
    with serve_model() as srv: yield Generator(model=srv.model, base_url=srv.base_url, server_kind=srv.kind, **opts)


def run_dataset(name, args, judge):
    "Every detector and the downstream accuracies on one dataset."
    d = Path(args.data)/name
    task = from_benchmark(d)
    train = load_split(d, 'train', check=False)
    train = random.Random(args.seed).sample(train, min(args.max_train, len(train)))
    test = load_split(d, 'dev' if (d/'dev.jsonl').exists() else 'test', check=False)
    noisy, flipped = flip(task, train, args.flip, args.seed)
    row, annotated = cleanlab_detector(task, noisy, flipped, None, 'cleanlab (sentence embeddings)', args.seed)
    rows = [row, cleanlab_detector(task, noisy, flipped, HashingEmbedder(), 'cleanlab (TF-IDF)', args.seed)[0]]
    if judge is not None: rows += judge_detectors(task, noisy, flipped, judge, args.judge_items, args.k, args.seed, args.flip)
    return [{'dataset': name, **r} for r in rows], {'dataset': name, 'train': len(train), 'test': len(test), **downstream(task, train, noisy, annotated, test, args.seed)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--data', default=str(Path(__file__).resolve().parents[2]/'shared'/'benchmarks'), help='folder <task_type>/<dataset>/<split>.jsonl')
    p.add_argument('--datasets', default=','.join(DATASETS)); p.add_argument('--flip', type=float, default=0.25)
    p.add_argument('--max-train', type=int, default=1000, help='train records per dataset (a seeded sample)')
    p.add_argument('--judge-items', type=int, default=40, help='records per dataset the judge-based detectors see (the same share flipped)')
    p.add_argument('--k', type=int, default=3); p.add_argument('--seed', type=int, default=0); p.add_argument('--concurrency', type=int, default=2)
    p.add_argument('--judge-base-url'); p.add_argument('--judge-model', default='gpt-4o-mini'); p.add_argument('--no-judge', action='store_true')
    args = p.parse_args(argv)
    t0, det, acc = time.perf_counter(), [], []
    with judge_endpoint(args) as judge:
        who = 'none' if judge is None else judge.model + ('' if args.judge_base_url else ' (the embedded model)')
        for name in args.datasets.split(','):
            rows, a = run_dataset(name, args, judge)
            det += rows; acc.append(a)
            print(f"{name}: done in {time.perf_counter() - t0:.0f} s: {json.dumps({'detectors': rows, 'downstream': a})}", file=sys.stderr, flush=True)
    det, acc = pd.DataFrame(det), pd.DataFrame(acc)
    print(f"Label-noise detection, {args.flip:.0%} of labels flipped (seed {args.seed}); judge: {who}; "
          f"judge detectors on {args.judge_items} records per dataset, k={args.k}\n")
    print(det.round(3).to_markdown(index=False))
    print("\nDownstream accuracy on the dev split (downstream model: logistic regression on sentence embeddings; "
          "filtered: cleanlab's flagged records removed; reweighted: cleanlab quality as sample weight)\n")
    print(acc.round(3).to_markdown(index=False))
    mean_auc = det.groupby('detector')['auc'].mean()
    print(f"\nmean AUC per detector: {mean_auc.round(3).to_dict()}; {time.perf_counter() - t0:.0f} s")
    print(json.dumps({'datasets': len(acc), 'detectors': int(det['detector'].nunique()), 'best_auc': round(float(mean_auc.max()), 3),
                      'filtered_gain': round(float((acc['filtered'] - acc['noisy']).mean() * 100), 2)}))


if __name__ == '__main__':
    main()
