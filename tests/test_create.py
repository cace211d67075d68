"""The creation loop over real HTTP to the local server: strategies inside the loop, stop criteria, faults, crash-resume, formats."""
import asyncio, hashlib, json, random, signal, sqlite3, subprocess, sys, threading, time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from datacreator_nb.create import PROVENANCE, create, round_rng, state_path
from datacreator_nb.generate import Generator, GenerationError
from datacreator_nb.local_model import MODEL_ALIAS
from datacreator_nb.sampling import get_strategy
from datacreator_nb.server import SimulatedServer, json_objects, new_example, requested_count, varied_examples
from datacreator_nb.task import LabelSpace, Task, TaskError, preset, read_jsonl

ROOT = Path(__file__).resolve().parents[1]


def user_text(req): return req['messages'][-1]['content']


def pure(req, salt='', keys_reversed=False) -> str:
    "As many new examples as asked for, a pure function of the prompt: distinct from all others, so all are accepted."
    text = user_text(req)
    h = hashlib.sha256(f'{salt}:{text}'.encode()).hexdigest()
    made = [new_example(json_objects(text)[0], random.Random(f'{h}:{i}')) for i in range(requested_count(text))]
    return json.dumps([dict(reversed(ex.items())) if keys_reversed else ex for ex in made])


def own_key_order(req) -> str:
    "`pure`, each example's keys in the reverse of the task's order, as a model may write them."
    return pure(req, keys_reversed=True)


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
    assert [r['_meta']['id'] for r in records] == list(range(n))
    assert len({r['question'] for r in records}) == n
    for r in records: assert r['_meta']['parent'] is None or r['_meta']['parent'] < r['_meta']['id']


# ---------------------------------------------------------------- strategies inside the loop

def test_naive_always_formats_with_the_task_example():
    task = preset('yesno_close')
    with SimulatedServer(varied_examples(1)) as srv:
        res = run(srv, 23, task, strategy='naive', per_request=5, parallel=2)
        shown = {json.dumps(json_objects(user_text(r))) for r in srv.requests}
    assert len(res.records) == 23 and res.stop_reason == 'target reached'
    assert {(r['_meta']['parent'], r['_meta']['depth'], r['_meta']['strategy']) for r in res.records} == {(None, 1, 'naive')}
    assert shown == {json.dumps([task.example])}


def test_tree_levels_follow_per_request():
    with SimulatedServer(deterministic) as srv:
        res = run(srv, 2 + 4 + 8 + 16, strategy='tree', per_request=2, parallel=3)
    recs = res.records
    assert Counter(r['_meta']['depth'] for r in recs) == {1: 2, 2: 4, 3: 8, 4: 16}
    assert srv.count == 1 + 2 + 4 + 8 and res.rejections == Counter()
    by_id = {r['_meta']['id']: r for r in recs}
    for r in recs:   # every parent is a record of the previous level, with exactly per_request children
        assert (r['_meta']['parent'] is None) == (r['_meta']['depth'] == 1)
        if r['_meta']['parent'] is not None: assert by_id[r['_meta']['parent']]['_meta']['depth'] == r['_meta']['depth'] - 1
    assert set(Counter(r['_meta']['parent'] for r in recs).values()) == {2}
    # a request is formatted with its parent: the example shown in it is the parent record
    task = preset('yesno_close')
    shown = [json_objects(user_text(q))[0] for q in srv.requests]
    assert shown[0] == task.example
    assert sorted(json.dumps(s, sort_keys=True) for s in shown[1:]) == sorted(
        json.dumps(task.from_record(by_id[p]), sort_keys=True) for p in {r['_meta']['parent'] for r in recs} - {None})


@pytest.mark.parametrize('name', ['random', 'contrastive', 'similar'])
def test_chain_strategies_pick_from_the_previous_round(name):
    "parallel=1: one chain; each round's seed is the record the strategy picks from the previous round's accepted ones."
    task = preset('yesno_close')
    with SimulatedServer(varied_examples(3)) as srv:
        res = run(srv, 30, task, strategy=name, per_request=5, parallel=1)
        shown = [json_objects(user_text(q))[0] for q in srv.requests]
    recs = res.records
    assert len(recs) == 30 and len(res.rounds) == srv.count
    rounds = [[r for r in recs if r['_meta']['round'] == k] for k in range(len(res.rounds))]
    assert all(rounds), "every round accepted something, so the chain moves every round"
    assert {r['_meta']['parent'] for r in rounds[0]} == {None} and shown[0] == task.example
    replay, current = get_strategy(name), [task.example]   # the same choices, made again from the records
    for k in range(1, len(rounds)):
        parents = {r['_meta']['parent'] for r in rounds[k]}
        assert len(parents) == 1 and parents <= {r['_meta']['id'] for r in rounds[k - 1]}
        current = replay.pick(current, [task.from_record(r) for r in rounds[k - 1]], round_rng(42, k - 1))
        assert current == [task.from_record(recs[parents.pop()])] == [shown[k]]
        assert rounds[k][0]['_meta']['depth'] == k + 1


