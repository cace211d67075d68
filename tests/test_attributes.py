"""Attributes (issue 15): the spec is checked naming the field, sampling is seeded and resume-stable, values are
proposed through the simulated server, conditions and label targets reach the prompt, asked vs got is reported."""
import asyncio, json
from collections import Counter
from dataclasses import replace

import pytest

from datacreator_nb.attributes import (label_report, label_targets, propose_missing, propose_values, sample_conditions,
                                       target_labels)
from datacreator_nb.generate import Generator
from datacreator_nb.prompt import messages
from datacreator_nb.server import SimulatedServer
from datacreator_nb.task import Attribute, LabelSpace, TaskError, data_path, load_task, preset
from datacreator_nb.validate import Validator

SPEC = {"topic": {"propose": 4}, "difficulty": ["easy", "hard"], "style": {"values": ["plain", "playful", "formal"], "weights": [6, 3, 1]}}
TOPICS = {"topic": ["volcanoes", "bees", "tides", "chess"]}


def task(spec=SPEC, kind='yesno_close'): return replace(preset(kind), attributes=spec)


# --- the spec -------------------------------------------------------------------------------------

def test_task_file_with_attributes(tmp_path):
    (p := tmp_path/'t.json').write_text(json.dumps({'task_type': 'yesno_close', 'attributes': SPEC,
                                                    'example': {'question': 'Is ice cold?', 'options': ['True', 'False'], 'answer': True}}))
    t = load_task(p)
    assert t.attributes['topic'] == Attribute('topic', propose=4)
    assert t.attributes['style'].weights == (6, 3, 1)
    assert preset('mcqa_2').attributes == {}


@pytest.mark.parametrize('spec,field', [
    ({"difficulty": []}, 'attributes.difficulty'),
    ({"difficulty": ["easy", " EASY "]}, 'attributes.difficulty'),
    ({"difficulty": ["easy", None]}, 'attributes.difficulty'),
    ({"difficulty": {"values": ["a", "b"], "weights": [1, -1]}}, 'attributes.difficulty.weights'),
    ({"difficulty": {"values": ["a", "b"], "weights": [0, 0]}}, 'attributes.difficulty.weights'),
    ({"topic": {"propose": True}}, 'attributes.topic.propose'),
    ({"topic": {"propose": 5, "values": ["x"]}}, 'attributes.topic'),
    ({"topic": {"propose": 5, "weights": [1]}}, 'attributes.topic.weights'),
    ({"topic": {"propose": 5, "count": 3}}, 'attributes.topic.count'),
    ({"topic": "volcanoes"}, 'attributes.topic'),
    (["topic"], 'attributes'),
])
def test_bad_attribute_specs_name_the_field(tmp_path, spec, field):
    (p := tmp_path/'t.json').write_text(json.dumps({'task_type': 'yesno_close', 'attributes': spec,
                                                    'example': {'question': 'Is ice cold?', 'answer': True}}, indent=1))
    with pytest.raises(TaskError, match=rf"t.json(:\d+)?: field '{field}'"):
        load_task(p)


# --- sampling -------------------------------------------------------------------------------------

def test_needs_proposed_values():
    with pytest.raises(TaskError, match="field 'attributes.topic': has no values yet"):
        sample_conditions(task(), 3)


@pytest.mark.parametrize('mode', ['uniform', 'weighted', 'every'])
def test_sampling_is_seeded_and_independent_of_rounds(mode):
    t = task()
    whole = sample_conditions(t, 50, seed=7, mode=mode, proposed=TOPICS)
    rounds = [c for lo in range(0, 50, 8) for c in sample_conditions(t, min(8, 50 - lo), seed=7, mode=mode, start=lo, proposed=TOPICS)]
    assert whole == rounds == sample_conditions(t, 50, seed=7, mode=mode, proposed=TOPICS)
    assert whole != sample_conditions(t, 50, seed=8, mode=mode, proposed=TOPICS)
    assert all(list(c) == ['topic', 'difficulty', 'style'] for c in whole)


