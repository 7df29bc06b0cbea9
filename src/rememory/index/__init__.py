"""Recall indexes: lexical (BM25 over hashed tokens), dense (exact or ANN) and their fusion."""
