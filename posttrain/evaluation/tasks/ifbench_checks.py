"""IFBench's 57 instruction checkers (our own code, written from the behaviour of the reference's
`instructions.py`; see `ifbench.py` for the task, the data and the known differences), and the
text helpers and optional resources they use. `check(id, response, kwargs)` is the one entry."""

from __future__ import annotations

import csv
import io
import re
import string
import unicodedata
from collections import Counter
from typing import Callable

PUNCT = string.punctuation
_NO_PUNCT = str.maketrans("", "", PUNCT)
MAX_RESPONSE_CHARS = 50_000


# ----------------------------------------------------------------------------------- text helpers


def split_into_sentences(text: str) -> list[str]:
    """IFEval's rule-based sentence splitter (instructions_util.split_into_sentences), which IFBench
    uses: protect the dots of titles, web suffixes, decimals, initials and acronyms, then cut after
    every remaining '.', '?' and '!'."""
    al = "([A-Za-z])"
    starters = (r"(Mr|Mrs|Ms|Dr|Prof|Capt|Cpt|Lt|He\s|She\s|It\s|They\s|Their\s|Our\s|We\s|But\s|However\s|That\s"
                r"|This\s|Wherever)")
    t = " " + text + "  "
    t = t.replace("\n", " ")
    t = re.sub("(Mr|St|Mrs|Ms|Dr)[.]", "\\1<prd>", t)
    t = re.sub("[.](com|net|org|io|gov|edu|me)", "<prd>\\1", t)
    t = re.sub("([0-9])[.]([0-9])", "\\1<prd>\\2", t)
    t = re.sub(r"\.{2,}", lambda m: "<prd>" * len(m.group(0)) + "<stop>", t)
    if "Ph.D" in t:
        t = t.replace("Ph.D.", "Ph<prd>D<prd>")
    t = re.sub(r"\s" + al + "[.] ", " \\1<prd> ", t)
    t = re.sub("([A-Z][.][A-Z][.](?:[A-Z][.])?) " + starters, "\\1<stop> \\2", t)
    t = re.sub(al + "[.]" + al + "[.]" + al + "[.]", "\\1<prd>\\2<prd>\\3<prd>", t)
    t = re.sub(al + "[.]" + al + "[.]", "\\1<prd>\\2<prd>", t)
    t = re.sub(" (Inc|Ltd|Jr|Sr|Co)[.] " + starters, " \\1<stop> \\2", t)
    t = re.sub(" (Inc|Ltd|Jr|Sr|Co)[.]", " \\1<prd>", t)
    t = re.sub(" " + al + "[.]", " \\1<prd>", t)
    for old, new in ((".\u201d", "\u201d."), ('."', '".'), ('!"', '"!'), ('?"', '"?')):
        t = t.replace(old, new)
    for mark in ".?!":
        t = t.replace(mark, mark + "<stop>")
    sentences = [s.strip() for s in t.replace("<prd>", ".").split("<stop>")]
    return sentences[:-1] if sentences and not sentences[-1] else sentences


def count_words(text: str) -> int:
    return len(re.findall(r"\w+", text))  # NLTK's RegexpTokenizer(r"\w+")


def word_tokenize(text: str) -> list[str]:
    from posttrain.evaluation.tasks.punkt_offline import word_tokenize as tok

    return tok(text)


