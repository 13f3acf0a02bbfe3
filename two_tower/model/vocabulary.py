"""Attach a tokenizer's open vocabulary to towers: the extension's vectors and the bag-of-words keys.

Neither is saved in checkpoints or index folders (they are derived from the vectors source and the word
strings); both are checked against CRCs saved with the weights, so a changed source is refused.
"""

from __future__ import annotations

from two_tower.data.tokenizer import Tokenizer
from two_tower.data.embeddings import extension_rows


def attach_vocabulary(encoders, tokenizer: Tokenizer) -> None:
    """Load the extension rows into the (shared) embedding and give every bag its vocabulary keys."""
    encoders = list({id(e): e for e in encoders}.values())
    embeddings = {id(e.embedding): e.embedding for e in encoders}.values()
    for embedding in embeddings:
        if embedding.extension_size:
            embedding.load_extension(*extension_rows(tokenizer))
    words = [*tokenizer.words, *tokenizer.extension_words]
    for encoder in encoders:
        if getattr(encoder, "bag", None) is not None:
            encoder.bag.set_vocabulary(words)
