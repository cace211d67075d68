"""curate: each heuristic filter on hand-made items, the judge and self-consistency through the simulated server,
cleanlab on known flips, re-weighting, the review round trip, record files and the `curate` command."""
import argparse, asyncio, json, random

import numpy as np
import pandas as pd
import pytest

from datacreator_nb.curate import (Heuristics, instruction_grams, echo_share, meta_text, label_form, cut_off, length_outlier,
                                   annotate, curation, is_kept, ajudge, aself_consistency, read_vote, confident_learning,
                                   sample_weights, label_weight, export_review, read_review, label_accuracy, wilson, curate_records, Curator,
                                   read_records, write_records, add_curate_command, labelled_items, filter_scores, infer_task)
from datacreator_nb.evaluate import DownstreamModel, separable_records
from datacreator_nb.generate import Generator
from datacreator_nb.prompt import messages
from datacreator_nb.server import SimulatedServer
from datacreator_nb.task import TaskError, preset

YN, MC = preset('yesno_close'), preset('mcqa_5')
OPTS = ["bank", "library", "mall", "park", "zoo"]


def yn(q, label=True): return {"question": q, "options": ["True", "False"], "label": label}
def mc(q, label='bank', options=OPTS): return {"question": q, "options": list(options), "label": label}
def gen(srv, **kw): return Generator(model='simulated', base_url=srv.base_url, backoff=0.01, timeout=5, **kw)


def run(coro, g):
    "Run `coro` to its end, then close the generator's HTTP client on the same event loop."
    async def go():
        try: return await coro
        finally: await g.aclose()
    return asyncio.run(go())
def flags(rec): return curation(rec).get('flags', [])


# --- heuristic filters, one known verdict each

def test_prompt_echo_counts_instruction_trigrams_not_the_shown_example():
    msgs = messages(YN, [{"question": "Bats are the only mammals that can truly fly.", "options": ["True", "False"], "answer": True}], n=5)
    instr = instruction_grams(msgs)
    assert echo_share("You are creating 5 more examples that follow the format", instr) == 1.0
    assert echo_share("Bats are the only mammals that can truly fly.", instr) == 0.0   # the parent example shown is not an echo
    assert echo_share("Is the Nile the longest river in Africa?", instr) == 0.0
    assert Heuristics(YN, msgs).flags(yn("You're creating 5 examples that follow the format of a example.")) == ['prompt_echo', 'meta_text']
    assert Heuristics(YN, msgs).flags(yn("Bats are the only mammals that can truly fly.")) == []


@pytest.mark.parametrize('echo', ["The created examples must use a mix of the possible answers.", "Create 5 new examples as a JSON array.",
                                  "You are creating 5 more examples that follow the format of the example provided, but with a different content."])
def test_echoes_of_the_default_prompt_are_dropped(echo):
    "Issue 12.4: lines of the prompt `make demo` sends, copied into a record, are caught without a request at hand."
    assert 'prompt_echo' in Heuristics(YN).flags(yn(echo))


@pytest.mark.parametrize('text,verdict', [
    ("Can you create a JSON array with the example above?", 'meta_text'), ('{"question": "x"}', 'meta_text'),
    ("Here are three new examples", 'meta_text'), ("The answer is True because ice is cold.", 'meta_text'),
    ("Is the male parrot female? 2. No.", 'meta_text'), ("Can you tell me about king penguins?", 'meta_text'),
    ("Is the answer to the question above in French?", 'meta_text'), ("True or false: snow is white.", 'meta_text'),
    ("Is an apple an example of a fruit?", None), ("Is it true that owls can turn their heads fully around?", None),
    ("Did the answer to the riddle surprise the king?", None), ("Can you buy a laptop with fair trade gold?", None)])
def test_meta_text(text, verdict):
    assert meta_text(text) == verdict


