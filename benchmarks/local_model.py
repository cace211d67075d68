"""Creation with the real embedded model (SmolLM2-135M-Instruct via llama.cpp) for each strategy, on one yes/no task.

Prints examples/minute, completion tokens/s, accepted share and the model server's peak memory per strategy.
Last line: {"examples_per_min": <tree>, "accepted_share": <tree>, "peak_mb": <max over the run>}.
Run: .venv/bin/python benchmarks/local_model.py [--n 15] [--strategies tree naive ...]
"""
import argparse, json, tempfile, time
from pathlib import Path

import pandas as pd

from datacreator_nb.create import create
from datacreator_nb.generate import Generator
from datacreator_nb.local_model import serve_model
from datacreator_nb.task import preset


def measure(srv, strategy: str, n: int, per_request: int, out: Path) -> dict:
    "One creation run through the model server, uncached; its speed and yield."
    gen = Generator(base_url=srv.base_url, model=srv.model, api_key='not-needed', server_kind='llama_cpp', max_tokens=1024)
    t0 = time.perf_counter()
    res = create(preset('yesno_close'), n, strategy=strategy, generator=gen, out=out/f'{strategy}.jsonl',
                 per_request=per_request, parallel=2, stall_rounds=4, progress=False)
    wall = time.perf_counter() - t0
    completion = gen.stats.completion_tokens
    return {'strategy': strategy, 'examples': len(res.records), 'stop': res.stop_reason, 'seconds': round(wall, 1),
            'examples_per_min': round(len(res.records) / wall * 60, 1), 'tokens_per_s': round(completion / wall, 1),
            'accepted_share': round(res.acceptance, 3), 'requests': int(res.rounds['requests'].sum()),
            'top_rejections': dict(res.rejections.most_common(3))}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--n', type=int, default=15, help='examples per strategy')
    ap.add_argument('--per-request', type=int, default=3)
    ap.add_argument('--strategies', nargs='*', default=['naive', 'random', 'contrastive', 'similar', 'tree'])
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp())
    with serve_model() as srv:
        print(f"model: {srv.gguf.name} as '{srv.model}' on {srv.base_url}, start-up {srv.startup_seconds:.1f} s")
        rows = [measure(srv, s, args.n, args.per_request, out) for s in args.strategies]
        peak = srv.peak_rss_mb
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    print(f"model server peak memory: {peak:.0f} MB")
    head = table.set_index('strategy').loc['tree' if 'tree' in args.strategies else args.strategies[-1]]
    print(json.dumps({'examples_per_min': float(head['examples_per_min']), 'accepted_share': float(head['accepted_share']), 'peak_mb': round(float(peak), 1)}))


if __name__ == '__main__':
    main()