def test_uniform_covers_every_value_equally():
    conds = sample_conditions(task(), 12, seed=3, proposed=TOPICS)
    assert Counter(c['topic'] for c in conds) == Counter({t: 3 for t in TOPICS['topic']})
    assert Counter(c['style'] for c in conds) == Counter({'plain': 4, 'playful': 4, 'formal': 4})  # weights ignored
    assert len({c['topic'] for c in conds[:4]}) == 4                                              # no repeat before all are used


def test_weighted_follows_weights():
    got = Counter(c['style'] for c in sample_conditions(task(), 5000, seed=1, mode='weighted', proposed=TOPICS))
    assert abs(got['plain'] / 5000 - 0.6) < 0.03 and abs(got['formal'] / 5000 - 0.1) < 0.02


def test_every_combination_once_per_cycle():
    conds = sample_conditions(task(), 48, seed=2, mode='every', proposed=TOPICS)
    combos = [tuple(c.values()) for c in conds]
    assert len(set(combos[:24])) == 24 and set(combos[:24]) == set(combos[24:]) and combos[:24] != combos[24:]


def test_bad_sampling_arguments():
    with pytest.raises(ValueError, match="mode must be one of"): sample_conditions(task(), 2, mode='random', proposed=TOPICS)
    with pytest.raises(ValueError, match="at least 0"): sample_conditions(task(), -1, proposed=TOPICS)
    big = {f"a{i}": [str(j) for j in range(10)] for i in range(6)}
    with pytest.raises(ValueError, match="mode 'every' walks at most 100,000 combinations"): sample_conditions(task(big), 1, mode='every')
    assert sample_conditions(preset('mcqa_5'), 3) == [{}, {}, {}]


# --- the prompt -----------------------------------------------------------------------------------

def test_conditions_and_targets_in_the_prompt():
    t = task()
    cond = sample_conditions(t, 1, proposed=TOPICS)[0]
    system = messages(t, n=5, conditions=cond, label_targets={True: 3, False: 2})[0]['content']
    assert f"be about: topic = {cond['topic']}; difficulty = {cond['difficulty']}; style = {cond['style']}." in system
    assert "exactly 3 with answer True, 2 with answer False." in system
    assert "all have different answers" not in system and "mix of the possible answers" not in system
    assert messages(t, n=5) == messages(t, n=5, conditions={}, label_targets={})
    mc = messages(preset('mcqa_5'), n=5, label_targets=label_targets(preset('mcqa_5'), 5))[0]['content']
    assert "1 with the correct answer as option 1, 1 with the correct answer as option 2" in mc
    with pytest.raises(ValueError, match="label targets ask for 4 examples, but the request asks for 5"):
        messages(t, n=5, label_targets={True: 2, False: 2})
    with pytest.raises(ValueError, match="conditions must map attribute names to non-empty strings"):
        messages(t, n=5, conditions={'topic': ''})
    fixed = messages(load_task_sentiment(), n=2, label_targets={'positive': 1, 'negative': 1})[0]['content']
    assert 'exactly 1 with answer "positive", 1 with answer "negative".' in fixed


def load_task_sentiment():
    return load_task(data_path('tasks', 'sentiment.json'))


# --- label targets --------------------------------------------------------------------------------

@pytest.mark.parametrize('kind,n', [('yesno_close', 5), ('yesno_close', 4), ('mcqa_5', 3), ('mcqa_2', 5), ('mcqa_5', 7)])
def test_targets_sum_to_n_and_stay_balanced(kind, n):
    t = preset(kind)
    targets = [label_targets(t, n, r) for r in range(40)]
    assert all(sum(x.values()) == n and list(x) == target_labels(t) for x in targets)
    for k in range(1, 41):
        totals = sum(map(Counter, targets[:k]), Counter())
        assert max(totals[l] for l in target_labels(t)) - min(totals[l] for l in target_labels(t)) <= 1


def test_open_label_space_has_no_targets():
    t = replace(load_task_sentiment(), label_space=LabelSpace.open())
    assert label_targets(t, 5) == {} and target_labels(t) == []


