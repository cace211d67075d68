"""The creation loop over real HTTP to the local server: strategies inside the loop, stop criteria, faults, crash-resume, formats."""
import asyncio, hashlib, json, random, signal, sqlite3, subprocess, sys, threading, time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from datacreator_nb import generate
from datacreator_nb.create import PROVENANCE, create, round_rng, state_path
from datacreator_nb.generate import Generator, cost_usd
from datacreator_nb.sampling import get_strategy
from datacreator_nb.server import LocalServer, json_objects, new_example, requested_count, varied_examples
from datacreator_nb.task import TaskError, preset, read_jsonl

ROOT = Path(__file__).resolve().parents[1]


def user_text(req): return req['messages'][-1]['content']


def pure(req, salt='') -> str:
    "As many new examples as asked for, a pure function of the prompt: distinct from all others, so all are accepted."
    text = user_text(req)
    h = hashlib.sha256(f'{salt}:{text}'.encode()).hexdigest()
    return json.dumps([new_example(json_objects(text)[0], random.Random(f'{h}:{i}')) for i in range(requested_count(text))])


def deterministic(req) -> str:
    "`pure`, salted by how often the prompt was asked: chains starting from the same example get different answers."
    ASKED[user_text(req)] += 1   # responders run one at a time on the server's event loop
    return pure(req, ASKED[user_text(req)])

ASKED = Counter()


@pytest.fixture(autouse=True)
def fresh_asked(): ASKED.clear()


def gen(srv, **kw): return Generator(**{'model': 'simulated', 'base_url': srv.base_url, 'api_key': 'x', 'backoff': 0.01, 'max_wait': 0.05, 'timeout': 5.0, **kw})


def run(srv, n, task=None, gen_kw=None, **kw):
    return create(task or preset('yesno_close'), n, generator=gen(srv, **(gen_kw or {})), progress=False, **kw)


def check_ids_and_parents(records, n):
    assert [r['id'] for r in records] == list(range(n))
    assert len({r['question'] for r in records}) == n
    for r in records: assert r['parent'] is None or r['parent'] < r['id']


# ---------------------------------------------------------------- strategies inside the loop

def test_naive_always_formats_with_the_task_example():
    task = preset('yesno_close')
    with LocalServer(varied_examples(1)) as srv:
        res = run(srv, 23, task, strategy='naive', per_request=5, parallel=2)
        shown = {json.dumps(json_objects(user_text(r))) for r in srv.requests}
    assert len(res.records) == 23 and res.stop_reason == 'target reached'
    assert {(r['parent'], r['depth'], r['strategy']) for r in res.records} == {(None, 1, 'naive')}
    assert shown == {json.dumps([task.example])}


def test_tree_levels_follow_per_request():
    with LocalServer(deterministic) as srv:
        res = run(srv, 2 + 4 + 8 + 16, strategy='tree', per_request=2, parallel=3)
    recs = res.records
    assert Counter(r['depth'] for r in recs) == {1: 2, 2: 4, 3: 8, 4: 16}
    assert srv.count == 1 + 2 + 4 + 8 and res.rejections == Counter()
    by_id = {r['id']: r for r in recs}
    for r in recs:   # every parent is a record of the previous level, with exactly per_request children
        assert (r['parent'] is None) == (r['depth'] == 1)
        if r['parent'] is not None: assert by_id[r['parent']]['depth'] == r['depth'] - 1
    assert set(Counter(r['parent'] for r in recs).values()) == {2}
    # a request is formatted with its parent: the example shown in it is the parent record
    task = preset('yesno_close')
    shown = [json_objects(user_text(q))[0] for q in srv.requests]
    assert shown[0] == task.example
    assert sorted(json.dumps(s, sort_keys=True) for s in shown[1:]) == sorted(
        json.dumps(task.from_record(by_id[p]), sort_keys=True) for p in {r['parent'] for r in recs} - {None})


