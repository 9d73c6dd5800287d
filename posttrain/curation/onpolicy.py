"""`posttrain prefs`: on-policy preference data rated by an LLM judge (Tülu 3 §preference data).

    posttrain prefs configs/prefs/smollm2-cpu.yaml policy.checkpoint=runs/sft/final limit=64

For each prompt, responses come from the policy checkpoint (always) and from the `others`
endpoints; a judge rates every response 1-5 on helpfulness, instruction following, honesty and
truthfulness, answering in JSON (parsed robustly; a reply that cannot be read is asked again, up
to `judge_retries` times, and then counted as unparseable). The highest mean rating is chosen and a
random response with a strictly lower mean is rejected (a seeded draw per prompt); a prompt whose
rated responses all tie gives no pair.

Outputs in `out_dir`: `preferences.jsonl` (`prompt`, `chosen`, `rejected` message lists and the
ratings; read by `posttrain.data.preference.load_preferences`), `ratings.jsonl` (every judge
verdict, raw replies included), `responses.jsonl`, `stats.json`, and the resumable call cache.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posttrain.config import ConfigError, dump_config, field
from posttrain.data.io import DataError, read_records, write_json_atomic, write_jsonl_atomic
from posttrain.generation.llm_client import (ChatParams, ChatResult, EndpointConfig, LLMCallError, LLMClient,
                                           ResponseCache, derive_seed, open_endpoints, run_tasks)

ASPECTS = ("helpfulness", "instruction_following", "honesty", "truthfulness")

JUDGE_SYSTEM = "You are a strict, careful evaluator of AI assistant responses."
JUDGE_TEMPLATE = """Rate the assistant's response to the conversation below on four aspects. Give each \
an integer from 1 (very poor) to 5 (excellent).
- helpfulness: does it meet the user's need usefully and completely?
- instruction_following: does it do exactly what was asked, respecting every stated requirement?
- honesty: does it admit uncertainty where appropriate instead of pretending to know?
- truthfulness: is it free of factual errors and invented details?

[Conversation]
{conversation}

[Response to rate]
{response}
[End of response]

