"""The paper's tables, measured here: ID accuracy, OOD accuracy and creation cost of D_L vs each strategy.

For each of the paper's datasets (Lee et al., EMNLP 2023, "Making Large Language Models Better Data
Creators") under --data, create a training set with every self-reference strategy (naive, random,
contrastive, similar, tree) through an OpenAI-compatible endpoint, or by default through the project's
SIMULATED local server (random well-formed examples, not a model). Train the small downstream model of
`datacreator_nb.evaluate` on the human train split (D_L) and on each created set (D_G), test it on the
dataset's test split (ID) and its partners' test splits (OOD), and print the three tables beside the
paper's numbers. The downstream model is TF-IDF + logistic regression, not the paper's RoBERTa-large.

    .venv/bin/python benchmarks/paper_table.py --quick            # CI size, simulated, about a minute
    .venv/bin/python benchmarks/paper_table.py --base-url URL --model NAME [--api-key-env VAR] --n 500
    .venv/bin/python benchmarks/paper_table.py --created DIR      # evaluate already-created JSONL files

Last line: {"datasets": <int>, "strategies": <int>, "rows": <int>} where rows counts the evaluations
(train set x test set) in the results table.
"""
from __future__ import annotations
import argparse, contextlib, json, os, random, sys, time
from collections import Counter
from pathlib import Path

import pandas as pd

from datacreator_nb.task import TaskError, from_benchmark, read_jsonl, preset, pick_example, example_from_record
from datacreator_nb.sampling import STRATEGIES
from datacreator_nb.evaluate import (PAPER_DATASETS, ood_partners, downstream_eval, accuracy_table, drift_table,
                                     plot_accuracy, plot_cost, plot_drift, plot_rejections)

ROOT = Path(__file__).resolve().parents[1]

# The paper's numbers (Table of ID accuracy, OOD table, cost table). Not found in the sources reachable
# from this machine (the stored copies of the paper give the tables only as images), so every cell is
# empty; fill {'<task_type>/<dataset>': {train: accuracy}} / {('<task_type>/<dataset>', test): {train: accuracy}} /
# {'<task_type>/<dataset>': {strategy: usd}}
# from the paper when at hand. Headline figures the abstract states: OOD gain of up to 17.5% over D_L.
PAPER_ID: dict = {}
PAPER_OOD: dict = {}
PAPER_COST: dict = {}


def read_split(path: Path) -> list[dict] | None:
    "Records of a human split, None if the file is missing."
    if not path.exists(): return None
    # Lines are split on '\n' only: task.read_jsonl uses str.splitlines, which also breaks on U+2028 etc.
    # inside JSON strings (riddle_sense/test.jsonl line 1040). Switch to read_jsonl once that is fixed.
    return [json.loads(line) for line in path.read_text(encoding='utf-8').split('\n') if line.strip()]


def sample(records: list | None, k: int | None, seed: int) -> list | None:
    "At most `k` records, a fixed random sample."
    if records is None or k is None or len(records) <= k: return records
    return random.Random(seed).sample(records, k)


def benchmark_task(ddir: Path, seed: int):
    "The dataset's task as `from_benchmark` builds it; if a split has records the task rejects, pick among valid ones."
    try: return from_benchmark(ddir, seed=seed)
    except TaskError as e:
        tt, checker = ddir.parent.name, preset(ddir.parent.name)
        split = next(s for s in ('train', 'dev') if (ddir/f'{s}.jsonl').exists())
        ok = []
        for r in read_split(ddir/f'{split}.jsonl'):
            with contextlib.suppress(TaskError): checker.check(example_from_record(r, tt)); ok.append(r)
        print(f"  note: {e}; formatting example picked among the {len(ok)} valid records", file=sys.stderr)
        return preset(tt, example_from_record(pick_example(ok, seed), tt), seed, name=ddir.name)


def find_datasets(data: Path, only: list[str] | None) -> list[tuple[str, str]]:
    "(task_type, dataset) of the paper's datasets present under `data` (with a test split)."
    found = [(tt, d) for tt, ds in PAPER_DATASETS.items() for d in ds if (data/tt/d/'test.jsonl').exists()]
    return [x for x in found if not only or f'{x[0]}/{x[1]}' in only or x[1] in only]


def created_file(created: Path, tt: str, dataset: str, strategy: str) -> Path:
    "Where a created set lives: `<dir>/<task_type>/<dataset>_<strategy>.jsonl`, or flat `<dir>/<dataset>_<strategy>.jsonl`."
    nested = created/tt/f'{dataset}_{strategy}.jsonl'
    flat = created/f'{dataset}_{strategy}.jsonl'
    return nested if nested.exists() or not flat.exists() else flat


def make_generator(args, base_url: str):
    "The project's generator for `base_url` (signature of datacreator_nb.generate.Generator)."
    from datacreator_nb.generate import Generator
    return Generator(model=args.model, base_url=base_url, api_key=os.environ.get(args.api_key_env))


