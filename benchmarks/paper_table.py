"""The paper's tables, measured here: ID accuracy, OOD accuracy and creation cost of D_L vs each strategy.

For each of the paper's datasets (Lee et al., EMNLP 2023, "Making Large Language Models Better Data
Creators") under --data, create a training set with every self-reference strategy (naive, random,
contrastive, similar, tree) through an OpenAI-compatible endpoint, or by default through the project's
SIMULATED local server (random well-formed examples, not a model). Train the small downstream model of
`datacreator_nb.evaluate` on the human train split (D_L) and on each created set (D_G), test it on the
dataset's test split (ID) and its partners' test splits (OOD), and print the tables beside the
paper's published numbers (`../shared/paper/results.json` when present, or --paper FILE). The
downstream model is a logistic regression on frozen all-MiniLM-L6-v2 sentence vectors (hashed TF-IDF
when the `embed` extra is missing), not the paper's fine-tuned RoBERTa-large; per dataset, its features
are chosen on the dev split (`evaluate.choose_features`: those vectors, or hashed TF-IDF of the whole text
with balanced classes) and shared by D_L and every created set.

OOD is shown twice: as the paper's table pairs it (one test set per column, named in the paper's
`test_column_as_printed`; ours is the mean over the models trained on the column's task-type
partners), and every (trained on, tested on) pair of a task type.

    .venv/bin/python benchmarks/paper_table.py --quick            # CI size, simulated, about a minute
    .venv/bin/python benchmarks/paper_table.py --dl-only          # D_L only on every dataset: ours vs the paper's vs chance
    .venv/bin/python benchmarks/paper_table.py --base-url URL --model NAME [--api-key-env VAR] --n 500
    .venv/bin/python benchmarks/paper_table.py --embedded --n 10   # created by the embedded SmolLM2-135M, priced as the paper
    .venv/bin/python benchmarks/paper_table.py --embedded --n 10 --resume   # after a crash: finished sets are read back
    .venv/bin/python benchmarks/paper_table.py --profile paper --scale 0.01 ...   # the paper's settings, 1% of its D_G sizes

Every set starts afresh (`create(..., restart=True)`) unless --resume: then a finished set is read back from its
file (with its rounds' cost and time) and an unfinished one continues where it stopped; a set made with other
settings is refused, not mixed. A dataset's sets are created side by side, one generator each, so the endpoint
batches their requests. Costs are priced at the paper's gpt-3.5-turbo price ($2 per 1M tokens, in and out) so the
cost tables compare with the paper's (the paper's total, and per 1,000 examples).
    .venv/bin/python benchmarks/paper_table.py --created DIR      # evaluate already-created JSONL files

Last line: {"datasets": <int>, "strategies": <int>, "paper_cells": <int>, "dl": {"<task_type>/<dataset>": <accuracy>},
"chance": {...}, "features": {"<task_type>/<dataset>": <candidate>}}: accuracies as fractions (null where there is no train
split), chance = 1/options or the test split's majority label, paper_cells = the paper's ID cells printed beside a measured one,
features = the downstream model's features chosen on the dev split.
"""
from __future__ import annotations
import argparse, asyncio, contextlib, json, os, random, sys, time
from collections import Counter
from pathlib import Path

import pandas as pd

from datacreator_nb.task import TaskError, from_benchmark, read_jsonl, preset, pick_example, example_from_record
from datacreator_nb.sampling import STRATEGIES
from datacreator_nb.evaluate import (PAPER_DATASETS, ood_partners, evaluate_sets, accuracy_table, drift_table, is_multiple_choice,
                                     choose_features, plot_accuracy, plot_cost, plot_drift, plot_rejections, _grouped_bars)
from matplotlib.figure import Figure
from datacreator_nb.embed import default_embedder, embedder_name
from datacreator_nb.create import PROFILES, acreate, profile_of, rounds_path

