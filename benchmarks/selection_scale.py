"""How selection scales: seconds per similar/contrastive round over pools of 1k, 10k, 100k created examples.

Each round adds 5 new examples to the pool (one request's worth) and picks the next formatting example
from the whole pool, as a run that compares against everything created so far would. The pool's vectors
are cached by the strategy, so a round embeds only the new items; the one-off time to embed the pool is
reported separately. Goal: < 1 s per round at 100k. Last line: one JSON object.

Second half: the share of a 2,000-example creation run's wall time spent outside LLM calls (the loop's own
overhead: prompting, validation, dedup, selection, writing), against the simulated server `datacreator serve-simulated`
in a separate process with a fixed latency. The run writes what `datacreator create --out` writes: the JSONL records
(fsynced each round), the state file and the request cache, in a temporary folder. Goal: < 2%.

Selection compares by hashed TF-IDF unless --embedder minilm (sentence vectors: the pool's one-off embedding then
dominates, about 275 texts/s on one thread). The overhead run uses the loop's default embedder (MiniLM when installed).

Run: .venv/bin/python benchmarks/selection_scale.py [--sizes 1000 10000 100000] [--rounds 5] [--embedder tfidf|minilm] [--overhead-n 2000] [--latency 0.1]
"""
import argparse, json, random, signal, statistics, subprocess, sys, tempfile, time
from contextlib import contextmanager
from pathlib import Path

from datacreator_nb.sampling import Contrastive, Similar, HashingEmbedder, question_text

STARTS = ["Why does", "How can", "What happens when", "Is it true that", "Where would you usually find", "Which of these",
          "How do you", "What is the best way to", "Can a", "Why would someone"]
WORDS = """water bread cheese garden flower tree river mountain city village school teacher student doctor nurse hospital
train station airport ticket window door kitchen oven fridge table chair pillow blanket winter summer autumn spring rain snow
storm wind cloud sun moon planet star ocean island beach sand stone glass metal wood paper plastic rope nail hammer saw
knife spoon fork plate cup bottle coffee tea milk sugar salt pepper soup rice apple orange banana lemon tomato potato onion
carrot horse dog cat bird fish cow sheep goat chicken egg farmer market shop money price bank letter phone computer screen
keyboard music song guitar piano drum painting museum library book story poem history science math language word sentence
question answer friend family child parent brother sister neighbour game ball team player match goal race bicycle car bus
road bridge tunnel map compass light lamp candle fire smoke ash heat cold ice steam cloth shirt shoe hat coat button needle
thread soap towel bath shower mirror brush comb tooth hair skin bone heart lung blood medicine fever cough sleep dream
morning evening night clock calendar birthday holiday gift party dance paint colour red blue green yellow heavy light
soft hard warm cool wet dry loud quiet fast slow tall short young old new broken clean dirty empty full sharp blunt bright
dark sweet sour bitter fresh stale strong weak keep carry break fix open close build cook bake boil freeze melt grow cut
wash dry fold push pull throw catch climb swim fly drive ride walk run jump sing read write count measure weigh choose""".split()
WEIGHTS = [1 / (i + 1) ** 0.8 for i in range(len(WORDS))]   # Zipf-like: a few words are common, most are rare


def synthetic_examples(n: int, rng: random.Random) -> list[dict]:
    "n MCQA-shaped examples whose questions are 10-25 words drawn from the word bank."
    out = []
    for _ in range(n):
        start = rng.choice(STARTS)
        words = rng.choices(WORDS, WEIGHTS, k=rng.randint(10, 25) - len(start.split()))
        out.append({"question": f"{start} {' '.join(words)}?", "context": None, "options": rng.sample(WORDS, 2), "answer": None})
    return out


def make_embedder(name: str):
    "The embedder to select with: 'tfidf' (HashingEmbedder) or 'minilm' (the embed extra's sentence vectors)."
    if name == 'tfidf': return HashingEmbedder()
    from datacreator_nb.embed import MiniLMEmbedder
    return MiniLMEmbedder()


def measure_selection(size: int, rounds: int, new_per_round: int = 5, seed: int = 0, embedder: str = 'tfidf') -> list[dict]:
    "One-off pool embedding time and seconds per selection round, for similar and contrastive, at one pool size."
    rng = random.Random(seed)
    pool = synthetic_examples(size, rng)
    rows = []
    for strategy in (Similar(embedder=make_embedder(embedder)), Contrastive(embedder=make_embedder(embedder))):
        t = time.perf_counter()
        strategy.cache.rows([question_text(ex) for ex in pool])
        embed_seconds = time.perf_counter() - t
        current, grown, times = [pool[0]], list(pool), []
        for _ in range(rounds):
            grown += synthetic_examples(new_per_round, rng)
            t = time.perf_counter()
            current = strategy.pick(current, grown, rng)
            times.append(time.perf_counter() - t)
        rows.append(dict(strategy=strategy.name, embedder=embedder, pool=size, embed_pool_s=embed_seconds,
                         round_mean_s=statistics.mean(times), round_max_s=max(times)))
    return rows