Reply with only a JSON object that has these four keys, each with your integer rating in place of ?:
{{"helpfulness": ?, "instruction_following": ?, "honesty": ?, "truthfulness": ?}}"""
# No example numbers in the format line: a judge tends to copy them (SmolLM2-135M returned the
# example verbatim for 14 of 16 responses; see docs/RESULTS_DATA.md).
JUDGE_RETRY = ("I could not read ratings in that reply. Reply again with only the JSON object holding the "
               "four integer ratings from 1 to 5: helpfulness, instruction_following, honesty, truthfulness.")


# ----------------------------------------------------------------------------------- parsing

_ALIASES = {
    "helpfulness": r"helpful(?:ness)?",
    "instruction_following": r"instructions?[\s_-]*following|following[\s_-]+instructions?",
    "honesty": r"honest(?:y)?",
    "truthfulness": r"truthful(?:ness)?",
}
_SCALE = re.compile(r"\(?\s*(?:on\s+a\s+scale\s+(?:of|from)\s+)?1\s*(?:-|–|to)\s*5\s*\)?", re.IGNORECASE)


def _aspect_of(key: str) -> str | None:
    k = key.strip().lower()
    for aspect, pattern in _ALIASES.items():
        if re.fullmatch(pattern, k):
            return aspect
    return None


def _rating_value(value: Any) -> float | None:
    if isinstance(value, dict):  # {"rating": 4, "reason": ...}
        value = next((value[k] for k in ("rating", "score", "value") if k in value), None)
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:/\s*5|out of 5)?\s*", value)
        value = float(m.group(1)) if m else None
    if isinstance(value, (int, float)) and 1 <= value <= 5:
        return float(value)
    return None


def _json_objects(text: str) -> list[str]:
    """Every balanced {...} substring, outermost first (braces inside strings are rare enough here)."""
    out, depth, start = [], 0, None
    for i, ch in enumerate(text):
        if ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
            if depth == 0:
                out.append(text[start:i + 1])
    return out


def parse_ratings(text: str) -> dict[str, float] | None:
    """The four aspect ratings (each in [1, 5]) from a judge reply, or None.

    Reads a JSON object (bare, fenced, or inside prose; aliases such as "instruction following" or
    "honest" accepted; values as numbers, "4", "4/5" or {"rating": 4}), else lines such as
    "Helpfulness: 4" or "**Honesty** - 3/5". All four aspects are needed."""
    for blob in _json_objects(text):
        try:
            obj = json.loads(blob)
        except json.JSONDecodeError:
            continue
        if not isinstance(obj, dict):
            continue
        if "ratings" in obj and isinstance(obj["ratings"], dict):
            obj = obj["ratings"]
        found = {}
        for key, value in obj.items():
            aspect = _aspect_of(str(key))
            rating = _rating_value(value)
            if aspect and rating is not None:
                found.setdefault(aspect, rating)
        if len(found) == len(ASPECTS):
            return found
    cleaned = _SCALE.sub(" ", text)
    found = {}
    for aspect, pattern in _ALIASES.items():
        m = re.search(rf"(?:{pattern})[\s*_\"':=\-–>]{{0,8}}(?:score|rating)?[\s*\"':=\-–]{{0,4}}(\d+(?:\.\d+)?)"
                      rf"(?:\s*(?:/\s*5|out of 5))?", cleaned, re.IGNORECASE)
        rating = _rating_value(m.group(1)) if m else None
        if rating is None:
            return None
        found[aspect] = rating
    return found


# ----------------------------------------------------------------------------------- binarize


@dataclass
class Rated:
    index: int  # position in the prompt's response list
    text: str
    mean: float


def binarize(rated: list[Rated], rng: random.Random, min_margin: float = 0.0) -> tuple[Rated, Rated] | str:
    """(chosen, rejected), or the reason there is no pair.

    Chosen: the highest mean (a tie for the top is broken at random). Rejected: a random response
    whose mean is lower by more than `min_margin` and whose text differs from the chosen one."""
    if len(rated) < 2:
        return "fewer_than_2_rated"
    best = max(r.mean for r in rated)
    chosen = rng.choice([r for r in rated if r.mean == best])
    lower = [r for r in rated if r.mean < best - min_margin and r.text.strip() != chosen.text.strip()]
    if not lower:
        return "all_tied"
    return chosen, rng.choice(lower)


# ----------------------------------------------------------------------------------- config


@dataclass
class PrefsConfig:
    """`posttrain prefs`: on-policy responses, LLM-judge ratings, binarized preference pairs."""

    prompts: str = field("../shared/data/sft/open_instruct_sft_sample.jsonl",
                         "prompt file: rows with `messages` (the turns up to the last user turn are used), "
                         "`prompt`, `instruction`(+`input`), `question` or `problem`")
    limit: int | None = field(None, "use at most this many prompts")
    policy: EndpointConfig = field(EndpointConfig(name="policy", checkpoint="smollm2-135m"),
                                   "the on-policy model (a checkpoint served in-process, or an endpoint)")
    others: list[EndpointConfig] = field([], "other models or endpoints that also answer every prompt")
    samples_per_model: int = field(1, "responses per prompt from each model (distinct seeds)")
    judge: EndpointConfig = field(EndpointConfig(name="judge", checkpoint="smollm2-135m", temperature=0.0,
                                                 max_tokens=128), "the rating model")
    judge_retries: int = field(2, "re-asks when a judge reply cannot be parsed, before counting it")
    min_margin: float = field(0.0, "rejected mean must be lower than chosen mean by more than this")
    max_prompt_chars: int = field(8000, "longer prompts are skipped")
    out_dir: str = field("runs/prefs", "output folder")
    seed: int = field(0, "seed for sampling and for the rejected draw")

    def validate(self) -> None:
        if self.samples_per_model < 1 or self.judge_retries < 0:
            raise ConfigError("samples_per_model must be >= 1 and judge_retries >= 0")
        if len(self.responders()) * self.samples_per_model < 2:
            raise ConfigError("need at least 2 responses per prompt: add `others` or raise samples_per_model")
        labels = [e.label for e in self.responders()]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"responder labels must differ (set `name`): {labels}")

    def responders(self) -> list[EndpointConfig]:
        return [self.policy, *self.others]


# ----------------------------------------------------------------------------------- prompts


def prompt_messages(rec: dict) -> list[dict] | None:
    """The conversation to answer, ending with a user turn; None when the row has none."""
    if isinstance(rec.get("messages"), list):
        msgs = [m for m in rec["messages"] if isinstance(m, dict)]
        last_user = max((i for i, m in enumerate(msgs) if m.get("role") == "user"), default=None)
        if last_user is None:
            return None
        return [{"role": m["role"], "content": m.get("content") or ""} for m in msgs[:last_user + 1]]
    if isinstance(rec.get("prompt"), str):
        text = rec["prompt"]
    elif isinstance(rec.get("prompt"), list):
        return prompt_messages({"messages": rec["prompt"]})
    elif isinstance(rec.get("instruction"), str):
        text = rec["instruction"] + (f"\n{rec['input']}" if rec.get("input") else "")
    else:
        text = next((rec[k] for k in ("question", "problem") if isinstance(rec.get(k), str)), None)
    return None if not text or not text.strip() else [{"role": "user", "content": text}]


def load_prompts(path: str, limit: int | None, max_chars: int) -> tuple[list[tuple[str, list[dict]]], Counter]:
    out, skipped, seen = [], Counter(), set()
    for lineno, rec in read_records(path):
        if limit is not None and len(out) >= limit:
            break
        msgs = prompt_messages(rec)
        if msgs is None:
            skipped["no_prompt"] += 1
            continue
        key = json.dumps(msgs, sort_keys=True)
        if key in seen:
            skipped["duplicate"] += 1
            continue
        if sum(len(m["content"]) for m in msgs) > max_chars:
            skipped["too_long"] += 1
            continue
        seen.add(key)
        out.append((str(rec.get("id", f"{Path(path).stem}:{lineno}")), msgs))
    if not out:
        raise DataError(f"{path}: no usable prompts ({dict(skipped)})")
    return out, skipped


def render_conversation(msgs: list[dict]) -> str:
    names = {"system": "System", "user": "User", "assistant": "Assistant"}
    return "\n\n".join(f"{names.get(m['role'], m['role'])}: {m['content']}" for m in msgs)


# ----------------------------------------------------------------------------------- judging


@dataclass
class Verdict:
    ratings: dict[str, float] | None
    raw: list[str]  # every judge reply, retries included
    error: str | None = None

    @property
    def mean(self) -> float | None:
        return None if self.ratings is None else sum(self.ratings.values()) / len(self.ratings)


async def judge_one(client: LLMClient, prompt: list[dict], response: str, retries: int, seed: int) -> Verdict:
    messages = [{"role": "system", "content": JUDGE_SYSTEM},
                {"role": "user", "content": JUDGE_TEMPLATE.format(conversation=render_conversation(prompt),
                                                                   response=response)}]
    raw: list[str] = []
    for attempt in range(retries + 1):
        try:
            result = await client.chat(messages, ChatParams.of(client.endpoint.config, seed=seed + attempt))
        except LLMCallError as e:
            return Verdict(None, raw, error=str(e))
        raw.append(result.text)
        ratings = parse_ratings(result.text)
        if ratings is not None:
            return Verdict(ratings, raw)
        messages = messages + [{"role": "assistant", "content": result.text},
                               {"role": "user", "content": JUDGE_RETRY}]
    return Verdict(None, raw)


# ----------------------------------------------------------------------------------- pipeline


@dataclass
class Response:
    prompt_id: str
    model: str
    sample: int
    result: ChatResult | None
    error: str | None = None
    verdict: Verdict | None = None

    @property
    def text(self) -> str:
        return self.result.text if self.result is not None else ""


def generate_responses(prompts, endpoints, cfg: PrefsConfig, cache: ResponseCache) -> tuple[list[Response], list]:
    """Every responder answers every prompt `samples_per_model` times, all endpoints at once (so
    responders that share a local server share its batches)."""
    clients = [LLMClient(ep, cache, seed=cfg.seed) for ep in endpoints]
    plan = [(client, pid, msgs, s) for client in clients for pid, msgs in prompts for s in range(cfg.samples_per_model)]

    def task(client, pid, msgs, s):
        label = client.endpoint.label
        params = ChatParams.of(client.endpoint.config, seed=derive_seed(cfg.seed, "response", label, pid, s))
        return lambda: client.chat(msgs, params)

    results = run_tasks(clients, [task(*p) for p in plan], "prefs responses")
    responses = []
    for (client, pid, _, s), result in zip(plan, results):
        if isinstance(result, Exception):
            responses.append(Response(pid, client.endpoint.label, s, None, error=str(result)))
        else:
            responses.append(Response(pid, client.endpoint.label, s, result))
    return responses, clients


def pair_row(pid: str, prompt: list[dict], chosen: Response, rejected: Response) -> dict:
    def side(r: Response) -> list[dict]:
        return prompt + [{"role": "assistant", "content": r.text}]

    return {"id": f"prefs-{pid}", "source": "posttrain-prefs", "prompt": prompt,
            "chosen": side(chosen), "rejected": side(rejected),
            "chosen_rating": chosen.verdict.mean, "rejected_rating": rejected.verdict.mean,
            "chosen_ratings": chosen.verdict.ratings, "rejected_ratings": rejected.verdict.ratings,
            "chosen_model": chosen.model, "rejected_model": rejected.model}


def run_prefs(cfg: PrefsConfig) -> dict:
    cfg.validate()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")
    prompts, skipped = load_prompts(cfg.prompts, cfg.limit, cfg.max_prompt_chars)
    cache = ResponseCache(out / "cache.jsonl")
    print(f"prefs: {len(prompts)} prompts x {len(cfg.responders())} models x {cfg.samples_per_model}; "
          f"cache has {len(cache)} answered calls", flush=True)
    try:
        with open_endpoints([*cfg.responders(), cfg.judge]) as endpoints:
            *responders, judge = endpoints
            responses, clients = generate_responses(prompts, responders, cfg, cache)
            judge_client = LLMClient(judge, cache, seed=cfg.seed)
            clients.append(judge_client)
            by_id = dict(prompts)
            to_judge = [r for r in responses if r.result is not None and r.text.strip()]
            tasks = [lambda r=r: judge_one(judge_client, by_id[r.prompt_id], r.text, cfg.judge_retries,
                                           derive_seed(cfg.seed, "judge", r.prompt_id, r.model, r.sample))
                     for r in to_judge]
            for r, verdict in zip(to_judge, run_tasks(judge_client, tasks, "prefs judge")):
                r.verdict = verdict
    finally:
        cache.close()

    pairs, no_pair = [], Counter()
    grouped: dict[str, list[Response]] = {pid: [] for pid, _ in prompts}
    for r in responses:
        grouped[r.prompt_id].append(r)
    for pid, msgs in prompts:
        rs = grouped[pid]
        rated = [Rated(i, r.text, r.verdict.mean) for i, r in enumerate(rs)
                 if r.verdict is not None and r.verdict.ratings is not None]
        picked = binarize(rated, random.Random(f"{cfg.seed}:{pid}"), cfg.min_margin)
        if isinstance(picked, str):
            no_pair[picked] += 1
            continue
        pairs.append(pair_row(pid, msgs, rs[picked[0].index], rs[picked[1].index]))

    write_jsonl_atomic(out / "preferences.jsonl", pairs)
    write_jsonl_atomic(out / "responses.jsonl", [
        {"prompt_id": r.prompt_id, "model": r.model, "sample": r.sample, "response": r.text,
         "finish_reason": r.result.finish_reason if r.result else None, "error": r.error} for r in responses])
    write_jsonl_atomic(out / "ratings.jsonl", [
        {"prompt_id": r.prompt_id, "model": r.model, "sample": r.sample, "ratings": r.verdict.ratings,
         "mean": r.verdict.mean, "parsed": r.verdict.ratings is not None, "attempts": len(r.verdict.raw),
         "judge_raw": r.verdict.raw, "error": r.verdict.error} for r in responses if r.verdict is not None])
    stats = prefs_stats(prompts, skipped, responses, pairs, no_pair, clients)
    write_json_atomic(out / "stats.json", stats)
    print(f"prefs: {len(pairs)} pairs from {len(prompts)} prompts -> {out}; judge parsed "
          f"{stats['judge']['parsed']}/{stats['judge']['judged']}", flush=True)
    return stats


def prefs_stats(prompts, skipped, responses: list[Response], pairs, no_pair, clients) -> dict:
    verdicts = [r.verdict for r in responses if r.verdict is not None]
    parsed = [v for v in verdicts if v.ratings is not None]
    first_try = sum(1 for v in parsed if len(v.raw) == 1)
    hist = {a: dict(sorted(Counter(v.ratings[a] for v in parsed).items())) for a in ASPECTS}
    wins = Counter(p["chosen_model"] for p in pairs)
    return {
        "prompts": len(prompts), "prompts_skipped": dict(skipped),
        "responses": len(responses),
        "response_failures": sum(1 for r in responses if r.result is None),
        "empty_responses": sum(1 for r in responses if r.result is not None and not r.text.strip()),
        "judge": {"judged": len(verdicts), "parsed": len(parsed), "parsed_first_try": first_try,
                  "parsed_after_retry": len(parsed) - first_try,
                  "unparseable": sum(1 for v in verdicts if v.ratings is None and v.error is None),
                  "call_failures": sum(1 for v in verdicts if v.error is not None),
                  "rating_histogram": hist},
        "pairs": len(pairs), "no_pair": dict(no_pair), "chosen_by_model": dict(wins),
        "calls": [{"endpoint": c.endpoint.label, **dataclasses.asdict(c.stats)} for c in clients],
    }


def main(cfg: PrefsConfig) -> int:
    run_prefs(cfg)
    return 0
