"""`posttrain synth`: persona-driven synthetic prompts and responses (Tülu 3 §persona data).

    posttrain synth configs/synth/smollm2-cpu.yaml num_personas=16 skills=[gsm,if]

For each persona and skill, one call asks the generator model for a new problem in that skill,
written for that persona; the problems are cleaned and de-duplicated (exact and near-duplicate);
a second call writes each response. Skills: `math` (hard word problems), `gsm` (grade-school
math), `code` (programming tasks) and `if` (requests with verifiable constraints). For `if` the
constraints are drawn here, not by the model: their wording is appended to the generated request,
and the row's `ground_truth` names the checker and its arguments (the Tülu 3 RLVR format,
`dataset: "ifeval"`), so `posttrain.evaluation.tasks.verifiers.verify` grades it.

Outputs in `out_dir`: `sft.jsonl` (messages), `rlvr.jsonl` (constraint prompts with ground truth),
`prompts.jsonl` (every generated prompt with what happened to it), `stats.json`, and `cache.jsonl`,
the call cache that makes a re-run resume where the last one stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from posttrain.config import ConfigError, dump_config, field
from posttrain.data.io import DataError, read_records, write_json_atomic, write_jsonl_atomic
from posttrain.generation.llm_client import (ChatParams, ChatResult, EndpointConfig, LLMClient, ResponseCache,
                                           derive_seed, open_endpoints, run_calls)

# ----------------------------------------------------------------------------------- skills


@dataclass(frozen=True)
class Skill:
    name: str
    source: str  # the `source` of its SFT rows
    template: str  # asks for one new problem; `{persona}` is replaced


_ONLY = ("Reply with the {what} itself and nothing else: no title, no preamble, no solution, "
         "no answer.")

SKILLS: dict[str, Skill] = {
    "math": Skill("math", "posttrain-synth/math", (
        "Here is a description of a person:\n{persona}\n\n"
        "Invent one difficult math word problem that this person could plausibly run into in "
        "their work or interests. It should need several steps of real mathematical reasoning "
        "(for example algebra, combinatorics, probability, geometry or number theory) and have a "
        "single well-defined answer. " + _ONLY.format(what="problem"))),
    "gsm": Skill("gsm", "posttrain-synth/gsm", (
        "Here is a description of a person:\n{persona}\n\n"
        "Invent one grade-school math word problem set in this person's world. Solving it should "
        "take between two and eight steps of basic arithmetic (+, -, *, /), and the answer should "
        "be a single number. " + _ONLY.format(what="problem"))),
    "code": Skill("code", "posttrain-synth/code", (
        "Here is a description of a person:\n{persona}\n\n"
        "Invent one self-contained programming task that this person might need solved. State the "
        "inputs, the expected output and any constraints, and name the programming language. "
        + _ONLY.format(what="task"))),
    "if": Skill("if", "posttrain-synth/if", (
        "Here is a description of a person:\n{persona}\n\n"
        "Write one realistic request that this person might send to an AI assistant, such as "
        "asking for a short piece of writing, an explanation or advice. "
        + _ONLY.format(what="request"))),
}

# ----------------------------------------------------------------------------------- constraints
# Each constraint names a checker of posttrain.evaluation.tasks.rlvr_constraints (the Tülu 3 RLVR functions),
# draws its arguments, and says in words what the checker tests. The wording is ours.

_KEYWORDS = ("balance", "journey", "signal", "harvest", "window", "pattern", "anchor", "garden", "ledger",
             "bridge", "compass", "lantern", "river", "engine", "canvas", "puzzle", "season", "thread")
_FORBIDDEN = ("very", "really", "basically", "actually", "simply", "just", "thing", "stuff", "literally")
_LANGUAGES = {"fr": "French", "de": "German", "es": "Spanish", "it": "Italian", "pt": "Portuguese",
              "nl": "Dutch"}
_END_PHRASES = ("Is there anything else I can help with?", "Let me know if you have more questions.",
                "That is all for now.")
_QUANTIFIERS = ("at least", "at most", "around")


@dataclass(frozen=True)
class ConstraintType:
    func_name: str
    group: str  # at most one constraint per group in a prompt (groups keep them compatible)
    sample: Callable[[random.Random, str], dict]  # (rng, request text) -> checker arguments
    describe: Callable[[dict], str]
    exclusive: bool = False  # only ever used alone (it fixes the response's whole shape)


def _quantity(q: str, n: int, unit: str) -> str:
    return f"around {n} {unit} (within 10%)" if q == "around" and unit == "words" else f"{q} {n} {unit}"


CONSTRAINT_TYPES: dict[str, ConstraintType] = {c.func_name: c for c in (
    ConstraintType("verify_keywords", "keywords",
                   lambda r, _: {"keyword_list": r.sample(_KEYWORDS, 2)},
                   lambda a: "Make sure your response uses each of these words: " + ", ".join(a["keyword_list"]) + "."),
    ConstraintType("verify_keyword_frequency", "frequency",
                   lambda r, _: {"word": r.choice(_KEYWORDS), "N": r.randint(2, 4)},
                   lambda a: f'Use the word "{a["word"]}" exactly {a["N"]} times in your response.'),
    ConstraintType("validate_forbidden_words", "forbidden",
                   lambda r, _: {"forbidden_words": r.sample(_FORBIDDEN, 3)},
                   lambda a: "Do not use any of these words anywhere in your response: "
                             + ", ".join(a["forbidden_words"]) + "."),
    ConstraintType("verify_letter_frequency", "letters",
                   lambda r, _: {"letter": r.choice("bkpvwy"), "N": r.randint(3, 8)},
                   lambda a: f'The lowercase letter "{a["letter"]}" must appear exactly {a["N"]} times in '
                             f"your response."),
    ConstraintType("validate_response_language", "case",
                   lambda r, _: {"language": r.choice(sorted(_LANGUAGES))},
                   lambda a: f"Write your whole response in {_LANGUAGES[a['language']]} and in no other language."),
    ConstraintType("verify_paragraph_count", "structure",
                   lambda r, _: {"N": r.randint(2, 5)},
                   lambda a: f"Organise your response into exactly {a['N']} paragraphs, and put a line "
                             f"containing only * * * between consecutive paragraphs."),
    ConstraintType("validate_word_constraint", "length",
                   lambda r, _: {"N": r.choice((50, 80, 100, 150, 200, 300)), "quantifier": r.choice(_QUANTIFIERS)},
                   lambda a: f"Your response should be {_quantity(a['quantifier'], a['N'], 'words')} long."),
    ConstraintType("verify_sentence_constraint", "length",
                   lambda r, _: {"N": r.randint(3, 12), "quantifier": r.choice(_QUANTIFIERS)},
                   lambda a: f"Your response should contain {_quantity(a['quantifier'], a['N'], 'sentences')}"
                             + (" (give or take one)." if a["quantifier"] == "around" else ".")),
    ConstraintType("validate_paragraphs", "structure",
                   lambda r, _: (lambda n: {"N": n, "i": r.randint(1, n), "first_word": r.choice(_KEYWORDS)})(
                       r.randint(2, 4)),
                   lambda a: f"Write exactly {a['N']} paragraphs separated by blank lines, and begin paragraph "
                             f"number {a['i']} with the word \"{a['first_word']}\"."),
    ConstraintType("verify_postscript", "ending",
                   lambda r, _: {"postscript_marker": r.choice(("P.S.", "P.P.S", "Note:"))},
                   lambda a: f'End your response with a postscript that begins with "{a["postscript_marker"]}".'),
    ConstraintType("validate_placeholders", "placeholders",
                   lambda r, _: {"N": r.randint(1, 4)},
                   lambda a: f"Include at least {a['N']} placeholders in square brackets, such as [name] or [date]."),
    ConstraintType("verify_bullet_points", "structure",
                   lambda r, _: {"N": r.randint(2, 6)},
                   lambda a: f"Format your response as exactly {a['N']} markdown bullet points, each on its own "
                             f"line starting with \"* \", and no other lines starting with * or -."),
    ConstraintType("validate_title", "title",
                   lambda r, _: {},
                   lambda a: "Give your response a title wrapped in double angle brackets, for example "
                             "<<a day at sea>>."),
    ConstraintType("validate_highlighted_sections", "highlight",
                   lambda r, _: {"N": r.randint(1, 3)},
                   lambda a: f"Highlight at least {a['N']} parts of your response with markdown, like *this part*."),
    ConstraintType("validate_sections", "structure",
                   lambda r, _: {"N": r.randint(2, 4), "section_splitter": r.choice(("Section", "Part"))},
                   lambda a: f"Divide your response into {a['N']} sections and start each one with "
                             f"\"{a['section_splitter']} X\", where X is the section number."),
    ConstraintType("validate_json_format", "shape",
                   lambda r, _: {},
                   lambda a: "Format your entire response as valid JSON, with nothing before or after it and "
                             "no markdown code fences.", exclusive=True),
    ConstraintType("validate_repeat_prompt", "shape",
                   lambda r, request: {"original_prompt": request},
                   lambda a: "Before answering, copy the request above word for word (without this sentence), "
                             "then give your answer.", exclusive=True),
    ConstraintType("validate_two_responses", "shape",
                   lambda r, _: {},
                   lambda a: "Give two different answers, separated by a line of six asterisks: ******.",
                   exclusive=True),
    ConstraintType("validate_uppercase", "case",
                   lambda r, _: {},
                   lambda a: "Write your entire response in English using capital letters only."),
    ConstraintType("validate_lowercase", "case",
                   lambda r, _: {},
                   lambda a: "Write your entire response in English using lowercase letters only, with no "
                             "capital letters at all."),
    ConstraintType("validate_frequency_capital_words", "case",
                   lambda r, _: {"N": r.randint(2, 8), "quantifier": r.choice(("at least", "at most"))},
                   lambda a: f"Use {a['quantifier']} {a['N']} words written entirely in capital letters."),
    ConstraintType("validate_end", "ending",
                   lambda r, _: {"end_phrase": r.choice(_END_PHRASES)},
                   lambda a: f'Finish your response with the exact phrase "{a["end_phrase"]}", with nothing '
                             f"after it."),
    ConstraintType("validate_quotation", "ending",
                   lambda r, _: {},
                   lambda a: "Wrap your entire response in double quotation marks."),
    ConstraintType("validate_no_commas", "punctuation",
                   lambda r, _: {},
                   lambda a: "Do not use any commas in your response."),
)}


@dataclass(frozen=True)
class Constraint:
    func_name: str
    args: dict
    description: str

    @property
    def ground_truth(self) -> str:
        return json.dumps({"func_name": self.func_name, **self.args}, ensure_ascii=False)


def pick_constraints(rng: random.Random, request: str, k: int, types: list[str] | None = None) -> list[Constraint]:
    """`k` compatible constraints (distinct groups; an exclusive one only alone) for `request`."""
    names = list(types or CONSTRAINT_TYPES)
    rng.shuffle(names)
    chosen, groups = [], set()
    for name in names:
        ct = CONSTRAINT_TYPES[name]
        if ct.group in groups or (ct.exclusive and k > 1):
            continue
        args = ct.sample(rng, request)
        chosen.append(Constraint(name, args, ct.describe(args)))
        groups.add(ct.group)
        if len(chosen) == k:
            break
    if not chosen:
        raise ConfigError(f"constraint_types {types} leave no constraint usable with k={k}")
    return chosen


def constrained_prompt(request: str, constraints: list[Constraint]) -> str:
    return request.rstrip() + "\n\n" + " ".join(c.description for c in constraints)


def rlvr_row(row_id: str, prompt: str, constraints: list[Constraint]) -> dict:
    """A Tülu 3 RLVR row; several constraints become parallel lists, which `verify` averages."""
    one = len(constraints) == 1
    return {
        "id": row_id,
        "messages": [{"role": "user", "content": prompt}],
        "ground_truth": constraints[0].ground_truth if one else [c.ground_truth for c in constraints],
        "dataset": "ifeval" if one else ["ifeval"] * len(constraints),
        "constraint_type": constraints[0].func_name if one else [c.func_name for c in constraints],
        "constraint": " ".join(c.description for c in constraints),
    }


# ----------------------------------------------------------------------------------- cleaning


# "Problem:", "**Task 2:**", "### Question" + newline ...: a label the generator put before the text
_LABEL = re.compile(r"^\s*(?:#+\s*)?(?:\*\*)?(?:new\s+)?(?:(?:math|word|programming|coding)\s+)*"
                    r"(?:problem|question|task|request|prompt|instruction)(?:\s+statement)?(?:\s*\d+)?"
                    r"\s*(?:\*\*\s*:|:\s*\*\*|:|\*\*\s*\n|\n)\s*", re.IGNORECASE)
# a solution the generator was asked not to write: "Solution:", "**Answer**:", "### Solution"
_SOLUTION = re.compile(r"^\s*(?:#+\s*)?(?:\*\*)?\s*(?:solution|answer|hint|explanation|step\s*1)\s*(?:\*\*)?\s*(?::|$)",
                       re.IGNORECASE | re.MULTILINE)


def clean_generated_prompt(text: str, min_chars: int = 20, max_chars: int = 4000) -> str | None:
    """The problem a generator wrote, without preamble, label, quotes or a solution; None if unusable."""
    text = text.strip()
    lines = text.split("\n")
    # "Sure! Here is a problem:" style preamble on its own line
    if len(lines) > 1 and lines[0].rstrip().endswith(":") and len(lines[0]) < 100:
        text = "\n".join(lines[1:]).strip()
    text = _LABEL.sub("", text, count=1)
    cut = _SOLUTION.search(text)
    if cut and cut.start() > 0:
        text = text[: cut.start()]
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    if not min_chars <= len(text) <= max_chars:
        return None
    return text


# ----------------------------------------------------------------------------------- dedup


def normalize_text(text: str) -> str:
    """Case, accents' compatibility forms, punctuation and spacing removed: the exact-dup key."""
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(re.sub(r"[^\w\s]", " ", text).split())


