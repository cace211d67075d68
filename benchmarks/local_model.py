"""The embedded model (SmolLM2-135M-Instruct) served by llama.cpp's native server (batched slots) against llama-cpp-python's server.

Both servers, one after the other in one run, create the same yes/no examples with the same strategy through the
project's `create()` (no request cache), and the native server's replies are counted with and without the task's
JSON Schema. Prints a table per part; the last line is
{"examples_per_min": <native>, "baseline_examples_per_min": <llama-cpp-python>, "speedup": <ratio>,
 "accepted_share": <native>, "peak_mb": <native server's peak>}.
Run: .venv/bin/python benchmarks/local_model.py [--n 40] [--strategy tree] [--parallel 8] [--json-requests 16] [--timeout 600]
"""
import argparse, json, os, tempfile, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jsonschema
import pandas as pd
from openai import OpenAI

from datacreator_nb.create import create
from datacreator_nb.generate import Generator
from datacreator_nb.local_model import ENGINES, adapt_response_format, serve_model
from datacreator_nb.prompt import messages, reply_schema, response_format
from datacreator_nb.task import preset

TASK = preset('yesno_close')


def creation_run(srv, args, out: Path) -> dict:
    "One uncached creation run through `srv`: its speed, yield and the server's peak memory."
    gen = Generator(base_url=srv.base_url, model=srv.model, api_key='not-needed', server_kind=srv.kind, max_tokens=args.max_tokens,
                    concurrency=args.parallel, timeout=args.timeout)
    t0 = time.perf_counter()
    res = create(TASK, args.n, strategy=args.strategy, generator=gen, out=out/f'{srv.engine}.jsonl', per_request=args.per_request,
                 parallel=args.parallel, stall_rounds=4, progress=False)
    wall = time.perf_counter() - t0
    return {'server': ENGINES[srv.engine], 'examples': len(res.records), 'stop': res.stop_reason, 'seconds': round(wall, 1),
            'examples_per_min': round(len(res.records) / wall * 60, 1), 'completion_tokens_per_s': round(gen.stats.completion_tokens / wall, 1),
            'accepted_share': round(res.acceptance, 3), 'requests': int(res.rounds['requests'].sum()),
            'peak_mb': round(srv.peak_rss_mb, 1), 'top_rejections': dict(res.rejections.most_common(3))}


def reply_counts(srv, schema: bool, requests: int, per_request: int, max_tokens: int) -> dict:
    "`requests` prompts of the task sent together, with or without its JSON Schema: how many replies are JSON, how many fit the schema."
    client, check = OpenAI(base_url=srv.base_url, api_key='not-needed', max_retries=2, timeout=600), jsonschema.Draft202012Validator(reply_schema(TASK, per_request))
    rf = {'response_format': adapt_response_format(response_format(TASK, per_request), srv.kind)} if schema else {}
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--n', type=int, default=40, help='examples to create with each server')
    ap.add_argument('--strategy', default='tree')
    ap.add_argument('--per-request', type=int, default=5)
    ap.add_argument('--parallel', type=int, default=8, help="the loop's requests per round, and the native server's slots")
    ap.add_argument('--max-tokens', type=int, default=1024)
    ap.add_argument('--timeout', type=float, default=600, help='seconds per request (a shared machine can be slow: a timeout re-sends the whole request)')
    ap.add_argument('--json-requests', type=int, default=16, help='requests for the JSON validity count, with and without the schema')
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp())
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    runs = []
    with serve_model(slots=args.parallel, native=True) as native:
        runs.append(creation_run(native, args, out))
        validity = pd.DataFrame([reply_counts(native, s, args.json_requests, args.per_request, args.max_tokens) for s in (True, False)])
    with serve_model(native=False) as baseline:
        runs.append(creation_run(baseline, args, out))
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    table = pd.DataFrame(runs)
    print(f"\n{args.n} '{TASK.name}' examples, strategy {args.strategy}, {args.per_request} per request, {args.parallel} requests per round:")
    print(table.to_string(index=False))
    print(f"\nnative server, {args.json_requests} requests sent together, with and without the task's JSON Schema:")
    print(validity.to_string(index=False))
    nat, base = runs
    print(json.dumps({'examples_per_min': nat['examples_per_min'], 'baseline_examples_per_min': base['examples_per_min'],
                      'speedup': round(nat['examples_per_min'] / max(base['examples_per_min'], 1e-9), 2),
                      'accepted_share': nat['accepted_share'], 'peak_mb': nat['peak_mb']}))


if __name__ == '__main__':
    main()
