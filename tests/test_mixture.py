"""Data mixtures: sampling counts/fractions, converters, dedup, determinism, manifest, errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from posttrain.config import ConfigError
from posttrain.data.mixture import (
    CONVERTERS,
    MixtureConfig,
    SourceConfig,
    build_mixture,
    dedup_key,
    load_mixture_config,
    register_converter,
)


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _chat(i: int, prefix: str = "q") -> dict:
    return {"id": f"{prefix}{i}", "messages": [{"role": "user", "content": f"{prefix} question {i}"},
                                               {"role": "assistant", "content": f"answer {i}"}]}


@pytest.fixture
def files(tmp_path):
    chat = _jsonl(tmp_path / "chat.jsonl", [_chat(i) for i in range(40)])
    share = _jsonl(tmp_path / "share.jsonl", [
        {"id": f"s{i}", "conversations": [{"from": "human", "value": f"s question {i}"},
                                          {"from": "gpt", "value": f"s answer {i}"}]} for i in range(10)])
    pc = tmp_path / "pc.json"  # a JSON array, read through posttrain.data.io
    pc.write_text(json.dumps([{"prompt": f"p {i}", "completion": f"c {i}"} for i in range(6)]))
    return {"chat": chat, "share": share, "pc": str(pc), "dir": tmp_path}


def _yaml(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_counts_fractions_converters_and_manifest(files, tmp_path):
    out = tmp_path / "out" / "mix.jsonl"
    cfg_path = _yaml(tmp_path / "mix.yaml", f"""
seed: 7
output: {out}
sources:
  - path: {files['chat']}
    fraction: 0.25
    format: messages
  - path: {files['share']}
    name: sg
    count: 4
    format: sharegpt
  - path: {files['pc']}
    format: prompt_completion