def test_asked_vs_got_on_scripted_replies():
    "Two requests with targets, answered by scripted replies that honour them only partly; duplicates do not count as got."
    t = preset('yesno_close')
    asked = [label_targets(t, 3, r) for r in range(2)]
    q = lambda i, a: {"question": f"Scripted claim number {i} about {'abcdefgh'[i]} things in the world.", "options": ["True", "False"], "answer": a}
    replies = [json.dumps([q(0, True), q(1, True), q(2, True)]), json.dumps([q(3, False), q(4, True), q(0, True)])]
    v = Validator(t)
    got = [ex for r in replies for ex in v.validate(r).accepted]
    df = label_report(t, asked, got)
    assert df[['label', 'asked', 'got']].values.tolist() == [['True', 3, 4], ['False', 3, 1]]
    mc = preset('mcqa_2')
    rep = label_report(mc, [label_targets(mc, 2)], [{"question": "q", "options": ["x", "y"], "answer": "y"}] * 2)
    assert rep[['label', 'asked', 'got']].values.tolist() == [['option 1', 1, 0], ['option 2', 1, 2]]


# --- proposal through the simulated server --------------------------------------------------------

def propose(responder, coro_fn):
    async def go(srv):
        g = Generator('simulated', base_url=srv.base_url, api_key='sk-x')
        try: return await coro_fn(g)
        finally: await g.aclose()
    with SimulatedServer(responder) as srv:
        return asyncio.run(go(srv)), srv


def test_propose_values_cleans_the_reply():
    reply = 'Here you go:\n```json\n["Volcanoes", " bees ", "VOLCANOES", "", 42, null, "tides", "chess", "deserts"]\n```'
    values, srv = propose(lambda req: reply, lambda g: propose_values(task(), 'topic', 4, g))
    assert values == ["Volcanoes", "bees", "tides", "chess"]
    system = srv.requests[0]['messages'][0]['content']
    assert 'List 4 distinct values of topic' in system and preset('yesno_close').instruction in system


def test_propose_values_refuses_a_useless_reply():
    with pytest.raises(TaskError, match=r"field 'attributes.topic': the model proposed no usable values .* it replied: 'I would rather not.'"):
        propose(lambda req: 'I would rather not.', lambda g: propose_values(task(), 'topic', 4, g))


def test_propose_missing_reuses_stored_values():
    "A resumed run passes the values its state kept: nothing is asked again."
    reply = json.dumps(["volcanoes", "bees", "tides", "chess"])
    first, srv = propose(lambda req: reply, lambda g: propose_missing(task(), g))
    assert first == TOPICS and srv.count == 1
    again, srv2 = propose(lambda req: 'never asked', lambda g: propose_missing(task(), g, first))
    assert again == TOPICS and srv2.count == 0
    assert sample_conditions(task(), 8, seed=1, proposed=first) == sample_conditions(task(), 8, seed=1, proposed=again)


def test_proposal_replaces_the_examples_format():
    "A generator with structured output for examples asks for the proposal in its own format, and the wrapped reply is read."
    from datacreator_nb.prompt import response_format
    async def go(srv):
        g = Generator('simulated', base_url=srv.base_url, api_key='sk-x', response_format=response_format(preset('yesno_close'), 5))
        try: return await propose_values(task(), 'topic', 3, g)
        finally: await g.aclose()
    with SimulatedServer(lambda req: json.dumps({"values": ["volcanoes", "bees", "tides", "chess"]})) as srv:
        assert asyncio.run(go(srv)) == ["volcanoes", "bees", "tides"]
        sent = srv.requests[0]['response_format']['json_schema']
    assert sent['name'] == 'attribute_values' and sent['schema']['properties']['values']['maxItems'] == 3


# --- the conditioner of a creation run ------------------------------------------------------------

from datacreator_nb.attributes import Conditioner, field_values