def shingles(text: str, n: int) -> frozenset:
    from posttrain.curation.decontam import tokenize

    toks = tokenize(text)
    if len(toks) < n:
        return frozenset([tuple(toks)]) if toks else frozenset()
    return frozenset(tuple(toks[i:i + n]) for i in range(len(toks) - n + 1))


def dedup(texts: list[str], near_threshold: float = 0.8, ngram: int = 5
          ) -> tuple[list[int], dict[int, tuple[int, str]]]:
    """Indices to keep (first occurrence wins) and {dropped index: (kept index, 'exact' | 'near')}.

    Exact: equal `normalize_text`. Near: Jaccard similarity of word n-gram sets >= near_threshold
    (> 1 disables it) against any kept text; candidates come from an inverted n-gram index.
    """
    keep, dropped = [], {}
    seen: dict[str, int] = {}
    index: dict[tuple, list[int]] = defaultdict(list)
    sets: dict[int, frozenset] = {}
    for i, t in enumerate(texts):
        key = hashlib.sha1(normalize_text(t).encode("utf-8")).hexdigest()
        if key in seen:
            dropped[i] = (seen[key], "exact")
            continue
        if near_threshold <= 1.0:
            s = shingles(t, ngram)
            shared = Counter(j for g in s for j in index.get(g, ()))
            match = next((j for j, c in shared.most_common()
                          if c / (len(s) + len(sets[j]) - c) >= near_threshold), None)
            if match is not None:
                dropped[i] = (match, "near")
                continue
            sets[i] = s
            for g in s:
                index[g].append(i)
        seen[key] = i
        keep.append(i)
    return keep, dropped