ROOT = Path(__file__).resolve().parents[1]
# the dataset names the paper prints, as this project's dataset folders
PRINTED = {'PIQA': 'piqa', 'WinoGrande': 'winogrande', 'CommonsenseQA': 'csqa', 'RiddleSense': 'riddle_sense', 'BoolQ': 'boolq',
           'PubMedQA': 'pubmedqa', 'BioASQ': 'bioasq', 'StrategyQA': 'strategyqa', 'CREAK': 'creak'}


def load_paper(path: Path) -> dict:
    "The paper's tables as fractions: {'id': {ds: {train: acc}}, 'ood': {ds: {train: acc}}, 'ood_test': {ds: printed}, 'cost': {ds: {s: usd}}}."
    if not path.exists(): return {'id': {}, 'ood': {}, 'ood_test': {}, 'cost': {}, 'n_train': {}}
    raw = json.loads(path.read_text(encoding='utf-8'))
    def by_dataset(table, scale):
        out = {}
        for train, cells in table.items():
            if train in ('n_train', 'test_column_as_printed', 'relative_gap_percent_as_printed'): continue
            for ds, v in cells.items(): out.setdefault(ds, {})[train] = v * scale
        return out
    return {'id': by_dataset(raw['id_accuracy'], 0.01), 'ood': by_dataset(raw['ood_accuracy'], 0.01),
            'ood_test': raw['ood_accuracy']['test_column_as_printed'], 'cost': by_dataset(raw['cost_usd'], 1), 'n_train': raw['id_accuracy']['n_train']}


def paper_pairs(paper: dict, datasets) -> dict:
    "{column: (test folder, [trained-on folders])} of the paper's OOD table: the printed test set, trained on its task-type partners."
    present, pairs = {f'{tt}/{d}' for tt, d in datasets}, {}
    for col, printed in paper['ood_test'].items():
        tt, name = col.split('/')[0], PRINTED.get(printed, printed.lower())
        test = f'{tt}/{name}' if name in PAPER_DATASETS[tt] else next((f'{t}/{name}' for t, ds in PAPER_DATASETS.items() if name in ds), None)
        trained = [f'{tt}/{d}' for d in PAPER_DATASETS[tt] if d != name and f'{tt}/{d}' in present]
        if test in present and trained: pairs[col] = (test, trained)
    return pairs


def shown(path: Path) -> str:
    "`path` relative to the project when it is near it (no machine paths in reports)."
    try: return os.path.relpath(path.resolve(), ROOT)
    except ValueError: return str(path)


def chance(tt: str, records: list[dict]) -> float:
    "Accuracy of guessing: 1/options for multiple choice, the majority label's share for yes/no."
    if is_multiple_choice(tt): return 1 / len(records[0]['options'])
    return Counter(str(r['label']) for r in records).most_common(1)[0][1] / len(records)


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


def set_size(args, key: str) -> int:
    "Examples to create for dataset `key`: --n, or with --scale that fraction of the paper's D_G size (its human train size)."
    if args.scale is None: return args.n
    if key not in args.n_train: raise SystemExit(f"--scale: the paper's train size of {key} is unknown (no n_train in {shown(args.paper)})")
    return max(1, round(args.n_train[key] * args.scale))


def size_said(args) -> str:
    "The size of the created sets, in words."
    return str(args.n) if args.scale is None else f"{args.scale:g} x the paper's D_G size (" + ', '.join(f"{k.split('/')[1]} {set_size(args, k)}" for k in args.n_train) + ")"


def generator_options(args) -> dict:
    "The profile's sampling settings, and the paper's gpt-3.5-turbo price for every reply (so costs compare with the paper's)."
    from datacreator_nb.generate import PAPER_USD_PER_1M
    return profile_of(args.profile)['generator'] | dict(price_in=PAPER_USD_PER_1M, price_out=PAPER_USD_PER_1M, timeout=args.timeout)


def make_generator(args, base_url: str, model: str | None = None):
    "The project's generator for `base_url` (and `model`, default --model) with `generator_options`."
    from datacreator_nb.generate import Generator
    return Generator(model=model or args.model, base_url=base_url, api_key=os.environ.get(args.api_key_env), **generator_options(args))