def test_conditioner_walks_the_conditions_across_rounds():
    "Request j of round r is request r * parallel + j: the run's requests see every topic before any repeats, and balance alternates."
    c = Conditioner(task(TOPICS), balance=True, seed=3, parallel=2)
    c.proposed = TOPICS
    asks = [c.ask(r, j, 5) for r in range(2) for j in range(2)]
    assert sorted(a['conditions']['topic'] for a in asks) == sorted(TOPICS['topic'])
    assert [a['label_targets'] for a in asks] == [{True: 3, False: 2}, {True: 2, False: 3}] * 2
    assert asks == [c.ask(r, j, 5) for r in range(2) for j in range(2)]                       # the same on every replay
    assert [a['conditions'] for a in asks] == sample_conditions(task(TOPICS), 4, seed=3, proposed=TOPICS)
    assert Conditioner(preset('yesno_close')).ask(4, 1, 5) == {}                               # nothing asked: nothing added
    assert Conditioner(preset('mcqa_5'), balance=True).ask(0, 0, 5) == {'label_targets': {1: 1, 2: 1, 3: 1, 4: 1, 5: 1}}
    with pytest.raises(ValueError, match="mode must be one of"): Conditioner(task(), mode='random')
    with pytest.raises(ValueError, match="parallel must be a whole number"): Conditioner(task(), parallel=0)


def test_record_keeps_the_request_through_json():
    c = Conditioner(task(TOPICS), balance=True)
    asked = {'conditions': {'topic': 'bees'}, 'label_targets': {True: 3, False: 2}}
    assert json.loads(json.dumps(c.record(asked))) == {'conditions': {'topic': 'bees'}, 'label_targets': [[True, 3], [False, 2]]}
    assert c.record({}) == {}


def test_conditioner_proposes_once_and_a_resume_reuses_the_state():
    reply = json.dumps(["volcanoes", "bees", "tides", "chess"])
    c = Conditioner(task(), balance=True)
    state, srv = propose(lambda req: reply, lambda g: c.aprepare(g))
    assert state == {'proposed': TOPICS} and srv.count == 1
    resumed = Conditioner(task(), balance=True)
    saved = json.loads(json.dumps(state))                                                       # as read back from the state file
    again, srv2 = propose(lambda req: 'never asked', lambda g: resumed.aprepare(g, saved))
    assert again == state and srv2.count == 0
    assert [resumed.ask(r, 0, 5) for r in range(6)] == [c.ask(r, 0, 5) for r in range(6)]
    assert json.loads(json.dumps(c.settings())) == resumed.settings() != Conditioner(task(), balance=False).settings()
    assert c.settings()['attributes']['style'] == {'values': ['plain', 'playful', 'formal'], 'weights': [6, 3, 1], 'propose': None}


def test_unprepared_conditioner_says_what_is_missing():
    with pytest.raises(TaskError, match="field 'attributes.topic': has no values yet"):
        Conditioner(task()).ask(0, 0, 5)


def test_report_counts_every_request_of_the_run():
    "A run's rounds say how many requests each sent; the report asks the conditioner for their targets again."
    import pandas as pd
    from types import SimpleNamespace
    t, c = preset('yesno_close'), Conditioner(preset('yesno_close'), balance=True, parallel=2)
    recs = [t.to_record({'question': f'claim {i}', 'options': ['True', 'False'], 'answer': i < 4}) for i in range(6)]
    result = SimpleNamespace(rounds=pd.DataFrame({'round': [0, 1], 'requests': [2, 1]}), records=recs)
    assert c.report(result, 5)[['label', 'asked', 'got']].values.tolist() == [['True', 8, 4], ['False', 7, 2]]


# --- passage first, then questions about it -------------------------------------------------------

OPEN = preset('yesno_open')
DUNE = "The Great Dune of Pilat, on the Atlantic coast of France, is the tallest sand dune in Europe and moves inland by several metres every year."
REEF = "Coral reefs cover less than one percent of the ocean floor, yet about a quarter of all known marine species live on or around them."


