"""Answer extraction and normalisation for MATH (EVAL_SPEC.md §2), as pure string functions.

These reproduce the Minerva / Hendrycks helpers that OLMES and open-instruct use (the Nov 2024
versions), quirks included: e.g. removing the unit "ft" also turns "\\left" into "\\le", and a
string with one "/" that is not an integer fraction makes `hendrycks_is_equiv` fall back to raw
string equality. Regexes whose backtracking is quadratic on long outputs are replaced by scans
that give the same result in linear time (tests compare them with the regexes).
"""

from __future__ import annotations

import re

INVALID_ANSWER = "[invalidanswer]"
_MINERVA_PREFIX = "Final Answer: The final answer is"
_MINERVA_SUFFIX = " I hope it is correct"  # the regex has "." around it: any non-newline char

SUBSTITUTIONS = (
    ("an ", ""),
    ("a ", ""),
    (".$", "$"),
    ("\\$", ""),
    ("\\ ", ""),
    (" ", ""),
    ("mbox", "text"),
    (",\\text{and}", ","),
    ("\\text{and}", ","),
    ("\\text{m}", "\\text{}"),
)
REMOVED_EXPRESSIONS = (
    "square", "ways", "integers", "dollars", "mph", "inches", "ft", "hours", "km", "units",
    "\\ldots", "sue", "points", "feet", "minutes", "digits", "cents", "degrees", "cm", "gm",
    "pounds", "meters", "meals", "edges", "students", "childrentickets", "multiples",
    "\\text{s}", "\\text{.}", "\\text{\ns}", "\\text{}^2", "\\text{}^3", "\\text{\n}", "\\text{}",
    "\\mathrm{th}", "^\\circ", "^{\\circ}", "\\;", ",\\!", "{,}", '"', "\\dots",
)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Extraction