@pytest.mark.parametrize('name', ['contrastive', 'tree'])
def test_arrival_order_does_not_change_the_run(tmp_path, name):
    "Replies judged in request order: answers that come back in reverse order give the same records and the same next heads."
    def reversed_arrival(req, index): return f'slow:{0.04 * (3 - index % 4):g}'   # the first request of 4 answers last
    runs = []
    for fault_fn in (None, reversed_arrival):
        out = tmp_path/f'{name}-{fault_fn is None}.jsonl'
        with SimulatedServer(pure, fault_fn=fault_fn) as srv:   # the same prompt gets the same answer: chains compete for it
            res = run(srv, 40, strategy=name, per_request=5, parallel=4, out=out)
        runs.append((res.records, json.loads(state_path(out).read_text())['frontier']))
    assert runs[0] == runs[1]
    assert len(runs[0][0]) == 40 and runs[0][1]


# ---------------------------------------------------------------- stop criteria

def test_stops_at_target_with_exactly_n():
    with SimulatedServer(deterministic) as srv:
        res = run(srv, 7, strategy='random', per_request=5, parallel=3)
    assert (len(res.records), res.stop_reason, srv.count) == (7, 'target reached', 2)
    assert res.rounds['surplus'].tolist() == [3] and res.rounds['accepted'].tolist() == [7]


def test_stops_at_max_rounds():
    with SimulatedServer(deterministic) as srv:
        res = run(srv, 1000, strategy='random', per_request=2, parallel=2, max_rounds=3)
    assert (len(res.records), res.stop_reason, len(res.rounds), srv.count) == (12, 'max_rounds', 3, 6)


def test_stops_on_stall_when_replies_are_prose():
    with SimulatedServer(lambda req: "I'm sorry, I cannot create examples today.") as srv:
        res = run(srv, 10, strategy='tree', parallel=4, stall_rounds=3)
    assert (res.records, res.stop_reason, len(res.rounds), srv.count) == ([], 'stall', 3, 3)
    assert sum(res.rejections.values()) == 3 and res.acceptance == 0.0


PAPER_PRICE = {'price_in': 2.0, 'price_out': 2.0}   # gpt-3.5-turbo's $0.002 per 1K tokens, in USD per 1M


def test_stops_when_budget_is_spent():
    with SimulatedServer(deterministic) as srv:
        res = run(srv, 1000, strategy='random', per_request=5, parallel=2, gen_kw={**PAPER_PRICE, 'max_tokens': 300, 'budget_usd': 0.005})
    assert res.stop_reason == 'budget' and 0 < len(res.records) < 1000 and srv.count == res.rounds['requests'].sum() - res.failures['budget']
    assert 0.004 < res.usd <= 0.005 and res.usd == pytest.approx(res.tokens * 0.002 / 1000)


# ---------------------------------------------------------------- faults during creation

def test_faults_are_survived_without_losing_examples():
    with SimulatedServer(deterministic, faults=['429:0.01', '500', 'drop', 'empty', 'truncate', 'prose']) as srv:
        g = gen(srv)
        res = create(preset('yesno_close'), 20, strategy='random', generator=g, per_request=5, parallel=2, progress=False)
    assert srv.served[:6] == ['429', '500', 'drop', 'empty', 'truncate', 'prose']
    assert (g.stats.retries, g.stats.failures, res.failures) == (4, 0, Counter())
    assert res.stop_reason == 'target reached'
    check_ids_and_parents(res.records, 20)
    assert res.rejections['truncated'] == 1 and sum(res.rounds['failed']) == 0   # the cut item only; the reply's whole items are kept


def test_failed_requests_are_counted_and_accepted_examples_kept():
    "No retries: a 500 and a dropped connection are failures of their round; the other replies are kept."
    with SimulatedServer(deterministic, faults=['500', 'drop']) as srv:
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
    return own_key_order(req)


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
    with SimulatedServer(own_key_order) as ref_srv:   # the tree's prompts are all different: the same prompt gets the same answer
        ref = run(ref_srv, n, task, strategy='tree', per_request=5, parallel=4)
    out, cache, script = tmp_path/'data.jsonl', tmp_path/'cache.sqlite', tmp_path/'child.py'
    script.write_text(CHILD)
    with SimulatedServer(staggered) as srv:
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
    with SimulatedServer(deterministic) as srv:
        ref = run(srv, 40, task, strategy='tree', per_request=3, parallel=4)
        ASKED.clear()
        first = run(srv, 40, task, strategy='tree', per_request=3, parallel=4, out=out, max_rounds=3)
        assert first.stop_reason == 'max_rounds' and 0 < len(first.records) < 40
        with open(out, 'ab') as f: f.write(json.dumps(ref.records[len(first.records)]).encode()[:25])
        res = run(srv, 40, task, strategy='tree', per_request=3, parallel=4, out=out)
    assert read_jsonl(out) == res.records == ref.records