def test_passages_are_proposed_validated_and_deduplicated():
    reply = json.dumps([DUNE, "Too short.", DUNE.replace('several', 'a few'), OPEN.example['context'], REEF])
    t = replace(OPEN, attributes={'context': {'propose': 5}})
    state, srv = propose(lambda req: reply, lambda g: Conditioner(t).aprepare(g))
    assert state == {'proposed': {'context': [DUNE, REEF]}}
    system = srv.requests[0]['messages'][0]['content']
    assert 'give one value of the field **context**' in system and 'a complete context, about as long as the example' in system
    with pytest.raises(TaskError, match="field 'attributes.context': the model proposed no usable values"):
        propose(lambda req: json.dumps(["Too short.", OPEN.example['context']]), lambda g: Conditioner(t).aprepare(g))


def test_each_request_fixes_one_passage_and_passages_are_reused():
    t = replace(OPEN, attributes={'context': {'propose': 2}, 'difficulty': ['easy', 'hard']})
    c = Conditioner(t, balance=True, parallel=4)
    c.proposed = {'context': [DUNE, REEF]}
    asks = [c.ask(r, j, 4) for r in range(2) for j in range(4)]
    assert all(sorted(a) == ['conditions', 'fixed', 'label_targets'] and list(a['conditions']) == ['difficulty'] for a in asks)
    assert Counter(a['fixed']['context'] for a in asks) == Counter({DUNE: 4, REEF: 4})
    assert c.fixed_fields == ('context',) and Conditioner(task(TOPICS)).fixed_fields == ()
    system = messages(t, n=4, **asks[0])[0]['content']
    assert f'copy it unchanged into its "context" field: {json.dumps(asks[0]["fixed"]["context"])}' in system
    assert 'exactly 2 with answer True, 2 with answer False' in system


def test_a_changed_passage_is_repaired_or_rejected():
    "Repaired: the model's copy differs in case, spacing or punctuation, or is shortened; rejected: it wrote another passage."
    c = Conditioner(replace(OPEN, attributes={'context': {'propose': 1}}))
    asked = {'fixed': {'context': DUNE}}
    q = lambda ctx: {'question': 'Does the dune move?', 'context': ctx, 'options': ['True', 'False'], 'answer': True}
    assert c.settle(asked, q(DUNE)) == q(DUNE)
    assert c.settle(asked, q('  ' + DUNE.lower().replace(',', ''))) == q(DUNE)
    assert c.settle(asked, q(DUNE[:70])) == q(DUNE)
    assert c.settle(asked, q(REEF)) is None
    assert c.settle(asked, q(DUNE + ' It is also the oldest dune in the world.')) is None          # added text: not ours
    assert c.settle(asked, q('...')) is None
    assert c.settle({}, q(REEF)) == q(REEF)                                                      # nothing fixed: kept as it is


def test_too_few_usable_values_ask_again_and_merge():
    "A small model's reply: labels, markup, gibberish; the request is sent again (another sample) until enough are usable, 3 at most."
    replies = iter([json.dumps(["True", "bees", "{value1}", "natives21045689374"]), json.dumps(["Bees", "tides,", "chess"]), 'never sent'])
    values, srv = propose(lambda req: next(replies), lambda g: propose_values(task(), 'topic', 3, g))
    assert values == ["bees", "tides", "chess"] and srv.count == 2
    _, srv = propose(lambda req: json.dumps(["bees"]), lambda g: propose_values(task(), 'topic', 3, g))
    assert srv.count == 3


# --- end to end: create(..., conditioner=...) through the simulated server ------------------------

import re
from datacreator_nb.create import create

CLAIM_WORDS = "amber basalt cedar delta ember fjord garnet harbor iris jasper kelp lagoon maple nectar onyx prairie quartz reef sierra tundra".split()


def asked_counts(system):
    "The label mix a request asks for, read from its rules ({True: 3, False: 2}), or None."
    m = re.search(r"exactly (\d+) with answer True, (\d+) with answer False", system)
    return {True: int(m[1]), False: int(m[2])} if m else None


