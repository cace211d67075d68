"""Diversity by design (issue 15): do conditions make a created set more diverse, at what cost in requests,
and does `--balance` make yes/no sets balanced?

For yesno_close and mcqa_5 it creates --n examples with naive and tree, each without conditions and with
model-proposed topics (`{"topic": {"propose": --topics}}`, proposed once per task and reused by its runs);
for yes/no also the two topic runs with balanced label targets. Through the embedded model by default
(`create.default_generator()`), or any OpenAI-compatible endpoint (--base-url, --model, key in
$OPENAI_API_KEY); --simulated uses the project's simulated server instead (its numbers mean nothing).

    .venv/bin/python benchmarks/diversity.py                 # the embedded model, 100 examples per set
    .venv/bin/python benchmarks/diversity.py --n 30 --simulated

Per set: distinct-2 of the texts, mean pairwise cosine similarity (all rows of all sets embedded once, with
`embed.default_embedder()`), distinct topics covered (each row assigned to its nearest proposed topic, the same
for sets with and without conditions, out of `topics` proposed), topic named (share of rows that name the topic their
request asked for: whether the model follows the conditions), label entropy in bits (yes/no: at most 1; 5 answer positions: at most
2.32), acceptance, requests per accepted example (the topic proposal counted as one request of each set that
uses it). Prints the table, writes a plot to out/diversity.png, and as its last line
{"rows", "diversity_gain", "label_entropy_min"}: diversity_gain is the mean pairwise similarity without topics
minus with topics, same task and strategy, averaged; label_entropy_min the lowest label entropy of a balanced
yes/no set.
"""
import argparse, asyncio, json, os, random, sys, time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from datacreator_nb.attributes import Conditioner
from datacreator_nb.create import create, default_generator
from datacreator_nb.embed import default_embedder, embedder_name
from datacreator_nb.evaluate import distinct_n, entropy_bits, label_counts, mean_pairwise_similarity, record_text
from datacreator_nb.generate import Generator
from datacreator_nb.task import TaskError, preset

TASKS = ('yesno_close', 'mcqa_5')
SETS = [('naive', False, False), ('tree', False, False), ('naive', True, False), ('tree', True, False)]
BALANCED = [('naive', True, True), ('tree', True, True)]   # yes/no only


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--n', type=int, default=100, help='examples per set')
    p.add_argument('--tasks', nargs='+', default=list(TASKS), choices=TASKS)
    p.add_argument('--topics', type=int, default=20, help='topics the model proposes per task')
    p.add_argument('--per-request', type=int, default=5)
    p.add_argument('--parallel', type=int, default=8)
    p.add_argument('--max-rounds', type=int, default=30, help='stop a set after this many rounds (the tiny model rejects much)')
    p.add_argument('--mcqa-max-rounds', type=int, help='the same for mcqa_5 (the embedded model rarely answers with one of its options); default: --max-rounds')
    p.add_argument('--timeout', type=float, default=300, help='seconds per request (the embedded model on a busy machine is slow)')
    p.add_argument('--max-tokens', type=int, default=1024, help='completion tokens per request at most')
    p.add_argument('--no-balance', action='store_true', help='skip the balanced yes/no sets')
    p.add_argument('--seed', type=int, default=42)
    p.add_argument('--base-url', help='OpenAI-compatible endpoint; default: the embedded model')
    p.add_argument('--model', default='gpt-3.5-turbo')
    p.add_argument('--simulated', action='store_true', help='the simulated server (not a model): checks the script, measures nothing')
    p.add_argument('--out', default='out/diversity', help='folder of the created sets; the plot goes beside it')
    p.add_argument('--resume', action='store_true', help='go on with the sets in --out (finished ones are only measured again), topics from their state')
    return p.parse_args(argv)