def test_second_create_with_same_out_sends_nothing(tmp_path):
    out = tmp_path/'d.jsonl'
    with SimulatedServer(varied_examples(5)) as srv:
        first = run(srv, 25, strategy='contrastive', out=out, parallel=3)
        sent = srv.count
        again = run(srv, 25, strategy='contrastive', out=out, parallel=3)
        assert srv.count == sent
    assert again.records == first.records == read_jsonl(out) and again.stop_reason == 'target reached'
    assert json.loads(state_path(out).read_text())['running'] is False


def test_out_in_a_folder_that_does_not_exist_yet(tmp_path):
    out = tmp_path/'new'/'deeper'/'d.jsonl'
    with SimulatedServer(varied_examples(6)) as srv:
        res = run(srv, 12, out=out)
    assert len(read_jsonl(out)) == 12 and res.path == out and state_path(out).exists()


# ---------------------------------------------------------------- task types, formats, event loops

@pytest.mark.parametrize('tt', ['mcqa_2', 'mcqa_5', 'yesno_open', 'yesno_close'])
def test_every_task_type_end_to_end(tt):
    task = preset(tt)
    with SimulatedServer(varied_examples(7)) as srv:
        res = run(srv, 15, task, strategy='tree', per_request=5, parallel=4)
    assert len(res.records) == 15 and res.simulated
    check_ids_and_parents(res.records, 15)
    for r in res.records:
        task.check(task.from_record(r))
        assert set(r) == {*task.to_record(task.example), '_meta'} and tuple(r['_meta']) == PROVENANCE


def as_plain(rows):
    "Records read back from a table, with lists and missing values as in the JSONL."
    out = []
    for r in rows:
        d = {k: (list(v) if hasattr(v, 'tolist') and not isinstance(v, str) else v) for k, v in r.items()}
        d = {k: (None if not isinstance(v, list) and pd.isna(v) else v) for k, v in d.items()}
        meta = json.loads(d['_meta']) if isinstance(d['_meta'], str) else d['_meta']   # JSON in a CSV cell, a struct in Parquet
        out.append({**d, '_meta': {k: (int(v) if isinstance(v, (int, float)) and not pd.isna(v) else None if k == 'parent' else v) for k, v in meta.items()}})
    return out


def test_save_round_trips(tmp_path):
    task = preset('mcqa_2')
    with SimulatedServer(varied_examples(2)) as srv:
        res = run(srv, 12, task, strategy='tree', per_request=4, parallel=2)
    recs = res.records
    assert read_jsonl(res.save(tmp_path/'a.jsonl')) == recs
    csv = pd.read_csv(res.save(tmp_path/'a.csv'))
    assert as_plain(csv.assign(options=csv['options'].map(json.loads)).to_dict('records')) == recs
    assert as_plain(pd.read_parquet(res.save(tmp_path/'a.parquet')).to_dict('records')) == recs
    assert sum(r['_meta']['parent'] is None for r in recs) == 4
    with pytest.raises(ValueError, match='xlsx'): res.save(tmp_path/'a.xlsx')


def test_sync_create_inside_a_running_event_loop():
    async def main():
        with SimulatedServer(deterministic) as srv:
            return run(srv, 9, strategy='tree', per_request=3, parallel=2), srv.count
    res, sent = asyncio.run(main())
    assert (len(res.records), res.stop_reason, sent) == (9, 'target reached', 3)


# ---------------------------------------------------------------- refusing what would mix runs or pay twice

def test_resume_with_other_settings_is_refused(tmp_path):
    out = tmp_path/'d.jsonl'
    with SimulatedServer(varied_examples(7)) as srv:
        run(srv, 10, strategy='tree', out=out)
        with pytest.raises(TaskError, match=r"other settings .*strategy 'tree' -> 'random'"):
            run(srv, 20, strategy='random', out=out)
        with pytest.raises(TaskError, match=r"per_request 5 -> 3"):
            run(srv, 20, strategy='tree', out=out, per_request=3)


def test_broken_state_file_is_named(tmp_path):
    out = tmp_path/'d.jsonl'
    with SimulatedServer(varied_examples(8)) as srv:
        run(srv, 10, out=out)
        state_path(out).write_text('{"round": 2,')
        with pytest.raises(TaskError, match=r"d\.jsonl\.state\.json:1: the loop's state file is not valid JSON"):
            run(srv, 20, out=out)