@pytest.mark.parametrize('name', ['random', 'contrastive', 'similar'])
def test_chain_strategies_pick_from_the_previous_round(name):
    "parallel=1: one chain; each round's seed is the record the strategy picks from the previous round's accepted ones."
    task = preset('yesno_close')
    with LocalServer(varied_examples(3)) as srv:
        res = run(srv, 30, task, strategy=name, per_request=5, parallel=1)
        shown = [json_objects(user_text(q))[0] for q in srv.requests]
    recs = res.records
    assert len(recs) == 30 and len(res.rounds) == srv.count
    rounds = [[r for r in recs if r['round'] == k] for k in range(len(res.rounds))]
    assert all(rounds), "every round accepted something, so the chain moves every round"
    assert {r['parent'] for r in rounds[0]} == {None} and shown[0] == task.example
    replay, current = get_strategy(name), [task.example]   # the same choices, made again from the records
    for k in range(1, len(rounds)):
        parents = {r['parent'] for r in rounds[k]}
        assert len(parents) == 1 and parents <= {r['id'] for r in rounds[k - 1]}
        current = replay.pick(current, [task.from_record(r) for r in rounds[k - 1]], round_rng(42, k - 1))
        assert current == [task.from_record(recs[parents.pop()])] == [shown[k]]
        assert rounds[k][0]['depth'] == k + 1


@pytest.mark.parametrize('name', ['contrastive', 'tree'])
def test_arrival_order_does_not_change_the_run(tmp_path, name):
    "Replies judged in request order: answers that come back in reverse order give the same records and the same next heads."
    def reversed_arrival(req, index): return f'slow:{0.04 * (3 - index % 4):g}'   # the first request of 4 answers last
    runs = []
    for fault_fn in (None, reversed_arrival):
        out = tmp_path/f'{name}-{fault_fn is None}.jsonl'
        with LocalServer(pure, fault_fn=fault_fn) as srv:   # the same prompt gets the same answer: chains compete for it
            res = run(srv, 40, strategy=name, per_request=5, parallel=4, out=out)
        runs.append((res.records, json.loads(state_path(out).read_text())['frontier']))
    assert runs[0] == runs[1]
    assert len(runs[0][0]) == 40 and runs[0][1]


# ---------------------------------------------------------------- stop criteria

def test_stops_at_target_with_exactly_n():
    with LocalServer(deterministic) as srv:
        res = run(srv, 7, strategy='random', per_request=5, parallel=3)
    assert (len(res.records), res.stop_reason, srv.count) == (7, 'target reached', 2)
    assert res.rounds['surplus'].tolist() == [3] and res.rounds['accepted'].tolist() == [7]


def test_stops_at_max_rounds():
    with LocalServer(deterministic) as srv:
        res = run(srv, 1000, strategy='random', per_request=2, parallel=2, max_rounds=3)
    assert (len(res.records), res.stop_reason, len(res.rounds), srv.count) == (12, 'max_rounds', 3, 6)


def test_stops_on_stall_when_replies_are_prose():
    with LocalServer(lambda req: "I'm sorry, I cannot create examples today.") as srv:
        res = run(srv, 10, strategy='tree', parallel=4, stall_rounds=3)
    assert (res.records, res.stop_reason, len(res.rounds), srv.count) == ([], 'stall', 3, 3)
    assert sum(res.rejections.values()) == 3 and res.acceptance == 0.0


def test_stops_when_budget_is_spent(monkeypatch):
    monkeypatch.setitem(generate.PRICES, 'simulated-x', generate.PRICES['gpt-3.5-turbo'])
    with LocalServer(deterministic, model='simulated-x') as srv:
        res = run(srv, 1000, strategy='random', per_request=5, parallel=2, gen_kw={'model': 'simulated-x', 'budget_usd': 1e-6})
    assert (res.stop_reason, len(res.rounds), srv.count, len(res.records)) == ('budget', 1, 2, 10)
    assert res.usd > 1e-6 and res.usd == pytest.approx(res.tokens * 0.002 / 1000)


# ---------------------------------------------------------------- faults during creation