@contextlib.contextmanager
def embedded_generators(args):
    "A maker of generators for the embedded model (started for the block by `create.default_generator`), with `generator_options`."
    from datacreator_nb.create import default_generator
    from datacreator_nb.generate import Generator
    with default_generator(**generator_options(args)) as g:
        yield lambda: Generator(model=g.model, base_url=g.base_url, api_key='not-needed', server_kind=g.server_kind, **generator_options(args))


def create_all(args, datasets, new_generator=None) -> dict:
    "{(tt, dataset, strategy): {'records', 'usd', 'tokens', 'rejections', 'seconds', 'stop', 'seed'}} for every set, read or created."
    runs = {}
    for tt, d in datasets:
        todo = []
        for s in args.strategies:
            path = created_file(args.created, tt, d, s) if args.created else None
            if path is None or not path.exists(): todo.append(s); continue
            runs[tt, d, s] = dict(records=read_jsonl(path), usd=float('nan'), tokens=float('nan'), rejections=Counter(),
                                  seconds=float('nan'), stop='read from file', seed=None)
        if todo and new_generator is None: raise SystemExit(f"no created file for {tt}/{d} {todo[0]} and no endpoint to create it (drop --created or add it)")
        if todo: runs |= asyncio.run(create_dataset(args, tt, d, todo, new_generator))
    return runs


def gave_up(dest: Path, stall_rounds: int) -> int | None:
    "How many rounds an earlier run of the set in `dest` made if its last `stall_rounds` accepted nothing (it gave up), else None."
    path = rounds_path(dest)
    rounds = read_jsonl(path) if path.exists() else []
    return len(rounds) if len(rounds) >= stall_rounds and not any(r['accepted'] for r in rounds[-stall_rounds:]) else None


async def create_set(args, task, tt: str, d: str, s: str, gen) -> dict:
    "One set written to `<out>/created/<task_type>/<dataset>_<strategy>.jsonl`: afresh, or with --resume continued or read back."
    dest, n = args.out/'created'/tt/f'{d}_{s}.jsonl', set_size(args, f'{tt}/{d}')
    dest.parent.mkdir(parents=True, exist_ok=True)
    stalled = gave_up(dest, args.stall_rounds) if args.resume else None   # read back as it stopped, not tried again
    res = await acreate(task, n, strategy=s, generator=gen, out=dest, per_request=args.per_request, seed=args.seed, progress=False,
                        stall_rounds=args.stall_rounds, max_rounds=stalled, profile=args.profile, restart=not args.resume)
    done, stop = 'read back' if args.resume and not res.rounds_now else 'created', 'stall' if stalled else res.stop_reason
    print(f"  {done} {tt}/{d} {s}: {len(res.records)} records, ${res.usd:.4f}, {res.seconds:.0f} s, stop: {stop}", file=sys.stderr, flush=True)
    return dict(records=res.records[:n], usd=res.usd, tokens=res.tokens, rejections=Counter(res.rejections), seconds=res.seconds,
                stop=stop, seed=task.to_record(task.example))


async def create_dataset(args, tt: str, d: str, strategies: list, new_generator) -> dict:
    "A dataset's sets, one per strategy, created side by side (each with its own generator: the endpoint batches their requests)."
    task = benchmark_task(args.data/tt/d, args.seed)
    made = await asyncio.gather(*(create_set(args, task, tt, d, s, new_generator()) for s in strategies))
    return {(tt, d, s): r for s, r in zip(strategies, made)}


def read_tests(args, datasets) -> dict:
    "{'<task_type>/<dataset>': test records (a fixed sample of at most --test-limit)}."
    return {f'{tt}/{d}': sample(read_split(args.data/tt/d/'test.jsonl'), args.test_limit, args.seed) for tt, d in datasets}