def test_state_file_of_another_shape_is_named(tmp_path):
    out = tmp_path/'d.jsonl'
    with SimulatedServer(varied_examples(8)) as srv:
        run(srv, 10, out=out)
        state = json.loads(state_path(out).read_text())
        state_path(out).write_text(json.dumps({**state, 'frontier': [{'example': {}, 'id': None, 'depth': 0}]}))
        with pytest.raises(TaskError, match=r"d\.jsonl\.state\.json: the loop's state file is not one this version wrote"):
            run(srv, 20, out=out)


def test_state_of_another_run_is_refused(tmp_path):
    out = tmp_path/'d.jsonl'
    with SimulatedServer(varied_examples(9)) as srv:
        run(srv, 30, strategy='tree', out=out)
        out.write_text(''.join(l + '\n' for l in out.read_text().splitlines()[:3]))   # records cut behind the state's back
        with pytest.raises(TaskError, match='belong to different runs') as e:
            run(srv, 40, strategy='tree', out=out)
    assert 'not one this version wrote' not in str(e.value)   # said once, plainly, not wrapped in another complaint


@pytest.mark.parametrize('field,kw', [('n', {'n': 0}), ('per_request', {'per_request': 0}), ('parallel', {'parallel': 0})])
def test_counts_below_one_are_refused(field, kw):
    with SimulatedServer(varied_examples(1)) as srv:
        with pytest.raises(TaskError, match=f"field '{field}': must be a whole number of at least 1"):
            run(srv, kw.pop('n', 5), **kw)


def test_budget_counts_what_the_file_already_cost(tmp_path):
    out = tmp_path/'d.jsonl'
    with SimulatedServer(deterministic) as srv:
        first = run(srv, 10, strategy='random', parallel=2, out=out, gen_kw=PAPER_PRICE)
        sent = srv.count
        again = run(srv, 1000, strategy='random', parallel=2, out=out, gen_kw={**PAPER_PRICE, 'budget_usd': first.usd})
    assert (again.stop_reason, srv.count, len(again.records)) == ('budget', sent, 10)


def test_a_second_run_on_the_same_file_is_refused(tmp_path):
    out = tmp_path/'d.jsonl'
    with SimulatedServer(varied_examples(3), latency=0.3) as srv:
        first = threading.Thread(target=run, args=(srv, 15), kwargs={'out': out})
        first.start()
        while not state_path(out).exists(): time.sleep(0.01)
        with pytest.raises(TaskError, match='another run is writing this file now'):
            run(srv, 15, out=out)
        first.join()
        assert len(read_jsonl(out)) == 15 and run(srv, 15, out=out).stop_reason == 'target reached'


# ---------------------------------------------------------------- issue 11: identity, provenance, fatal errors, files, interrupts

def resume_changes():
    "Each setting a resume must not change: (name in the refusal, the first run's keywords, the second's)."
    other_task = preset('yesno_close'); other_task.instruction += ' Only about animals.'   # same name, other content
    return [('base_url', {}, {'srv': 'other'}), ('model', {}, {'gen_kw': {'model': 'm2'}}), ('temperature', {}, {'gen_kw': {'temperature': 0.5}}),
            ('top_p', {}, {'gen_kw': {'top_p': 0.9}}), ('max_tokens', {}, {'gen_kw': {'max_tokens': 500}}), ('structured', {}, {'structured': True}),
            ('parallel', {}, {'parallel': 3}), ('per_request', {}, {'per_request': 4}), ('strategy', {}, {'strategy': 'random'}),
            ('seed', {}, {'seed': 7}), ('task_content', {}, {'task': other_task})]


@pytest.mark.parametrize('name,first,second', resume_changes(), ids=[c[0] for c in resume_changes()])
def test_resume_refuses_any_change_of_what_decides_the_replies(tmp_path, name, first, second):
    out = tmp_path/'d.jsonl'
    with SimulatedServer(varied_examples(3), model='m') as srv, SimulatedServer(varied_examples(3), model='m') as other:
        run(srv, 10, out=out, max_rounds=1, gen_kw={'model': 'm'})
        before, kw = out.read_bytes(), {**second}
        target, gen_kw = other if kw.pop('srv', None) else srv, {'model': 'm', **kw.pop('gen_kw', {})}
        with pytest.raises(TaskError, match=rf"other settings \(was -> now\): {name} ") as e:
            run(target, 20, out=out, gen_kw=gen_kw, **kw)
        assert (srv.count, other.count, out.read_bytes()) == (1, 0, before)   # nothing sent, nothing touched
    assert len(str(e.value).splitlines()) == 1


