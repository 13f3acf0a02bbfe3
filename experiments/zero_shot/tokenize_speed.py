"""Tokenization speed: the open-vocabulary tokenizer against the closed one it replaced (commit 48c11ef^),
same training text, same GloVe words, same passages, alternating repetitions in one process.

    python experiments/zero_shot/tokenize_speed.py ../shared/data/marco7k ../shared/data/cranfield [--repeats 5]
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def closed_tokenizer_module():
    """The tokenizer module as it was before the vocabulary opened, read from git."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", "48c11ef^:two_tower/data/tokenizer.py"], check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "closed_tokenizer.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("closed_tokenizer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("marco")
    parser.add_argument("beir")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from two_tower.data.beir import load_beir
    from two_tower.data.tokenizer import Tokenizer
    from two_tower.data.embeddings import GloveEmbeddings
    from two_tower.retrieval.corpus import load_split_rows

    train = load_split_rows("train", args.marco, "microsoft/ms_marco", "v1.1")
    train_texts = [r.query for r in train] + list({p: None for r in train for p in r.passages})
    corpora = {
        "marco7k validation passages": list({p: None for r in load_split_rows("validation", args.marco, "microsoft/ms_marco", "v1.1") for p in r.passages}),
        "Cranfield corpus": load_beir(args.beir, "test").corpus_texts,
    }
    glove = GloveEmbeddings().load([])
    pretrained = set(glove.words)
    old = closed_tokenizer_module().Tokenizer.build(train_texts, min_freq=2, pretrained_words=pretrained)
    new = Tokenizer.build(train_texts, min_freq=2, pretrained_words=pretrained, extension_words=glove.words, extension_source=GloveEmbeddings().extension_config())
    print(f"{args.repeats} alternating repetitions, one process; vocabulary {len(old)} (closed) / {len(new.words)} + {len(new.extension_words)} extension (open)")
    print("| corpus | passages | closed, passages/s | open, passages/s | open / closed |\n|---|---|---|---|---|")
    for name, texts in corpora.items():
        seconds = {"closed": [], "open": []}
        for _ in range(args.repeats):
            for label, tok in (("closed", old), ("open", new)):
                start = time.perf_counter()
                tok.encode_passages(texts)
                seconds[label].append(time.perf_counter() - start)
        closed, opened = (len(texts) / min(seconds[k]) for k in ("closed", "open"))
        print(f"| {name} | {len(texts)} | {closed:.0f} | {opened:.0f} | {opened / closed:.2f}x |")


if __name__ == "__main__":
    main()