def evaluate_all(args, datasets, runs, tests: dict, pairs: dict) -> tuple[pd.DataFrame, dict]:
    "Long results (one row per (dataset, test, train), kind ID/OOD) and {dataset: `FeatureChoice`}: each dataset's features chosen on its dev split."
    rows, choices = [], {}
    for tt, d in datasets:
        key = f'{tt}/{d}'
        names = [key] + [f'{tt}/{p}' for p in ood_partners(tt, d)] + [t for t, trained in pairs.values() if key in trained]
        test_sets = {n: tests[n] for n in dict.fromkeys(names) if n in tests}
        human = sample(read_split(args.data/tt/d/'train.jsonl'), args.train_limit, args.seed)
        dev = sample(read_split(args.data/tt/d/'dev.jsonl'), args.test_limit, args.seed)
        choices[key] = choose_features(human, dev, is_multiple_choice(tt), seed=args.seed)   # D_L and every D_G of the dataset share it
        res = evaluate_sets({'D_L': human} | {s: runs[tt, d, s]['records'] for s in args.strategies}, test_sets, tt, home=key, seed=args.seed,
                            model=choices[key].settings)
        if human is None: res.loc[res['train'] == 'D_L', 'note'] = 'no train split in the data'
        rows.append(res)
        dev_said = ', '.join(f'{n} {a:.1%}' for n, a in choices[key].dev.items()) or 'no dev split or no D_L'
        print(f"  evaluated {key}: features {choices[key].name} (dev: {dev_said})", file=sys.stderr, flush=True)
    return pd.concat(rows, ignore_index=True), choices


def paired_results(results: pd.DataFrame, pairs: dict) -> pd.DataFrame:
    "The paper's OOD pairing, long: per column, the mean accuracy on its test set of the models trained on its partners."
    rows = [{'dataset': col, 'test': f"{test} (trained on {', '.join(t.split('/')[1] for t in trained)})", 'train': train, 'accuracy': acc}
            for col, (test, trained) in pairs.items()
            for train, acc in results[(results['test'] == test) & results['dataset'].isin(trained)].groupby('train', sort=False)['accuracy'].mean().items()]
    return pd.DataFrame(rows, columns=['dataset', 'test', 'train', 'accuracy'])


def paper_column(pairs: dict, dataset: str, test: str):
    "The paper's OOD column that tests on `test` a model trained on `dataset`, if any."
    return next((col for col, (t, trained) in pairs.items() if t == test and dataset in trained), None)


def dl_check(results: pd.DataFrame, paper: dict, chances: dict, features: dict) -> pd.DataFrame:
    "Our D_L vs the paper's D_L vs chance, ID, per dataset, and the features chosen on dev; `goal`: ours >= chance + 5 points wherever the paper's is."
    ours = results[(results['kind'] == 'ID') & (results['train'] == 'D_L')].set_index('dataset')
    t = pd.DataFrame({'n_train': ours['n_train'], 'ours': ours['accuracy'], 'paper': [paper['id'].get(d, {}).get('D_L', float('nan')) for d in ours.index],
                      'chance': [chances[d] for d in ours.index]})
    needed = (t['paper'] >= t['chance'] + 0.05) & (t['n_train'] > 0)
    t['goal'] = [('met' if o >= c + 0.05 else 'MISSED') if n else 'not required' for o, c, n in zip(t['ours'], t['chance'], needed)]
    t['features'] = [features[d] for d in t.index]
    return t


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


def per_thousand(costs: pd.DataFrame) -> pd.DataFrame:
    "Our cost per 1,000 created examples, one row per dataset, one column per strategy (empty where a set has no records)."
    return costs.assign(usd=1000 * costs['usd'] / costs['records'].where(costs['records'] > 0)).pivot_table(
        index='dataset', columns='strategy', values='usd', sort=False, dropna=False)


def paper_per_thousand(paper: dict) -> dict:
    "The paper's cost per 1,000 examples: its total per dataset and strategy over its D_G size."
    return {d: {s: 1000 * v / paper['n_train'][d] for s, v in cells.items()} for d, cells in paper['cost'].items() if d in paper['n_train']}