def create_all(args, datasets, out: Path, base_url: str | None) -> dict:
    "{(tt, dataset, strategy): {'records', 'usd', 'tokens', 'rejections', 'seconds', 'stop', 'seed'}} for every run."
    runs, gen = {}, None
    for tt, d in datasets:
        task = None
        for s in args.strategies:
            path = created_file(args.created, tt, d, s) if args.created else None
            if path is not None and path.exists():
                recs = read_jsonl(path)
                runs[tt, d, s] = dict(records=recs, usd=float('nan'), tokens=float('nan'), rejections=Counter(),
                                      seconds=float('nan'), stop='read from file', seed=None)
                continue
            if base_url is None: raise SystemExit(f"no created file {path} and no endpoint to create it (drop --created or add it)")
            try: from datacreator_nb.create import create, state_path
            except ImportError as e: raise SystemExit(f"cannot create data ({e}); evaluate existing files with --created DIR") from None
            gen = gen or make_generator(args, base_url)
            task = task or benchmark_task(args.data/tt/d, args.seed)
            dest = out/'created'/tt/f'{d}_{s}.jsonl'
            dest.parent.mkdir(parents=True, exist_ok=True)
            for old in (dest, state_path(dest)): old.unlink(missing_ok=True)   # a fresh run, not a resume of an old one
            t0 = time.perf_counter()
            res = create(task, args.n, strategy=s, generator=gen, out=dest, per_request=args.per_request, seed=args.seed, progress=False)
            runs[tt, d, s] = dict(records=res.records, usd=res.usd, tokens=res.tokens, rejections=Counter(res.rejections),
                                  seconds=time.perf_counter() - t0, stop=res.stop_reason, seed=task.to_record(task.example))
            print(f"  created {tt}/{d} {s}: {len(res.records)} records, ${res.usd:.4f}, stop: {res.stop_reason}", file=sys.stderr)
    return runs


def evaluate_all(args, datasets, runs) -> pd.DataFrame:
    "Long results: one row per (dataset, test, train) with kind ID/OOD and accuracy."
    tests = {(tt, d): sample(read_split(args.data/tt/d/'test.jsonl'), args.test_limit, args.seed) for tt, d in datasets}
    rows = []
    for tt, d in datasets:
        test_sets = {d: tests[tt, d]} | {p: tests[tt, p] for p in ood_partners(tt, d) if (tt, p) in tests}
        human = sample(read_split(args.data/tt/d/'train.jsonl'), args.train_limit, args.seed)
        trains = {'D_L': human} | {s: runs[tt, d, s]['records'] for s in args.strategies}
        for name, recs in trains.items():
            res = downstream_eval(recs, test_sets, tt, seed=args.seed)
            note = 'no train split in the data' if name == 'D_L' and human is None else res['note']
            rows.append(res.assign(dataset=f'{tt}/{d}', train=name, note=note,
                                   kind=['ID' if t == d else 'OOD' for t in res['test']]))
    return pd.concat(rows, ignore_index=True)


def with_paper(table: pd.DataFrame, paper: dict, key) -> pd.DataFrame:
    "`table` with a `paper <train>` column beside each accuracy column (empty cells where the number is unknown; none if no numbers)."
    out = table.copy()
    if not paper: return out
    for c in [c for c in table.columns if not c.startswith('Δ')]:
        out[f'paper {c}'] = [paper.get(key(i), {}).get(c, float('nan')) for i in table.index]
    return out


def fmt(table: pd.DataFrame) -> str:
    "Accuracies in %, gaps in signed %, unknown cells empty."
    def cell(c, v):
        if v is None or (isinstance(v, float) and pd.isna(v)): return ''
        return f'{v:+.1%}' if c.startswith('Δ') else f'{100 * v:.1f}'
    return table.apply(lambda col: [cell(col.name, v) for v in col]).to_string()


def cost_table(runs) -> pd.DataFrame:
    "One row per created set: records, requests' cost and rejections."
    return pd.DataFrame([{'dataset': f'{tt}/{d}', 'strategy': s, 'records': len(r['records']), 'usd': r['usd'],
                          'tokens': r['tokens'], 'rejected': sum(r['rejections'].values()), 'seconds': r['seconds'],
                          'stop': r['stop']} for (tt, d, s), r in runs.items()])


