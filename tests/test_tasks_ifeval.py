"""IFEval: hand-checked instruction cases, and agreement with lm-eval's implementation (the one
OLMES imports) on all 541 prompts, strict and loose, per instruction."""

from __future__ import annotations

import importlib
import importlib.util
import json
import random
import re
import string
import sys
import types
from pathlib import Path

import pytest

from posttrain.evaluation.tasks import get_task
from posttrain.evaluation.tasks.ifeval import evaluate_response, loose_variants
from posttrain.evaluation.tasks.ifeval_checks import (
    INSTRUCTIONS,
    build_checker,
    count_bullet_lines,
    count_placeholders,
    has_title,
)
from posttrain.evaluation.tasks.punkt_offline import sent_tokenize, word_tokenize, write_punkt_tab

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "ifeval" / "input_data.jsonl"
FIXTURE = REPO / "tests" / "fixtures" / "ifeval" / "smollm2_responses.jsonl"


def _rows() -> list[dict]:
    return [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------
# The reference: lm-eval's ifeval modules, loaded by path so that `lm_eval.tasks.__init__` (and
# the harness's heavy dependencies) never run. Its Punkt data comes from `write_punkt_tab`.


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    import nltk
    from langdetect import DetectorFactory

    DetectorFactory.seed = 0
    root = str(write_punkt_tab(tmp_path_factory.mktemp("nltk_data")))
    nltk.data.path.insert(0, root)
    spec = importlib.util.find_spec("lm_eval")
    assert spec is not None, "the IFEval reference needs `pip install lm-eval==0.4.13` (test dependency)"
    base = Path(list(spec.submodule_search_locations)[0]) / "tasks" / "ifeval"
    stubs = {"lm_eval.tasks": base.parent, "lm_eval.tasks.ifeval": base}
    saved = {name: sys.modules.get(name) for name in list(stubs) + ["lm_eval"]}
    importlib.import_module("lm_eval")  # its __init__ only reads the version
    for name, path in stubs.items():
        module = types.ModuleType(name)
        module.__path__ = [str(path)]
        sys.modules[name] = module
    try:
        utils = importlib.import_module("lm_eval.tasks.ifeval.utils")
        registry = importlib.import_module("lm_eval.tasks.ifeval.instructions_registry")
    finally:
        for name in [n for n in sys.modules if n.startswith("lm_eval.tasks")]:
            del sys.modules[name]
        for name, module in saved.items():
            if module is not None:
                sys.modules[name] = module
    # langdetect is deterministic once seeded and costs ~20 ms a call; the reference asks about
    # the same texts many times, so memoise it (it is the same library our checkers call).
    import langdetect

    detect = langdetect.detect
    langdetect.detect = _memoised(detect)
    yield types.SimpleNamespace(utils=utils, registry=registry)
    langdetect.detect = detect
    nltk.data.path.remove(root)


def _memoised(detect):
    cache: dict[str, object] = {}

    def cached(text: str):
        if text not in cache:
            try:
                cache[text] = detect(text)
            except Exception as e:  # remember the failure too: it is as deterministic
                cache[text] = e
        if isinstance(cache[text], Exception):
            raise cache[text]
        return cache[text]

    return cached


def _reference_letter(key: int) -> str:
    # The reference swaps a non-letter `letter` ("#", "!") for random.choice(ascii_letters);
    # the tests seed `random` with the row key right before building, so this is its choice.
    return random.Random(key).choice(list(string.ascii_letters))


def _reference_results(ref, row: dict, response: str) -> tuple[list[bool], list[bool]]:
    """Per-instruction strict and loose results of lm-eval's `test_instruction_following_*`.

    One instruction at a time, so a reference exception (its checkers only catch some) is
    isolated and counted as not followed, as the spec says.
    """
    strict, loose = [], []
    for iid, kwargs in zip(row["instruction_id_list"], row["kwargs"]):
        inp = ref.utils.InputExample(key=row["key"], instruction_id_list=[iid], prompt=row["prompt"], kwargs=[kwargs])
        results = []
        for run in (ref.utils.test_instruction_following_strict, ref.utils.test_instruction_following_loose):
            random.seed(row["key"])
            try:
                results.append(run(inp, response).follow_instruction_list[0])
            except Exception:
                results.append(False)
        strict.append(results[0])
        loose.append(results[1])
    return strict, loose


def _our_results(row: dict, response: str) -> tuple[list[bool], list[bool]]:
    kwargs = []
    for iid, kw in zip(row["instruction_id_list"], row["kwargs"]):
        letter = kw.get("letter")
        if iid == "keywords:letter_frequency" and not ("a" <= letter.lower() <= "z"):
            kw = {**kw, "letter": _reference_letter(row["key"])}
        kwargs.append(kw)
    truth = {"instruction_id_list": row["instruction_id_list"], "kwargs": kwargs, "prompt": row["prompt"]}
    result = evaluate_response(truth, response)
    return result["inst_level_strict"], result["inst_level_loose"]


# ---------------------------------------------------------------------------------------------
# Responses aimed at each instruction: built from the instruction's own arguments so that both
# outcomes occur for every one of the 25 types.

_FOREIGN = {
    "de": "Das ist eine kurze Antwort auf Deutsch, und sie ist wirklich sehr einfach zu lesen.",
    "it": "Questa è una risposta breve in italiano, ed è davvero molto semplice da leggere.",
    "ru": "Это короткий ответ на русском языке, и его действительно очень легко читать.",
    "pt": "Esta é uma resposta curta em português, e é realmente muito fácil de ler.",
    "fi": "Tämä on lyhyt vastaus suomeksi, ja se on todella helppo lukea.",
}


def _sentences(n: int) -> str:
    return " ".join(f"This is sentence number {i + 1}." for i in range(n))


def _targeted(iid: str, kw: dict, prompt: str) -> list[str]:
    """A few responses for one instruction: meant to pass, meant to fail, and edge cases."""
    rel_at_least = kw.get("relation", kw.get("let_relation", kw.get("capital_relation"))) == "at least"
    if iid == "keywords:existence":
        words = kw["keywords"]
        return [" and ".join(words) + ".", "Nothing relevant.", ("pre" + " x".join(words)).upper()]
    if iid == "keywords:frequency":
        k, f = kw["keyword"], kw["frequency"]
        hit = f if rel_at_least else f - 1
        return [" ".join([k] * hit), " ".join([k] * (f - 1 if rel_at_least else f)), "x".join([k.upper()] * f)]
    if iid == "keywords:forbidden_words":
        w = kw["forbidden_words"][0]
        return ["A clean answer.", f"I mention {w} here.", f"un{w}ed and {w.upper()}s"]
    if iid == "keywords:letter_frequency":
        ch, f = kw["letter"], kw["let_frequency"]
        return [ch * (f if rel_at_least else f - 1) + " x", ch * (f - 1 if rel_at_least else f) + " x", ch.upper() * f]
    if iid == "language:response_language":
        return [_FOREIGN.get(kw["language"], "Plain English text that is clearly English."), "This is English.", "12345 !!!"]
    if iid == "length_constraints:number_sentences":
        n = kw["num_sentences"]
        return [_sentences(n if rel_at_least else n - 1) or "x", _sentences(n - 1 if rel_at_least else n) or "x",
                "Dr. Smith met Mr. Jones at 5 p.m. in the U.S. They talked."]  # fmt: skip
    if iid == "length_constraints:number_paragraphs":
        n = kw["num_paragraphs"]
        paras = [f"Paragraph {i}." for i in range(n + 1)]
        return ["\n***\n".join(paras[:n]), "\n***\n".join(paras), "***\n" + "\n***\n\n***\n".join(paras[:n])]
    if iid == "length_constraints:number_words":
        n = kw["num_words"]
        return [" ".join(["word"] * (n if rel_at_least else n - 1)), " ".join(["word"] * (n - 1 if rel_at_least else n)),
                "don't-stop " * (n // 2)]  # fmt: skip
    if iid == "length_constraints:nth_paragraph_first_word":
        n, k, w = kw["num_paragraphs"], kw["nth_paragraph"], kw["first_word"]
        paras = [f"Text {i} here." for i in range(n)]
        good = paras[: k - 1] + [f"{w} starts this."] + paras[k:]
        quoted = paras[: k - 1] + [f'"{w.upper()}, quoted."'] + paras[k:]
        return ["\n\n".join(good), "\n\n".join(paras), "\n\n\n\n".join(quoted)]
    if iid == "detectable_content:number_placeholders":
        n = kw["num_placeholders"]
        return [" ".join(f"[p{i}]" for i in range(n)), " ".join(f"[p{i}]" for i in range(n - 1)) or "none",
                "[a\nb] [[nested]] " * n]  # fmt: skip
    if iid == "detectable_content:postscript":
        m = kw["postscript_marker"]
        return [f"Main text.\n{m} a note", "Main text, no note.", "main text.\n\np. s. lower" if m == "P.S." else "x\np.p.s note"]
    if iid == "detectable_format:number_bullet_lists":
        n = kw["num_bullets"]
        items = [f"* item {i}" for i in range(n + 1)]
        return ["\n".join(items[:n]), "\n".join(items), "\n".join(["  - dash"] + items[: n - 1] + ["**bold**", "*\nx"])]
    if iid == "detectable_format:constrained_response":
        return ["My answer is yes.", "Yes.", "  My answer is maybe. Because."]
    if iid == "detectable_format:number_highlighted_sections":
        n = kw["num_highlights"]
        return [" ".join(f"*part {i}*" for i in range(n)), "*only* one" if n > 1 else "none", "**bold** * * *x*"]
    if iid == "detectable_format:multiple_sections":
        s, n = kw["section_spliter"], kw["num_sections"]
        return ["\n".join(f"{s} {i + 1}\ncontent" for i in range(n)), "\n".join(f"{s} {i + 1}\nc" for i in range(n - 1)) or "x",
                "\n".join(f"{s.lower()} {i + 1}\nc" for i in range(n))]  # fmt: skip
    if iid == "detectable_format:json_format":
        return ['```json\n{"a": 1}\n```', "{a: 1}", '  ```JSON\n[1, 2]```  ']
    if iid == "detectable_format:title":
        return ["<<My Title>>\nbody", "<< >>", "<<a\nb>> <<<x>>> << >> and <<>>"]
    if iid == "combination:two_responses":
        return ["First answer.\n******\nSecond answer.", "Same.\n******\nSame.", "******\nA\n******\n******\nB"]
    if iid == "combination:repeat_prompt":
        p = kw["prompt_to_repeat"]
        return [p + " My answer follows.", "Answer first. " + p, "  " + p.lower()]
    if iid == "startend:end_checker":
        e = kw["end_phrase"]
        return [f"Some text. {e}", f"{e} and more", f'"Quoted. {e.upper()}"  ']
    if iid == "startend:quotation":
        return ['"quoted text"', "no quotes", ' "']
    if iid == "change_case:capital_word_frequency":
        n = kw["capital_frequency"]
        return [" ".join(["WORD"] * (n if rel_at_least else n - 1)) + " end", " ".join(["WORD"] * (n - 1 if rel_at_least else n)) + " end",
                "U.S.A. and NASA-LED TEAMS. " * n]  # fmt: skip
    if iid == "change_case:english_capital":
        return ["THIS IS AN ENGLISH RESPONSE WRITTEN IN CAPITAL LETTERS.", "This is mixed case.", "ЭТО КОРОТКИЙ ОТВЕТ НА РУССКОМ ЯЗЫКЕ."]
    if iid == "change_case:english_lowercase":
        return ["this is an english response written in lowercase letters.", "This is Mixed.", "123 !!!"]
    if iid == "punctuation:no_comma":
        return ["No commas here.", "Yes, commas.", "Wait\u201a low comma."]
    raise AssertionError(f"no targeted responses for {iid}")


def _wrapped(response: str) -> list[str]:
    """The response, and a copy that only the loose modes can rescue: a preamble line, a
    sign-off and markdown stars around it."""
    return [response, f"Sure, here it is:\n**{response}**\nHope it helps!"]


def test_registry_matches_reference(ref):
    assert set(INSTRUCTIONS) == set(ref.registry.INSTRUCTION_DICT)
    assert len(INSTRUCTIONS) == 25


def test_agreement_on_targeted_cases(ref):
    """Every instruction of all 541 prompts, each with pass, fail and edge responses (and
    loose-mode wrappings of them): our strict/loose results equal the reference's, 100%."""
    outcomes: dict[str, set[bool]] = {iid: set() for iid in INSTRUCTIONS}
    mismatches, checked = [], 0
    for row in _rows():
        for iid, kw in zip(row["instruction_id_list"], row["kwargs"]):
            for base in _targeted(iid, kw, row["prompt"]):
                for response in _wrapped(base):
                    ours = _our_results(row, response)
                    theirs = _reference_results(ref, row, response)
                    checked += len(ours[0])
                    outcomes[iid].add(ours[0][row["instruction_id_list"].index(iid)])
                    if ours != theirs:
                        mismatches.append((row["key"], iid, response[:80], ours, theirs))
    assert not mismatches, f"{len(mismatches)} disagreements, first: {mismatches[:3]}"
    assert checked > 5000
    assert all(v == {True, False} for v in outcomes.values()), {k: v for k, v in outcomes.items() if v != {True, False}}


def _perturbations(text: str) -> list[str]:
    paragraphs = [p for p in text.replace(",", "").split("\n\n") if p.strip()]
    return [
        text,
        text.lower(),
        text.upper(),
        "\n***\n".join(paragraphs) + "\n\nP.S. Thanks for reading.\nP.P.S see you",
        'Sure, here it is:\n"' + text.strip() + '"\nHope it helps!',
    ]


def test_agreement_on_model_responses(ref):
    """SmolLM2-135M's greedy responses to all 541 prompts, plus perturbed copies."""
    responses = {r["key"]: r["response"] for r in map(json.loads, FIXTURE.read_text().splitlines())}
    mismatches, checked, passed = [], 0, 0
    for row in _rows():
        for response in _perturbations(responses[row["key"]]):
            ours = _our_results(row, response)
            theirs = _reference_results(ref, row, response)
            checked += len(ours[0])
            passed += sum(ours[1])
            if ours != theirs:
                mismatches.append((row["key"], response[:80], ours, theirs))
    assert not mismatches, f"{len(mismatches)} disagreements, first: {mismatches[:3]}"
    assert checked == 834 * 5
    assert 0 < passed < checked


def test_offline_punkt_matches_nltk(ref):
    import nltk

    texts = [r["response"] for r in map(json.loads, FIXTURE.read_text().splitlines())][:80]
    texts += ["Dr. Smith went to Washington D.C. at 5 p.m. He left. Did he? Yes!", "U.S.A. NASA-LED TEAMS."]
    for text in texts:
        assert sent_tokenize(text) == nltk.sent_tokenize(text)
        assert word_tokenize(text) == nltk.word_tokenize(text)


def test_invalid_letter_counts_the_character_itself():
    check = build_checker("keywords:letter_frequency", {"let_relation": "at least", "letter": "#", "let_frequency": 4})
    assert check("#one #two #three #four")
    assert not check("#one #two #three")


# ---------------------------------------------------------------------------------------------
# Hand-checked behaviour


@pytest.mark.parametrize(
    "iid, kwargs, response, expected",
    [
        ("keywords:existence", {"keywords": ["cat", "dog"]}, "CATS and hotdogs", True),  # substring, no \b
        ("keywords:existence", {"keywords": ["cat", "dog"]}, "cats only", False),
        ("keywords:frequency", {"keyword": " ab ", "frequency": 3, "relation": "at least"}, "ab xab AB", True),
        ("keywords:frequency", {"keyword": "ab", "frequency": 3, "relation": "less than"}, "ab ab ab", False),
        ("keywords:forbidden_words", {"forbidden_words": ["bad"]}, "badly done", True),  # \b...\b
        ("keywords:forbidden_words", {"forbidden_words": ["bad"]}, "not BAD.", False),
        ("keywords:letter_frequency", {"letter": "a", "let_frequency": 3, "let_relation": "at least"}, "A a a", True),
        ("keywords:letter_frequency", {"letter": "a", "let_frequency": 3, "let_relation": "less than"}, "A a a", False),
        ("language:response_language", {"language": "de"}, _FOREIGN["de"], True),
        ("language:response_language", {"language": "de"}, "An English sentence about nothing much.", False),
        ("language:response_language", {"language": "de"}, "1234 !!", True),  # undetectable counts as followed
        ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "at least"}, "Dr. Who came. He left.", True),
        ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "at least"}, "Dr. Who came home.", False),
        ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "***\nA\n***\nB\n***", True),  # empty ends ok
        ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "A\n***\n***\nB", False),  # empty middle
        ("length_constraints:number_words", {"num_words": 3, "relation": "less than"}, "don't stop", False),  # 3 \w+
        ("length_constraints:number_words", {"num_words": 3, "relation": "less than"}, "two words", True),
        ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "Hello"},
         "One.\n\n'\"hello, there", True),  # fmt: skip
        ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "hello"},
         "One.\n\n\n\nhello there", False),  # the 2nd chunk is empty: indexed among all chunks  # fmt: skip
        ("detectable_content:number_placeholders", {"num_placeholders": 2}, "[a] and [b]", True),
        ("detectable_content:number_placeholders", {"num_placeholders": 2}, "[a\nb] and [c]", False),
        ("detectable_content:postscript", {"postscript_marker": "P.S."}, "text\np. s. note", True),
        ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "text\nP.S. note", False),
        ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* a\n  - b\n**bold**", True),
        ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* a\n* b\n* c", False),
        ("detectable_format:constrained_response", {}, "Well. My answer is no.", True),
        ("detectable_format:constrained_response", {}, "My answer is no", False),
        # "**bold**" counts once (double pattern); the single pattern only sees its empty "**"s
        ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "**bold** *x*", True),
        ("detectable_format:number_highlighted_sections", {"num_highlights": 3}, "**bold** *x*", False),
        ("detectable_format:number_highlighted_sections", {"num_highlights": 1}, "* * and **", False),
        ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2}, "Section 1\na\nSection 2\nb", True),
        ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2}, "SECTION 1\na\nSECTION 2", False),
        ("detectable_format:json_format", {}, "```json\n{\"a\": 1}\n```", True),
        ("detectable_format:json_format", {}, "{'a': 1}", False),
        ("detectable_format:title", {}, "<<A title>>", True),
        ("detectable_format:title", {}, "<< >>", False),
        ("combination:two_responses", {}, "******\nA\n******\nB", True),
        ("combination:two_responses", {}, "A\n******\n A ", False),
        ("combination:repeat_prompt", {"prompt_to_repeat": "Say Hi."}, "  say hi. Hi!", True),
        ("combination:repeat_prompt", {"prompt_to_repeat": "Say Hi."}, "Hi! Say hi.", False),
        ("startend:end_checker", {"end_phrase": "The end."}, '"Story. THE END."\n', True),
        ("startend:end_checker", {"end_phrase": "The end."}, "The end. Really.", False),
        ("startend:quotation", {}, ' "quoted" ', True),
        ("startend:quotation", {}, '"', False),
        ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"}, "NASA and U.S.A.", True),
        ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "less than"}, "NASA and U.S.A.", False),
        ("change_case:english_capital", {}, "THIS IS AN ENGLISH RESPONSE IN CAPITAL LETTERS.", True),
        ("change_case:english_capital", {}, "ЭТО КОРОТКИЙ ОТВЕТ НА РУССКОМ ЯЗЫКЕ.", False),  # upper, not "en"
        ("change_case:english_capital", {}, "THIS IS MOSTLY CAPITALS. Not all.", False),
        ("change_case:english_lowercase", {}, "this is an english response in lowercase letters.", True),
        ("change_case:english_lowercase", {}, "this is almost all lowercase. Nearly.", False),
        ("change_case:english_lowercase", {}, "questa è una risposta in italiano, scritta in minuscolo.", False),
        ("punctuation:no_comma", {}, "no commas at all", True),
        ("punctuation:no_comma", {}, "a, b", False),
    ],
)
def test_instruction_cases(iid, kwargs, response, expected):
    assert build_checker(iid, kwargs, "the prompt")(response) is expected