def with_paper_marks(results: pd.DataFrame, paper: dict, pairs: dict) -> pd.DataFrame:
    "`results` with a `paper` column: the paper's accuracy for the same (dataset, test, train) where it has one."
    def cell(d, t, train, kind):
        return paper['id' if kind == 'ID' else 'ood'].get(d if kind == 'ID' else paper_column(pairs, d, t), {}).get(train, float('nan'))
    return results.assign(paper=[cell(*x) for x in zip(results['dataset'], results['test'], results['train'], results['kind'])])


def plot_vs_paper(results: pd.DataFrame, chances: dict) -> Figure:
    "One panel per dataset: in-distribution accuracy of each training set, ours beside the paper's, chance dotted."
    ids = results[results['kind'] == 'ID']
    names = list(dict.fromkeys(ids['dataset']))
    rows = -(-len(names) // 5)
    fig = Figure(figsize=(15, 2.8 * rows), layout='constrained')
    axes = fig.subplots(rows, 5, squeeze=False).ravel()
    for ax, d in zip(axes, names):
        part = ids[ids['dataset'] == d]
        both = pd.concat([part.assign(source='ours'), part.assign(source='paper', accuracy=part['paper'])])
        _grouped_bars(ax, both.assign(accuracy=100 * both['accuracy']), 'train', 'source', 'accuracy')
        ax.axhline(100 * chances[d], ls=':', color='k')
        ax.set(title=d, ylim=(0, 100), ylabel='accuracy %')
    for ax in axes[len(names):]: ax.set_visible(False)
    return fig


def save_plots(results, costs, runs, out: Path, chances: dict):
    "PNG files: ours vs the paper per dataset, the accuracy bars (the paper's numbers as black marks), cost, drift and rejection reasons."
    out.mkdir(parents=True, exist_ok=True)
    if 'paper' in results and results['paper'].notna().any(): plot_vs_paper(results, chances).savefig(out/'vs_paper.png', dpi=80)
    lab = results.assign(test=[f"{d}→{t.split('/')[1]}" if k == 'OOD' else d for d, t, k in zip(results['dataset'], results['test'], results['kind'])])
    plot_accuracy(lab).savefig(out/'accuracy.png')
    if len(costs) and costs['usd'].notna().any(): plot_cost(costs).savefig(out/'cost.png')
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
    p.add_argument('--paper', type=Path, default=ROOT.parent/'shared'/'paper'/'results.json', help="the paper's published tables (JSON)")
    p.add_argument('--dl-only', action='store_true', help='train on D_L only (no creation): our D_L vs the paper\'s vs chance on every dataset')
    p.add_argument('--created', type=Path, help='evaluate created sets from <dir>/[<task_type>/]<dataset>_<strategy>.jsonl when present')
    p.add_argument('--out', type=Path, default=ROOT/'out'/'paper_table', help='created sets and plots go here')
    p.add_argument('--base-url', default=os.environ.get('OPENAI_BASE_URL'), help='OpenAI-compatible endpoint; default: the simulated local server')
    p.add_argument('--model', default=os.environ.get('OPENAI_MODEL', 'gpt-3.5-turbo'),
                   help="model name at the endpoint and for pricing (default: the paper's gpt-3.5-turbo)")
    p.add_argument('--api-key-env', default='OPENAI_API_KEY', help='environment variable holding the API key (never a key on the command line)')
    p.add_argument('--local', action='store_true', help='use the simulated local server even if --base-url/OPENAI_BASE_URL is set')
    p.add_argument('--embedded', action='store_true', help='create with the embedded model (SmolLM2-135M-Instruct on this machine)')
    p.add_argument('--resume', action='store_true', help='read back finished sets in --out and continue unfinished ones (default: start each afresh)')
    p.add_argument('--quick', action='store_true', help='CI size: 30 examples per set, 100 test and 300 D_L records per dataset')
    p.add_argument('--n', type=int, help='examples to create per dataset and strategy (default 200, quick 30)')
    p.add_argument('--profile', default='default', choices=list(PROFILES), help="creation settings: the project's ('default') or the paper's ('paper')")
    p.add_argument('--scale', type=float, help="instead of --n: this fraction of the paper's D_G size per dataset (its human train size)")
    p.add_argument('--per-request', type=int, default=5, help='examples asked for in one request (the paper: 5)')
    p.add_argument('--timeout', type=float, help='seconds per request (default 60; --embedded 900: a loaded CPU takes minutes per reply)')
    p.add_argument('--stall-rounds', type=int, default=5, help='give a set up after this many rounds in a row with nothing accepted')
    p.add_argument('--test-limit', type=int, help='sample at most this many test records per dataset (default all, quick 100)')
    p.add_argument('--train-limit', type=int, help='sample at most this many D_L records (default all, quick 300)')
    p.add_argument('--datasets', help='comma-separated subset, e.g. piqa,yesno_close/boolq')
    p.add_argument('--strategies', default=','.join(STRATEGIES))
    p.add_argument('--seed', type=int, default=42)
    p.add_argument('--no-plots', action='store_true')
    a = p.parse_args(argv)
    a.n = a.n or (30 if a.quick else 200)
    a.timeout = a.timeout or (900 if a.embedded else 60)
    a.test_limit = a.test_limit or (100 if a.quick else None)
    a.train_limit = a.train_limit or (300 if a.quick else None)
    a.strategies = [] if a.dl_only else [s.strip() for s in a.strategies.split(',') if s.strip()]
    a.datasets = [s.strip() for s in a.datasets.split(',')] if a.datasets else None
    return a


def print_tables(args, results, runs, paper, pairs) -> pd.DataFrame:
    "The ID, OOD (paired as the paper, and all partners) and cost tables beside the paper's; the ID table."
    id_t = with_paper(accuracy_table(results[results['kind'] == 'ID']), paper['id'], lambda i: i[0])
    print("In-distribution accuracy (dataset's own test split)\n" + fmt(id_t) + "\n")
    ood = results[results['kind'] == 'OOD']
    if pairs:
        paired = with_paper(accuracy_table(paired_results(results, pairs)), paper['ood'], lambda i: i[0])
        print("Out-of-distribution accuracy as the paper pairs it (column: its printed test set; ours: mean over the "
              "models trained on the named partners)\n" + fmt(paired) + "\n")
    if len(ood):
        every = with_paper(accuracy_table(ood), paper['ood'], lambda i: paper_column(pairs, *i))
        print("Out-of-distribution accuracy, every partner (trained on dataset, tested on test; paper: its column for that pair)\n" + fmt(every) + "\n")
    if runs:
        costs = cost_table(runs)
        cost_wide = costs.pivot_table(index='dataset', columns='strategy', values='usd', sort=False, dropna=False)
        print("Creation cost, USD\n" + with_paper(cost_wide, paper['cost'], lambda i: i).to_string(na_rep='') + "\n")
        print("Created sets\n" + costs.to_string(index=False, na_rep='') + "\n")
        print("Creation cost per 1,000 examples, USD (the paper's: its total over its n_train examples)\n"
              + with_paper(per_thousand(costs), paper_per_thousand(paper), lambda i: i).to_string(na_rep='', float_format='{:.3f}'.format) + "\n")
    return id_t


def main(argv=None):
    args = parse(argv)
    datasets = find_datasets(args.data, args.datasets)
    if not datasets: raise SystemExit(f"none of the paper's datasets found under {args.data}")
    paper = load_paper(args.paper)
    args.n_train = paper['n_train']
    simulated = not args.embedded and (args.local or not args.base_url)
    needs_creation = not args.created or any(not created_file(args.created, tt, d, s).exists() for tt, d in datasets for s in args.strategies)
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        base_url, new_generator = args.base_url, (lambda: make_generator(args, args.base_url)) if args.base_url else None
        if args.embedded and needs_creation and args.strategies:
            if os.environ.get('OPENAI_BASE_URL'): raise SystemExit("--embedded: OPENAI_BASE_URL is set, which would replace the embedded model; unset it")
            new_generator = stack.enter_context(embedded_generators(args))
            print(f"Data created by the embedded model {new_generator().model} on this machine (not the paper's gpt-3.5-turbo); "
                  "costs are its token counts priced at the paper's $2 per 1M tokens.")
        elif simulated and needs_creation and args.strategies:
            from datacreator_nb.server import SimulatedServer
            base_url = stack.enter_context(SimulatedServer(model='simulated')).base_url
            new_generator = lambda: make_generator(args, base_url, 'simulated')   # named as the simulated server: a resumed run matches whatever its port
            print("NOTE: data is SIMULATED by the project's local test server (random well-formed examples), "
                  "NOT created by a language model: accuracies below say nothing about any model; "
                  f"costs are the simulated replies' token counts priced at the paper's $2 per 1M tokens.")
        runs = create_all(args, datasets, new_generator)
    print(f"Creation: {time.perf_counter() - t0:.0f} s wall.", flush=True)
    tests, pairs = read_tests(args, datasets), paper_pairs(paper, datasets)
    results, choices = evaluate_all(args, datasets, runs, tests, pairs)
    features = {k: c.name for k, c in choices.items()}
    print(f"\nDownstream model: logistic regression on frozen {embedder_name(default_embedder())} vectors "
          f"(the paper fine-tunes RoBERTa-large). Test records per dataset: {args.test_limit or 'all'}; D_L records: "
          f"{args.train_limit or 'all'}; created per set: {0 if args.dl_only else size_said(args)}; profile: {args.profile}. Accuracy in %, Δ = (D_G - D_L) / D_L.")
    print("Features per dataset, chosen on its dev split (sampled like the test split) by D_L's accuracy and shared by D_L and every created set "
          "('default': the model above; 'tf-idf, balanced': hashed TF-IDF of the whole text, balanced classes): "
          + ', '.join(f'{k} {v}' for k, v in features.items()))
    print(f"Paper columns: {shown(args.paper)} (accuracy of RoBERTa-large, the paper's D_G made by gpt-3.5-turbo)\n" if paper['id'] else
          f"No paper columns: {shown(args.paper)} not found.\n")
    id_t = print_tables(args, results, runs, paper, pairs)
    chances = {k: chance(k.split('/')[0], recs) for k, recs in tests.items()}
    check = dl_check(results, paper, chances, features)
    print("D_L check: our D_L vs the paper's vs chance (goal: at least 5 points above chance wherever the paper's is)\n"
          + check.to_string(formatters={c: '{:.1%}'.format for c in ('ours', 'paper', 'chance')}, na_rep='')
          + (f"\n(D_L sampled to at most {args.train_limit} records: the goal is meant for the full training sets)" if args.train_limit else "") + "\n")
    missing = results.loc[results['note'] != '', ['dataset', 'train', 'note']].drop_duplicates()
    if len(missing): print("Not evaluated\n" + missing.to_string(index=False) + "\n")
    args.out.mkdir(parents=True, exist_ok=True)
    with_paper_marks(results, paper, pairs).to_csv(args.out/'results.csv', index=False)   # every accuracy, to plot or tabulate again
    if not args.no_plots:
        save_plots(with_paper_marks(results, paper, pairs), cost_table(runs) if runs else pd.DataFrame(columns=['usd']), runs, args.out, chances)
        print(f"plots: {args.out}/*.png")
    trained = [c for c in ('D_L', *args.strategies)]
    cells = int(sum(pd.notna(id_t.at[i, c]) and pd.notna(id_t.at[i, f'paper {c}']) for i in id_t.index for c in trained if f'paper {c}' in id_t))
    print(json.dumps({"datasets": len(datasets), "strategies": len(args.strategies), "paper_cells": cells,
                      "dl": {d: None if pd.isna(v) else round(float(v), 4) for d, v in check['ours'].items()},
                      "chance": {d: round(v, 4) for d, v in chances.items()}, "features": features}))


if __name__ == '__main__':
    main()
