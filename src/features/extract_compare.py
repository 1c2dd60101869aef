"""Raw clips -> openSMILE ComParE_2016 features per clip; `bash run.sh extract compare` (see extract_egemaps)."""
from __future__ import annotations

from src.errors import cli
from src.features.extract_egemaps import run


@cli
def main(argv=None):
    return run("compare", argv)


if __name__ == "__main__":
    main()