def test_faults_are_survived_without_losing_examples():
    with LocalServer(deterministic, faults=['429:0.01', '500', 'drop', 'empty', 'truncate', 'prose']) as srv:
        g = gen(srv)
        res = create(preset('yesno_close'), 20, strategy='random', generator=g, per_request=5, parallel=2, progress=False)
    assert srv.served[:6] == ['429', '500', 'drop', 'empty', 'truncate', 'prose']
    assert (g.stats.retries, g.stats.failures, res.failures) == (4, 0, Counter())
    assert res.stop_reason == 'target reached'
    check_ids_and_parents(res.records, 20)
    assert res.rejections['truncated'] == 1 and sum(res.rounds['failed']) == 0   # the cut item only; the reply's whole items are kept


def test_failed_requests_are_counted_and_accepted_examples_kept():
    "No retries: a 500 and a dropped connection are failures of their round; the other replies are kept."
    with LocalServer(deterministic, faults=['500', 'drop']) as srv:
        res = run(srv, 20, strategy='random', per_request=5, parallel=4, gen_kw={'max_retries': 0})
    assert res.failures == Counter({'request_failed:500': 1, 'request_failed:error': 1})
    assert res.rounds['failed'].tolist()[0] == 2 and res.rounds['accepted'].tolist()[0] == 10
    assert len(res.records) == 20 and srv.count == 4 + 2
    check_ids_and_parents(res.records, 20)


# ---------------------------------------------------------------- resume

CHILD = """
import sys
from datacreator_nb.create import create
from datacreator_nb.generate import Generator
from datacreator_nb.task import preset
base_url, out, cache = sys.argv[1:4]
create(preset('yesno_close'), 200, strategy='tree', generator=Generator(model='simulated', base_url=base_url, api_key='x', cache=cache),
       out=out, per_request=5, parallel=4, progress=False)
print('finished')
"""


async def staggered(req):
    "The pure answer, after 0.05-0.4 s depending on the prompt: a round's answers arrive one by one."
    await asyncio.sleep(0.05 + int(hashlib.sha256(user_text(req).encode()).hexdigest()[:4], 16) / 65536 * 0.35)
    return pure(req)


def cached_keys(path):
    with sqlite3.connect(path) as db: return {k for (k,) in db.execute('SELECT key FROM answers')}


def lines(path): return path.read_bytes().count(b'\n') if path.exists() else 0