def save_plots(results, costs, runs, out: Path):
    "PNG files of the accuracy bars, cost, drift and rejection reasons."
    out.mkdir(parents=True, exist_ok=True)
    lab = results.assign(test=[f"{d}→{t}" if k == 'OOD' else d for d, t, k in zip(results['dataset'], results['test'], results['kind'])])
    plot_accuracy(lab).savefig(out/'accuracy.png')
    if costs['usd'].notna().any(): plot_cost(costs).savefig(out/'cost.png')
    seeded = {k: r for k, r in runs.items() if r['seed'] is not None}
    if seeded:
        # drift per strategy: each dataset's rounds measured against its own seed, then averaged over datasets
        parts = [drift_table({s: r['records']}, r['seed']) for (tt, d, s), r in seeded.items()]
        drift = pd.concat(parts).groupby(['strategy', 'round'], sort=False)['drift'].mean().reset_index()
        plot_drift(drift).savefig(out/'drift.png')
    rej = sum((r['rejections'] for r in runs.values()), Counter())
    if rej: plot_rejections(rej).savefig(out/'rejections.png')


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--data', type=Path, default=ROOT.parent/'shared'/'benchmarks', help='<task_type>/<dataset>/{train,dev,test}.jsonl')
    p.add_argument('--created', type=Path, help='evaluate created sets from <dir>/[<task_type>/]<dataset>_<strategy>.jsonl when present')
    p.add_argument('--out', type=Path, default=ROOT/'out'/'paper_table', help='created sets and plots go here')
    p.add_argument('--base-url', default=os.environ.get('OPENAI_BASE_URL'), help='OpenAI-compatible endpoint; default: the simulated local server')
    p.add_argument('--model', default=os.environ.get('OPENAI_MODEL', 'gpt-3.5-turbo'),
                   help="model name at the endpoint and for pricing (default: the paper's gpt-3.5-turbo)")
    p.add_argument('--api-key-env', default='OPENAI_API_KEY', help='environment variable holding the API key (never a key on the command line)')
    p.add_argument('--local', action='store_true', help='use the simulated local server even if --base-url/OPENAI_BASE_URL is set')
    p.add_argument('--quick', action='store_true', help='CI size: 30 examples per set, 100 test and 1000 D_L records per dataset')
    p.add_argument('--n', type=int, help='examples to create per dataset and strategy (default 200, quick 30)')
    p.add_argument('--per-request', type=int, default=5, help='examples asked for in one request (the paper: 5)')
    p.add_argument('--test-limit', type=int, help='sample at most this many test records per dataset (default all, quick 100)')
    p.add_argument('--train-limit', type=int, help='sample at most this many D_L records (default all, quick 1000)')
    p.add_argument('--datasets', help='comma-separated subset, e.g. piqa,yesno_close/boolq')
    p.add_argument('--strategies', default=','.join(STRATEGIES))
    p.add_argument('--seed', type=int, default=42)
    p.add_argument('--no-plots', action='store_true')
    a = p.parse_args(argv)
    a.n = a.n or (30 if a.quick else 200)
    a.test_limit = a.test_limit or (100 if a.quick else None)
    a.train_limit = a.train_limit or (1000 if a.quick else None)
    a.strategies = [s.strip() for s in a.strategies.split(',') if s.strip()]
    a.datasets = [s.strip() for s in a.datasets.split(',')] if a.datasets else None
    return a


def main(argv=None):
    args = parse(argv)
    datasets = find_datasets(args.data, args.datasets)
    if not datasets: raise SystemExit(f"none of the paper's datasets found under {args.data}")
    simulated = args.local or not args.base_url
    needs_creation = not args.created or any(not created_file(args.created, tt, d, s).exists() for tt, d in datasets for s in args.strategies)
    with contextlib.ExitStack() as stack:
        base_url = args.base_url
        if simulated and needs_creation:
            from datacreator_nb.server import LocalServer
            base_url = stack.enter_context(LocalServer(model='simulated')).base_url
            print("NOTE: data is SIMULATED by the project's local test server (random well-formed examples), "
                  "NOT created by a language model: accuracies below say nothing about any model; "
                  f"costs are the simulated replies' token counts priced as {args.model}.")
        runs = create_all(args, datasets, args.out, base_url)
    results = evaluate_all(args, datasets, runs)
    id_t = with_paper(accuracy_table(results[results['kind'] == 'ID']), PAPER_ID, lambda i: i[0])
    ood_t = with_paper(accuracy_table(results[results['kind'] == 'OOD']), PAPER_OOD, lambda i: i)
    costs = cost_table(runs)
    print(f"\nDownstream model: TF-IDF + logistic regression (not the paper's RoBERTa-large). "
          f"Test records per dataset: {args.test_limit or 'all'}; D_L records: {args.train_limit or 'all'}; "
          f"created per set: {args.n}. Accuracy in %, Δ = (D_G - D_L) / D_L.")
    if not (PAPER_ID or PAPER_OOD or PAPER_COST):
        print("No paper columns: the paper's table numbers were not found in the sources available here (see PAPER_ID in this file).\n")
    print("In-distribution accuracy (dataset's own test split)\n" + fmt(id_t) + "\n")
    print("Out-of-distribution accuracy (trained on dataset, tested on test)\n" + fmt(ood_t) + "\n")
    cost_wide = costs.pivot_table(index='dataset', columns='strategy', values='usd', sort=False, dropna=False)
    print("Creation cost, USD\n" + with_paper(cost_wide, PAPER_COST, lambda i: i).to_string(na_rep='') + "\n")
    print("Created sets\n" + costs.to_string(index=False, na_rep='') + "\n")
    missing = results.loc[results['note'] != '', ['dataset', 'train', 'note']].drop_duplicates()
    if len(missing): print("Not evaluated\n" + missing.to_string(index=False) + "\n")
    if not args.no_plots:
        save_plots(results, costs, runs, args.out)
        print(f"plots: {args.out}/*.png")
    print(json.dumps({"datasets": len(datasets), "strategies": len(args.strategies), "rows": len(results)}))


if __name__ == '__main__':
    main()