@pytest.mark.parametrize('task,rec,verdict', [
    (YN, yn("What is cloud computing?"), 'wh_question'), (YN, yn("How to eat vegan"), 'wh_question'),
    (YN, yn("In what year was the first human landing on Mars?"), 'wh_question'), (YN, yn("For how long do bears sleep?"), 'wh_question'),
    (YN, yn("In winter, do bears sleep for months?"), None), (YN, yn("In which country the Nile ends is Egypt."), None),
    (YN, yn("When water freezes, it expands."), None), (YN, yn("is house tax and property tax the same"), None),
    (YN, yn("Is a tomato a fruit or a vegetable?"), 'either_or_question'), (YN, yn("Do you prefer tea or coffee?"), 'either_or_question'),
    (YN, yn("Can cats or dogs see in colour?"), None), (YN, yn("Is it raining or not?"), None),
    (YN, yn("Name three rivers in Africa."), 'request'), (YN, yn("Explain why the sky is blue."), 'request'),
    (YN, yn("Names of rivers are often older than the towns on them."), None),
    (YN, yn("Is ice cold?", 'yes'), 'label_not_in_space'),
    (MC, mc("Where is money kept?"), None), (MC, mc("Where is money kept?", 'vault'), 'answer_not_in_options'),
    (MC, mc("Where is money kept?", options=OPTS[:4] + ["Bank "]), 'repeated_options'),
    (MC, {"question": "Where is money kept?", "label": "bank"}, 'no_options')])
def test_label_form(task, rec, verdict):
    assert label_form(task, rec) == verdict


@pytest.mark.parametrize('text,verdict', [
    ("Is the Nile longer than the", 'cut_off'), ("By 2024 the population was estimated to be", 'cut_off'),
    ('The sign said "closed for', 'cut_off'), ("Water boils at 100 degrees (at sea level", 'cut_off'), ("The options are:", 'cut_off'),
    ("is pain experienced in a missing body part or paralyzed area", None), ("What is the cat sitting on?", None),
    ("To prepare the cream for baking,", None), ("", None)])
def test_cut_off(text, verdict):
    assert cut_off(text) == verdict


def test_length_outliers_against_the_example():
    assert [length_outlier(n, 9) for n in (0, 1, 2, 9, 36, 39, 40)] == ['too_short', 'too_short', None, None, None, None, 'too_long']
    assert length_outlier(1, 3) is None and length_outlier(120, 100) is None
    h = Heuristics(YN)   # the shipped example's question has 9 words
    assert h.flags(yn("Penguins")) == ['too_short']
    assert h.flags(yn("Is " + "very " * 40 + "cold ice cold?")) == ['too_long']


def test_flags_land_on_the_record_and_decide_what_is_kept():
    out = Heuristics(YN)([yn("What is cloud computing?"), yn("Is the Nile the longest river in Africa?")])
    assert [flags(r) for r in out] == [['wh_question'], []]
    assert [is_kept(r) for r in out] == [False, True]
    assert out[0]['question'] == "What is cloud computing?" and out[0]['label'] is True   # the record's own fields untouched
    again = annotate(out[0], ['wh_question', 'cut_off'], ['relabeled'], score=2)
    assert curation(again) == {'flags': ['wh_question', 'cut_off'], 'notes': ['relabeled'], 'score': 2}


def test_filters_drop_the_junk_and_keep_the_human_items_of_the_shipped_set():
    items = labelled_items()
    assert set(items['task_type']) == {'yesno_close', 'yesno_open', 'mcqa_2', 'mcqa_5'} and items['junk'].any() and (~items['junk']).any()
    s = filter_scores(items)
    total = s.assign(n=s['items'] * s['dropped']).groupby('kind')[['n', 'items']].sum()
    assert total.loc['junk', 'n'] / total.loc['junk', 'items'] >= 0.8
    assert total.loc['human', 'n'] / total.loc['human', 'items'] <= 0.1


# --- the judge, through the simulated server

def scripted_judge(request):
    "SIMULATED judge: unreadable for 'garble', low score and wrong label for JSON talk, else 5."
    text = request['messages'][-1]['content'].lower()
    if 'garble' in text: return "I think it is fine."
    bad = 'json' in text
    return json.dumps({"score": 1 if bad else 5, "label_correct": not bad, "reason": "talks about JSON" if bad else "fine"})