def obedient(topics, passage_edit=lambda p, i: p):
    "A SIMULATED model: proposes `topics`; writes claims about the request's topic (and passage) with exactly the asked label mix."
    count = iter(range(10**6))
    def answer(req):
        system = req['messages'][0]['content']
        if 'distinct values of' in system: return json.dumps(topics)
        n, mix = int(re.search(r"Create (\d+)", req['messages'][-1]['content'])[1]), asked_counts(system)
        labels = [True] * mix[True] + [False] * mix[False] if mix else [True] * n
        topic = (re.search(r"topic = ([^;.]+)", system) or [None, 'anything'])[1]
        passage = re.search(r'"context" field: (".*")', system)
        out = []
        for a in labels:
            i = next(count)
            words = ' '.join(CLAIM_WORDS[(i * k + 3) % len(CLAIM_WORDS)] for k in (1, 7, 11, 13))
            ex = {"question": f"Claim {i} about {topic}: {words} number {i}?", "options": ["True", "False"], "answer": a}
            if passage: ex["context"] = passage_edit(json.loads(passage[1]), i)
            out.append(ex)
        return json.dumps(out)
    return answer


def run_create(responder, t, n, cond, out=None, **kw):
    with SimulatedServer(responder) as srv:
        g = Generator('simulated', base_url=srv.base_url, api_key='sk-x')
        res = create(t, n, strategy='naive', generator=g, per_request=5, parallel=2, conditioner=cond, progress=False, out=out, **kw)
        return res, srv


def test_create_with_topics_and_balance_end_to_end(tmp_path):
    t = task({"topic": {"propose": 4}, "difficulty": ["easy", "hard"]})
    out = tmp_path / 'set.jsonl'
    res, srv = run_create(obedient(TOPICS['topic']), t, 20, Conditioner(t, balance=True, parallel=2), out)
    proposals = [r for r in srv.requests if 'distinct values of' in r['messages'][0]['content']]
    assert len(res.records) == 20 and len(proposals) == 1
    metas = [r['_meta'] for r in res.records]
    assert {m['conditions']['topic'] for m in metas} == set(TOPICS['topic'])
    assert all(f"about {m['conditions']['topic']}:" in r['question'] for m, r in zip(metas, res.records))   # the prompt named it
    assert Counter(r['label'] for r in res.records) == Counter({True: 10, False: 10})
    report = Conditioner(t, balance=True, parallel=2)
    report.proposed = TOPICS
    assert report.report(res, 5)[['label', 'asked', 'got']].values.tolist() == [['True', 10, 10], ['False', 10, 10]]
    # resume to 30: the proposal is not asked again, the conditions go on where they stopped
    more, srv2 = run_create(obedient(['never', 'asked']), t, 30, Conditioner(t, balance=True, parallel=2), out)
    assert len(more.records) == 30 and not [r for r in srv2.requests if 'distinct values of' in r['messages'][0]['content']]
    assert {r['_meta']['conditions']['topic'] for r in more.records} == set(TOPICS['topic'])
    with pytest.raises(TaskError, match="other settings"):
        run_create(obedient(TOPICS['topic']), t, 40, Conditioner(t, balance=False, parallel=2), out)


def test_create_open_book_passages_end_to_end():
    "Passages first, then questions: a shortened copy is repaired, another passage rejected; passages reused across requests, not counted as duplicates."
    t = replace(OPEN, attributes={"context": {"propose": 2}})
    edit = lambda p, i: p[:60] if i % 5 == 1 else ("An unrelated passage about kites and wind." if i % 5 == 2 else p)
    res, srv = run_create(obedient([DUNE, REEF], edit), t, 24, Conditioner(t, balance=True, parallel=2))
    assert {r['context'] for r in res.records} == {DUNE, REEF}
    assert res.rejections['fixed_field_changed'] > 0
    assert res.rejections['near_duplicate'] == 0   # questions are compared without their shared passage (was 80)
    assert not any(r['question'].startswith(f"Claim {i} ") for r in res.records for i in range(2, 10**4, 5))
    assert any(r['question'].startswith(f"Claim {i} ") for r in res.records for i in range(1, 200, 5))  # repaired ones are kept


