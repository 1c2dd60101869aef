from pathlib import Path
from src.main import run
if __name__ == "__main__": run(Path(__file__).parent)