def test_judge_scores_flags_and_keeps_scores_on_the_record():
    recs = [yn("Can you create a JSON array?", False), yn("Is the Nile in Africa?"), yn("Is garble a word?")]
    with SimulatedServer(scripted_judge) as srv:
        g = gen(srv); out = run(ajudge(YN, recs, g, threshold=3), g)
    assert [flags(r) for r in out] == [['judge_low_score', 'judge_label_wrong'], [], []]
    assert [curation(r).get('score') for r in out] == [1.0, 5.0, None]
    assert curation(out[2])['notes'] == ['judge_unreadable'] and 'fine' in curation(out[2])['judge_reply']
    req = srv.requests[0]
    assert 'Score the example from 1 to 5' in req['messages'][0]['content'] and YN.instruction in req['messages'][0]['content']
    assert req['response_format']['json_schema']['schema']['required'] == ['score', 'label_correct', 'reason']


def test_a_failed_judge_request_is_a_note_not_a_pass():
    with SimulatedServer(scripted_judge, faults=['400']) as srv:
        g = gen(srv); out = run(ajudge(YN, [yn("Is the Nile in Africa?")], g), g)
    cur = curation(out[0])
    assert cur['notes'] == ['judge_failed'] and 'HTTP 400' in cur['judge_error'] and 'score' not in cur


# --- self-consistency, label-blind, options shuffled

def option_picker(word):
    "SIMULATED answerer: the letter of the shown option `word` (so the shuffle must be mapped back)."
    def respond(request):
        shown = json.loads(request['messages'][-1]['content'])['options']
        return json.dumps({"answer": "ABCDE"[shown.index(word)]})
    return respond


def test_self_consistency_maps_shuffled_answers_back_and_never_shows_the_label():
    recs = [mc("Where is money kept?", 'bank'), mc("Where is money kept safely?", 'zoo')]
    with SimulatedServer(option_picker('bank')) as srv:
        g = gen(srv); out = run(aself_consistency(MC, recs, g, k=4), g)
    assert [curation(r)['votes'] for r in out] == [['bank'] * 4] * 2
    assert [curation(r)['confidence'] for r in out] == [1.0, 0.0]
    assert [flags(r) for r in out] == [[], ['label_disagrees']]
    shown = [json.loads(r['messages'][-1]['content']) for r in srv.requests]
    assert all('answer' not in s and 'label' not in s for s in shown)
    assert len({tuple(s['options']) for s in shown}) > 1   # shuffled between samples
    first = srv.requests[0]
    assert first['response_format']['json_schema']['schema']['properties']['answer'] == {'enum': list('ABCDE')}
    assert ', '.join(f'{c} for "{o}"' for c, o in zip('ABCDE', shown[0]['options'])) in first['messages'][0]['content']


def test_self_consistency_policies_relabel_and_weight():
    recs = [mc("Where is money kept?", 'zoo')]
    with SimulatedServer(option_picker('bank')) as srv:
        g = gen(srv)
        relabeled = run(aself_consistency(MC, recs, g, k=3, policy='relabel'), g)
        weighted = run(aself_consistency(MC, recs, g, k=3, policy='weight'), g)
    assert relabeled[0]['label'] == 'bank' and curation(relabeled[0])['relabeled_from'] == 'zoo'
    assert curation(relabeled[0])['notes'] == ['relabeled'] and is_kept(relabeled[0])
    assert is_kept(weighted[0]) and curation(weighted[0])['confidence'] == 0.0
    with pytest.raises(TaskError, match='policy'): asyncio.run(aself_consistency(MC, recs, None, policy='maybe'))


def test_read_vote_takes_letters_text_and_booleans():
    assert read_vote(MC, 'B', ['zoo', 'bank', 'mall', 'park', 'library']) == 'bank'
    assert read_vote(MC, '{"answer": "Library"}', OPTS) == 'library'
    assert read_vote(MC, '{"answer": "a vault"}', OPTS) is None
    assert read_vote(YN, 'false', ['True', 'False']) is False


# --- cleanlab and weights