# ----------------------------------------------------------------------------------- config


@dataclass
class SynthConfig:
    """`posttrain synth`: persona-driven synthetic SFT and RLVR data."""

    personas: str = field("../shared/data/personas/persona_from_tool.jsonl", "persona file (JSONL)")
    persona_field: str = field("persona", "field holding the persona text")
    num_personas: int = field(100, "personas used (from persona_offset on, in file order)")
    persona_offset: int = field(0, "skip this many personas first (to extend an earlier run)")
    skills: list[str] = field(["math", "gsm", "code", "if"], f"skills to generate: {', '.join(SKILLS)}")
    prompts_per_persona: int = field(1, "prompts per persona and skill")
    constraints_per_prompt: int = field(1, "verifiable constraints per `if` prompt (1 = Tülu 3 rows)")
    constraint_types: list[str] = field([], "restrict `if` to these checker names (default: all)")
    generator: EndpointConfig = field(EndpointConfig(checkpoint="smollm2-135m", temperature=1.0, max_tokens=256),
                                      "the model that writes prompts")
    responder: EndpointConfig | None = field(None, "the model that writes responses (default: generator, "
                                                   "at temperature 0.7)")
    min_prompt_chars: int = field(20, "generated prompts shorter than this are dropped")
    max_prompt_chars: int = field(4000, "generated prompts longer than this are dropped")
    near_dup_threshold: float = field(0.8, "word 5-gram Jaccard at or above which a prompt is a near-duplicate "
                                           "(> 1 disables)")
    dedup_ngram: int = field(5, "n-gram size (decontam word tokens) for near-duplicates")
    verify_if_responses: bool = field(True, "keep `if` SFT rows only when the response passes its constraints")
    drop_truncated: bool = field(True, "drop prompts and responses cut off by max_tokens (finish_reason "
                                       "'length')")
    out_dir: str = field("runs/synth", "output folder (sft.jsonl, rlvr.jsonl, prompts.jsonl, stats.json)")
    seed: int = field(0, "seed for constraints and sampling (changes every cache key)")

    def validate(self) -> None:
        unknown = [s for s in self.skills if s not in SKILLS]
        if unknown or not self.skills:
            raise ConfigError(f"skills: unknown {unknown}; valid: {', '.join(SKILLS)}")
        bad = [c for c in self.constraint_types if c not in CONSTRAINT_TYPES]
        if bad:
            raise ConfigError(f"constraint_types: unknown {bad}; valid: {', '.join(CONSTRAINT_TYPES)}")
        if self.num_personas < 1 or self.prompts_per_persona < 1 or self.persona_offset < 0:
            raise ConfigError("num_personas and prompts_per_persona must be >= 1, persona_offset >= 0")
        if not 1 <= self.constraints_per_prompt <= 6:
            raise ConfigError(f"constraints_per_prompt must be in [1, 6], got {self.constraints_per_prompt}")

    def response_endpoint(self) -> EndpointConfig:
        return self.responder or dataclasses.replace(self.generator, temperature=0.7, max_tokens=512)