def last_boxed_only_string(text: str) -> str | None:
    """The last `\\boxed{...}` (or `\\fbox{...}`) with its braces balanced, or None.

    A `\\boxed ` with a space anywhere wins and runs to the next `$` (lm-eval behaviour).
    """
    if "\\boxed " in text:
        return "\\boxed " + text.split("\\boxed ")[-1].split("$")[0]
    idx = text.rfind("\\boxed")
    if idx < 0:
        idx = text.rfind("\\fbox")
        if idx < 0:
            return None
    depth = 0
    for i in range(idx, len(text)):
        ch = text[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[idx : i + 1]
    return None


def remove_boxed(boxed: str | None) -> str | None:
    """Strip `\\boxed{...}` / `\\boxed ` from `last_boxed_only_string`'s result; None if neither
    form fits (e.g. an `\\fbox`), where the reference helpers raise AssertionError."""
    if boxed is None:
        return None
    if "\\boxed " in boxed:
        return boxed[len("\\boxed ") :] if boxed.startswith("\\boxed ") else None
    if boxed.startswith("\\boxed{") and boxed.endswith("}"):
        return boxed[len("\\boxed{") : -1]
    return None


def minerva_answer(text: str) -> str:
    """The Minerva answer: `re.search(r"Final Answer: The final answer is(.*?). I hope it is
    correct.", text + "I hope it is correct.")`, group 1 stripped, else "[invalidanswer]".

    Done by scanning: for each occurrence of the prefix, the shortest group is fixed by the first
    " I hope it is correct" after it on the same line, so every line is read a bounded number of
    times instead of once per prefix occurrence.
    """
    text = text + "I hope it is correct."
    pos = 0
    while True:
        p = text.find(_MINERVA_PREFIX, pos)
        if p < 0:
            return INVALID_ANSWER
        start = p + len(_MINERVA_PREFIX)
        eol = text.find("\n", start)
        eol = len(text) if eol < 0 else eol
        # The group may be empty; the "." after it still needs one character: suffix at >= start+1.
        q = text.find(_MINERVA_SUFFIX, start + 1, eol)
        if q >= 0 and q + len(_MINERVA_SUFFIX) < eol:  # the final "." needs a char on this line
            return text[start : q - 1].strip()
        # No later prefix on this line can match either (its suffix search is a subset).
        pos = eol


def last_dollar_span(text: str) -> str | None:
    """The text between the last two `$` signs, or None when there are fewer than two."""
    last = text.rfind("$")
    if last <= 0:
        return None
    prev = text.rfind("$", 0, last)
    return None if prev < 0 else text[prev + 1 : last]


# ---------------------------------------------------------------------------------------------
# Minerva normalisation


def _first_dollar_span_per_line(s: str) -> str:
    # == re.sub(r"(.*?)(\$)(.*?)(\$)(.*)", "$\\3$", s): `.` stops at newlines, so each line with
    # two or more `$` becomes `$` + its first span + `$`; other lines are left alone.
    lines = s.split("\n")
    for i, line in enumerate(lines):
        if line.count("$") >= 2:
            lines[i] = "$" + line.split("$", 2)[1] + "$"
    return "\n".join(lines)


def _unwrap(s: str, opener: str, greedy: bool) -> str:
    # == re.sub(re.escape(opener) + ("(.*)" if greedy else "(.*?)") + r"\}", r"\1", s) with `.`
    # not crossing newlines: keep what is between the opener and the first (lazy) or last
    # (greedy) "}" on the same line; an opener with no "}" after it on its line is left as is.
    out: list[str] = []
    copied = search = 0
    eol = -1
    while True:
        p = s.find(opener, search)
        if p < 0:
            break
        start = p + len(opener)
        if start > eol:
            eol = s.find("\n", start)
            if eol < 0:
                eol = len(s)
        q = s.rfind("}", start, eol) if greedy else s.find("}", start, eol)
        if q < 0:
            search = eol
            continue
        out.append(s[copied:p])
        out.append(s[start:q])
        copied = search = q + 1
    out.append(s[copied:])
    return "".join(out)


_FRAC_SHORTHAND = re.compile(r"(frac)([^{])(.)")
_SQRT_SHORTHAND = re.compile(r"(sqrt)([^{])")


def normalize_final_answer(answer: str) -> str:
    """Minerva's `normalize_final_answer` (Lewkowycz et al. 2022, appendix D)."""
    s = answer.split("=")[-1]
    for before, after in SUBSTITUTIONS:
        s = s.replace(before, after)
    for expr in REMOVED_EXPRESSIONS:
        s = s.replace(expr, "")
    s = _first_dollar_span_per_line(s)
    s = _unwrap(s, "\\text{", greedy=False)
    s = _unwrap(s, "\\textbf{", greedy=False)
    s = _unwrap(s, "\\overline{", greedy=False)
    s = _unwrap(s, "\\boxed{", greedy=True)
    s = _FRAC_SHORTHAND.sub("frac{\\2}{\\3}", s)
    s = _SQRT_SHORTHAND.sub("sqrt{\\2}", s)
    s = s.replace("$", "")
    if s.replace(",", "").isdigit():
        s = s.replace(",", "")
    return s


# ---------------------------------------------------------------------------------------------
# Hendrycks string equivalence


def _fix_fracs(s: str) -> str:
    parts = s.split("\\frac")
    out = parts[0]
    for part in parts[1:]:
        out += "\\frac"
        if part[0] == "{":  # IndexError on an empty part is intended: the caller falls back
            out += part
            continue
        if len(part) < 2:
            return s
        a, b, rest = part[0], part[1], part[2:]
        out += "{" + a + "}{" + b + "}" + rest if b != "{" else "{" + a + "}" + b + rest
    return out


def _fix_a_slash_b(s: str) -> str:
    pieces = s.split("/")
    if len(pieces) != 2:
        return s
    a, b = int(pieces[0]), int(pieces[1])  # ValueError propagates, as in the reference
    if s != f"{a}/{b}":
        return s
    return "\\frac{" + str(a) + "}{" + str(b) + "}"


def _remove_right_units(s: str) -> str:
    if "\\text{ " not in s:
        return s
    splits = s.split("\\text{ ")
    if len(splits) != 2:
        raise ValueError("more than one '\\text{ ' unit")  # an AssertionError in the reference
    return splits[0]


def _fix_sqrt(s: str) -> str:
    if "\\sqrt" not in s:
        return s
    splits = s.split("\\sqrt")
    out = splits[0]
    for part in splits[1:]:
        out += "\\sqrt" + part if part[0] == "{" else "\\sqrt{" + part[0] + "}" + part[1:]
    return out


def strip_string(s: str) -> str:
    """Hendrycks et al.'s `strip_string`; may raise on odd input (callers fall back)."""
    s = s.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "")
    s = s.replace("\\$", "")
    s = _remove_right_units(s)
    # Twice, as in the reference: removing one "\\%" can expose another ("\\\\%%").
    s = s.replace("\\%", "").replace("\\%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    halves = s.split("=")
    if len(halves) == 2 and len(halves[0]) <= 2:
        s = halves[1]
    s = _fix_sqrt(s)
    s = s.replace(" ", "")
    s = _fix_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _fix_a_slash_b(s)


def hendrycks_is_equiv(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    try:
        return strip_string(a) == strip_string(b)
    except Exception:  # the reference falls back to raw equality on any error
        return a == b


# ---------------------------------------------------------------------------------------------
# Currency, before a symbolic comparison

# `\$` not itself escaped: in "\\$" the backslashes are a LaTeX line break and the `$` is math.
_ESCAPED_DOLLAR = re.compile(r"(?<!\\)((?:\\\\)*)\\\$")
_LONE_CURRENCY_DOLLAR = re.compile(r"(?<!\\)\$(?=\s*\.?\d)")
# A trailing unit word "dollar(s)", bare or as the whole of a text box, after optional LaTeX spaces.
# The lookbehind lets a match start only where a run of spaces begins, so a long run is scanned
# once rather than once per position.
_DOLLAR_UNIT = re.compile(
    r"(?<![\s~,;:!\\])(?:\s|~|\\[ ,;:!])*"
    r"(?:\\(?:text|textrm|mbox|mathrm)\s*\{\s*dollars?\s*\}|(?<![A-Za-z\\])dollars?)\s*\Z"
)


def without_currency(s: str) -> str:
    """`s` with its currency marks removed, for the symbolic comparison only: `\\$` (LaTeX's
    literal dollar sign, never math mode), a single unescaped `$` directly before a number (a `$`
    with no partner cannot delimit math), and a trailing unit word "dollar(s)".

    So `\\$18.90`, `$18.90`, `18.90 dollars` and `18.90\\text{ dollars}` all compare as 18.90
    (Minerva's normalisation drops `\\$` and "dollars" the same way in the eval path). Digit
    grouping (`1,\\!000`, `1,000`) is left to math-verify, which reads it as one number. Other
    units are not converted: `50 cents` is not `\\$0.50`.
    """
    s = _ESCAPED_DOLLAR.sub(r"\1", s)
    if s.count("$") == 1:
        s = _LONE_CURRENCY_DOLLAR.sub("", s)
    return _DOLLAR_UNIT.sub("", s)


# ---------------------------------------------------------------------------------------------
# Candidate answers


def gold_from_solution(solution: str) -> str | None:
    """normalize_final_answer(remove_boxed(last_boxed_only_string(solution)))."""
    inner = remove_boxed(last_boxed_only_string(solution))
    return None if inner is None else normalize_final_answer(inner)


def strict_candidate(output: str) -> str | None:
    """The normalised Minerva-format answer, or None when the output has none."""
    answer = normalize_final_answer(minerva_answer(output))
    return None if answer == INVALID_ANSWER else answer


def flex_candidates(output: str) -> list[str]:
    """OLMES `exact_match_flex` candidates, in order: Minerva answer, last boxed; only if neither,
    the last `$...$` span; only if still nothing, the whole output (all normalised)."""
    candidates = []
    minerva = strict_candidate(output)
    if minerva is not None:
        candidates.append(minerva)
    boxed = remove_boxed(last_boxed_only_string(output))
    if boxed is not None:
        candidates.append(normalize_final_answer(boxed))
    if not candidates:
        span = last_dollar_span(output)
        if span is not None:
            candidates.append(normalize_final_answer(span))
    if not candidates:
        candidates.append(normalize_final_answer(output))
    return candidates


def reward_candidates(output: str) -> list[str]:
    """open-instruct MathVerifier candidates: the last boxed content (not normalised), the
    Minerva answer; only if neither, the last `$...$` span; only if still nothing, the whole
    output normalised and raw."""
    candidates = []
    boxed = remove_boxed(last_boxed_only_string(output))
    if boxed is not None:
        candidates.append(boxed)
    minerva = strict_candidate(output)
    if minerva is not None:
        candidates.append(minerva)
    if not candidates:
        span = last_dollar_span(output)
        if span is not None:
            candidates.append(normalize_final_answer(span))
    if not candidates:
        candidates.extend([normalize_final_answer(output), output])
    return candidates
