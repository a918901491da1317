"""Print the first ```bash block of README.md that follows a line containing the given text.

CI runs README blocks through this, so what the README shows is what CI runs.
"""
import sys
from pathlib import Path

marker = sys.argv[1]
text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
if marker not in text:
    sys.exit(f"README.md has no line containing {marker!r}")
block = text.split(marker, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
print(block, end="")