""")
    manifest = build_mixture(load_mixture_config(cfg_path))
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == manifest.n_rows == 10 + 4 + 6
    assert all(set(r) <= {"messages", "id"} and r["messages"][0]["role"] == "user" for r in rows)
    assert sum(r["messages"][0]["content"].startswith("s question") for r in rows) == 4
    assert {r["messages"][1]["content"] for r in rows if r["messages"][0]["content"].startswith("p ")} == \
        {f"c {i}" for i in range(6)}
    by_name = {s.name: s for s in manifest.sources}
    assert [(s.available, s.requested, s.taken, s.kept) for s in manifest.sources] == \
        [(40, 10, 10, 10), (10, 4, 4, 4), (6, 6, 6, 6)]
    assert by_name["sg"].sha256 == hashlib.sha256(Path(files["share"]).read_bytes()).hexdigest()
    saved = json.loads((tmp_path / "out" / "mix.manifest.json").read_text())
    assert saved["output_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert saved["sources"][0]["name"] == "chat" and saved["config"]["seed"] == 7


def test_deterministic_given_seed_and_sources_are_independent(files, tmp_path):
    def run(seed: int, extra: bool, name: str) -> list[str]:
        sources = [SourceConfig(files["chat"], count=12)]
        if extra:
            sources.append(SourceConfig(files["share"], count=3, format="sharegpt"))
        cfg = MixtureConfig(sources=sources, output=str(tmp_path / f"{name}.jsonl"), seed=seed, shuffle=False)
        build_mixture(cfg)
        return [json.loads(x)["id"] for x in (tmp_path / f"{name}.jsonl").read_text().splitlines()]

    a, b, c = run(1, False, "a"), run(1, False, "b"), run(2, False, "c")
    assert a == b and a != c
    assert run(1, True, "d")[:12] == a  # adding a source leaves the others' samples unchanged
    assert [int(x[1:]) for x in a] == sorted(int(x[1:]) for x in a)  # file order without shuffle


def test_exact_duplicates_are_removed_after_normalising_whitespace(tmp_path):
    rows = [_chat(0), _chat(1), _chat(0) | {"id": "other-id"}]  # same content, different id
    spaced = _chat(1)
    spaced["messages"][0]["content"] = "  q   question\n1 "
    rows.append(spaced)
    cased = _chat(2)
    rows += [cased, {**cased, "messages": [{**cased["messages"][0], "content": "Q question 2"},
                                           cased["messages"][1]]}]
    a = _jsonl(tmp_path / "a.jsonl", rows)
    b = _jsonl(tmp_path / "b.jsonl", [_chat(2)])  # duplicates a row of the first source
    cfg = MixtureConfig(sources=[SourceConfig(a), SourceConfig(b)], output=str(tmp_path / "m.jsonl"))
    manifest = build_mixture(cfg)
    assert [s.duplicates_removed for s in manifest.sources] == [2, 1]
    assert [s.kept for s in manifest.sources] == [4, 0]
    assert manifest.n_rows == 4 and manifest.duplicates_removed == 3

    by_prompt = build_mixture(MixtureConfig(sources=[SourceConfig(a)], output=str(tmp_path / "p.jsonl"),
                                            dedup="prompt"))
    assert by_prompt.n_rows == 4
    nodedup = build_mixture(MixtureConfig(sources=[SourceConfig(a)], output=str(tmp_path / "n.jsonl"), dedup="none"))
    assert nodedup.n_rows == 6


def test_dedup_key_ignores_metadata_and_whitespace_only():
    r1 = {"id": 1, "source": "x", "messages": [{"role": "user", "content": "Hi  there"}]}
    r2 = {"id": 2, "source": "y", "messages": [{"role": "user", "content": "Hi there "}]}
    r3 = {"id": 1, "messages": [{"role": "user", "content": "hi there"}]}
    assert dedup_key(r1, "content") == dedup_key(r2, "content") != dedup_key(r3, "content")
    assert dedup_key({"prompt": "a", "chosen": [], "rejected": []}, "prompt") == dedup_key({"prompt": "a "}, "prompt")


def test_passthrough_formats_and_source_field(tmp_path):
    pref = _jsonl(tmp_path / "pref.jsonl", [{"prompt": f"p{i}", "chosen": [], "rejected": [], "x": i}
                                            for i in range(3)])
    cfg = MixtureConfig(sources=[SourceConfig(pref, format="preference", name="prefs")],
                        output=str(tmp_path / "o.jsonl"), source_field="origin", shuffle=False)
    build_mixture(cfg)
    rows = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert rows == [{"prompt": f"p{i}", "chosen": [], "rejected": [], "x": i, "origin": "prefs"} for i in range(3)]


def test_custom_converter_registry(tmp_path):
    name = "upper_test_only"
    if name not in CONVERTERS:
        register_converter(name, lambda rec: {"text": rec["text"].upper()})
    with pytest.raises(ValueError, match="already registered"):
        register_converter(name, lambda rec: rec)
    src = _jsonl(tmp_path / "t.jsonl", [{"text": "abc"}])
    build_mixture(MixtureConfig(sources=[SourceConfig(src, format=name)], output=str(tmp_path / "o.jsonl")))
    assert json.loads((tmp_path / "o.jsonl").read_text()) == {"text": "ABC"}


def test_rerun_is_skipped_when_up_to_date_and_rebuilt_when_inputs_change(files, tmp_path, capsys):
    out = tmp_path / "m.jsonl"
    cfg = MixtureConfig(sources=[SourceConfig(files["chat"], count=5)], output=str(out))
    first = build_mixture(cfg)
    capsys.readouterr()
    assert build_mixture(cfg) == first
    assert "up to date" in capsys.readouterr().out
    Path(files["chat"]).write_text(Path(files["chat"]).read_text() + json.dumps(_chat(99)) + "\n")
    second = build_mixture(cfg)
    assert second.sources[0].available == 41 and second.sources[0].sha256 != first.sources[0].sha256


def test_errors_name_the_file_and_field(files, tmp_path):
    with pytest.raises(ValueError, match=r"missing\.jsonl"):
        build_mixture(MixtureConfig(sources=[SourceConfig(str(tmp_path / "missing.jsonl"))],
                                    output=str(tmp_path / "o.jsonl")))
    with pytest.raises(ValueError, match=r"count 50 is more than the 10 rows available.*allow_fewer"):
        build_mixture(MixtureConfig(sources=[SourceConfig(files["share"], count=50, format="sharegpt")],
                                    output=str(tmp_path / "o.jsonl")))
    ok = build_mixture(MixtureConfig(sources=[SourceConfig(files["share"], count=50, format="sharegpt",
                                                           allow_fewer=True)], output=str(tmp_path / "o.jsonl")))
    assert (ok.sources[0].requested, ok.sources[0].taken) == (50, 10)

    bad_key = _yaml(tmp_path / "bad.yaml", f"sources:\n  - path: {files['chat']}\n    cout: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*sources\[0\]\.cout"):
        load_mixture_config(bad_key)
    top_key = _yaml(tmp_path / "top.yaml", f"sources:\n  - path: {files['chat']}\nsed: 3\n")
    with pytest.raises(ConfigError, match=r"top\.yaml.*'sed'"):
        load_mixture_config(top_key)
    both = _yaml(tmp_path / "both.yaml", f"sources:\n  - path: {files['chat']}\n    count: 3\n    fraction: 0.5\n")
    with pytest.raises(ConfigError, match=r"both\.yaml.*count or fraction, not both"):
        load_mixture_config(both)
    fmt = _yaml(tmp_path / "fmt.yaml", f"sources:\n  - path: {files['chat']}\n    format: alpaca\n")
    with pytest.raises(ConfigError, match="unknown format 'alpaca'"):
        load_mixture_config(fmt)

    good = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}
    wrong = _jsonl(tmp_path / "wrong.jsonl", [good, {"conversations": "oops"}])
    with pytest.raises(ValueError, match=r"wrong\.jsonl:2: format 'sharegpt'"):
        build_mixture(MixtureConfig(sources=[SourceConfig(wrong, format="sharegpt")], output=str(tmp_path / "o.jsonl")))
    with pytest.raises(ValueError, match="names must be unique"):
        MixtureConfig(sources=[SourceConfig(files["chat"]), SourceConfig(files["chat"])]).validate()