# ----------------------------------------------------------------------------------- pipeline


@dataclass
class Job:
    id: str
    persona: str
    skill: str
    k: int = 0  # which of the persona's prompts for this skill
    raw: str | None = None  # the generator's reply
    raw_finish: str | None = None  # its finish_reason ("length": cut off by max_tokens)
    prompt: str | None = None  # cleaned; for `if`, with the constraints appended
    request: str | None = None  # `if`: the request before the constraints
    constraints: list[Constraint] = dataclasses.field(default_factory=list)
    status: str = "pending"
    response: ChatResult | None = None
    verified: float | None = None


def load_personas(path: str, field_name: str, offset: int, limit: int) -> list[str]:
    out = []
    for lineno, rec in read_records(path):
        value = rec.get(field_name)
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{path}:{lineno}: no text field '{field_name}' (fields present: {sorted(rec)})")
        out.append(value.strip())
        if len(out) >= offset + limit:
            break
    return out[offset:]


def plan_jobs(personas: list[str], cfg: SynthConfig) -> list[Job]:
    return [Job(f"{skill}-{cfg.persona_offset + p}-{k}", persona, skill, k)
            for skill in cfg.skills for p, persona in enumerate(personas) for k in range(cfg.prompts_per_persona)]


def prompt_request(job: Job) -> list[dict]:
    text = SKILLS[job.skill].template.format(persona=job.persona)
    if job.k:  # several prompts per persona: ask for a different one each time
        text += f"\n\n(This is request number {job.k + 1} for this person; make it different from the others.)"
    return [{"role": "user", "content": text}]


