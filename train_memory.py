"""Train memory cells from a JSON file of episodes (default: the bundled example dataset).

Usage: python train_memory.py [FILE.json] [--namespace NS]

A thin wrapper over ``rememory train``; install the package first (``make demo`` does).
"""

import sys
from pathlib import Path

from rememory.cli.main import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or args[0].startswith("-"):
        args = [str(Path(__file__).resolve().parent / "examples" / "episodes.json"), *args]
    main(["train", *args])