def test_user_fields_named_like_provenance_survive():
    task = Task('own_ids', "Yes/no questions with the asker's own id, round and model fields.",
                {'id': 'q-17', 'round': 'semi-final', 'model': 'a red car', 'question': 'Is a car a vehicle?', 'answer': True}, LabelSpace.yes_no())
    with SimulatedServer(varied_examples(5)) as srv:
        res = run(srv, 12, task, strategy='tree', per_request=4)
    for r in res.records:
        assert isinstance(r['id'], str) and isinstance(r['round'], str) and r['model'] != 'simulated'
        assert set(r['_meta']) == set(PROVENANCE) and r['_meta']['model'] == 'simulated'
    assert [r['_meta']['id'] for r in res.records] == list(range(12))
    assert res.to_frame()[['id', '_meta.id']].shape == (12, 2)


def test_a_fatal_error_stops_at_once_then_the_same_call_resumes_without_paying_twice(tmp_path):
    "A 401 in round 2: GenerationError with the server's message, nothing more sent; fixed, the round is replayed from the cache."
    out, cache, task = tmp_path/'d.jsonl', tmp_path/'c.sqlite', preset('yesno_close')
    with SimulatedServer(own_key_order) as ref_srv: ref = run(ref_srv, 60, task, strategy='tree', per_request=5, parallel=4)
    bad = {'on': True}
    def key_revoked(req, index): return '401' if bad['on'] and index == 3 else None   # round 0: 1 request, round 1: 4 requests
    with SimulatedServer(own_key_order, fault_fn=key_revoked) as srv:
        with pytest.raises(GenerationError, match='HTTP 401') as e:
            run(srv, 60, task, strategy='tree', per_request=5, parallel=4, out=out, gen_kw={'cache': cache, 'max_retries': 0})
        assert e.value.status == 401 and srv.count == 5 and len(read_jsonl(out)) == 5
        assert json.loads(state_path(out).read_text())['running'] is True
        bad['on'], paid_before = False, len(cached_keys(cache))
        res = run(srv, 60, task, strategy='tree', per_request=5, parallel=4, out=out, gen_kw={'cache': cache})
    assert paid_before == 4 and srv.count - 5 == ref_srv.count - paid_before   # the 3 answered requests of round 1 not paid again
    assert res.records == ref.records


def test_a_stall_is_not_final(tmp_path):
    out = tmp_path/'d.jsonl'
    with SimulatedServer(lambda req: "Sorry, I cannot.") as srv:
        assert run(srv, 10, out=out, stall_rounds=2).stop_reason == 'stall'
        sent = srv.count
        assert run(srv, 10, out=out, stall_rounds=2).stop_reason == 'stall' and srv.count == 2 * sent


@pytest.mark.parametrize('option', ['max_rounds', 'stall_rounds'])
def test_limits_below_one_are_refused(option):
    with SimulatedServer(varied_examples(1)) as srv:
        with pytest.raises(TaskError, match=f"field '{option}': must be a whole number of at least 1, got 0"):
            run(srv, 5, **{option: 0})
        assert srv.count == 0


def test_a_users_file_is_refused_and_left_untouched(tmp_path):
    out = tmp_path/'mine.jsonl'
    out.write_bytes(b'{"question": "Is ice cold?", "answer": true}\n{"question": "Is fire co')   # no trailing newline
    before = out.read_bytes()
    with SimulatedServer(varied_examples(1)) as srv:
        with pytest.raises(TaskError, match='no state file mine.jsonl.state.json beside it'):
            run(srv, 5, out=out)
        assert srv.count == 0
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ['mine.jsonl']


def test_outputs_differing_after_a_dot_have_their_own_side_files(tmp_path):
    with SimulatedServer(varied_examples(2)) as srv:
        a = run(srv, 10, out=tmp_path/'v1.5', strategy='tree')
        b = run(srv, 12, out=tmp_path/'v1.6', strategy='random')
    assert (len(a.records), len(b.records)) == (10, 12)
    assert {p.name for p in tmp_path.iterdir()} >= {'v1.5.state.json', 'v1.6.state.json', 'v1.5.rounds.jsonl', 'v1.6.rounds.jsonl', 'v1.5.lock', 'v1.6.lock'}


def test_rounds_are_appended_not_rewritten(tmp_path):
    out = tmp_path/'d.jsonl'
    with SimulatedServer(deterministic) as srv:
        res = run(srv, 40, out=out, strategy='random', per_request=2, parallel=2)
    lines = (tmp_path/'d.jsonl.rounds.jsonl').read_text().splitlines()
    assert [json.loads(l)['round'] for l in lines] == list(range(len(res.rounds))) and len(lines) == 10
    assert 'rounds' not in json.loads(state_path(out).read_text())


