"""Score a submission against a labels CSV with the official semantics (src/decode/scoring.py).

    python src/score.py PRED.zip|PRED.json|PRED.csv LABELS.csv
"""
if __package__ in (None, ""):  # run as a file (python src/score.py): src importable, under .venv
    import _bootstrap  # noqa: F401

from src.decode.scoring import main

if __name__ == "__main__":
    main()