def spy_keys(g):
    "Record (key, cached) of every completion the generator hands out."
    log, complete = [], g.complete
    async def spy(messages, sample=0, response_format=None):
        c = await complete(messages, sample, response_format)
        log.append((g.key(messages, sample, response_format), c.cached))
        return c
    g.complete = spy
    return log


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path):
    n, task = 200, preset('yesno_close')
    with LocalServer(pure) as ref_srv:   # the tree's prompts are all different: the same prompt gets the same answer
        ref = run(ref_srv, n, task, strategy='tree', per_request=5, parallel=4)
    out, cache, script = tmp_path/'data.jsonl', tmp_path/'cache.sqlite', tmp_path/'child.py'
    script.write_text(CHILD)
    with LocalServer(staggered) as srv:
        child = subprocess.Popen([sys.executable, str(script), srv.base_url, str(out), str(cache)], cwd=ROOT,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline and child.poll() is None:   # kill inside a round: some answers cached, some in flight
                sent = srv.count
                if lines(out) >= 40 and sent % 4 == 1 and cache.exists() and sent - 4 < len(cached_keys(cache)) < sent: break
                time.sleep(0.005)
            child.send_signal(signal.SIGKILL)
        finally:
            child.wait(10)
        assert child.returncode == -signal.SIGKILL, child.stderr.read().decode()[-2000:]
        before, child_sent = cached_keys(cache), srv.count
        assert 40 <= lines(out) < n and child_sent - len(before) <= 4   # at most the round's in-flight requests were unanswered
        with open(out, 'ab') as f: f.write(b'{"question": "torn by the cra')   # and a torn last line
        g = gen(srv, cache=cache)
        log = spy_keys(g)
        res = create(task, n, strategy='tree', generator=g, out=out, per_request=5, parallel=4, progress=False)
        resumed_sent = srv.count - child_sent
    check_ids_and_parents(res.records, n)
    assert read_jsonl(out) == res.records == ref.records   # the same data as a run that was never killed
    fresh = [k for k, cached in log if not cached]
    assert not set(fresh) & before, "an answer received before the kill was asked for again"
    assert len(fresh) == len(set(fresh)) == resumed_sent
    assert len(before) + resumed_sent == ref_srv.count   # every request of the run was paid exactly once, kept or not
    assert any(k in before for k, cached in log if cached), "the interrupted round was replayed from the cache"


def test_resume_cuts_a_torn_line_and_continues(tmp_path):
    out, task = tmp_path/'d.jsonl', preset('yesno_close')
    with LocalServer(deterministic) as srv:
        ref = run(srv, 40, task, strategy='tree', per_request=3, parallel=4)
        ASKED.clear()
        first = run(srv, 40, task, strategy='tree', per_request=3, parallel=4, out=out, max_rounds=3)
        assert first.stop_reason == 'max_rounds' and 0 < len(first.records) < 40
        with open(out, 'ab') as f: f.write(json.dumps(ref.records[len(first.records)]).encode()[:25])
        res = run(srv, 40, task, strategy='tree', per_request=3, parallel=4, out=out)
    assert read_jsonl(out) == res.records == ref.records


def test_second_create_with_same_out_sends_nothing(tmp_path):
    out = tmp_path/'d.jsonl'
    with LocalServer(varied_examples(5)) as srv:
        first = run(srv, 25, strategy='contrastive', out=out, parallel=3)
        sent = srv.count
        again = run(srv, 25, strategy='contrastive', out=out, parallel=3)
        assert srv.count == sent
    assert again.records == first.records == read_jsonl(out) and again.stop_reason == 'target reached'
    assert json.loads(state_path(out).read_text())['running'] is False


def test_out_in_a_folder_that_does_not_exist_yet(tmp_path):
    out = tmp_path/'new'/'deeper'/'d.jsonl'
    with LocalServer(varied_examples(6)) as srv:
        res = run(srv, 12, out=out)
    assert len(read_jsonl(out)) == 12 and res.path == out and state_path(out).exists()


# ---------------------------------------------------------------- task types, formats, event loops

@pytest.mark.parametrize('tt', ['mcqa_2', 'mcqa_5', 'yesno_open', 'yesno_close'])
def test_every_task_type_end_to_end(tt):
    task = preset(tt)
    with LocalServer(varied_examples(7)) as srv:
        res = run(srv, 15, task, strategy='tree', per_request=5, parallel=4)
    assert len(res.records) == 15 and res.simulated
    check_ids_and_parents(res.records, 15)
    for r in res.records:
        task.check(task.from_record(r))
        assert set(r) == {*task.to_record(task.example), *PROVENANCE}


def as_plain(rows):
    "Records read back from a table, with lists and missing values as in the JSONL."
    out = []
    for r in rows:
        d = {k: (list(v) if hasattr(v, 'tolist') and not isinstance(v, str) else v) for k, v in r.items()}
        d = {k: (None if not isinstance(v, list) and pd.isna(v) else v) for k, v in d.items()}
        out.append({k: (int(v) if k in ('id', 'round', 'parent', 'depth') and v is not None else v) for k, v in d.items()})
    return out


def test_save_round_trips(tmp_path):
    task = preset('mcqa_2')
    with LocalServer(varied_examples(2)) as srv:
        res = run(srv, 12, task, strategy='tree', per_request=4, parallel=2)
    recs = res.records
    assert read_jsonl(res.save(tmp_path/'a.jsonl')) == recs
    csv = pd.read_csv(res.save(tmp_path/'a.csv'))
    assert as_plain(csv.assign(options=csv['options'].map(json.loads)).to_dict('records')) == recs
    assert as_plain(pd.read_parquet(res.save(tmp_path/'a.parquet')).to_dict('records')) == recs
    assert sum(r['parent'] is None for r in recs) == 4
    with pytest.raises(ValueError, match='xlsx'): res.save(tmp_path/'a.xlsx')


def test_sync_create_inside_a_running_event_loop():
    async def main():
        with LocalServer(deterministic) as srv:
            return run(srv, 9, strategy='tree', per_request=3, parallel=2), srv.count
    res, sent = asyncio.run(main())
    assert (len(res.records), res.stop_reason, sent) == (9, 'target reached', 3)


# ---------------------------------------------------------------- refusing what would mix runs or pay twice

def test_resume_with_other_settings_is_refused(tmp_path):
    out = tmp_path/'d.jsonl'
    with LocalServer(varied_examples(7)) as srv:
        run(srv, 10, strategy='tree', out=out)
        with pytest.raises(TaskError, match=r"other settings .*strategy 'tree' -> 'random'"):
            run(srv, 20, strategy='random', out=out)
        with pytest.raises(TaskError, match=r"per_request 5 -> 3"):
            run(srv, 20, strategy='tree', out=out, per_request=3)


def test_broken_state_file_is_named(tmp_path):
    out = tmp_path/'d.jsonl'
    with LocalServer(varied_examples(8)) as srv:
        run(srv, 10, out=out)
        state_path(out).write_text('{"round": 2,')
        with pytest.raises(TaskError, match=r"d\.state\.json:1: the loop's state file is not valid JSON"):
            run(srv, 20, out=out)


def test_state_file_of_another_shape_is_named(tmp_path):
    out = tmp_path/'d.jsonl'
    with LocalServer(varied_examples(8)) as srv:
        run(srv, 10, out=out)
        state = json.loads(state_path(out).read_text())
        state_path(out).write_text(json.dumps({**state, 'frontier': [{'example': {}, 'id': None, 'depth': 0}]}))
        with pytest.raises(TaskError, match=r"d\.state\.json: the loop's state file is not one this version wrote"):
            run(srv, 20, out=out)


def test_state_of_another_run_is_refused(tmp_path):
    out = tmp_path/'d.jsonl'
    with LocalServer(varied_examples(9)) as srv:
        run(srv, 30, strategy='tree', out=out)
        out.write_text(''.join(l + '\n' for l in out.read_text().splitlines()[:3]))   # records cut behind the state's back
        with pytest.raises(TaskError, match='belong to different runs') as e:
            run(srv, 40, strategy='tree', out=out)
    assert 'not one this version wrote' not in str(e.value)   # said once, plainly, not wrapped in another complaint


@pytest.mark.parametrize('field,kw', [('n', {'n': 0}), ('per_request', {'per_request': 0}), ('parallel', {'parallel': 0})])
def test_counts_below_one_are_refused(field, kw):
    with LocalServer(varied_examples(1)) as srv:
        with pytest.raises(TaskError, match=f"field '{field}': must be a whole number of at least 1"):
            run(srv, kw.pop('n', 5), **kw)


def test_budget_counts_what_the_file_already_cost(tmp_path, monkeypatch):
    monkeypatch.setitem(generate.PRICES, 'simulated-x', generate.PRICES['gpt-3.5-turbo'])
    out = tmp_path/'d.jsonl'
    with LocalServer(deterministic, model='simulated-x') as srv:
        first = run(srv, 10, strategy='random', parallel=2, out=out, gen_kw={'model': 'simulated-x'})
        sent = srv.count
        again = run(srv, 1000, strategy='random', parallel=2, out=out, gen_kw={'model': 'simulated-x', 'budget_usd': first.usd})
    assert (again.stop_reason, srv.count, len(again.records)) == ('budget', sent, 10)


def test_a_second_run_on_the_same_file_is_refused(tmp_path):
    out = tmp_path/'d.jsonl'
    with LocalServer(varied_examples(3), latency=0.3) as srv:
        first = threading.Thread(target=run, args=(srv, 15), kwargs={'out': out})
        first.start()
        while not state_path(out).exists(): time.sleep(0.01)
        with pytest.raises(TaskError, match='another run is writing this file now'):
            run(srv, 15, out=out)
        first.join()
        assert len(read_jsonl(out)) == 15 and run(srv, 15, out=out).stop_reason == 'target reached'
