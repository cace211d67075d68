"""Near-duplicate detection at scale: `DedupIndex.match` on 10k, 30k and 100k synthetic MCQA-like examples.

About 10% of the examples are planted near-duplicates (one word of an earlier example replaced, case and
punctuation changed), so the run also reports recall and precision on them. Last line: one JSON object.
"""
import argparse, json, math, random, resource, time

from datacreator_nb.near_duplicates import DedupIndex

FUNCTION = "the a of to in on for with is are was what which why how where when do does would can you your".split()
SYL = "ba be bi bo bu ka ke ki ko ku la le li lo lu ma me mi mo mu na ne ni no nu ra re ri ro ru sa se si so su ta te ti to tu".split()

def word_bank(n=5000, seed=0):
    "Pseudo-words of 2-4 syllables: a vocabulary as large as a real model's topic words."
    rng = random.Random(seed)
    return sorted({''.join(rng.choices(SYL, k=rng.randint(2, 4))) for _ in range(n)})

def example(rng, bank):
    "One question of 10-18 words (about a third function words) and two options of 3-6 words."
    q = [rng.choice(FUNCTION) if rng.random() < 0.35 else rng.choice(bank) for _ in range(rng.randint(10, 18))]
    opts = [' '.join(rng.choices(bank, k=rng.randint(3, 6))) for _ in range(2)]
    return ' '.join(q).capitalize() + '?\n' + '\n'.join(opts)

def near_copy(rng, text, bank):
    "`text` with one word replaced, upper-cased and its question mark dropped."
    words = text.split(' ')
    words[rng.randrange(len(words))] = rng.choice(bank)
    return ' '.join(words).upper().replace('?', '')

def dataset(n, seed=0, planted=0.1):
    "n texts and the set of positions of planted near-duplicates."
    rng, bank = random.Random(seed), word_bank()
    texts, dups = [], set()
    for i in range(n):
        if i > 10 and rng.random() < planted:
            texts.append(near_copy(rng, rng.choice(texts[:i]), bank)); dups.add(i)
        else: texts.append(example(rng, bank))
    return texts, dups

def run(n):
    texts, planted = dataset(n)
    t = time.perf_counter()
    hits = DedupIndex(threshold=0.7).match(texts)
    secs = time.perf_counter() - t
    flagged = {i for i, h in enumerate(hits) if h}
    recall = len(flagged & planted) / len(planted)
    precision = len(flagged & planted) / max(len(flagged), 1)
    return secs, recall, precision, len(flagged)

def main():
    DedupIndex().match(["warm up the vectorizer", "warm up the vectorizer again"])
    base_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = {n: run(n) for n in (10_000, 30_000, 100_000)}
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{'n':>8} {'seconds':>8} {'per 1k':>7} {'flagged':>8} {'recall':>7} {'precision':>9}")
    for n, (s, r, p, f) in rows.items(): print(f"{n:>8} {s:>8.2f} {1000*s/n:>7.3f} {f:>8} {r:>7.3f} {p:>9.3f}")
    growth = math.log(rows[100_000][0] / rows[10_000][0]) / math.log(10)
    print("recall counts every planted copy; a copy of a copy that was itself removed can sit below 0.7 of what was kept")
    print(f"growth exponent (log-log slope 10k -> 100k): {growth:.2f}")
    print(f"peak RSS: {peak_mb:.0f} MB (after imports: {base_mb:.0f} MB)")
    print(json.dumps({"seconds_100k": round(rows[100_000][0], 3), "growth_exponent": round(growth, 3), "peak_mb": round(peak_mb, 1)}))

if __name__ == '__main__':
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()  # --help, and no stray arguments
    main()