def simulated_responder():
    "SIMULATED replies: distinct made-up topics for a proposal, varied examples otherwise."
    from datacreator_nb.server import WORDS, varied_examples
    examples, rng = varied_examples(), random.Random(0)
    def answer(request):
        if 'attribute_values' in json.dumps(request.get('response_format')) or 'distinct values of' in request['messages'][0]['content']:
            return json.dumps([' '.join(rng.sample(WORDS, 2)) for _ in range(40)])
        return examples(request)
    return answer


@contextmanager
def endpoint(args):
    "The generator of every set: the simulated server, the given endpoint, or the embedded model."
    if args.simulated:
        from datacreator_nb.server import SimulatedServer
        print('SIMULATED: the simulated server answers, not a model; the numbers below measure nothing', file=sys.stderr)
        with SimulatedServer(simulated_responder()) as srv: yield Generator('simulated', base_url=srv.base_url, api_key='not-needed')
    elif args.base_url:
        yield Generator(args.model, base_url=args.base_url, api_key=os.environ.get('OPENAI_API_KEY') or 'not-needed', timeout=args.timeout, max_tokens=args.max_tokens)
    else:
        with default_generator(timeout=args.timeout, max_tokens=args.max_tokens) as gen: yield gen


def proposed_topics(task, gen, args) -> dict:
    "The topics the model proposes for `task` (one request), as a conditioner's prepared state."
    async def go():
        try: return await Conditioner(replace(task, attributes={'topic': {'propose': args.topics}})).aprepare(gen)
        finally: await gen.aclose()
    return asyncio.run(go())


def saved_topics(task, args) -> dict|None:
    "With --resume: the topics the task's first topic set kept in its state file, if there is one."
    path = Path(args.out)/f'{task.name}-naive-topics.jsonl.state.json'
    return json.loads(path.read_text())['prepared'] if args.resume and path.exists() else None


def make_set(task, gen, args, strategy, topics, balance, prepared):
    "One created set and its bookkeeping."
    t = replace(task, attributes={'topic': {'propose': args.topics}}) if topics else task
    cond = Conditioner(t, balance=balance, seed=args.seed, parallel=args.parallel)
    if topics: cond.proposed = prepared['proposed']
    name = f"{task.name}-{strategy}{'-topics' if topics else ''}{'-balance' if balance else ''}"
    t0 = time.perf_counter()
    res = create(t, args.n, strategy=strategy, generator=gen, out=Path(args.out)/f'{name}.jsonl', per_request=args.per_request,
                 parallel=args.parallel, max_rounds=args.mcqa_max_rounds if task.name.startswith('mcqa') and args.mcqa_max_rounds else args.max_rounds, seed=args.seed, progress=False, restart=not args.resume,
                 conditioner=cond if (topics or balance) else None)
    requests = int(res.rounds['requests'].sum()) + bool(topics)
    print(f"{name}: {len(res.records)} records, {requests} requests, {time.perf_counter() - t0:.0f} s ({res.stop_reason})", file=sys.stderr)
    if balance: print(f"asked vs got per label:\n{cond.report(res, args.per_request).to_string(index=False)}", file=sys.stderr)
    return {'task': task.name, 'strategy': strategy, 'topics': topics, 'balance': balance, 'records': res.records,
            'acceptance': res.acceptance, 'requests': requests}


def nearest_topics(X, T) -> np.ndarray:
    "Index of the nearest topic (cosine) of each row."
    return (X @ T.T).argmax(1) if len(X) else np.empty(0, int)


def named_share(records) -> float:
    "Share of the records whose text names the topic their request asked for (NaN without conditions): did the model follow them?"
    asked = [(r['_meta'].get('conditions', {}).get('topic'), record_text(r).casefold()) for r in records]
    return round(sum(t.casefold() in text for t, text in asked) / len(asked), 3) if asked and all(t for t, _ in asked) else float('nan')