@contextmanager
def simulated_server(latency: float):
    "`datacreator serve-simulated` in its own process (its CPU is not the client's overhead); yields its base_url."
    exe = Path(sys.executable).parent/'datacreator'
    p = subprocess.Popen([str(exe), 'serve-simulated', '--port', '0', '--latency', str(latency)], stdout=subprocess.PIPE, text=True)
    try:
        base_url = p.stdout.readline().strip()
        if not base_url.startswith('http://'): raise RuntimeError(f"serve-simulated did not start (exit {p.poll()})")
        yield base_url
    finally:
        p.send_signal(signal.SIGINT)
        try: p.wait(10)
        except subprocess.TimeoutExpired: p.kill(); p.wait()


def measure_overhead_share(n_examples: int = 2000, latency: float = 0.1, strategies=('tree', 'contrastive')) -> list[dict]:
    "Share of wall time spent outside LLM calls in an `n_examples` run against the simulated server, per strategy."
    from datacreator_nb.create import create, side_file
    from datacreator_nb.generate import Generator
    from datacreator_nb.task import preset
    rows = []
    with simulated_server(latency) as base_url, tempfile.TemporaryDirectory() as tmp:
        for name in strategies:
            out = Path(tmp)/f'{name}.jsonl'
            gen = Generator(model='simulated', base_url=base_url, api_key='not-needed', concurrency=8, cache=side_file(out, '.cache.sqlite'))
            t = time.perf_counter()
            res = create(preset('yesno_close'), n_examples, strategy=name, generator=gen, out=out, per_request=5, parallel=8, progress=False)
            wall = time.perf_counter() - t
            llm = float(res.rounds['llm_seconds'].sum())
            rows.append(dict(strategy=name, examples=len(res.records), rounds=len(res.rounds), wall_s=wall, llm_s=llm,
                             loop_s=float(res.rounds['seconds'].sum()) - llm, overhead_share=1 - llm / wall))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--sizes', type=int, nargs='+', default=[1_000, 10_000, 100_000])
    ap.add_argument('--rounds', type=int, default=5)
    ap.add_argument('--embedder', choices=['tfidf', 'minilm'], default='tfidf',
                    help='what selection compares by (minilm embeds the pool at ~275 texts/s: keep --sizes small)')
    ap.add_argument('--overhead-n', type=int, default=2000, help='examples of the creation-loop overhead run (0: skip it)')
    ap.add_argument('--latency', type=float, default=0.1, help="seconds per answer of the simulated server")
    args = ap.parse_args()
    rows = [r for size in args.sizes for r in measure_selection(size, args.rounds, embedder=args.embedder)]
    print(f"selection by {args.embedder}")
    print(f"{'strategy':<12} {'pool':>8} {'embed pool (s)':>15} {'round mean (s)':>15} {'round max (s)':>14}")
    for r in rows:
        print(f"{r['strategy']:<12} {r['pool']:>8,} {r['embed_pool_s']:>15.3f} {r['round_mean_s']:>15.4f} {r['round_max_s']:>14.4f}")
    biggest = max(args.sizes)
    at_biggest = [r for r in rows if r['pool'] == biggest]
    size = f"{biggest // 1000}k" if biggest >= 1000 else str(biggest)
    result = {f"select_seconds_{size}": max(r['round_mean_s'] for r in at_biggest), f"embed_pool_seconds_{size}": max(r['embed_pool_s'] for r in at_biggest)}
    if args.overhead_n:
        over = measure_overhead_share(args.overhead_n, args.latency)
        print(f"\ncreation loop overhead: {args.overhead_n:,} examples of yesno_close, per_request 5, parallel 8, records + state + request cache on disk, "
              f"against the SIMULATED SERVER (datacreator serve-simulated, latency {args.latency} s, separate process; not a model)")
        print(f"{'strategy':<12} {'examples':>8} {'rounds':>7} {'wall (s)':>9} {'in LLM calls (s)':>17} {'between calls (s)':>18} {'overhead':>9}")
        for r in over:
            print(f"{r['strategy']:<12} {r['examples']:>8,} {r['rounds']:>7} {r['wall_s']:>9.2f} {r['llm_s']:>17.2f} {r['loop_s']:>18.3f} {r['overhead_share']:>9.2%}")
        result['overhead_share'] = max(r['overhead_share'] for r in over)
        result.update({f"overhead_share_{r['strategy']}": r['overhead_share'] for r in over})
    print(json.dumps(result))


if __name__ == '__main__':
    main()
