"""Synthetic rows in the MS MARCO v1.1 schema with a learnable query/passage signal.

Each query is about one topic: it uses a few of the topic's keywords. Its selected passage uses three
keywords of the same topic among filler words; its unselected passages mix keywords of unrelated topics,
half of them with one of the query's words (lexical distractors), so overlap alone is not enough:
the model has to learn which words belong together.
Keywords are real English words first, then made-up syllable words once those run out.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Iterator, Mapping

import numpy as np

from two_tower.core.errors import ConfigError

# Plain words every GloVe vocabulary has; topics draw their keywords from them.
WORDS = (
    "apple river mountain engine doctor music planet garden winter ocean bridge castle forest "
    "island market school church train coffee bread cheese butter salt sugar horse tiger eagle "
    "shark whale snake spider flower tree grass stone metal gold silver copper iron glass paper "
    "cotton wool silk leather rubber plastic wood cloud storm rain snow wind thunder desert valley "
    "lake canyon volcano glacier beach harbor airport station hospital library museum theater stadium "
    "kitchen bedroom garage window door roof floor wall chair table lamp clock mirror camera phone "
    "computer printer keyboard screen battery cable rocket satellite telescope microscope magnet "
    "crystal diamond ruby pearl coral shell feather wing tail claw tooth bone skin blood heart brain "
    "lung liver kidney muscle nerve vitamin protein fiber mineral acid salt oxygen carbon nitrogen "
    "violin piano guitar drum trumpet flute poem novel story chapter letter verb noun grammar "
    "soccer tennis golf hockey boxing cycling swimming skiing chess poker tax loan bank stock bond "
    "salary budget invoice tariff lawyer judge court prison police army navy soldier king queen "
    "prince farmer baker tailor pilot sailor nurse teacher student author painter singer dancer"
).split()
WORDS = list(dict.fromkeys(WORDS))  # unique, in order
FILLER = "the a of and to in is for on with as by at from that this it are was be or an".split()


SYLLABLES = "ba ko mi ra tu le no si pa vo de gu ri ha ze fo ly ne ka du".split()


def _made_up():
    """Made-up words: every three-syllable word, then every four-syllable one (168,000 in all)."""
    for n in (3, 4):
        yield from ("".join(parts) for parts in itertools.product(SYLLABLES, repeat=n))


MAX_WORDS = len(WORDS) + len(SYLLABLES) ** 3 + len(SYLLABLES) ** 4


def check_vocabulary_size(size: int) -> None:
    """ConfigError if the made-up vocabulary cannot give ``size`` distinct keywords."""
    if size > MAX_WORDS:
        raise ConfigError(f"the synthetic vocabulary has {MAX_WORDS} words, fewer than the {size} asked for (data.synthetic_rows.num_topics x keywords_per_topic): ask for fewer topics")


def check_synthetic_rows(spec: Mapping) -> None:
    """The checks ``iter_rows(**spec)`` would make before its first row, for a config check that runs
    before anything is imported or generated."""
    defaults = inspect.signature(iter_rows).parameters
    value = {key: spec.get(key, defaults[key].default) for key in ("num_topics", "keywords_per_topic", "passages_per_row", "query_words", "passage_words", "query_filler")}

    def whole(x) -> bool:
        return isinstance(x, int) and not isinstance(x, bool)

    # a row's passages other than the selected one draw from three other topics; the coherent one, 3 keywords
    for key, low in (("num_topics", 4), ("keywords_per_topic", 3), ("passages_per_row", 1), ("query_words", 1)):
        if not whole(value[key]) or value[key] < low:
            raise ConfigError(f"data.synthetic_rows.{key}={value[key]!r}: must be a whole number >= {low}")
    if value["query_words"] > value["keywords_per_topic"]:
        raise ConfigError(f"data.synthetic_rows.query_words={value['query_words']}: at most keywords_per_topic ({value['keywords_per_topic']})")
    for key in ("passage_words", "query_filler"):
        span = value[key]
        if span is None and key == "query_filler":
            continue
        if not (len(span) == 2 and all(whole(x) for x in span) and 0 <= span[0] < span[1]):
            raise ConfigError(f"data.synthetic_rows.{key}={list(span) if span is not None else span!r}: must be [low, high) word counts, 0 <= low < high")
    check_vocabulary_size(value["num_topics"] * value["keywords_per_topic"])


def vocabulary(size: int) -> np.ndarray:
    check_vocabulary_size(size)
    words = list(itertools.islice(itertools.chain(WORDS, _made_up()), size))
    return np.array(words)


def split_rows(spec: Mapping) -> tuple[dict[str, int], dict]:
    """A ``data.synthetic_rows`` mapping as ({"train": n, "validation": n, "test": n}, the settings of
    ``iter_rows``): the splits are consecutive slices of one stream of rows, in that order."""
    settings = dict(spec)
    counts = {"train": settings.pop("train_rows"), "validation": settings.pop("val_rows"), "test": settings.pop("test_rows", 0) or 0}
    return counts, settings


def split_of(spec: Mapping, split: str) -> list[dict]:
    """The rows of one split (``train``, ``validation``, ``test``) of a ``data.synthetic_rows`` mapping."""
    counts, settings = split_rows(spec)
    start = sum(counts[name] for name in list(counts)[: list(counts).index(split)])
    return make_rows(start + counts[split], **settings)[start:]


def make_rows(*args, **kwargs) -> list[dict]:
    """``iter_rows`` as a list."""
    return list(iter_rows(*args, **kwargs))


def iter_rows(
    num_rows: int,
    num_topics: int = 200,
    keywords_per_topic: int = 5,
    passages_per_row: int = 8,
    query_words: int = 3,
    passage_words: tuple[int, int] = (12, 40),
    seed: int = 0,
    query_filler: tuple[int, int] | None = None,
) -> Iterator[dict]:
    """Rows with the v1.1 fields; one selected passage a row, generated one at a time (nothing holds
    them all).

    ``passage_words``: filler words per passage, drawn uniformly from [low, high). ``query_filler``:
    if set, each query also gets [low, high) filler words (for length-realistic benchmarks; left
    unset, the random stream and so the rows are exactly as before).
    """
    rng = np.random.default_rng(seed)
    vocab = vocabulary(num_topics * keywords_per_topic)
    topics = rng.permutation(len(vocab))[: num_topics * keywords_per_topic].reshape(num_topics, keywords_per_topic)

    def passage(keywords: list[str]) -> str:
        n = int(rng.integers(*passage_words))
        words = list(rng.choice(FILLER, size=n)) + keywords
        rng.shuffle(words)
        return " ".join(words).capitalize() + "."

    def topic_keywords(topic: int, k: int) -> list[str]:
        return list(vocab[rng.choice(topics[topic], size=k, replace=False)])

    other_topics = np.arange(1, num_topics)
    for i in range(num_rows):
        topic = int(rng.integers(num_topics))
        qwords = topic_keywords(topic, query_words)
        query = qwords
        if query_filler is not None:
            query = list(rng.choice(FILLER, size=int(rng.integers(*query_filler)))) + qwords
        texts = [passage(topic_keywords(topic, 3))]  # coherent: three keywords of the query's topic
        for _ in range(passages_per_row - 1):
            # incoherent: one keyword from each of three other topics, sometimes a query word too
            others = (topic + rng.choice(other_topics, size=3, replace=False)) % num_topics
            keywords = [topic_keywords(int(t), 1)[0] for t in others]
            if rng.random() < 0.5:
                keywords[0] = qwords[0]  # lexical distractor
            texts.append(passage(keywords))
        order = rng.permutation(passages_per_row)
        selected = [int(j == 0) for j in order]
        yield (
            {
                "answers": [],
                "passages": {
                    "is_selected": selected,
                    "passage_text": [texts[j] for j in order],
                    "url": ["" for _ in order],
                },
                "query": " ".join(query) + "?",
                "query_id": i,
                "query_type": "",
                "wellFormedAnswers": [],
            }
        )
