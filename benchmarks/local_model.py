"""The embedded model (SmolLM2-135M-Instruct) served by llama.cpp's native server (batched slots) against llama-cpp-python's server.

Both servers run side by side; the same creation run (the project's `create()`, same task, strategy and settings, no
request cache) goes to each in turn, alternating (native, baseline, native, baseline... `--repeats` times each), so
that a machine whose load changes treats both alike. Every request of a run is traced: its round, when it was sent
and answered, its completion tokens, whether `max_tokens` cut it, its retries. From the trace the script shows WHERE
the time goes: requests in flight on average (what batching has to batch), the slot-seconds lost waiting at the end
of each round for its slowest request, completion tokens per second during the run, tokens per accepted example.
The native server's replies are also counted with and without the task's JSON Schema. The last line is
{"examples_per_min": <native>, "baseline_examples_per_min": <llama-cpp-python>, "speedup": <ratio>,
 "accepted_share": <native>, "baseline_accepted_share": <...>, "peak_mb": <native server's peak>,
 "cpu_speedup": <the same ratio per CPU-minute of each server process>, "load_avg": <1 min, mean>}.
Server CPU time matters on a shared machine: each server gets the CPU the scheduler gives it, and the native one
needs both cores to reach its batched rate (the table shows the cores each actually used).
Run: .venv/bin/python benchmarks/local_model.py [--n 80] [--strategy tree] [--parallel 8] [--repeats 2] [--json-requests 16]
"""
import argparse, json, os, statistics, tempfile, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jsonschema
import pandas as pd
from openai import OpenAI

from datacreator_nb.create import create
from datacreator_nb.generate import Generator, structured_fields
from datacreator_nb.local_model import ENGINES, serve_model
from datacreator_nb.prompt import messages, reply_schema, response_format
from datacreator_nb.task import preset

TASK = preset('yesno_close')
ROUND_STRIDE = 100_000  # the loop numbers request j of round r as sample r * 100_000 + j


def traced(gen: Generator) -> list[dict]:
    "Record every request `gen` answers through `complete_many` (the loop's only door): round, send/answer times, tokens, cut, retries."
    calls, send = [], gen.complete_many
    async def complete_many(batch, samples=None, response_format=None):
        t0 = time.perf_counter()
        out = await send(batch, samples, response_format)
        calls.extend({'round': s // ROUND_STRIDE, 'start': t0, 'end': time.perf_counter(), 'ok': r.ok, 'retries': r.retries,
                      'tokens': r.completion_tokens if r.ok else 0, 'cut': r.ok and r.finish_reason == 'length'} for s, r in zip(samples, out))
        return out
    gen.complete_many = complete_many
    return calls


def loop_profile(calls: list[dict], wall: float, slots: int) -> dict:
    "Where a run's time went: requests per round, requests in flight on average, slot-seconds idle at round ends, tokens."
    t = pd.DataFrame(calls)
    t['seconds'] = t['end'] - t['start']
    rounds = t.groupby('round').agg(k=('seconds', 'size'), span=('end', 'max'), first=('start', 'min'), busy=('seconds', 'sum'))
    held = (rounds['k'] * (rounds['span'] - rounds['first'])).sum()  # slot-seconds the round's requests could have used
    return {'requests per round': '-'.join(map(str, rounds['k'])), 'mean in flight': round(float(t['seconds'].sum()) / wall, 2),
            'slot use': round(float(t['seconds'].sum()) / wall / slots, 2), 'barrier idle share': round(float(1 - rounds['busy'].sum() / held), 2),
            'tokens/request median': int(t['tokens'].median()), 'max': int(t['tokens'].max()), 'cut by max_tokens': int(t['cut'].sum()),
            'retries': int(t['retries'].sum()), 'failed': int((~t['ok']).sum())}


def creation_run(srv, args, out: Path) -> tuple[dict, dict]:
    "One uncached creation run through `srv`: its speed, yield and peak memory, and its traced profile."
    gen = Generator(base_url=srv.base_url, model=srv.model, api_key='not-needed', server_kind=srv.kind, max_tokens=args.max_tokens,
                    concurrency=args.parallel, timeout=args.timeout)
    calls, load, cpu, t0 = traced(gen), os.getloadavg()[0], srv.cpu_seconds, time.perf_counter()
    res = create(TASK, args.n, strategy=args.strategy, generator=gen, out=out/f'{srv.engine}-{time.monotonic_ns()}.jsonl', per_request=args.per_request,
                 parallel=args.parallel, stall_rounds=4, progress=False)
    wall, cpu = time.perf_counter() - t0, srv.cpu_seconds - cpu
    tokens = gen.stats.completion_tokens
    run = {'server': srv.engine, 'load': round((load + os.getloadavg()[0]) / 2, 1), 'examples': len(res.records), 'seconds': round(wall, 1),
           'examples/min': round(len(res.records) / wall * 60, 1), 'completion tok/s': round(tokens / wall, 1),
           'server cores': round(cpu / wall, 2), 'tok per CPU-s': round(tokens / cpu, 1), 'examples per CPU-min': round(len(res.records) / cpu * 60, 1),
           'accepted share': round(res.acceptance, 3), 'tokens per example': round(tokens / max(len(res.records), 1)),
           'peak MB': round(srv.peak_rss_mb, 1), 'top rejections': dict(res.rejections.most_common(2))}
    return run, {'server': srv.engine, **loop_profile(calls, wall, args.parallel)}


