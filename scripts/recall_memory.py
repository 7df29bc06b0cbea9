"""Recall episodes by phrase: asks "Enter a phrase:" and prints the best match.

Usage: python scripts/recall_memory.py [--top_k 3] [--namespace NS] [PHRASE]

A thin wrapper over ``rememory recall``; install the package first (``make demo`` does).
"""

import sys

from rememory.cli.main import main

if __name__ == "__main__":
    main(["recall", *sys.argv[1:]])