def test_restart_replays_from_the_cache_and_counts_nothing_as_fresh(tmp_path):
    out, cache = tmp_path/'d.jsonl', tmp_path/'c.sqlite'
    with SimulatedServer(varied_examples(4)) as srv:
        first = run(srv, 20, out=out, gen_kw={'cache': cache})
        sent = srv.count
        again = run(srv, 20, out=out, gen_kw={'cache': cache}, restart=True)
        assert srv.count == sent
    assert (first.fresh, again.fresh, int(again.this_call['cached'].sum())) == (20, 0, sent)
    assert again.records == first.records


def test_interrupting_create_in_a_running_event_loop_cancels_the_run(tmp_path):
    "As in Jupyter: `create` called inside a running loop, then SIGINT to the main thread: no request after it, finished rounds kept."
    out = tmp_path/'d.jsonl'
    with SimulatedServer(varied_examples(6), latency=0.2) as srv:
        async def cell(): return run(srv, 1000, out=out, strategy='random', per_request=2, parallel=2)
        threading.Timer(1.0, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT)).start()
        loop = asyncio.new_event_loop()   # run_until_complete, like ipykernel: no SIGINT handler of asyncio's own
        try:
            with pytest.raises(KeyboardInterrupt): loop.run_until_complete(cell())
        finally: loop.close()
        sent = srv.count
        time.sleep(0.6)
        assert srv.count == sent and 0 < sent < 100
    assert not [t for t in threading.enumerate() if t.name == 'datacreator-create']   # the run's thread has ended
    state = json.loads(state_path(out).read_text())
    assert len(read_jsonl(out)) == state['count_at_start'] > 0


def test_the_embedded_model_is_one_endpoint_whatever_its_port(tmp_path, monkeypatch):
    "The embedded model gets a free port each run: `default_generator` names it by its model, so a resume on another port goes on and replays the cache."
    import contextlib, datacreator_nb.local_model as local_model
    from datacreator_nb.create import default_generator, is_simulated
    servers = []
    @contextlib.contextmanager
    def fake_serve_model(slots):   # stands in for the embedded model: a simulated server under its alias
        with SimulatedServer(varied_examples(3), model=MODEL_ALIAS) as srv:
            srv.model, srv.kind = MODEL_ALIAS, 'openai'; servers.append(srv); yield srv
    monkeypatch.delenv('OPENAI_BASE_URL', raising=False)
    monkeypatch.setattr(local_model, 'serve_model', fake_serve_model)
    out, cache = tmp_path/'d.jsonl', tmp_path/'c.sqlite'
    def again(n):
        with default_generator(2, cache=cache) as g:
            assert g.identity['base_url'] == f'{MODEL_ALIAS} on this machine' and not is_simulated(g)
            return create(preset('yesno_close'), n, generator=g, out=out, progress=False, restart=n == 10)
    again(10); again(10); res = again(15)
    first, replay, resumed = servers
    assert len({s.port for s in servers}) == 3 and len(res.records) == 15
    assert replay.count == 0 and resumed.count > 0   # the same run on a new port: every reply from the cache


# ---------------------------------------------------------------- hooks: a conditioner, a curator

from types import SimpleNamespace
from dataclasses import replace as with_fields
from datacreator_nb.attributes import Conditioner
from datacreator_nb.create import PROFILES
from datacreator_nb.sampling import Tree

TOPICS = ["volcanoes", "bees", "tides", "chess"]


def proposing(req) -> str:
    "Topics for a proposal request, else `deterministic` examples."
    return json.dumps(TOPICS) if 'distinct values of topic' in req['messages'][0]['content'] else deterministic(req)


def topic_task(): return with_fields(preset('yesno_close'), attributes={'topic': {'propose': 4}, 'difficulty': ['easy', 'hard']})


def test_conditions_reach_every_request_and_record():
    task = topic_task()
    with SimulatedServer(proposing) as srv:
        res = run(srv, 20, task, strategy='random', per_request=5, parallel=2, conditioner=Conditioner(task, balance=True, parallel=2))
        systems = [r['messages'][0]['content'] for r in srv.requests]
    assert 'distinct values of topic' in systems[0] and not any('distinct values' in s for s in systems[1:])
    assert all('**must** be about: topic = ' in s and 'difficulty = ' in s and 'there **must** be exactly' in s for s in systems[1:])
    assert len(res.records) == 20 and {r['_meta']['conditions']['topic'] for r in res.records} <= set(TOPICS)
    assert all(r['_meta']['label_targets'] for r in res.records)
    assert res.settings['balance'] is True and res.settings['attributes']['difficulty']['values'] == ['easy', 'hard']