def _attach_prompt(job: Job, result: ChatResult | Exception, cfg: SynthConfig) -> None:
    if isinstance(result, Exception):
        job.status = "generation_failed"
        return
    job.raw, job.raw_finish = result.text, result.finish_reason
    if cfg.drop_truncated and result.finish_reason == "length":
        job.status = "truncated_prompt"
        return
    text = clean_generated_prompt(result.text, cfg.min_prompt_chars, cfg.max_prompt_chars)
    if text is None:
        job.status = "unusable_prompt"
        return
    if job.skill == "if":
        rng = random.Random(derive_seed(cfg.seed, "constraints", job.id))
        job.request = text
        job.constraints = pick_constraints(rng, text, cfg.constraints_per_prompt, cfg.constraint_types or None)
        text = constrained_prompt(text, job.constraints)
    job.prompt = text
    job.status = "prompt_ok"


def _attach_response(job: Job, result: ChatResult | Exception, cfg: SynthConfig) -> None:
    from posttrain.evaluation.tasks.verifiers import verify

    if isinstance(result, Exception):
        job.status = "response_failed"
        return
    job.response = result
    if not result.text.strip():
        job.status = "empty_response"
        return
    if cfg.drop_truncated and result.finish_reason == "length":
        job.status = "truncated_response"
        return
    job.status = "ok"
    if job.constraints:
        gt = [c.ground_truth for c in job.constraints]
        job.verified = verify(result.text, ["ifeval"] * len(gt), gt)
        if cfg.verify_if_responses and job.verified < 1.0:
            job.status = "failed_constraints"