def test_cleanlab_finds_known_flips_where_the_model_can_learn():
    clean = separable_records('yesno_close', 100, seed=3)
    flipped = set(random.Random(1).sample(range(100), 15))
    noisy = [{**r, 'label': not r['label']} if i in flipped else r for i, r in enumerate(clean)]
    out = confident_learning(YN, noisy)
    found = {i for i, r in enumerate(out) if 'cleanlab_issue' in flags(r)}
    assert len(found & flipped) >= 10 and len(found - flipped) <= 3
    q = np.array([curation(r)['cleanlab_quality'] for r in out])
    assert q[list(flipped)].mean() < q[[i for i in range(100) if i not in flipped]].mean()
    assert curation(confident_learning(YN, noisy[:10])[0])['notes'] == ['cleanlab_skipped']


def test_weights_come_from_confidences_and_reach_the_model():
    recs = [annotate(yn("a"), confidence=0.6, cleanlab_quality=0.9), annotate(yn("b"), confidence=0.0), yn("c")]
    assert [label_weight(r) for r in recs] == [0.6, 0.1, 1.0]
    assert sample_weights(recs) == pytest.approx(np.array([0.6, 0.1, 1.0]) / (1.7 / 3))
    clean = separable_records('yesno_close', 60, seed=2)
    noisy = [{**r, 'label': not r['label']} if i % 4 == 0 else r for i, r in enumerate(clean)]
    down = [annotate(r, confidence=0.0 if i % 4 == 0 else 1.0) for i, r in enumerate(noisy)]
    p_plain = DownstreamModel(False).fit(noisy).proba(clean)
    p_weighted = DownstreamModel(False).fit(down, sample_weight=sample_weights(down, floor=0.01)).proba(clean)
    truth = np.array([0 if r['label'] else 1 for r in clean])
    assert p_weighted[np.arange(60), truth].mean() > p_plain[np.arange(60), truth].mean()


# --- human review round trip

def test_review_round_trip_with_a_wilson_interval(tmp_path):
    recs = [annotate({**yn(f"Is item {i} edible?"), '_meta': {'strategy': 'tree' if i % 2 else 'naive'}}, confidence=i / 50) for i in range(50)]
    csv, page = export_review(recs, tmp_path/'rev', dataset='toy', n=20)
    sheet = pd.read_csv(csv)
    assert len(sheet) == 20 and sheet['band'].value_counts().to_dict() == {'0.0-0.5': 10, '0.5-0.8': 6, '0.8-1.0': 4}
    text = page.read_text()
    assert 'Download verdicts (CSV)' in text and 'http' not in text and text.count('type="radio"') == 60
    sheet['verdict'] = ['correct'] * 12 + ['wrong'] * 6 + ['unsure', '']
    sheet.to_csv(csv, index=False)
    acc = label_accuracy(read_review(csv)).set_index('strategy')
    for s, g in sheet.groupby('strategy'):
        c, n = (g['verdict'] == 'correct').sum(), g['verdict'].isin(['correct', 'wrong']).sum()
        assert acc.loc[s, 'judged'] == n and acc.loc[s, 'share'] == pytest.approx(c / n)
        assert (acc.loc[s, 'low'], acc.loc[s, 'high']) == pytest.approx(wilson(c, n))
    assert wilson(12, 18) == pytest.approx((0.4375, 0.8372), abs=1e-3)
    sheet.loc[3, 'verdict'] = 'maybe'
    sheet.to_csv(csv, index=False)
    with pytest.raises(TaskError, match=r"rev.csv:5.*'verdict'.*maybe"): read_review(csv)


# --- the API, files and the command

def scripted_both(request):
    "SIMULATED judge (score 4, label fine) and answerer (False for the Moon, True otherwise)."
    if 'Score the example' in request['messages'][0]['content']: return json.dumps({"score": 4, "label_correct": True, "reason": "ok"})
    return json.dumps({"answer": 'moon' not in request['messages'][-1]['content'].lower()})


