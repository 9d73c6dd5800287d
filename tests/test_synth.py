"""`posttrain synth`: prompt cleaning, dedup, verifiable constraints, and an end-to-end run against a
real `posttrain serve` of a tiny model (in-process, over loopback HTTP), resumed from its cache."""

import dataclasses
import json
import random
import shutil

import pytest
import torch

from posttrain.config import load_config
from posttrain.generation.llm_client import EndpointConfig, derive_seed
from posttrain.curation.synth import (CONSTRAINT_TYPES, Constraint, SynthConfig, clean_generated_prompt,
                                      constrained_prompt, dedup, pick_constraints, rlvr_row, run_synth)
from posttrain.evaluation.tasks.verifiers import verifiable_reward, verify
from posttrain.evaluation.tasks.rlvr_constraints import parse_constraint
from conftest import REPO


@pytest.mark.parametrize("raw, expected", [
    ("Sure! Here is a problem for you:\nA farmer has 12 cows and buys 5 more. How many cows?",
     "A farmer has 12 cows and buys 5 more. How many cows?"),
    ("**Problem:** A train goes 60 mph. How long for 180 miles?\n\n**Solution:** 3 hours.",
     "A train goes 60 mph. How long for 180 miles?"),
    ('"Write a function that reverses a linked list in Python."',
     "Write a function that reverses a linked list in Python."),
    ("Problem 2: Find all primes p such that p+2 is prime too.", "Find all primes p such that p+2 is prime too."),
    ("Question about your garden: how many tulips fit in a 2 m bed?",  # not a label: no colon after it
     "Question about your garden: how many tulips fit in a 2 m bed?"),
    ("### Math Word Problem\nA baker sells 40 loaves a day.\nAnswer the question in dollars.\n### Solution\n40*3",
     "A baker sells 40 loaves a day.\nAnswer the question in dollars."),
    ("Too short", None),
])
def test_clean_generated_prompt(raw, expected):
    assert clean_generated_prompt(raw) == expected


def test_dedup_exact_and_near_by_hand():
    texts = [
        "A cat sat on the mat today.",
        "a cat sat on the mat, TODAY",  # same after normalisation: exact duplicate of 0
        "The quick brown fox jumps over the lazy dog near the river bank",  # 13 tokens, 9 five-grams
        "The quick brown fox jumps over the lazy dog near the river shore",  # shares 8: J = 8/(9+9-8) = 0.8
        "The quick brown fox jumps over a sleeping cat by the road",  # shares 2 of 8: J = 2/15
    ]
    keep, dropped = dedup(texts, near_threshold=0.8, ngram=5)
    assert keep == [0, 2, 4] and dropped == {1: (0, "exact"), 3: (2, "near")}
    keep, dropped = dedup(texts, near_threshold=0.81, ngram=5)  # 0.8 is below it now
    assert keep == [0, 2, 3, 4] and dropped == {1: (0, "exact")}
    assert dedup(texts, near_threshold=1.5)[0] == [0, 2, 3, 4]  # near-dedup off


def test_every_constraint_type_yields_a_ground_truth_the_verifier_accepts():
    for name, ct in CONSTRAINT_TYPES.items():
        for seed in range(10):
            (c,) = pick_constraints(random.Random(seed), "Tell me about tides.", 1, [name])
            func, args = parse_constraint(c.ground_truth)  # checker name and argument names match
            assert func.__name__ == name and args == {k: v for k, v in c.args.items()}
            for key, value in c.args.items():  # the wording states every argument
                if key != "original_prompt":
                    shown = ", ".join(value) if isinstance(value, list) else str(value)
                    assert shown in c.description or value in ("fr", "de", "es", "it", "pt", "nl"), (name, c)
            assert verify("", "ifeval", c.ground_truth) in (0.0, 1.0)


def _c(name, **args):
    return Constraint(name, args, CONSTRAINT_TYPES[name].describe(args))


@pytest.mark.parametrize("constraint, good, bad", [
    (_c("validate_no_commas"), "No commas in here at all.", "Well, no."),
    (_c("validate_lowercase"), "all lower case here.", "Not lower."),
    (_c("verify_bullet_points", N=3), "* one\n* two\n* three", "* one\n* two"),
    (_c("validate_title"), "<<Tides>>\nThe moon pulls the sea.", "Tides\nThe moon pulls the sea."),
    (_c("validate_end", end_phrase="That is all for now."), "Tides rise. That is all for now.",
     "That is all for now. Bye"),
    (_c("verify_keywords", keyword_list=["river", "lantern"]), "A lantern by the river.", "A lantern."),
    (_c("verify_paragraph_count", N=2), "First part.\n* * *\nSecond part.", "Only one part."),
    (_c("validate_repeat_prompt", original_prompt="Tell me about tides."),
     "Tell me about tides. Tides come from the moon.", "Tides come from the moon."),
    (_c("validate_two_responses"), "Moon.\n******\nSun and moon.", "Moon."),
])
def test_rlvr_rows_are_graded_by_the_project_verifier(constraint, good, bad):
    row = rlvr_row("x", constrained_prompt("Tell me about tides.", [constraint]), [constraint])
    assert row["dataset"] == "ifeval" and row["messages"][0]["content"].endswith(constraint.description)
    assert verifiable_reward(good, row) == 10.0
    assert verifiable_reward(bad, row) == 0.0