# --- following the shot: within or across topics (every strategy) --------------------------------

from datacreator_nb.attributes import FOLLOWS, follow_shot
from datacreator_nb.create import LoopState
from datacreator_nb.run_files import state_path
from datacreator_nb.sampling import HashingEmbedder, Shot, get_strategy

STRATEGIES = {'tree': lambda: 'tree', 'random': lambda: 'random', 'similar': lambda: get_strategy('similar', embedder=HashingEmbedder())}


def follow_run(follow, strategy='tree', n=36, t=None, values=TOPICS['topic'], out=None, writer=None, **kw):
    "A run of `n` through the simulated server (`writer`, else a new `obedient` one) whose requests follow their shots' conditions as `follow` says."
    t = t or task(TOPICS)
    c = Conditioner(t, balance=True, seed=5, parallel=2, follow=follow)
    with SimulatedServer(writer or obedient(values)) as srv:
        g = Generator('simulated', base_url=srv.base_url, api_key='sk-x')
        return create(t, n, strategy=STRATEGIES[strategy](), generator=g, per_request=3, parallel=2, conditioner=c, progress=False, out=out, **kw)


def shot_and_own(res, key=lambda r: r['_meta']['conditions']['topic']):
    "(the shot's value, the record's value) of every record whose shot was another record."
    of = {r['_meta']['id']: key(r) for r in res.records}
    return [(of[r['_meta']['parent']], key(r)) for r in res.records if r['_meta']['parent'] is not None]


@pytest.mark.parametrize('strategy', list(STRATEGIES))
def test_within_asks_for_the_shot_topic_again(strategy):
    res = follow_run('within', strategy)
    pairs = shot_and_own(res)
    assert len(res.records) == 36 and len(pairs) >= 24 and res.simulated
    assert all(shot == own for shot, own in pairs)
    assert abs(sum(r['label'] for r in res.records) - 18) <= 3                      # balance still asked per request
    assert any(shot != own for shot, own in shot_and_own(follow_run('free', strategy)))  # by number: topics change (the old behaviour)


@pytest.mark.parametrize('strategy', list(STRATEGIES))
def test_across_never_asks_for_the_shot_topic(strategy):
    three = {'topic': TOPICS['topic'][:3]}                                        # by number, a chain would meet its shot's topic again
    res = follow_run('across', strategy, t=task(three))
    pairs = shot_and_own(res)
    assert len(res.records) == 36 and len(pairs) >= 24
    assert all(shot != own for shot, own in pairs)
    assert {own for _, own in pairs} == set(three['topic'])                       # every topic still used


def test_free_topics_ignore_the_shot():
    "The old behaviour, the default: by request number, a tree's records are sometimes on their shot's topic, sometimes not."
    pairs = shot_and_own(follow_run('free'))
    assert any(shot == own for shot, own in pairs) and any(shot != own for shot, own in pairs)


@pytest.mark.parametrize('follow', ['within', 'across'])
def test_passages_follow_the_shot(follow):
    "Open book: 'within' asks about the shot's passage again, 'across' about another one."
    t = replace(OPEN, attributes={'context': {'propose': 2}})
    res = follow_run(follow, t=t, n=24, values=[DUNE, REEF])
    pairs = shot_and_own(res, key=lambda r: r['context'])
    assert len(res.records) == 24 and pairs and all((shot == own) == (follow == 'within') for shot, own in pairs)


@pytest.mark.parametrize('follow', ['within', 'across'])
def test_a_resumed_run_asks_what_the_uninterrupted_run_asked(tmp_path, follow):
    "The shots' conditions are saved with the frontier: a run stopped after 2 rounds and resumed asks as one that never stopped."
    meta = lambda res: [{k: r['_meta'][k] for k in ('id', 'parent', 'depth', 'conditions')} for r in res.records]
    whole, writer = follow_run(follow, out=tmp_path / 'whole.jsonl'), obedient(TOPICS['topic'])   # one writer for both calls: no claim twice
    part = follow_run(follow, out=tmp_path / 'part.jsonl', max_rounds=2, writer=writer)
    saved = json.loads(state_path(tmp_path / 'part.jsonl').read_text())['frontier']['shots']
    assert len(part.records) == 3 + 6 and all(set(c) == {'topic'} for _, _, c in saved)
    assert meta(follow_run(follow, out=tmp_path / 'part.jsonl', writer=writer)) == meta(whole)