def reply_counts(srv, schema: bool, requests: int, per_request: int, max_tokens: int) -> dict:
    "`requests` prompts of the task sent together, with or without its JSON Schema: how many replies are JSON, how many fit the schema."
    client, check = OpenAI(base_url=srv.base_url, api_key='not-needed', max_retries=2, timeout=600), jsonschema.Draft202012Validator(reply_schema(TASK, per_request))
    rf = {'extra_body': structured_fields(response_format(TASK, per_request), srv.kind)} if schema else {}
    def ask(seed):
        return client.chat.completions.create(model=srv.model, messages=messages(TASK, n=per_request), temperature=1.0, seed=seed,
                                              max_tokens=max_tokens, **rf).choices[0].message.content
    with ThreadPoolExecutor(requests) as pool: replies = list(pool.map(ask, range(requests)))
    parsed = []
    for text in replies:
        try: parsed.append(json.loads(text, strict=False))
        except json.JSONDecodeError: parsed.append(None)
    fits = sum(check.is_valid({'examples': j} if isinstance(j, list) else j) for j in parsed if j is not None)
    return {'schema': 'on' if schema else 'off', 'requests': requests, 'JSON replies': sum(j is not None for j in parsed),
            'valid_json_share': round(sum(j is not None for j in parsed) / requests, 3), 'replies fitting the schema': fits}


def totals(runs: list[dict], engine: str) -> dict:
    "One server's runs summed: examples per minute over all its runs, accepted share, peak memory."
    mine = [r for r in runs if r['server'] == engine]
    examples, seconds, cpu = sum(r['examples'] for r in mine), sum(r['seconds'] for r in mine), sum(r['examples'] / r['examples per CPU-min'] for r in mine)
    return {'examples_per_min': round(examples / seconds * 60, 1), 'examples_per_cpu_min': round(examples / cpu, 1), 'accepted_share': round(statistics.mean(r['accepted share'] for r in mine), 3),
            'peak_mb': max(r['peak MB'] for r in mine)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--n', type=int, default=80, help='examples to create in each run (a tree needs a few rounds to fill its slots)')
    ap.add_argument('--strategy', default='tree')
    ap.add_argument('--per-request', type=int, default=5)
    ap.add_argument('--parallel', type=int, default=8, help="the loop's requests per round, and the native server's slots")
    ap.add_argument('--max-tokens', type=int, default=1024)
    ap.add_argument('--repeats', type=int, default=2, help='runs per server, alternating native and baseline')
    ap.add_argument('--timeout', type=float, default=600, help='seconds per request (a shared machine can be slow: a timeout re-sends the whole request)')
    ap.add_argument('--json-requests', type=int, default=16, help='requests for the JSON validity count, with and without the schema')
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp())
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    runs, profiles = [], []
    with serve_model(slots=args.parallel, native=True) as native, serve_model(native=False) as baseline:
        for _ in range(args.repeats):
            for srv in (native, baseline):
                run, profile = creation_run(srv, args, out)
                runs.append(run); profiles.append(profile)
                print(run, flush=True)
        validity = pd.DataFrame([reply_counts(native, s, args.json_requests, args.per_request, args.max_tokens) for s in (True, False)])
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    report(args, runs, profiles, validity)


def report(args, runs: list[dict], profiles: list[dict], validity: pd.DataFrame):
    "Print the runs, where their time went, the JSON validity counts, and the last line."
    print(f"\n{args.n} '{TASK.name}' examples per run, strategy {args.strategy}, {args.per_request} per request, {args.parallel} requests per round "
          f"(native: {args.parallel} slots), max_tokens {args.max_tokens}, in the order run:")
    print(pd.DataFrame(runs).to_string(index=False))
    print("\nwhere the time went (in flight = requests out at once, averaged over the run; barrier idle = share of the rounds' "
          "slot-seconds spent waiting for the round's slowest request):")
    print(pd.DataFrame(profiles).to_string(index=False))
    print(f"\nnative server, {args.json_requests} requests sent together, with and without the task's JSON Schema:")
    print(validity.to_string(index=False))
    nat, base = totals(runs, 'native'), totals(runs, 'llama-cpp-python')
    print(json.dumps({'examples_per_min': nat['examples_per_min'], 'baseline_examples_per_min': base['examples_per_min'],
                      'speedup': round(nat['examples_per_min'] / max(base['examples_per_min'], 1e-9), 2), 'accepted_share': nat['accepted_share'],
                      'baseline_accepted_share': base['accepted_share'], 'peak_mb': nat['peak_mb'],
                      'cpu_speedup': round(nat['examples_per_cpu_min'] / base['examples_per_cpu_min'], 2),
                      'load_avg': round(statistics.mean(r['load'] for r in runs), 1)}))


if __name__ == '__main__':
    main()