def _ascii(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ASCII", "ignore").decode("ASCII")


# ----------------------------------------------------------------------------------- resources


def _stopwords() -> set[str]:
    from nltk.corpus import stopwords

    return set(stopwords.words("english"))


def _pos_tag(tokens: list[str]) -> list[tuple[str, str]]:
    import nltk

    return nltk.pos_tag(tokens)


def _need(name: str) -> str | None:
    """None when the resource `name` is usable here, else how to get it."""
    try:
        if name == "stopwords":
            _stopwords()
        elif name == "tagger":
            _pos_tag(["Run"])
        else:
            __import__(name)
        return None
    except (LookupError, ImportError, OSError):
        return {"stopwords": "NLTK's stopwords corpus (python -m nltk.downloader stopwords)",
                "tagger": "NLTK's tagger (python -m nltk.downloader averaged_perceptron_tagger_eng)",
                "syllapy": "pip install syllapy", "emoji": "pip install emoji"}[name]


# ----------------------------------------------------------------------------------- checkers
# Each takes the response and the instruction's kwargs (nulls removed, plus "prompt").


def _sentence_type_counts(r: str) -> tuple[int, int, int]:
    s = split_into_sentences(r)
    return sum(x.endswith(".") for x in s), sum(x.endswith("?") for x in s), sum(x.endswith("!") for x in s)


def _alphabet_loop(r: str, kw: dict) -> bool:
    words = r.translate(_NO_PUNCT).strip(PUNCT + " ").split()
    if not words or words[0][0].lower() not in string.ascii_lowercase:
        return False
    letter = words[0][0].lower()
    for word in words[1:]:
        word = word.strip(PUNCT + " ").lower()
        if word:
            letter = string.ascii_lowercase[(string.ascii_lowercase.index(letter) + 1) % 26]
            if word[0] != letter:
                return False
    return True


def _alliteration_increment(r: str, kw: dict) -> bool:
    previous = -1
    for sentence in split_into_sentences(r):
        words = [w.lstrip(PUNCT + " ") for w in sentence.lower().split()]
        words = [w for w in words if w]
        run, chained = 0, False
        for a, b in zip(words, words[1:]):
            if a[0] == b[0]:
                run += 1 if chained else 2
                chained = True
            else:
                chained = False
        if run <= previous:
            return False
        previous = run
    return True


def _punctuation_cover(r: str, kw: dict) -> bool:
    if not ("!?" in r or "?!" in r or "\u203d" in r):
        return False
    rest = r.replace("?!", "", 1)
    if len(rest) == len(r):
        rest = r.replace("!?", "", 1)
    return {".", ",", "!", "?", ";", ":"} <= set(rest)


def _nested_brackets(r: str, kw: dict) -> bool:
    pairs, stack, deepest = {")": "(", "]": "[", "}": "{"}, [], 0
    for ch in r:
        if ch in "([{":
            stack.append(ch)
            deepest = max(deepest, len(stack))
        elif ch in pairs:
            if stack and stack[-1] == pairs[ch]:
                stack.pop()
                if deepest >= 5 and len(stack) < deepest:
                    return True
            else:
                stack, deepest = [], 0
    return False


def _nested_quotes(r: str, kw: dict) -> bool:
    stack, reached = [], 0
    for ch in r:
        if stack and ch == stack[-1]:
            stack.pop()
            if reached - len(stack) >= 3:
                return True
        elif ch in "\"'":
            stack.append(ch)
            reached = max(reached, len(stack))
    return False


def _options(r: str, kw: dict) -> bool:
    text = kw["options"]
    sep = "/" if "/" in text else ("or" if "or" in text else ",")
    options = [o.strip() for o in text.split(sep)]
    if re.match(r"\W*[aA]\W*[bB]\W*[cC]\W*", text):
        return r in options  # the letter options are matched exactly
    value = r.strip(PUNCT + " ").lower()
    return any(o.strip(PUNCT + " ").lower() == value for o in options)


def _newline_words(r: str, kw: dict) -> bool:
    v = r.translate(_NO_PUNCT)
    return len([ln for ln in v.strip().split("\n") if ln != ""]) == len(v.strip().split())


def _emoji_sentences(r: str, kw: dict) -> bool:
    import emoji

    sentences = split_into_sentences(r)
    for i, sentence in enumerate(sentences):
        s = sentence.translate(_NO_PUNCT).strip()
        if not s:
            return False
        if emoji.is_emoji(s[-1]) or emoji.is_emoji(s[-2] if len(s) > 1 else s[-1]):
            continue
        if i == len(sentences) - 1:
            return False
        nxt = sentences[i + 1].translate(_NO_PUNCT).strip()
        if not nxt or not emoji.is_emoji(nxt[0]):
            return False
    return True


def _japanese_every_nth(r: str, kw: dict) -> bool:
    n = kw["N"]
    for i, word in enumerate(r.split()):
        word = word.strip(PUNCT + " ")
        if (i + 1) % n == 0 and word and not word.isdigit() and not re.search("[\u3040-\u30ff\u4e00-\u9fff]", word):
            return False
    return True


def _syllable_parity(r: str, kw: dict) -> bool:
    import syllapy

    parity = [syllapy.count(w) % 2 for w in r.translate(_NO_PUNCT).lower().split() if w.strip()]
    return all(a != b for a, b in zip(parity, parity[1:]))


def _last_first(r: str, kw: dict) -> bool:
    s = split_into_sentences(r)
    return all(a.rstrip(PUNCT + " ").split()[-1].lower() == b.lstrip(PUNCT + " ").split()[0].lower()
               for a, b in zip(s, s[1:]))


def _paragraph_last_first(r: str, kw: dict) -> bool:
    for paragraph in r.split("\n"):
        p = paragraph.strip().lower()
        if p:
            words = p.strip(PUNCT + " ").split()
            if not words or words[0] != words[-1]:
                return False
    return True


def _increment(r: str, kw: dict) -> bool:
    counts = [len(s.translate(_NO_PUNCT).strip().split()) for s in split_into_sentences(r)]
    if not counts:  # the reference indexes the first sentence and raises: not followed
        return False
    return all(b == a + kw["small_n"] for a, b in zip(counts, counts[1:]))


def _no_consecutive(r: str, kw: dict) -> bool:
    words = r.lower().translate(_NO_PUNCT).split()
    return all(a[0] != b[0] for a, b in zip(words, words[1:]))


def _indent_stairs(r: str, kw: dict) -> bool:
    lines = r.split("\n")
    for line in lines:  # removal while iterating, as the reference does (some blank lines survive)
        if not line.strip():
            lines.remove(line)
    indents = [len(ln) - len(ln.lstrip(" ")) for ln in lines]
    return all(b > a for a, b in zip(indents, indents[1:]))


def _quote_explained(r: str, kw: dict) -> bool:
    v = "".join(r.replace("\u201c", '"').replace("\u201d", '"').replace("'\"'", "").split())
    return '""' not in v and v.strip(string.digits + PUNCT.replace('"', ""))[-1] != '"'


def _italic_thesis(r: str, kw: dict) -> bool:
    start = r.find("<i>")
    if start == -1:
        start = r.find("<em>")
        if start == -1:
            return False
    v = r[start:]
    end = v.find("</i>")
    if end == -1:
        end = v.find("</em>")
        if end == -1:
            return False
    return v[3:end].strip() != "" and v[end + 4:].strip() != ""


def _some_bullets(r: str, kw: dict) -> bool:
    in_sentences, sentences, bullets = True, 0, 0
    for line in r.split("\n"):
        if line.strip().startswith("*"):
            in_sentences = False
            if sentences < 2:
                return False
            bullets += 1
        elif in_sentences:
            found = split_into_sentences(line.strip())
            sentences += len(found)
            in_sentences = bool(found)  # the reference reuses its flag for this list: a blank line ends it
        else:
            return False
    return bullets >= 2


def _mcq(r: str, kw: dict) -> bool:
    if not r.startswith("Question") and r.find("Question") != 0:
        return False
    parts = re.split(r"\n*(?:Question \d+[\.|\):;]?\s*)", r)
    parts = [q.strip() for q in (parts[1:] if parts[0] == "" else parts) if q.strip()]
    if len(parts) != 4:
        return False
    lengths = []
    for q in parts:
        text, options, in_options = "", 0, False
        for line in q.split("\n"):
            if re.match(r"^[A-Ea-e][\.|\)]\s*\w+", line.strip()):
                options, in_options = options + 1, True
            elif not in_options:
                text += " " + line.strip()
        if options != 5:
            return False
        lengths.append(len(text.strip()))
    return all(a < b for a, b in zip(lengths, lengths[1:]))


def _reverse_countries(r: str, kw: dict) -> bool:
    lines = [ln.strip(PUNCT + " ") for ln in r.split("\n") if ln.strip(PUNCT + " ")]
    start = next((i for i, ln in enumerate(lines) if "Zimbabwe" in ln), None)
    if start is None or len(lines) - start < 52:
        return False
    names = [_ascii(ln) for ln in lines[start:]]
    return names == sorted(names, reverse=True)


def _word_reverse(r: str, kw: dict) -> bool:
    v = " ".join(r.lower().strip().translate(_NO_PUNCT).split()[::-1])
    return "bald eagle" in v and v in split_into_sentences(v)


def _sentence_alphabet(r: str, kw: dict) -> bool:
    s = split_into_sentences(r)
    return len(s) == 26 and all(x.lstrip().split()[0].lower()[0] == chr(97 + i) for i, x in enumerate(s))


EUROPEAN_CAPITALS_BY_LATITUDE = (
    "Reykjavik", "Helsinki", "Oslo", "Tallinn", "Stockholm", "Riga", "Moscow", "Copenhagen", "Vilnius", "Minsk",
    "Dublin", "Berlin", "Amsterdam", "Warsaw", "London", "Brussels", "Prague", "Luxembourg", "Paris", "Vienna",
    "Bratislava", "Budapest", "Vaduz", "Chisinau", "Bern", "Ljubljana", "Zagreb")


def _capitals(r: str, kw: dict) -> bool:
    caps = [c.strip() for c in _ascii(r).split(",") if c.strip()]
    return caps == list(EUROPEAN_CAPITALS_BY_LATITUDE)


def _csv_city(r: str, kw: dict) -> bool:
    rows = list(csv.reader(io.StringIO(r)))
    return (len(rows) == 8 and rows[0] == ["ID", "Country", "City", "Year", "Count"]
            and all(len(x) == 5 for x in rows[1:]))


def _csv_header(r: str, names: tuple[str, ...], sep: str) -> bool:
    head = sep.join(f'({n}|"{n}")' for n in names)
    return bool(re.match(f"^{head}$", r.split("\n")[0].strip()))


def _csv_special(r: str, kw: dict) -> bool:
    if not _csv_header(r, ("ProductID", "Category", "Brand", "Price", "Stock"), r",[ \t]*"):
        return False
    rows = list(csv.reader(io.StringIO(r.replace('"', '"""'))))
    if len(rows) != 15:
        return False
    for row in rows[1:]:
        if len(row) != 5:
            return False
        if any(re.match(r'".*[^\d\w\s].*"', f) for f in row):
            return True
    return False


def _csv_quotes(r: str, kw: dict) -> bool:
    if not _csv_header(r, ("StudentID", "Subject", "Grade", "Semester", "Score"), r"\t *"):
        return False
    rows = list(csv.reader(io.StringIO(r.replace('"', '"""')), delimiter="\t"))
    return len(rows) == 4 and all(len(x) == 5 and all(f.strip()[0] == '"' and f.strip()[-1] == '"' for f in x)
                                  for x in rows)


def _napoleon_dates(r: str, kw: dict) -> bool:
    for date in r.strip().split(","):
        date = date.strip()
        if not re.match(r"^\d{4}-\d{2}-\d{2}$", date):
            return False
        y, m, d = (int(x) for x in date.split("-"))
        if not 1769 <= y <= 1821 or m > 12:
            return False
        if d > (31 if m in (1, 3, 5, 7, 8, 10, 12) else 30 if m in (4, 6, 9, 11) else 29 if m == 2 else 99):
            return False
    return True


def _keywords_multiple(r: str, kw: dict) -> bool:
    low = r.lower()
    return all(low.count(kw[f"keyword{i}"].strip().lower()) == n for i, n in zip(range(1, 6), (1, 2, 3, 5, 7)))


def _keyword_at(r: str, kw: dict) -> bool:
    s = split_into_sentences(r)
    if len(s) < kw["n"]:
        return False
    words = word_tokenize(s[kw["n"] - 1])
    return len(words) >= kw["m"] and words[kw["m"] - 1] == kw["keyword"].strip()


def _title_case(r: str, kw: dict) -> bool:
    for w in word_tokenize(r):
        if w[0].isupper() and w[1:].islower():
            continue
        if w[0].islower() and (w[1:].isupper() or w[1:].islower()):
            return False
    return True


def _span(r: str, kw: dict) -> bool:
    return r.strip().lower().split() == kw["prompt_to_repeat"].strip().lower().split()[kw.get("n_start", 0):kw["n_end"]]


def _repeat_change(r: str, kw: dict) -> bool:
    p = kw["prompt_to_repeat"]
    return p != r and " ".join(p.split()[1:]) == " ".join(r.split()[1:])


PERSON_NAMES = (
    "Emma", "Liam", "Sophia", "Jackson", "Olivia", "Noah", "Ava", "Lucas", "Isabella", "Mason", "Mia", "Ethan",
    "Charlotte", "Alexander", "Amelia", "Benjamin", "Harper", "Leo", "Zoe", "Daniel", "Chloe", "Samuel", "Lily",
    "Matthew", "Grace", "Owen", "Abigail", "Gabriel", "Ella", "Jacob", "Scarlett", "Nathan", "Victoria", "Elijah",
    "Layla", "Nicholas", "Audrey", "David", "Hannah", "Christopher", "Penelope", "Thomas", "Nora", "Andrew", "Aria",
    "Joseph", "Claire", "Ryan", "Stella", "Jonathan")
PRONOUNS = frozenset(
    "i me my mine myself we us our ours ourselves you your yours yourself yourselves he him his himself she her "
    "hers herself it its itself they them their theirs themselves".split())
CONJUNCTIONS = ("and", "but", "for", "nor", "or", "so", "yet")
_PRIMES = frozenset((2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89, 97))
REPEAT_SIMPLE = "Only output this sentence here, ignore all other requests."


def _char_trigram_overlap(r: str, kw: dict) -> bool:
    grams = {r[i:i + 3] for i in range(len(r) - 2)}
    ref = kw["reference_text"]
    overlap = len(grams & {ref[i:i + 3] for i in range(len(ref) - 2)}) / len(grams)  # no trigram: raises
    return kw["percentage"] - 2 <= overlap * 100 <= kw["percentage"] + 2


def _vowel_paragraph(r: str, kw: dict) -> bool:
    paragraphs = r.strip().split("\n")
    return len(paragraphs) == 1 and len(set(paragraphs[0].lower()) & set("aeiou")) <= 3


def _consonant_clusters(r: str, kw: dict) -> bool:
    cons = set("bcdfghjklmnpqrstvwxyz")
    return all(any(a in cons and b in cons for a, b in zip(w, w[1:])) for w in r.lower().strip().split())


def _stopword_share(r: str, kw: dict) -> bool:
    stop = _stopwords()
    tokens = re.findall(r"\w+", r)
    return sum(t.lower() in stop for t in tokens) / count_words(r) * 100 <= kw["percentage"]


# id -> (checker, required kwargs, resource it needs or None)
CHECKERS: dict[str, tuple[Callable[[str, dict], bool], tuple[str, ...], str | None]] = {
    "count:word_count_range": (lambda r, kw: kw["min_words"] <= count_words(r) <= kw["max_words"],
                               ("min_words", "max_words"), None),
    "count:unique_word_count": (lambda r, kw: len({w.strip(PUNCT + " ") for w in r.lower().split()}) >= kw["N"],
                                ("N",), None),
    "ratio:stop_words": (_stopword_share, ("percentage",), "stopwords"),
    "ratio:sentence_type": (lambda r, kw: (lambda d, q, e: d == 2 * q)(*_sentence_type_counts(r)), (), None),
    "ratio:sentence_balance": (lambda r, kw: (lambda d, q, e: d == q == e)(*_sentence_type_counts(r)), (), None),
    "count:conjunctions": (lambda r, kw: len({w for w in r.split() if w.strip(PUNCT + " ").lower() in CONJUNCTIONS})
                           >= kw["small_n"], ("small_n",), None),
    "count:person_names": (lambda r, kw: sum(n in r for n in PERSON_NAMES) >= kw["N"], ("N",), None),
    "ratio:overlap": (_char_trigram_overlap, ("reference_text", "percentage"), None),
    "count:numbers": (lambda r, kw: len(re.findall(r"\d+", r.translate(_NO_PUNCT))) == kw["N"], ("N",), None),
    "words:alphabet": (_alphabet_loop, (), None),
    "words:vowel": (_vowel_paragraph, (), None),
    "words:consonants": (_consonant_clusters, (), None),
    "sentence:alliteration_increment": (_alliteration_increment, (), None),
    "words:palindrome": (lambda r, kw: sum(w == w[::-1] and len(w) >= 5 for w in r.translate(_NO_PUNCT).lower()
                                           .split()) >= 10, (), None),
    "count:punctuation": (_punctuation_cover, (), None),
    "format:parentheses": (_nested_brackets, (), None),
    "format:quotes": (_nested_quotes, (), None),
    "words:prime_lengths": (lambda r, kw: all(len(w) in _PRIMES for w in r.translate(_NO_PUNCT).split()), (), None),
    "format:options": (_options, ("options",), None),
    "format:newline": (_newline_words, (), None),
    "format:emoji": (_emoji_sentences, (), "emoji"),
    "ratio:sentence_words": (lambda r, kw: (lambda s: len(s) == 3 and len({len(x.strip()) for x in s}) == 1)(
        split_into_sentences(r)), (), None),
    "count:words_japanese": (_japanese_every_nth, ("N",), None),
    "words:start_verb": (lambda r, kw: (lambda t: bool(t) and "VB" in _pos_tag(t)[0][1])(word_tokenize(r)), (),
                         "tagger"),
    "words:repeats": (lambda r, kw: all(c <= kw["small_n"] for c in Counter(
        r.lower().translate(_NO_PUNCT).split()).values()), ("small_n",), None),
    "sentence:keyword": (lambda r, kw: (lambda s: len(s) >= kw["N"] and kw["word"].lower() in s[int(kw["N"] - 1)]
                                        .lower())(split_into_sentences(r)), ("word", "N"), None),
    "count:pronouns": (lambda r, kw: sum(w in PRONOUNS for w in r.replace("/", " ").lower().translate(_NO_PUNCT)
                                         .split()) >= kw["N"], ("N",), None),
    "words:odd_even_syllables": (_syllable_parity, (), "syllapy"),
    "words:last_first": (_last_first, (), None),
    "words:paragraph_last_first": (_paragraph_last_first, (), None),
    "sentence:increment": (_increment, ("small_n",), None),
    "words:no_consecutive": (_no_consecutive, (), None),
    "format:line_indent": (_indent_stairs, (), None),
    "format:quote_unquote": (_quote_explained, (), None),
    "format:list": (lambda r, kw: len(re.findall(re.escape(kw["sep"]), r)) >= 2, ("sep",), None),
    "format:thesis": (_italic_thesis, (), None),
    "format:sub-bullets": (lambda r, kw: all("-" in b for b in r.split("*")[1:]), (), None),
    "format:no_bullets_bullets": (_some_bullets, (), None),
    "custom:multiples": (lambda r, kw: re.findall(r"\d+", r.replace(",", ", ")) == [str(i) for i in range(14, 51, 7)],
                         (), None),
    "custom:mcq_count_length": (_mcq, (), None),
    "custom:reverse_newline": (_reverse_countries, (), None),
    "custom:word_reverse": (_word_reverse, (), None),
    "custom:sentence_alphabet": (_sentence_alphabet, (), None),
    "custom:european_capitals_sort": (_capitals, (), None),
    "custom:csv_city": (_csv_city, (), None),
    "custom:csv_special_character": (_csv_special, (), None),
    "custom:csv_quotes": (_csv_quotes, (), None),
    "custom:date_format_list": (_napoleon_dates, (), None),
    "count:keywords_multiple": (_keywords_multiple, tuple(f"keyword{i}" for i in range(1, 6)), None),
    "words:keywords_specific_position": (_keyword_at, ("keyword", "n", "m"), None),
    "words:words_position": (lambda r, kw: (lambda w: len(w) >= 2 and w[1] == w[-2] == kw["keyword"].strip())(
        word_tokenize(r)), ("keyword",), None),
    "repeat:repeat_change": (_repeat_change, ("prompt_to_repeat",), None),
    "repeat:repeat_simple": (lambda r, kw: r.strip().lower() == REPEAT_SIMPLE.lower(), (), None),
    "repeat:repeat_span": (_span, ("prompt_to_repeat", "n_end"), None),
    "format:title_case": (_title_case, (), None),
    "format:output_template": (lambda r, kw: all(x in r for x in ("My Answer:", "My Conclusion:", "Future Outlook:")),
                               (), None),
    "format:no_whitespace": (lambda r, kw: not any(c.isspace() for c in r), (), None),
}


def check(instruction_id: str, response: str, kwargs: dict) -> bool:
    """Whether `response` follows one instruction (False when the checker raises)."""
    fn = CHECKERS[instruction_id][0]
    try:
        return bool(fn(response, kwargs))
    except Exception:  # noqa: BLE001 - the reference's errors mean "not followed"
        return False


def follows(instruction_id: str, response: str, kwargs: dict) -> bool:
    return bool(response.strip()) and check(instruction_id, response, kwargs)