def test_follow_is_a_setting_of_the_run(tmp_path):
    follow_run('within', out=tmp_path / 'set.jsonl', max_rounds=1)
    with pytest.raises(TaskError, match="other settings.*condition_follow 'within' -> 'across'"):
        follow_run('across', out=tmp_path / 'set.jsonl')
    with pytest.raises(TaskError, match="other settings.*condition_follow 'within' -> None"):
        follow_run('free', out=tmp_path / 'set.jsonl')
    assert 'condition_follow' not in Conditioner(task(TOPICS)).settings()          # runs started before the option resume as they were


def test_free_is_by_request_number_whatever_the_shot():
    c, shot = Conditioner(task(TOPICS), seed=3, parallel=2, follow='free'), Shot({'question': 'q'}, 4, 1, {'topic': 'bees'})
    c.proposed = TOPICS
    asks = [c.ask(r, j, 5, shot=shot)['conditions'] for r in range(4) for j in range(2)]
    assert asks == sample_conditions(task(TOPICS), 8, seed=3, proposed=TOPICS) == [c.ask(r, j, 5)['conditions'] for r in range(4) for j in range(2)]
    assert FOLLOWS == ('free', 'within', 'across')
    with pytest.raises(ValueError, match="follow must be one of"): Conditioner(task(TOPICS), follow='near')


def test_across_keeps_a_single_value_and_draws_by_weight():
    t = task({'topic': ['bees'], 'style': {'values': ['plain', 'playful', 'formal'], 'weights': [0, 1, 1]}})
    c = Conditioner(t, mode='weighted', follow='across')
    asks = [c.ask(r, 0, 5, shot=Shot({}, 1, 1, {'topic': 'bees', 'style': 'playful'}))['conditions'] for r in range(40)]
    assert {a['topic'] for a in asks} == {'bees'} and {a['style'] for a in asks} == {'formal'}   # never 'playful' (the shot's), never weight 0
    assert follow_shot({'topic': 'bees'}, None, 'across', {}, 'k') == {'topic': 'bees'}     # the task's own example: nothing to avoid


def test_a_state_file_from_before_conditions_still_loads(tmp_path):
    (p := tmp_path / 'old.state.json').write_text(json.dumps({'round': 2, 'frontier': {'shots': [[3, 1]], 'level': []}}))
    st = LoopState.load(p, lambda i: {'question': f'q{i}'})
    assert st.frontier.shots == [Shot({'question': 'q3'}, 3, 1)] and st.frontier.shots[0].conditions is None


def test_create_follow_from_the_command_line(tmp_path, capsys):
    from datacreator_nb.cli import main
    from datacreator_nb.task import read_jsonl
    (spec := tmp_path / 'attrs.json').write_text(json.dumps({'topic': TOPICS['topic']}))
    out = tmp_path / 'w.jsonl'
    argv = ['create', '--preset', 'yesno_close', '--n', '20', '--strategy', 'tree', '--parallel', '2', '--simulated', '--attributes', str(spec), '--out', str(out), '--quiet']
    assert main([*argv, '--follow', 'within']) == 0
    recs = read_jsonl(out)
    topic = {r['_meta']['id']: r['_meta']['conditions']['topic'] for r in recs}
    assert len(recs) == 20 and all(topic[r['_meta']['parent']] == topic[r['_meta']['id']] for r in recs if r['_meta']['parent'] is not None)
    assert json.loads(state_path(out).read_text())['settings']['condition_follow'] == 'within'
    with pytest.raises(SystemExit): main([*argv, '--follow', 'sideways'])