def sft_row(job: Job) -> dict:
    assert job.prompt is not None and job.response is not None
    return {"id": f"synth-{job.id}", "messages": [{"role": "user", "content": job.prompt},
                                                 {"role": "assistant", "content": job.response.text}],
            "source": SKILLS[job.skill].source, "skill": job.skill, "persona": job.persona}


def prompt_record(job: Job, dup: tuple[int, str] | None, jobs: list[Job]) -> dict:
    rec: dict[str, Any] = {"id": job.id, "skill": job.skill, "persona": job.persona, "status": job.status,
                           "generated": job.raw, "generated_finish_reason": job.raw_finish, "prompt": job.prompt}
    if dup is not None:
        rec["duplicate_of"] = jobs[dup[0]].id
    if job.response is not None:
        rec["response"] = job.response.text
        rec["finish_reason"] = job.response.finish_reason
    if job.constraints:
        rec["constraints"] = [c.func_name for c in job.constraints]
        rec["constraint_score"] = job.verified
    return rec


def synth_stats(jobs: list[Job], n_personas: int, clients: list[LLMClient]) -> dict:
    by_skill: dict[str, Counter] = defaultdict(Counter)
    for j in jobs:
        by_skill[j.skill][j.status] += 1
        by_skill[j.skill]["jobs"] += 1
    out: dict[str, Any] = {"personas": n_personas, "jobs": len(jobs),
                           "status": dict(Counter(j.status for j in jobs)),
                           "by_skill": {k: dict(v) for k, v in by_skill.items()}}
    scored = [j.verified for j in jobs if j.verified is not None]
    if scored:
        out["if_constraint_pass_rate"] = sum(1 for s in scored if s == 1.0) / len(scored)
        out["if_responses_scored"] = len(scored)
    out["calls"] = [{"endpoint": c.endpoint.label, **dataclasses.asdict(c.stats)} for c in clients]
    return out