def test_curate_records_judges_only_what_the_heuristics_kept():
    recs = [yn("What is cloud computing?"), yn("Is Paris in France?"), yn("Is the Moon larger than the Earth?")]
    with SimulatedServer(scripted_both) as srv:
        res = curate_records(YN, recs, judge=gen(srv), k=3)
    assert [flags(r) for r in res.records] == [['wh_question'], [], ['label_disagrees']]
    assert srv.count == 2 + 2 * 3   # the dropped wh-question never reached the judge
    assert [r['question'] for r in res.kept] == ["Is Paris in France?"]
    rep = res.report().set_index('reason')['records'].to_dict()
    assert rep == {'kept': 1, 'wh_question': 1, 'label_disagrees': 1}
    assert [curation(r)['weight'] for r in res.records] == [1.0, 1.0, 0.1]


def test_the_loop_call_uses_the_request_messages():
    msgs = messages(YN, [{"question": "Owls hunt at night.", "options": ["True", "False"], "answer": True}], n=3)
    batch = [yn("Owls hunt at night in the winter."), yn("Claims about the world, answered from general knowledge without a passage.")]
    res = asyncio.run(Curator().acurate(YN, batch, msgs))
    assert [flags(r) for r in res.records] == [[], ['prompt_echo']]


@pytest.mark.parametrize('suffix', ['.jsonl', '.csv', '.parquet'])
def test_record_files_round_trip(tmp_path, suffix):
    recs = [annotate({**mc("Where is money kept?"), 'context': None, '_meta': {'id': 0, 'strategy': 'tree'}}, ['cut_off'], score=2.0),
            {**mc("Where are books kept?", 'library'), 'context': None, '_meta': {'id': 1, 'strategy': 'tree'}}]
    back = read_records(write_records(tmp_path/f'r{suffix}', recs))
    assert [r['options'] for r in back] == [OPTS, OPTS] and back[0]['_meta'] == {'id': 0, 'strategy': 'tree'}
    assert curation(back[0]) == curation(recs[0]) and back[1].get('_curation') is None and back[0]['context'] is None
    with pytest.raises(TaskError, match='unknown format'): write_records(tmp_path/'r.txt', recs)
    for odd in ([mc("Pick a number", '3', ['1', '2', '3', '4', '5'])], [yn("Is ice cold?", False), yn("Is fire hot?")]):
        assert read_records(write_records(tmp_path/f'o{suffix}', odd)) == odd   # "3" stays text, False stays a boolean


def cli(argv):
    p = argparse.ArgumentParser(prog='datacreator')
    add_curate_command(p.add_subparsers(dest='command'))
    args = p.parse_args(argv)
    return args.run(args)


def test_curate_command_with_a_judge_endpoint(tmp_path, capsys):
    write_records(tmp_path/'in.jsonl', [yn("What is cloud computing?"), yn("Is Paris in France?"), yn("Is the Moon larger than the Earth?")])
    with SimulatedServer(scripted_both) as srv:
        assert cli(['curate', str(tmp_path/'in.jsonl'), str(tmp_path/'out.csv'), '--judge-base-url', srv.base_url,
                    '--judge-model', 'simulated', '--k', '3']) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (last['records'], last['kept'], last['dropped']) == (3, 1, 2) and last['judge'] == 'simulated'
    assert [r['question'] for r in read_records(tmp_path/'out.csv')] == ["Is Paris in France?"]
    assert [flags(r) for r in read_records(tmp_path/'out.csv.rejected.jsonl')] == [['wh_question'], ['label_disagrees']]
    assert (tmp_path/'out.csv.judge.sqlite').exists()
    with pytest.raises(TaskError, match='--k'): cli(['curate', str(tmp_path/'in.jsonl'), str(tmp_path/'o.jsonl'), '--k', '-1'])


def test_the_task_is_inferred_or_refused():
    assert infer_task([mc("x")]).name == 'mcqa_5' and infer_task([{**yn("x"), 'context': "A passage."}]).name == 'yesno_open'
    with pytest.raises(TaskError, match='give --task'): infer_task([{"question": "x", "options": list("abc"), "label": "a"}])