def test_loose_variants_and_strict_vs_loose():
    response = "Sure:\n*Hello* world\nbye"
    assert loose_variants(response) == [
        response,
        "Sure:\nHello world\nbye",
        "*Hello* world\nbye",
        "Sure:\n*Hello* world",
        "*Hello* world",
        "Hello world\nbye",
        "Sure:\nHello world",
        "Hello world",
    ]
    ids = ["startend:quotation", "punctuation:no_comma", "keywords:existence"]
    truth = {"instruction_id_list": ids, "kwargs": [{}, {}, {"keywords": ["absent"]}], "prompt": "p"}
    result = evaluate_response(truth, 'Here you go:\n"quoted, text"')
    assert result["inst_level_strict"] == [False, False, False]
    # dropping the first line leaves a quoted response; dropping the last leaves no comma
    assert result["inst_level_loose"] == [True, True, False]


def test_empty_response_follows_nothing():
    truth = {"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}], "prompt": "p"}
    assert evaluate_response(truth, "  \n ")["inst_level_loose"] == [False]


def test_load_and_prompt_format():
    task = get_task("ifeval")
    samples = task.load()
    assert len(samples) == 541
    assert sum(len(s.ground_truth["instruction_id_list"]) for s in samples) == 834
    first = samples[0]
    assert first.id == "1000"
    assert first.messages == [{"role": "user", "content": first.ground_truth["prompt"]}]
    assert first.assistant_prefix == ""
    assert task.generation.max_new_tokens == 2048 and task.generation.stop == () and not task.generation.do_sample
    assert task.primary_metric == "prompt_level_loose_acc"


def test_aggregate_four_metrics():
    task = get_task("ifeval")
    samples = task.load(limit=2)  # 3 and 1 instructions
    scores = [
        {"prompt_level_strict_acc": 0.0, "prompt_level_loose_acc": 1.0,
         "inst_level_strict": [True, False, True], "inst_level_loose": [True, True, True]},
        {"prompt_level_strict_acc": 1.0, "prompt_level_loose_acc": 1.0,
         "inst_level_strict": [True], "inst_level_loose": [True]},
    ]  # fmt: skip
    metrics = task.aggregate(scores, samples)
    assert metrics["prompt_level_strict_acc"] == 0.5
    assert metrics["prompt_level_loose_acc"] == 1.0
    assert metrics["inst_level_strict_acc"] == 0.75
    assert metrics["inst_level_loose_acc"] == 1.0


def test_score_row_end_to_end():
    task = get_task("ifeval")
    sample = task.load(limit=2)[1]  # key 1001: no commas
    assert task.score(sample, "A trip to Japan in Shakespeare's words.")["prompt_level_strict_acc"] == 1.0
    assert task.score(sample, "Hark, a trip.")["prompt_level_loose_acc"] == 0.0


def test_bad_kwargs_raise_with_location():
    with pytest.raises(ValueError, match="row 7.*missing kwargs \\['num_bullets'\\]"):
        build_checker("detectable_format:number_bullet_lists", {"num_bullets": None}, where="row 7")
    with pytest.raises(ValueError, match="unknown IFEval instruction"):
        build_checker("keywords:nope", {})
    with pytest.raises(ValueError, match="relation must be one of"):
        build_checker("length_constraints:number_words", {"num_words": 3, "relation": "around"})


# ---------------------------------------------------------------------------------------------
# The linear scans equal the regexes they replace


def _random_texts(alphabet: list[str], n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))) for _ in range(n)]


def test_linear_scans_equal_regexes():
    alphabet = ["[", "]", "*", "-", " ", "\n", "\t", "a", "<", ">", "<<", ">>", "\u00a0", "**"]
    for text in _random_texts(alphabet, 4000, seed=0):
        assert count_placeholders(text) == len(re.findall(r"\[.*?\]", text)), repr(text)
        assert count_bullet_lines(text, "*") == len(re.findall(r"^\s*\*[^\*].*$", text, flags=re.MULTILINE)), repr(text)
        assert count_bullet_lines(text, "-") == len(re.findall(r"^\s*-.*$", text, flags=re.MULTILINE)), repr(text)
        titles = re.findall(r"<<[^\n]+>>", text)
        assert has_title(text) == any(t.lstrip("<").rstrip(">").strip() for t in titles), repr(text)