def test_several_constraints_are_compatible_and_averaged():
    for seed in range(30):
        cs = pick_constraints(random.Random(seed), "Tell me about tides.", 3)
        groups = [CONSTRAINT_TYPES[c.func_name].group for c in cs]
        assert len(cs) == 3 and len(set(groups)) == 3
        assert not any(CONSTRAINT_TYPES[c.func_name].exclusive for c in cs)
    assert pick_constraints(random.Random(4), "q", 2) == pick_constraints(random.Random(4), "q", 2)
    row = rlvr_row("x", "q", [_c("validate_no_commas"), _c("validate_lowercase")])
    assert row["dataset"] == ["ifeval", "ifeval"]
    assert verifiable_reward("no commas but Capitals", row) == 5.0  # one of two satisfied


def test_configs_parse():
    cfg = load_config(SynthConfig, REPO / "configs/synth/smollm2-cpu.yaml")
    assert cfg.generator.checkpoint == "smollm2-135m" and set(cfg.skills) <= {"math", "gsm", "code", "if"}
    with pytest.raises(ValueError, match="skills"):
        load_config(SynthConfig, None, ["skills=[poetry]"])


# ----------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)  # untied head: the greedy text depends on the prompt (a tied one echoes "\n")
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=False)
    path = tmp_path_factory.mktemp("tiny-untied")
    LlamaForCausalLM(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def _read(path):
    return [json.loads(line) for line in open(path)]


def test_synth_end_to_end_and_resume(tmp_path, tiny_dir):
    personas = tmp_path / "personas.jsonl"
    rows = ["A beekeeper in Vermont who sells honey at markets.", "A retired ship engineer who restores clocks.",
            "A beekeeper in Vermont who sells honey at markets."]  # a repeat: its prompts are exact duplicates
    personas.write_text("".join(json.dumps({"persona": p}) + "\n" for p in rows))
    out = tmp_path / "synth"
    cfg = SynthConfig(
        personas=str(personas), num_personas=3, skills=["gsm", "if"], out_dir=str(out),
        generator=EndpointConfig(checkpoint=tiny_dir, temperature=0.0, max_tokens=16, max_concurrency=8),
        responder=EndpointConfig(checkpoint=tiny_dir, temperature=1.0, max_tokens=6, max_concurrency=8),
        min_prompt_chars=5, drop_truncated=False, verify_if_responses=False)
    stats = run_synth(cfg)

    prompts = {p["id"]: p for p in _read(out / "prompts.jsonl")}
    assert set(prompts) == {f"{s}-{i}-0" for s in ("gsm", "if") for i in range(3)}
    for skill in ("gsm", "if"):  # greedy generator + repeated persona -> same prompt, dropped as exact dup
        assert prompts[f"{skill}-2-0"]["status"] == "exact_duplicate"
        assert prompts[f"{skill}-2-0"]["duplicate_of"] == f"{skill}-0-0"
    sft, rlvr = _read(out / "sft.jsonl"), _read(out / "rlvr.jsonl")
    ok = [p for p in prompts.values() if p["status"] == "ok"]
    assert len(sft) == len(ok) == stats["sft_rows"] and stats["exact_duplicates"] == 2
    assert stats["calls"][0]["calls"] == 6 and stats["calls"][1]["calls"] == len(ok)  # dups get no response

    # each SFT row holds the response the served model gives its own prompt with its seed
    from posttrain.models import load_model, load_tokenizer
    from posttrain.generation import Engine, SamplingParams

    tok = load_tokenizer(tiny_dir)
    engine = Engine(load_model(tiny_dir), tok)
    for row in sft:
        assert row["messages"][0]["content"] == prompts[row["id"][len("synth-"):]]["prompt"]
        ids = tok.apply_chat_template(row["messages"][:1], add_generation_prompt=True, tokenize=False)
        seed = derive_seed(0, "response", row["id"][len("synth-"):])
        (ref,) = engine.generate([ids], SamplingParams(temperature=1.0, max_new_tokens=6, seed=seed))
        assert row["messages"][1] == {"role": "assistant", "content": ref.text}
    assert len(rlvr) == 2  # if-0 and if-1 (if-2 was a duplicate)
    for row in rlvr:
        func, _ = parse_constraint(row["ground_truth"])
        assert row["dataset"] == "ifeval" and row["messages"][0]["content"].endswith(row["constraint"])
        assert func.__name__ == row["constraint_type"]

    # resume 1: everything cached -> no call at all (the model is not even loaded), same files
    files = {n: (out / n).read_bytes() for n in ("sft.jsonl", "rlvr.jsonl", "prompts.jsonl")}
    again = run_synth(cfg)
    assert [c["calls"] for c in again["calls"]] == [0, 0]
    assert sum(c["cache_hits"] for c in again["calls"]) == 6 + len(ok)
    assert {n: (out / n).read_bytes() for n in files} == files

    # resume 2: a run killed after 3 answered calls, mid-write of the 4th
    lines = (out / "cache.jsonl").read_text().splitlines(keepends=True)
    shutil.rmtree(out)
    out.mkdir()
    (out / "cache.jsonl").write_text("".join(lines[:3]) + lines[3][:25])
    resumed = run_synth(cfg)
    assert sum(c["calls"] for c in resumed["calls"]) == len(lines) - 3
    assert sum(c["cache_hits"] for c in resumed["calls"]) == 3
    assert {n: (out / n).read_bytes() for n in files} == files

    # the same cache with drop_truncated: prompts cut off by max_tokens are dropped, from the cache
    strict = run_synth(dataclasses.replace(cfg, drop_truncated=True))
    records = _read(out / "prompts.jsonl")
    assert sum(c["calls"] for c in strict["calls"]) == 0
    assert [r["status"] == "truncated_prompt" for r in records] == \
        [r["generated_finish_reason"] == "length" for r in records]
    assert strict["status"].get("truncated_prompt", 0) >= 1  # a 16-token budget cuts random text off