def run_synth(cfg: SynthConfig) -> dict:
    cfg.validate()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")
    personas = load_personas(cfg.personas, cfg.persona_field, cfg.persona_offset, cfg.num_personas)
    if not personas:
        raise DataError(f"{cfg.personas}: no personas after offset {cfg.persona_offset}")
    jobs = plan_jobs(personas, cfg)
    cache = ResponseCache(out / "cache.jsonl")
    print(f"synth: {len(personas)} personas x {len(cfg.skills)} skills x {cfg.prompts_per_persona} = {len(jobs)} "
          f"prompts; cache has {len(cache)} answered calls", flush=True)
    try:
        with open_endpoints([cfg.generator, cfg.response_endpoint()]) as (gen, resp):
            gen_client = LLMClient(gen, cache, seed=cfg.seed)
            calls = [(prompt_request(j),
                      ChatParams.of(gen.config, seed=derive_seed(cfg.seed, "prompt", j.id))) for j in jobs]
            for job, result in zip(jobs, run_calls(gen_client, calls, "synth prompts")):
                _attach_prompt(job, result, cfg)

            ready = [i for i, j in enumerate(jobs) if j.status == "prompt_ok"]
            keep, dropped = dedup([jobs[i].request or jobs[i].prompt for i in ready], cfg.near_dup_threshold,
                                  cfg.dedup_ngram)
            dups = {ready[i]: (ready[k], kind) for i, (k, kind) in dropped.items()}
            for i, (_, kind) in dups.items():
                jobs[i].status = f"{kind}_duplicate"

            resp_client = LLMClient(resp, cache, seed=cfg.seed + 1)
            todo = [jobs[ready[i]] for i in keep]
            calls = [([{"role": "user", "content": j.prompt}],
                      ChatParams.of(resp.config, seed=derive_seed(cfg.seed, "response", j.id))) for j in todo]
            for job, result in zip(todo, run_calls(resp_client, calls, "synth responses")):
                _attach_response(job, result, cfg)
    finally:
        cache.close()

    sft = [sft_row(j) for j in jobs if j.status == "ok"]
    rlvr = [rlvr_row(f"synth-{j.id}", j.prompt, j.constraints) for j in jobs
            if j.constraints and j.status not in ("pending", "near_duplicate", "exact_duplicate")]
    write_jsonl_atomic(out / "sft.jsonl", sft)
    write_jsonl_atomic(out / "rlvr.jsonl", rlvr)
    write_jsonl_atomic(out / "prompts.jsonl", [prompt_record(j, dups.get(i), jobs) for i, j in enumerate(jobs)])
    stats = synth_stats(jobs, len(personas), [gen_client, resp_client])
    stats.update(sft_rows=len(sft), rlvr_rows=len(rlvr),
                 exact_duplicates=sum(1 for _, k in dups.values() if k == "exact"),
                 near_duplicates=sum(1 for _, k in dups.values() if k == "near"))
    write_json_atomic(out / "stats.json", stats)
    print(f"synth: {len(sft)} SFT rows, {len(rlvr)} RLVR rows -> {out}\n{json.dumps(stats['status'])}", flush=True)
    return stats


def main(cfg: SynthConfig) -> int:
    run_synth(cfg)
    return 0