def measure(sets, topics_of, embedder) -> pd.DataFrame:
    "The table: one row per set."
    texts = [record_text(r) for s in sets for r in s['records']]
    embedder.embed(texts + [t for ts in topics_of.values() for t in ts])   # one embedding for all rows
    rows = []
    for s in sets:
        tx, topics = [record_text(r) for r in s['records']], topics_of[s['task']]
        covered = len(set(nearest_topics(embedder.embed(tx), embedder.embed(topics)))) if tx and topics else float('nan')
        rows.append({'task': s['task'], 'set': s['strategy'] + (' + topics' if s['topics'] else '') + (' + balance' if s['balance'] else ''),
                     'strategy': s['strategy'], 'topics': s['topics'], 'balance': s['balance'], 'rows': len(tx),
                     'distinct-2': round(distinct_n(tx, 2), 3), 'mean sim': round(mean_pairwise_similarity(tx, embedder), 3),
                     'topics proposed': len(topics), 'topics covered': covered, 'topic named': named_share(s['records']), 'label entropy': round(entropy_bits(label_counts(s['records'])), 3),
                     'acceptance': round(s['acceptance'], 3), 'requests/accepted': round(s['requests'] / len(tx), 3) if tx else float('nan')})
    return pd.DataFrame(rows)


def plot(df, path):
    "Mean pairwise similarity and distinct-2 per set, one bar group per task."
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, col in zip(axes, ['mean sim', 'distinct-2']):
        wide = df.pivot_table(index='set', columns='task', values=col, sort=False)
        wide.plot.bar(ax=ax, rot=25)
        ax.set_title(f"{col} ({'lower' if col == 'mean sim' else 'higher'} is more diverse)"); ax.set_xlabel('')
    fig.tight_layout(); fig.savefig(path, dpi=100); plt.close(fig)


def summary(df) -> dict:
    "The last line: rows, diversity gain (similarity without topics minus with, same task and strategy), lowest balanced entropy."
    plain = df[~df.balance].set_index(['task', 'strategy', 'topics'])['mean sim']
    gains = [plain[(t, s, False)] - plain[(t, s, True)] for t, s, topics in plain.index if topics and (t, s, False) in plain.index]
    balanced = df[df.balance & (df.task == 'yesno_close')]['label entropy']
    return {'rows': int(df.rows.sum()), 'diversity_gain': round(float(np.nanmean(gains)), 4) if gains else None,
            'label_entropy_min': round(float(balanced.min()), 3) if len(balanced) else None}


def main(argv=None):
    args, t0 = parse(argv), time.perf_counter()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    sets, topics_of = [], {}
    with endpoint(args) as gen:
        for name in args.tasks:
            task = preset(name)
            try: prepared = saved_topics(task, args) or proposed_topics(task, gen, args)
            except TaskError as e: prepared = None; print(f"{name}: no topics, its topic sets are skipped: {e}", file=sys.stderr)
            topics_of[name] = prepared['proposed']['topic'] if prepared else []
            print(f"{name}: {len(topics_of[name])} topics proposed: {topics_of[name]}", file=sys.stderr)
            todo = [x for x in SETS + (BALANCED if name.startswith('yesno') and not args.no_balance else []) if prepared or not x[1]]
            sets += [make_set(task, gen, args, s, topics, balance, prepared) for s, topics, balance in todo]
    embedder = default_embedder()
    df = measure(sets, topics_of, embedder)
    plot(df, Path(args.out).with_suffix('.png'))
    with pd.option_context('display.width', 250, 'display.max_columns', 20):
        print(df.drop(columns=['strategy', 'topics', 'balance']).to_string(index=False))
    endpoint_name = 'SIMULATED server' if args.simulated else (args.base_url or 'embedded model')
    print(f"endpoint: {endpoint_name}; embedder: {embedder_name(embedder)}; plot: {Path(args.out).with_suffix('.png')}; wall {time.perf_counter() - t0:.0f} s")
    print(json.dumps(summary(df)))


if __name__ == '__main__':
    main()