def test_a_resume_reuses_the_proposed_values_and_their_cost_counts(tmp_path):
    task, out = topic_task(), tmp_path/'d.jsonl'
    with SimulatedServer(proposing) as srv:
        first = run(srv, 10, task, out=out, strategy='random', parallel=2, gen_kw=PAPER_PRICE, conditioner=Conditioner(task, parallel=2))
        asked = srv.count
        more = run(srv, 20, task, out=out, strategy='random', parallel=2, gen_kw=PAPER_PRICE, conditioner=Conditioner(task, parallel=2))
        proposals = [r for r in srv.requests if 'distinct values' in r['messages'][0]['content']]
    assert len(proposals) == 1 and srv.count > asked and len(more.records) == 20
    assert json.loads(state_path(out).read_text())['prepared'] == {'proposed': {'topic': TOPICS}}
    assert first.prepare_usd > 0 and more.prepare_usd == first.prepare_usd
    assert more.usd == pytest.approx(more.prepare_usd + more.rounds['usd'].sum())
    with SimulatedServer(proposing) as srv, pytest.raises(TaskError, match='other settings.*balance'):
        run(srv, 30, task, out=out, strategy='random', parallel=2, gen_kw=PAPER_PRICE, conditioner=Conditioner(task, balance=True, parallel=2))
    with SimulatedServer(proposing) as srv, pytest.raises(TaskError, match='other settings.*attributes'):
        run(srv, 30, task, out=out, strategy='random', parallel=2, gen_kw=PAPER_PRICE)   # resumed without its conditioner


class StandIn:
    "The smallest conditioner: a topic per request, a note per record, and every other example's fixed field 'changed'."
    def __init__(self): self.calls, self.settled = [], 0
    async def aprepare(self, gen, saved): return saved or {'made': True}
    def settings(self): return {'stand_in': 1}
    def ask(self, rnd, j, per_request, shot=None): self.calls.append((rnd, j, per_request)); return {'conditions': {'topic': f'r{rnd}j{j}'}}
    def record(self, asked): return {'asked_topic': asked['conditions']['topic']}
    def settle(self, asked, ex):
        self.settled += 1
        return ex if self.settled % 2 else None


def test_any_object_with_the_conditioner_methods_is_one():
    c = StandIn()
    with SimulatedServer(deterministic) as srv:
        res = run(srv, 9, strategy='naive', per_request=4, parallel=2, conditioner=c)
        systems = [r['messages'][0]['content'] for r in srv.requests]
    assert c.calls[:2] == [(0, 0, 4), (0, 1, 4)] and 'topic = r0j1' in systems[1]
    assert res.rejections['fixed_field_changed'] >= 4 and len(res.records) == 9
    assert all(r['_meta']['asked_topic'] == f"r{r['_meta']['round']}j{i}" for r in res.records for i in [0, 1] if r['_meta']['asked_topic'].endswith(f'j{i}'))
    assert res.settings['stand_in'] == 1


class DropOdd:
    "A curator that drops the examples whose question has an odd number of words (reason 'odd'), and scores the others."
    def __init__(self): self.seen = []
    async def acurate(self, task, records, msgs):
        self.seen.append(msgs)
        out = [{**r, '_curation': {'flags': ['odd'] if len(r['question'].split()) % 2 else [], 'notes': [], 'score': 5}} for r in records]
        return SimpleNamespace(records=out)


def test_a_curator_drops_examples_before_they_become_records():
    cur = DropOdd()
    with SimulatedServer(varied_examples(5)) as srv:
        res = run(srv, 25, strategy='random', per_request=5, parallel=2, curator=cur)
    assert len(res.records) == 25 and all(len(r['question'].split()) % 2 == 0 for r in res.records)
    assert res.rejections['odd'] > 0 and res.rounds['rejected'].sum() >= res.rejections['odd']
    assert all(r['_curation']['score'] == 5 for r in res.records)
    assert cur.seen[0][0]['role'] == 'system' and 'Here is the example' in cur.seen[0][1]['content']


def test_the_real_curator_drops_meta_text():
    from datacreator_nb.curate import Curator
    claims = ["Copper conducts electricity better than glass does.", "Honey bees live in colonies with one queen.",
              "The Moon has no atmosphere that people could breathe.", "Chess is played on a board of sixty-four squares.",
              "Mount Everest is the highest mountain above sea level.", "Penguins live mostly in the southern hemisphere."]
    def reply(req):
        i = ASKED['n']; ASKED['n'] += 1
        return json.dumps([{'question': claims[i % len(claims)], 'options': ['True', 'False'], 'answer': True},
                           {'question': 'Here are 5 new examples in JSON format.', 'options': ['True', 'False'], 'answer': True}])
    with SimulatedServer(reply) as srv:
        res = run(srv, 4, strategy='naive', per_request=2, parallel=2, curator=Curator())
    assert [r['question'] for r in res.records] == claims[:4]
    assert res.rejections['meta_text'] >= 2 and all('_curation' in r for r in res.records)


# ---------------------------------------------------------------- the paper's profile

def paper_gen(srv, **kw): return gen(srv, **PROFILES['paper']['generator'], **kw)


def test_paper_profile_takes_an_exact_only_validator_and_refuses_a_near_one():
    "The paper removed exact copies only: `Validator(near_dup=None)` is that; the default one (0.7) is refused, naming the field."
    from datacreator_nb.validate import ExactIndex, Validator
    task = preset('yesno_close')
    with SimulatedServer(deterministic) as srv:
        res = create(task, 5, strategy='random', generator=paper_gen(srv), profile='paper', validator=Validator(task, near_dup=None), progress=False)
        assert len(res.records) == 5 and res.settings['near_dup'] is None
        with pytest.raises(TaskError, match="needs a Validator with near_dup=None, got 0.7"):
            create(task, 5, strategy='random', generator=paper_gen(srv), profile='paper', validator=Validator(task), progress=False)
    assert type(Validator(task, near_dup=None).index) is ExactIndex


@pytest.mark.parametrize('name', ['random', 'contrastive', 'similar'])
def test_paper_profile_reaches_the_request_and_runs_one_chain(tmp_path, name):
    out = tmp_path/'p.jsonl'
    with SimulatedServer(deterministic) as srv:
        res = create(preset('yesno_close'), 22, strategy=name, generator=paper_gen(srv), out=out, profile='paper', progress=False)
        reqs = list(srv.requests)
    assert {(r.get('temperature'), r.get('top_p')) for r in reqs} == {(1.0, 0.0)}
    assert all('unnumbered JSON' in r['messages'][0]['content'] for r in reqs)
    assert 'response_format' not in reqs[0]
    assert res.rounds['requests'].tolist() == [1] * len(reqs) == [1] * 5   # one chain: one request per round
    depths = [r['_meta']['depth'] for r in res.records]
    assert depths == sorted(depths) and max(depths) == 5
    for key, value in {'profile': 'paper', 'per_request': 5, 'parallel': 1, 'style': 'paper', 'by_level': True, 'near_dup': None,
                       'structured': False, 'top_p': 0.0, 'temperature': 1.0}.items():
        assert res.settings[key] == value and json.loads(state_path(out).read_text())['settings'][key] == value


def test_paper_tree_goes_level_by_level_and_repeats_an_empty_level():
    "The root's children are asked in a shuffled order, a level at a time; the first time level 1 is sent it is answered with prose."
    def flaky(req):
        ASKED[user_text(req)] += 1
        ASKED['all'] += 1
        return 'Sorry, not now.' if 2 <= ASKED['all'] <= 6 else pure(req, ASKED[user_text(req)])   # requests 2-6: level 1, sent first
    with SimulatedServer(flaky) as srv:
        res = create(preset('yesno_close'), 5 + 25 + 10, strategy='tree', generator=paper_gen(srv), profile='paper', parallel=2, progress=False)
        shown = [json_objects(user_text(r))[0]['question'] for r in srv.requests]
    by_q = {r['question']: r['_meta'] for r in res.records}
    levels = [0 if q == preset('yesno_close').example['question'] else by_q[q]['depth'] for q in shown]
    assert levels == [0] + [1] * 5 + [1] * 5 + [2] * 2   # level 1 answered nothing: sent again, never the root
    assert shown[6:11] == shown[1:6] != [r['question'] for r in res.records[:5]]   # the same level, in its shuffled order
    assert res.rounds['requests'].tolist() == [1, 2, 2, 1, 2, 2, 1, 2] and len(res.records) == 40


def test_paper_profile_refuses_what_it_sets_otherwise():
    task = preset('yesno_close')
    with SimulatedServer(deterministic) as srv:
        with pytest.raises(TaskError, match=r"top_p=0.0 \(the generator has None\)"):
            create(task, 5, strategy='random', generator=gen(srv), profile='paper', progress=False)
        with pytest.raises(TaskError, match="profile 'paper' sets parallel=1, got 4"):
            create(task, 5, strategy='random', generator=paper_gen(srv), profile='paper', parallel=4, progress=False)
        with pytest.raises(TaskError, match=r"Tree\(by_level=True\)"):
            create(task, 5, strategy=Tree(), generator=paper_gen(srv), profile='paper', progress=False)
        with pytest.raises(TaskError, match="unknown profile 'papr'"):
            create(task, 5, generator=paper_gen(srv), profile='papr', progress=False)
        assert srv.count == 0
